"""Server-sent events: the only place that frames them.

A stream is an async generator of batches of events; each batch goes out in one write, so the
events rendered from one worker message (the finish chunk, the usage chunk and ``[DONE]``; or
the admission comment and the role chunk) cost one send, not one each. Nothing goes out until
the stream yields its first batch, so an error raised before that (the worker rejected the call)
is answered as a plain HTTP error; an error raised later becomes one ``data: {"error": ...}``
event that ends the stream without ``[DONE]``. When the client disconnects, the generator is
cancelled and closed at once. The batches between the first and the last go straight to the
socket when the server offers it (gateway.connections.DirectBody), past the middleware.

Keep-alive (--sse-keepalive-s): until a stream has sent its first two batches (its opening, and
the first generated output), a comment line goes out whenever that many seconds pass with
nothing sent, so that a proxy does not close a connection that waits for a worker's queue or
for a long prefill. The first comment starts the response (200) if nothing had: a stream that
waited that long answers a later refusal with the in-stream error event instead of an HTTP
error status. Clients ignore comment lines (the SSE specification says to).
"""

from __future__ import annotations

import asyncio
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
#: The comment sent while a stream waits for its first events (--sse-keepalive-s).
KEEPALIVE = b": keep-alive\n\n"
#: How many of a stream's first batches are waited for with keep-alive comments: the opening
#: (the admission, or the Responses API's opening events) and the first generated output.
PINGED_BATCHES = 2
DONE = b"data: [DONE]\n\n"
#: The error event of a stream that failed on a bug (logged) rather than a worker's error.
_FAILURE = OpenAIError(500, "The stream failed.", "server_error")
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


def keepalive_interval(scope: Scope) -> float:
    """The app's keep-alive interval in seconds (gateway.app sets it from --sse-keepalive-s);
    0 when there is none."""
    state = getattr(scope.get("app"), "state", None)
    interval = getattr(state, "sse_keepalive_s", 0.0)
    return float(interval) if isinstance(interval, int | float) and interval > 0 else 0.0


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
            await self._refuse(error, scope, receive, send)
            return False, None
        except StopAsyncIteration:
            first = None
        await self._start(send)
        return True, first

    async def _refuse(self, error: OpenAIError, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an error raised before the response started as a plain HTTP error."""
        if self._late_headers is not None:
            error.headers.update(self._late_headers())
        await self.refusal(error)(scope, receive, send)

    def refusal(self, error: OpenAIError) -> Response:
        """The plain HTTP response for an error raised before the response started."""
        return error_response(error)

    async def _start(self, send: Send) -> None:
        """Send the response's head: 200, with the late headers as they are now."""
        if self._late_headers is not None:
            for name, value in self._late_headers().items():
                self.raw_headers.append((name.lower().encode(), value.encode()))
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class EventStreamResponse(AdmittedStream):
    """An event stream that starts with the first batch and stops when the client leaves."""

    media_type = "text/event-stream"
    #: What ends a stream that ran to its end.
    closing: bytes = DONE

    def error_event(self, error: OpenAIError) -> bytes:
        """The event that ends a stream with an error."""
        return frame(error.body())

    def __init__(
        self, events: Events, late_headers: Callable[[], Mapping[str, str]] | None = None
    ) -> None:
        super().__init__(events, HEADERS, late_headers)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        interval = keepalive_interval(scope)
        if interval:
            if not await self._open_with_pings(scope, receive, send, interval):
                return
        else:
            started, first = await self._first(scope, receive, send)
            if not started:
                return
            await send_body(send, frames(first if first is not None else [ADMITTED]))
        await self._rest(scope, send)

    async def _open_with_pings(
        self, scope: Scope, receive: Receive, send: Send, interval: float
    ) -> bool:
        """Send the stream's first PINGED_BATCHES batches, with a KEEPALIVE comment whenever
        ``interval`` seconds pass without anything sent. Returns False when the stream is over
        (refused with a plain HTTP error, ended by an error event, or out of events)."""
        pings = _Pings(self, send, interval)
        opened = False
        async with anyio.create_task_group() as group:
            group.start_soon(pings.run)
            try:
                opened = await self._opening(scope, receive, send, pings)
            finally:
                group.cancel_scope.cancel()
        return opened

    async def _opening(self, scope: Scope, receive: Receive, send: Send, pings: _Pings) -> bool:
        for count in range(PINGED_BATCHES):
            try:
                batch: Batch | None = await anext(self._source)
            except StopAsyncIteration:
                batch = None
            except OpenAIError as error:
                async with pings.lock:
                    pings.stopped = True
                    if not pings.started:
                        await self._refuse(error, scope, receive, send)
                    else:
                        await send_body(send, self.error_event(error), more_body=False)
                return False
            except Exception:
                async with pings.lock:
                    pings.stopped = True
                    if not pings.started:
                        raise
                    logger.exception("event stream failed")
                    await send_body(send, self.error_event(_FAILURE), more_body=False)
                return False
            async with pings.lock:
                if not pings.started:
                    await self._start(send)
                    pings.started = True
                if batch is None:  # no more events: end as an exhausted stream does
                    pings.stopped = True
                    opening = frames([ADMITTED]) if count == 0 else b""
                    await send_body(send, opening + self.closing, more_body=False)
                    return False
                pings.stopped = count == PINGED_BATCHES - 1
                await send_body(send, frames(batch))
                pings.sent()
        return True

    async def _rest(self, scope: Scope, send: Send) -> None:
        """Send the source's remaining batches, then [DONE] (or the error that ended it)."""
        direct: DirectBody | None = scope.get("extensions", {}).get(DIRECT_BODY)
        try:
            async for batch in self._source:
                body = frames(batch)
                if direct is None or not direct.write(body):
                    await send_body(send, body)
        except OpenAIError as error:
            await send_body(send, self.error_event(error), more_body=False)
            return
        except Exception:
            logger.exception("event stream failed")
            await send_body(send, self.error_event(_FAILURE), more_body=False)
            return
        await send_body(send, self.closing, more_body=False)


class _Pings:
    """The keep-alive comments of a stream's opening: KEEPALIVE once ``interval`` seconds have
    passed since anything was sent, starting the response (200) first if nothing had. Every
    send of the opening, the stream's own and these, holds ``lock``, so that none goes out
    half-way through another and none follows the stream's end."""

    def __init__(self, response: AdmittedStream, send: Send, interval: float) -> None:
        self.response = response
        self.send = send
        self.interval = interval
        self.lock = asyncio.Lock()
        #: The response's head has gone out.
        self.started = False
        #: No more comments: the opening is over.
        self.stopped = False
        self._last = anyio.current_time()

    def sent(self) -> None:
        """Something was just sent: the next comment is due ``interval`` seconds from now."""
        self._last = anyio.current_time()

    async def run(self) -> None:
        while True:
            await anyio.sleep(max(0.0, self._last + self.interval - anyio.current_time()))
            async with self.lock:
                if self.stopped:
                    return
                if anyio.current_time() - self._last < self.interval:
                    continue
                try:
                    if not self.started:
                        await self.response._start(self.send)
                        self.started = True
                    await send_body(self.send, KEEPALIVE)
                except OSError:  # the client left: the disconnect ends the stream
                    self.stopped = True
                    return
                self.sent()


async def send_body(send: Send, body: bytes, more_body: bool = True) -> None:
    """Send one part of a response's body through the ASGI chain."""
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    await wait_for_disconnect(receive)
    scope.cancel()
