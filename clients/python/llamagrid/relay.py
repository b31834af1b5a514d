"""Many Generate calls over one Relay stream: the client side, for gateways and proxies.

``RelayConnection.generate`` returns a ``RelayCall`` that behaves like ``client.GenerateStream``:
``admitted()``, iteration over the responses, ``cancel()``/``aclose()`` and ``async with``. A
call's error is raised as a ``grpc.aio.AioRpcError`` carrying the same code, message and details
(``llamagrid.errors.parse_details`` reads them) as the Generate call would have ended with.

One stream is opened on first use and shared by every call. When it breaks, every call still
running on it fails with the stream's status (UNAVAILABLE when the worker went away), and the
next call opens a new stream. A worker that has no Relay method (UNIMPLEMENTED) is served by
plain Generate calls from then on, transparently.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType

import grpc

from llamagrid.errors import DETAILS_TRAILER, status_code
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


def _error(code: grpc.StatusCode, message: str, status: bytes = b"") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata((DETAILS_TRAILER, status)) if status else grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message, None)


class RelayCall(AsyncIterator[pb.GenerateResponse]):
    """One Generate call running on a Relay stream."""

    def __init__(
        self,
        connection: RelayConnection,
        tag: int,
        request: pb.GenerateRequest,
        timeout: float | None,
    ) -> None:
        self._connection = connection
        self._tag = tag
        self._request = request
        self._timeout = timeout
        self._responses: deque[pb.GenerateResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: grpc.aio.AioRpcError | None = None
        self._finished = False
        #: Final messages still to come: one per choice (GenerateRequest.n).
        self._finals_left = max(1, request.n)
        self._cancelled = False
        #: The client-side deadline's timer, cancelled when the call ends.
        self._timer: asyncio.TimerHandle | None = None
        #: The plain Generate call serving this call when the worker has no Relay method.
        self._fallback: grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse] | None
        self._fallback = None

    # Called by the connection's reader.
    def _event(self, event: pb.RelayEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "response":
            self._responses.append(event.response)
            if event.response.HasField("final"):
                self._finals_left -= 1
                if self._finals_left <= 0:
                    self._end()
        elif kind == "admitted":
            if not self._admitted.done():
                self._admitted.set_result(None)
        elif kind == "error":
            code = status_code(event.error.code)
            self._fail(_error(code, event.error.message, event.error.status))
        self._wake()

    def _fail(self, error: grpc.aio.AioRpcError) -> None:
        if self._finished:
            return
        self._error = error
        if not self._admitted.done():
            self._admitted.set_exception(error)
            self._admitted.exception()  # retrieved: no "never retrieved" warning
        self._end()
        self._wake()

    def _end(self) -> None:
        self._finished = True
        self._connection._forget(self._tag)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _serve_by_generate(self, stub: pb_grpc.InferenceServiceAsyncStub) -> None:
        """The worker has no Relay method: run this call as a plain Generate call."""
        self._fallback = stub.Generate(self._request, timeout=self._timeout)

    # The GenerateStream interface.
    def __aiter__(self) -> RelayCall:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        if self._fallback is not None:
            message = await self._fallback.read()
            if isinstance(message, pb.GenerateResponse):
                return message
            raise StopAsyncIteration
        while True:
            if self._responses:
                return self._responses.popleft()
            if self._error is not None:
                raise self._error
            if self._finished:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self.cancel()
                raise

    async def admitted(self) -> None:
        """Return once the worker has accepted the call; raise its error if it refused it."""
        if self._fallback is None:
            try:
                await asyncio.shield(self._admitted)
            except asyncio.CancelledError:
                self.cancel()
                raise
            except grpc.aio.AioRpcError as error:
                # UNIMPLEMENTED from a worker with no Relay method: the call moved to Generate.
                if self._fallback is None or error.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
        if self._fallback is not None:
            await self._fallback.initial_metadata()
            if self._fallback.done() and await self._fallback.code() != grpc.StatusCode.OK:
                await self._fallback.read()  # raises the call's error

    def cancel(self) -> bool:
        """Cancel the call; False when it had already finished."""
        if self._fallback is not None:
            return self._fallback.cancel()
        if self._finished:
            return False
        self._cancelled = True
        self._fail(_error(grpc.StatusCode.CANCELLED, "Locally cancelled"))
        self._connection._cancel(self._tag)
        return True

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        if self._fallback is not None:
            return self._fallback.cancelled()
        return self._cancelled

    async def aclose(self) -> None:
        """Cancel the call unless it has finished."""
        self.cancel()

    async def __aenter__(self) -> RelayCall:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()


class RelayConnection:
    """One Relay stream on a channel, opened on first use, shared by every call."""

    def __init__(self, stub: pb_grpc.InferenceServiceAsyncStub) -> None:
        self._stub = stub
        self._tags = itertools.count(1)
        self._calls: dict[int, RelayCall] = {}
        self._outbox: asyncio.Queue[pb.RelayRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        #: False once the worker answered UNIMPLEMENTED: calls then use plain Generate.
        self.supported = True

    @property
    def calls(self) -> int:
        """Calls running on the stream."""
        return len(self._calls)

    def generate(self, request: pb.GenerateRequest, timeout: float | None = None) -> RelayCall:
        """Start a Generate call on the stream; iterate the result for its responses."""
        call = RelayCall(self, next(self._tags), request, timeout)
        if not self.supported:
            call._serve_by_generate(self._stub)
            return call
        outbox = self._open()
        self._calls[call._tag] = call
        start = pb.RelayStart(tag=call._tag, request=request)
        if timeout is not None:
            start.timeout_ms = max(1, min(int(timeout * 1000), 2**32 - 1))
            call._timer = asyncio.get_running_loop().call_later(timeout, self._expire, call)
        outbox.put_nowait(pb.RelayRequest(start=start))
        return call

    def _open(self) -> asyncio.Queue[pb.RelayRequest | None]:
        if self._outbox is None:
            outbox: asyncio.Queue[pb.RelayRequest | None] = asyncio.Queue()
            self._outbox = outbox
            stream = self._stub.Relay(_drain(outbox))
            self._reader = asyncio.ensure_future(self._read(stream, outbox))
        return self._outbox

    async def _read(
        self,
        stream: grpc.aio.StreamStreamCall[pb.RelayRequest, pb.RelayResponse],
        outbox: asyncio.Queue[pb.RelayRequest | None],
    ) -> None:
        error = _error(grpc.StatusCode.CANCELLED, "the relay connection was closed")
        try:
            async for message in stream:
                for event in message.events:
                    call = self._calls.get(event.tag)
                    if call is not None:
                        call._event(event)
            error = _error(grpc.StatusCode.UNAVAILABLE, "the worker ended the relay stream")
        except grpc.aio.AioRpcError as failed:
            error = failed
        except Exception as failed:  # a bug here must not leave calls waiting forever
            log.exception("the relay stream's reader failed")
            error = _error(grpc.StatusCode.INTERNAL, f"the relay stream failed: {failed!r}")
        finally:
            stream.cancel()
            if self._outbox is outbox:  # the next call opens a new stream
                self._outbox, self._reader = None, None
            calls, self._calls = self._calls, {}
            unimplemented = error.code() == grpc.StatusCode.UNIMPLEMENTED
            if unimplemented:
                log.info("the worker has no Relay method: using Generate calls")
                self.supported = False
            for call in calls.values():
                if unimplemented and not call._admitted.done():
                    call._serve_by_generate(self._stub)
                call._fail(error)

    def _expire(self, call: RelayCall) -> None:
        """The client-side deadline: the worker enforces the same one, this is the backstop."""
        if not call._finished and call._fallback is None:
            call._fail(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            self._cancel(call._tag)

    def _cancel(self, tag: int) -> None:
        self._calls.pop(tag, None)
        if self._outbox is not None:
            self._outbox.put_nowait(pb.RelayRequest(cancel=tag))

    def _forget(self, tag: int) -> None:
        self._calls.pop(tag, None)

    async def close(self) -> None:
        """End the stream; calls still running on it fail with CANCELLED."""
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        reader = self._reader
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _drain(
    outbox: asyncio.Queue[pb.RelayRequest | None],
) -> AsyncIterator[pb.RelayRequest]:
    """The stream's requests: whatever the calls put in the outbox, until None."""
    while (request := await outbox.get()) is not None:
        yield request
