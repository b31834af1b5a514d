"""Running one call on the workers: choice, lease, failover, deadline, metrics and disconnects.

Failover happens only while nothing has reached the HTTP client: a call that the chosen worker
could not take (a transport failure or UNAVAILABLE, or a full queue) is retried on another
worker after a short jittered pause, at most ``max_retries`` times. Once a call has been
accepted it is never replayed: a stream's later failure ends the stream, and a non-streamed
call whose worker fails after accepting it is a 502 (it may be a request that kills workers).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from starlette.requests import Request

from llamagrid.client import AsyncInferenceClient, GenerateStream
from llamagrid.errors import REASON_QUEUE_FULL, REASON_SESSION_NOT_FOUND, parse_details
from llamagrid.gateway.breaker import COUNTED
from llamagrid.gateway.errors import OpenAIError, from_rpc_error
from llamagrid.gateway.metrics import GatewayMetrics
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.pool import Worker, WorkerPool
from llamagrid.gateway.sse import ADMITTED, Admitted, wait_for_disconnect
from llamagrid.relay import RelayCall
from llamagrid.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A call to make on the chosen worker's client, given the deadline in seconds.
Call = Callable[[AsyncInferenceClient, float], Awaitable[T]]
#: Moves a session whose home worker is lost to another worker, from the gateway's copy of its
#: transcript: returns the new home's address and the session's id there.
Resume = Callable[[], Awaitable[tuple[str, str]]]
#: Told of each final message of a session turn (the gateway's copy of the transcript).
OnFinal = Callable[[pb.GenerateFinal], Awaitable[None]]


@dataclass
class Routed:
    """Where a call went, why, and after how many attempts: sent back as response headers."""

    worker: str = ""
    reason: str = ""
    attempts: int = 0
    tried: list[Worker] = field(default_factory=list)
    #: For a call on a server-side session: how to move it when its home is lost (once).
    resume: Resume | None = None
    #: For a session turn: told of the final message.
    on_final: OnFinal | None = None
    #: The session moved to another worker during this call.
    resumed: bool = False
    #: Seconds from dispatch to the first token of a stream (the console's recent requests).
    ttft_s: float | None = None
    #: The call's token counts, summed over its final messages (cached: from KV or host tier).
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    def headers(self) -> dict[str, str]:
        """``X-Llamagrid-Worker``, ``X-Llamagrid-Route`` and ``X-Llamagrid-Attempts``."""
        if not self.worker:
            return {}
        return {
            "X-Llamagrid-Worker": self.worker,
            "X-Llamagrid-Route": self.reason,
            "X-Llamagrid-Attempts": str(self.attempts),
        }


class Dispatcher:
    """Runs calls on the pool's workers and cancels them when the HTTP client leaves."""

    def __init__(
        self,
        pool: WorkerPool,
        timeout_s: float,
        metrics: GatewayMetrics,
        *,
        max_retries: int = 2,
        retry_backoff_s: float = 0.05,
        prefix_chars: int = 1024,
        relay: bool = True,
    ) -> None:
        self.pool = pool
        #: Generate calls go over each worker's Relay stream (else one gRPC call each).
        self.relay = relay
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        #: How much of a prompt the routing key holds (gateway.routing.prefix_key).
        self.prefix_chars = prefix_chars

    def _choose(
        self, route: RouteRequest, routed: Routed, last: grpc.aio.AioRpcError | None
    ) -> Worker:
        """The next worker to try; the last worker's error once no untried one is left."""
        try:
            choice = self.pool.select(route, exclude=routed.tried)
        except OpenAIError:
            if last is not None:
                raise from_rpc_error(last) from last
            raise
        reason = "session:resumed" if routed.resumed else choice.reason
        routed.worker, routed.reason = choice.worker.address, reason
        routed.attempts += 1
        routed.tried.append(choice.worker)
        self.metrics.routed.labels(route.model, choice.worker.address, reason).inc()
        return choice.worker

    async def _next_worker(
        self,
        route: RouteRequest,
        routed: Routed,
        last: grpc.aio.AioRpcError | None,
        proto: pb.GenerateRequest | None,
    ) -> tuple[Worker, RouteRequest]:
        """The next worker to try, and the route that chose it: a session whose home is lost
        is moved first (``_relocate``)."""
        while True:
            try:
                return self._choose(route, routed, last), route
            except OpenAIError as lost:
                moved = await self._relocate(route, routed, lost, proto)
                if moved is None:
                    raise
                route, last = moved, None

    async def _relocate(
        self,
        route: RouteRequest,
        routed: Routed,
        error: OpenAIError | grpc.aio.AioRpcError,
        proto: pb.GenerateRequest | None = None,
    ) -> RouteRequest | None:
        """A session's home is lost (gone from the fleet, unavailable, or restarted without the
        session): move the session once and return the route to its new home; None when it
        can't move (not a session call, already moved, or no copy of its transcript)."""
        if route.home is None or routed.resume is None or routed.resumed:
            return None
        if isinstance(error, grpc.aio.AioRpcError) and not _session_gone(error):
            return None
        try:
            address, worker_id = await routed.resume()
        except OpenAIError:  # no copy of the transcript
            if isinstance(error, grpc.aio.AioRpcError) and error.code() != UNAVAILABLE:
                raise from_rpc_error(error) from error  # the worker's own answer stands
            raise  # the worker can't be reached: the session is lost
        logger.info("session moved from %s to %s", route.home, address)
        routed.resumed = True
        if proto is not None:
            proto.session.session_id = worker_id
        return dataclasses.replace(route, home=address)

    async def _retry(
        self, route: RouteRequest, routed: Routed, worker: Worker, error: grpc.aio.AioRpcError
    ) -> bool:
        """Count the failure; pause and return True if the call should go to another worker."""
        code = error.code()
        if code in COUNTED:
            self.pool.breaker.failed(worker, code)
        else:
            self.pool.breaker.succeeded(worker)  # the worker answered: it is alive
        # A full queue (ErrorInfo reason QUEUE_FULL): another worker may have room.
        retryable = code == grpc.StatusCode.UNAVAILABLE or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and parse_details(error.trailing_metadata()).reason == REASON_QUEUE_FULL
        )
        if not retryable or routed.attempts > self.max_retries:
            return False
        logger.info("retrying %s: %s answered %s", route.model, worker.address, code.name)
        self.metrics.retries.labels(route.model, code.name).inc()
        pause = self.retry_backoff_s * (2 ** (routed.attempts - 1))
        await asyncio.sleep(random.uniform(pause / 2, pause))
        return True

    async def unary(
        self, request: Request, route: RouteRequest, call: Call[T], routed: Routed | None = None
    ) -> T:
        """Run ``call`` on a worker serving the model, failing over while nothing was sent;
        cancel it if the HTTP client disconnects."""
        return await until_disconnected(request, self._unary(route, call, routed or Routed()))

    async def _unary(
        self,
        route: RouteRequest,
        call: Call[T],
        routed: Routed,
        proto: pb.GenerateRequest | None = None,
    ) -> T:
        deadline = time.monotonic() + self.timeout_s
        last: grpc.aio.AioRpcError | None = None
        while True:
            worker, route = await self._next_worker(route, routed, last, proto)
            async with self.pool.lease(worker):
                try:
                    result = await call(worker.client, max(0.001, deadline - time.monotonic()))
                except grpc.aio.AioRpcError as error:
                    last = error
                except FailedAfterAdmission as failed:
                    self.pool.breaker.failed(worker, failed.error.code())
                    raise
                else:
                    self.pool.breaker.succeeded(worker)
                    return result
            moved = await self._relocate(route, routed, last, proto)
            if moved is not None:
                route, last = moved, None
                continue
            if not await self._retry(route, routed, worker, last):
                raise from_rpc_error(last) from last

    async def generate(
        self, request: Request, proto: pb.GenerateRequest, route: RouteRequest, routed: Routed
    ) -> list[pb.GenerateResponse]:
        """Run a Generate call to its end and return every response."""
        return (await self.generate_all(request, [(proto, route, routed)]))[0]

    async def generate_all(
        self, request: Request, calls: Sequence[tuple[pb.GenerateRequest, RouteRequest, Routed]]
    ) -> list[list[pb.GenerateResponse]]:
        """Run Generate calls at once (a completion's list of prompts), each to its end, and
        return every call's responses, in order. The first failure cancels the others and is
        raised; the HTTP client's disconnect cancels them all."""
        work = first_failure([self._collect(*call) for call in calls])
        return await until_disconnected(request, work)

    async def _collect(
        self, proto: pb.GenerateRequest, route: RouteRequest, routed: Routed
    ) -> list[pb.GenerateResponse]:
        """Run one Generate call to its end: every response (a final message per choice)."""

        async def collect(
            client: AsyncInferenceClient, timeout: float
        ) -> list[pb.GenerateResponse]:
            async with self._generate(client, proto, timeout) as stream:
                await stream.admitted()  # a failure before this is failed over as usual
                try:
                    return [response async for response in stream]
                except grpc.aio.AioRpcError as error:
                    raise FailedAfterAdmission(error) from error

        try:
            responses = await self._unary(route, collect, routed, proto)
        except FailedAfterAdmission as failed:
            raise failed.openai_error() from failed
        for response in responses:
            if response.HasField("final"):
                final = response.final
                self.count_usage(route.model, final.usage, routed)
                if routed.on_final is not None and final.HasField("session"):
                    await routed.on_final(final)
        return responses

    async def stream(
        self, proto: pb.GenerateRequest, route: RouteRequest, routed: Routed
    ) -> AsyncGenerator[Admitted | pb.GenerateResponse, None]:
        """Yield ADMITTED once a worker has accepted the Generate call, then each response.

        Closing the generator (or cancelling the task iterating it) cancels the call.
        """
        started = time.monotonic()
        last: grpc.aio.AioRpcError | None = None
        while True:
            worker, route = await self._next_worker(route, routed, last, proto)
            async with (
                self.pool.lease(worker),
                self._generate(worker.client, proto, self.timeout_s) as stream,
            ):
                try:
                    await stream.admitted()
                except grpc.aio.AioRpcError as error:
                    last = error
                else:
                    self.pool.breaker.succeeded(worker)
                    yield ADMITTED
                    timed = self._timed(stream, route.model, worker, started, routed)
                    async for response in timed:
                        yield response
                    return
            moved = await self._relocate(route, routed, last, proto)
            if moved is not None:
                route, last = moved, None
                continue
            if not await self._retry(route, routed, worker, last):
                raise from_rpc_error(last) from last

    def _generate(
        self, client: AsyncInferenceClient, proto: pb.GenerateRequest, timeout: float
    ) -> GenerateStream | RelayCall:
        """Start a Generate call: on the worker's Relay stream, or as a call of its own."""
        if self.relay:
            return client.relay(proto, timeout=timeout)
        return client.generate(proto, timeout=timeout)

    async def _timed(
        self,
        stream: AsyncIterator[pb.GenerateResponse],
        model: str,
        worker: Worker,
        started: float,
        routed: Routed,
    ) -> AsyncGenerator[pb.GenerateResponse, None]:
        """The accepted stream's responses, timed; a failure ends it with an error."""
        ttft, itl = self.metrics.ttft.labels(model), self.metrics.itl.labels(model)
        previous: float | None = None
        try:
            async for response in stream:
                if response.HasField("chunk"):
                    now = time.monotonic()
                    if previous is None:
                        routed.ttft_s = now - started
                        ttft.observe(routed.ttft_s)
                    else:
                        itl.observe(now - previous)
                    previous = now
                elif response.HasField("final"):
                    self.count_usage(model, response.final.usage, routed)
                    if routed.on_final is not None and response.final.HasField("session"):
                        await routed.on_final(response.final)
                yield response
        except grpc.aio.AioRpcError as error:
            self.pool.breaker.failed(worker, error.code())
            self.metrics.stream_errors.labels(model).inc()
            raise from_rpc_error(error) from error

    def count_usage(self, model: str, usage: pb.Usage, routed: Routed | None = None) -> None:
        """Add a response's token counts to the metrics (and to the call's, given it)."""
        if routed is not None:
            routed.prompt_tokens += usage.prompt_tokens
            routed.cached_tokens += usage.cached_tokens + usage.restored_tokens
            routed.completion_tokens += usage.completion_tokens
        self.metrics.prompt_tokens.labels(model).inc(usage.prompt_tokens)
        self.metrics.completion_tokens.labels(model).inc(usage.completion_tokens)
        self.metrics.cached_tokens.labels(model).inc(usage.cached_tokens + usage.restored_tokens)
        self.metrics.llamacpp.count(model, usage)


def _session_gone(error: grpc.aio.AioRpcError) -> bool:
    """Whether a worker answered that it does not hold the session (it restarted), or could not
    be reached at all."""
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return True
    reason = parse_details(error.trailing_metadata()).reason
    return error.code() == grpc.StatusCode.NOT_FOUND and reason == REASON_SESSION_NOT_FOUND


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class FailedAfterAdmission(Exception):
    """A call failed after the worker had accepted it: it is never replayed on another worker.

    A request whose worker died while serving it may be what killed the worker (a poison
    request); replaying it would take the next worker down too. The client gets a 502 instead.
    """

    def __init__(self, error: grpc.aio.AioRpcError) -> None:
        super().__init__(error.details())
        self.error = error

    def openai_error(self) -> OpenAIError:
        """A 502 when the worker went away mid-request, else the status's own error."""
        if self.error.code() != grpc.StatusCode.UNAVAILABLE:
            return from_rpc_error(self.error)
        message = (
            "The worker serving this request failed before it finished. The request was not "
            "retried on another worker, in case it is what made the worker fail."
        )
        return OpenAIError(502, message, "server_error", code="worker_failed")


async def first_failure(work: Sequence[Awaitable[T]]) -> list[T]:
    """Await every one of ``work`` at once; the first to fail cancels the others, and its error
    is raised."""
    tasks = [asyncio.ensure_future(item) for item in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and answering 499) if the HTTP client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        raise OpenAIError(499, "The client closed the request.", "request_cancelled")
    return task.result()
