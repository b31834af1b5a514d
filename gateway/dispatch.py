"""Running one call on one worker: lease, deadline, error mapping and client disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

import grpc
from llamagrid.client import AsyncInferenceClient
from llamagrid.v1 import inference_pb2 as pb
from starlette.requests import Request

from gateway.errors import OpenAIError, from_rpc_error
from gateway.pool import WorkerPool

T = TypeVar("T")

#: A call to make on the chosen worker's client, given the deadline in seconds.
Call = Callable[[AsyncInferenceClient, float], Awaitable[T]]


class Dispatcher:
    """Runs calls on the pool's workers and cancels them when the HTTP client leaves."""

    def __init__(self, pool: WorkerPool, timeout_s: float) -> None:
        self.pool = pool
        self.timeout_s = timeout_s

    async def unary(self, request: Request, model: str, call: Call[T]) -> T:
        """Run ``call`` on a worker serving ``model``; cancel it if the client disconnects."""
        async with self.pool.lease(model) as worker:
            try:
                return await until_disconnected(request, call(worker.client, self.timeout_s))
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from error

    async def generate(
        self, request: Request, proto: pb.GenerateRequest
    ) -> list[pb.GenerateResponse]:
        """Run a Generate call to its end and return every response."""

        async def collect(
            client: AsyncInferenceClient, timeout: float
        ) -> list[pb.GenerateResponse]:
            async with client.generate(proto, timeout=timeout) as stream:
                return [response async for response in stream]

        return await self.unary(request, proto.model, collect)

    async def stream(
        self, proto: pb.GenerateRequest
    ) -> AsyncGenerator[pb.GenerateResponse | None, None]:
        """Yield None once a worker has accepted the Generate call, then each response.

        Closing the generator (or cancelling the task iterating it) cancels the call.
        """
        async with (
            self.pool.lease(proto.model) as worker,
            worker.client.generate(proto, timeout=self.timeout_s) as stream,
        ):
            try:
                await stream.admitted()
                yield None
                async for response in stream:
                    yield response
            except grpc.aio.AioRpcError as error:
                raise from_rpc_error(error) from error


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it (and answering 499) if the HTTP client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
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


async def _disconnected(request: Request) -> None:
    """Return when the client has disconnected (the request body has already been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
