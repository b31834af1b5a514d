"""The Relay RPC: many Generate calls over one stream, each served by the service's own Generate.

A gateway relays every token its workers produce. Over plain Generate calls that costs one gRPC
message, one read and one wake-up per token per request. A Relay stream carries every call the
gateway has on a worker, and each RelayResponse holds everything produced since the previous
one: with the engine handing over a whole step at once (``engine.channel.WakeGate``), one message
carries the step's token of every running sequence.

Each call runs the service's ``Generate`` method with a ``CallContext`` standing in for its
ServicerContext, so admission, errors (with their rich details), cancellation and deadlines mean
exactly what they mean for a Generate call. The writer sends one message per wake-up with every
pending event; a call that already has two events waiting for the writer pauses until they are
sent, so a reader that falls behind makes the engine merge tokens, as with Generate, instead of
growing a queue here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, NoReturn

import grpc

from llamagrid.errors import DETAILS_TRAILER, status_code
from llamagrid.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)

#: The service's Generate method: a request and a context in, responses out.
GenerateMethod = Callable[[pb.GenerateRequest, Any], AsyncIterator[pb.GenerateResponse]]
Metadata = Sequence[tuple[str, str | bytes]]

#: The streams being served. asyncio holds tasks weakly: a call task waiting on a future that
#: only its own stream references (the writer's "sent" future) would otherwise be garbage that
#: the collector finalizes mid-call, cancelling a running generation.
_SERVING: set[RelayStream] = set()


class _Aborted(Exception):
    """A call's Generate ended it with a status (``context.abort``)."""

    def __init__(self, code: grpc.StatusCode, details: str, metadata: Metadata) -> None:
        super().__init__(details)
        self.code, self.details, self.metadata = code, details, metadata


class CallContext:
    """The part of a ServicerContext that Generate implementations use, for one Relay call."""

    def __init__(
        self, relay: RelayStream, tag: int, parent: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        self._relay = relay
        self._tag = tag
        self._parent = parent
        self._trailing: Metadata = ()
        self._admitted = False

    async def send_initial_metadata(self, metadata: Metadata) -> None:
        """Admission: the call's first event."""
        if not self._admitted:
            self._admitted = True
            await self._relay.emit(self._tag, pb.RelayEvent(tag=self._tag, admitted=True))

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn:
        """End the call with a status."""
        raise _Aborted(code, details, trailing_metadata)

    async def abort_with_status(self, status: grpc.Status) -> NoReturn:
        """End the call with a status built by grpc_status."""
        raise _Aborted(status.code, status.details, status.trailing_metadata)

    def set_trailing_metadata(self, metadata: Metadata) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> Metadata:
        return self._trailing

    def invocation_metadata(self) -> Any:
        return self._parent.invocation_metadata()

    def peer(self) -> str:
        return self._parent.peer()

    def time_remaining(self) -> float | None:
        return self._parent.time_remaining()


def relay_error(code: grpc.StatusCode, message: str, metadata: Metadata = ()) -> pb.RelayError:
    """A call's error event body: the code, the message and the status details, if any."""
    details = next((v for k, v in metadata if k == DETAILS_TRAILER), b"")
    if isinstance(details, str):
        details = details.encode()
    return pb.RelayError(code=code.value[0], message=message, status=details)


class RelayStream:
    """One Relay stream: the calls it runs and the events waiting to be sent."""

    def __init__(
        self,
        generate: GenerateMethod,
        context: grpc.aio.ServicerContext[Any, Any],
        max_calls: int,
        on_end: Callable[[grpc.StatusCode], None] = lambda code: None,
    ) -> None:
        self._generate = generate
        #: Told how each call ended (for the worker's per-method call counts).
        self._on_end = on_end
        self._context = context
        self._max_calls = max_calls
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._outbox: list[pb.RelayEvent] = []
        #: Events of each call in the outbox.
        self._pending: dict[int, int] = {}
        self._ready = asyncio.Event()
        self._sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Future[None] | None = None

    async def emit(self, tag: int, event: pb.RelayEvent) -> None:
        """Queue an event for the next message; pause while the call has two waiting."""
        self._outbox.append(event)
        self._ready.set()
        waiting = self._pending[tag] = self._pending.get(tag, 0) + 1
        if waiting >= 2:
            await asyncio.shield(self._sent)

    async def run(
        self, requests: AsyncIterator[pb.RelayRequest]
    ) -> AsyncIterator[pb.RelayResponse]:
        """Serve the stream: the messages to send, until the caller half-closes and every call
        has ended. Cancelling it cancels every call."""
        reader = asyncio.ensure_future(self._read(requests))
        self._reader = reader
        _SERVING.add(self)
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                if self._outbox:
                    events, self._outbox, self._pending = self._outbox, [], {}
                    sent, self._sent = self._sent, asyncio.get_running_loop().create_future()
                    yield pb.RelayResponse(events=events)
                    sent.set_result(None)
                if reader.done() and not self._calls and not self._outbox:
                    reader.result()  # raises what ended the reading, if anything did
                    return
        finally:
            _SERVING.discard(self)
            reader.cancel()
            for task in self._calls.values():
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(reader, *self._calls.values(), return_exceptions=True)

    async def _read(self, requests: AsyncIterator[pb.RelayRequest]) -> None:
        try:
            async for request in requests:
                action = request.WhichOneof("action")
                if action == "start":
                    self._start(request.start)
                elif action == "cancel":
                    task = self._calls.get(request.cancel)
                    if task is not None:
                        task.cancel()
        finally:
            self._ready.set()  # the writer checks whether the stream is over

    def _start(self, start: pb.RelayStart) -> None:
        tag = start.tag
        if tag in self._calls:
            self._refuse(tag, f"tag {tag} is already running on this stream")
        elif len(self._calls) >= self._max_calls:
            self._refuse(tag, f"this stream already runs {self._max_calls} calls, its maximum")
        else:
            timeout = start.timeout_ms / 1000 if start.timeout_ms else None
            task = asyncio.ensure_future(self._call(tag, start.request, timeout))
            self._calls[tag] = task
            task.add_done_callback(lambda _: self._ended(tag))

    def _refuse(self, tag: int, message: str) -> None:
        error = relay_error(grpc.StatusCode.FAILED_PRECONDITION, message)
        self._outbox.append(pb.RelayEvent(tag=tag, error=error))
        self._ready.set()

    def _ended(self, tag: int) -> None:
        self._calls.pop(tag, None)
        self._ready.set()

    async def _call(self, tag: int, request: pb.GenerateRequest, timeout: float | None) -> None:
        context = CallContext(self, tag, self._context)
        responses = self._generate(request, context)
        try:
            async with asyncio.timeout(timeout), contextlib.aclosing(responses):  # type: ignore[type-var]
                async for response in responses:
                    await self.emit(tag, pb.RelayEvent(tag=tag, response=response))
        except _Aborted as aborted:
            error = relay_error(aborted.code, aborted.details, aborted.metadata)
        except TimeoutError:
            error = relay_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        except asyncio.CancelledError:
            self._on_end(grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            log.exception("relay call %d failed", tag)
            error = relay_error(grpc.StatusCode.UNKNOWN, "Unexpected error in the worker")
        else:
            self._on_end(grpc.StatusCode.OK)
            return
        self._on_end(status_code(error.code))
        await self.emit(tag, pb.RelayEvent(tag=tag, error=error))


async def serve_relay(
    generate: GenerateMethod,
    requests: AsyncIterator[pb.RelayRequest],
    context: grpc.aio.ServicerContext[Any, Any],
    max_calls: int,
    on_end: Callable[[grpc.StatusCode], None] = lambda code: None,
) -> AsyncIterator[pb.RelayResponse]:
    """Serve one Relay stream with ``generate`` running each call."""
    async for message in RelayStream(generate, context, max_calls, on_end).run(requests):
        yield message
