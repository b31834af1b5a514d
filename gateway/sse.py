"""Server-sent events: the only place that frames them.

A stream is an async generator of batches of events; each batch goes out in one write, so the
events rendered from one worker message (the finish chunk, the usage chunk and ``[DONE]``; or
the admission comment and the role chunk) cost one send, not one each. Nothing goes out until
the stream yields its first batch, so an error raised before that (the worker rejected the call)
is answered as a plain HTTP error; an error raised later becomes one ``data: {"error": ...}``
event that ends the stream without ``[DONE]``. When the client disconnects, the generator is
cancelled and closed at once. The batches between the first and the last go straight to the
socket when the server offers it (gateway.connections.DirectBody), past the middleware.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Final

import anyio
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from llamagrid.gateway.connections import DIRECT_BODY, DirectBody
from llamagrid.gateway.errors import OpenAIError

logger = logging.getLogger(__name__)


class Admitted:
    """The worker has accepted the call: sent as a comment line, which flushes the headers."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ADMITTED"


#: The admission event (the one instance of Admitted).
ADMITTED: Final = Admitted()

#: What a stream's batches hold: the admission, a message already encoded as JSON (sent as
#: ``data: <json>``), or a message to encode.
Event = Admitted | bytes | Mapping[str, Any]
Batch = Sequence[Event]
Events = AsyncGenerator[Batch, None]

COMMENT = b": ok\n\n"
DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def frame(event: Event) -> bytes:
    """One SSE message: ``data: <json>`` and a blank line, or the comment line for admission."""
    if isinstance(event, bytes):
        return b"data: " + event + b"\n\n"
    if isinstance(event, Admitted):
        return COMMENT
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + data.encode() + b"\n\n"


def frames(batch: Batch) -> bytes:
    """The SSE messages of a batch, joined."""
    if len(batch) == 1:
        return frame(batch[0])
    return b"".join([frame(event) for event in batch])


def error_response(error: OpenAIError) -> JSONResponse:
    """The plain HTTP response for an error."""
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has disconnected (the request body has already been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class AdmittedStream(Response):
    """A streamed response that starts with its source's first item (the worker's admission),
    is answered as a plain HTTP error when that item is an error, and stops when the client
    leaves: the source is then cancelled and closed at once. Subclasses write the items."""

    def __init__(
        self,
        source: AsyncGenerator[Any, None],
        headers: Mapping[str, str],
        late_headers: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        # Not Response.__init__: a stream has no body to measure (and no Content-Length).
        self._source = source
        #: Headers known only once the first item exists (the worker that took the call).
        self._late_headers = late_headers
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The source is closed after the task group: outside its cancelled scope.
        async with contextlib.aclosing(self._source), anyio.create_task_group() as group:
            group.start_soon(_cancel_on_disconnect, receive, group.cancel_scope)
            with contextlib.suppress(OSError):  # the client left while we were sending
                await self._stream(scope, receive, send)
            group.cancel_scope.cancel()

    async def _first(self, scope: Scope, receive: Receive, send: Send) -> tuple[bool, Any]:
        """The source's first item, with the response's head sent; (False, None) when the
        source failed first and that error was answered as a plain HTTP error."""
        try:
            first = await anext(self._source)
        except OpenAIError as error:
            if self._late_headers is not None:
                error.headers.update(self._late_headers())
            await error_response(error)(scope, receive, send)
            return False, None
        except StopAsyncIteration:
            first = None
        if self._late_headers is not None:
            for name, value in self._late_headers().items():
                self.raw_headers.append((name.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        return True, first

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class EventStreamResponse(AdmittedStream):
    """An event stream that starts with the first batch and stops when the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self, events: Events, late_headers: Callable[[], Mapping[str, str]] | None = None
    ) -> None:
        super().__init__(events, HEADERS, late_headers)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        started, first = await self._first(scope, receive, send)
        if not started:
            return
        await send_body(send, frames(first if first is not None else [ADMITTED]))
        direct: DirectBody | None = scope.get("extensions", {}).get(DIRECT_BODY)
        try:
            async for batch in self._source:
                body = frames(batch)
                if direct is None or not direct.write(body):
                    await send_body(send, body)
        except OpenAIError as error:
            await send_body(send, frame(error.body()), more_body=False)
            return
        except Exception:
            logger.exception("event stream failed")
            failure = OpenAIError(500, "The stream failed.", "server_error")
            await send_body(send, frame(failure.body()), more_body=False)
            return
        await send_body(send, DONE, more_body=False)


async def send_body(send: Send, body: bytes, more_body: bool = True) -> None:
    """Send one part of a response's body through the ASGI chain."""
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    await wait_for_disconnect(receive)
    scope.cancel()
