"""The worker pool: choosing a worker, and following health with a fake client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.policies import RouteRequest, least_loaded
from llamagrid.gateway.pool import PoolOptions, Worker, WorkerPool
from llamagrid.v1 import inference_pb2 as pb


class FakeClient:
    """Stands in for AsyncInferenceClient: health comes from a queue."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.health: asyncio.Queue[bool | Exception] = asyncio.Queue()
        self.models = ["m"]
        self.load: pb.GetLoadResponse | None = None
        self.watches = 0
        self.closed = False

    async def watch_health(self, service: str = "") -> AsyncIterator[bool]:
        assert service == ""
        self.watches += 1
        while True:
            item = await self.health.get()
            if isinstance(item, Exception):
                raise item
            yield item

    async def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[pb.ModelInfo(alias=a) for a in self.models])

    async def get_load(self, timeout: float | None = None) -> pb.GetLoadResponse:
        if self.load is None:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata()
            )
        return self.load

    async def close(self) -> None:
        self.closed = True


def worker(address: str, healthy: bool = True, in_flight: int = 0, started: int = 0) -> Worker:
    w = Worker(address, FakeClient(address), healthy, in_flight, started)  # type: ignore[arg-type]
    w.models = {"m": pb.ModelInfo(alias="m")}
    return w


def test_least_loaded_prefers_fewest_in_flight_then_fewest_started() -> None:
    a, b, c = (
        worker("a", in_flight=2),
        worker("b", in_flight=1, started=9),
        worker("c", in_flight=1),
    )
    assert least_loaded([a, b, c]) is c
    assert least_loaded([a]) is a


def test_least_loaded_weighs_reported_load_per_slot() -> None:
    busy, roomy = worker("busy"), worker("roomy", in_flight=2)
    # busy has nothing in flight from this gateway, but 3 of its 4 slots are used by others.
    busy.report(pb.GetLoadResponse(active_requests=3, queued_requests=0, slots=4))
    roomy.report(pb.GetLoadResponse(active_requests=2, queued_requests=0, slots=8))
    assert (busy.requests, roomy.requests) == (3, 2)
    assert least_loaded([busy, roomy]) is roomy
    # A queue counts as load too: 10 calls of other gateways besides this one's 2.
    roomy.report(pb.GetLoadResponse(active_requests=8, queued_requests=4, slots=8))
    assert roomy.requests == 12 and least_loaded([busy, roomy]) is busy
    # Calls this gateway started since the report count at once.
    busy.in_flight = 8
    assert busy.pressure == 11 / 4 and least_loaded([busy, roomy]) is roomy


def test_a_stale_report_follows_this_gateways_calls_since() -> None:
    w = worker("w", in_flight=3)
    w.report(pb.GetLoadResponse(active_requests=3, slots=4))
    assert w.requests == 3
    # Two of this gateway's calls end before the next report: the worker has 1, not 3.
    w.in_flight = 1
    assert w.requests == 1
    # The next report also counts another gateway's call.
    w.report(pb.GetLoadResponse(active_requests=2, slots=4))
    assert w.requests == 2
    w.report(None)
    assert w.requests == 1


async def test_pool_reads_worker_load_while_healthy() -> None:
    pool, clients = await started_pool("a:1", "b:2")
    clients["a:1"].load = pb.GetLoadResponse(active_requests=1, slots=4, kv_cells_used=10)
    for client in clients.values():
        client.health.put_nowait(True)
    await settle(lambda: pool.workers[0].load is not None)
    assert pool.workers[0].load == clients["a:1"].load
    assert pool.workers[1].load is None  # UNIMPLEMENTED: in-flight counts only
    clients["a:1"].health.put_nowait(False)
    await settle(lambda: pool.workers[0].load is None)
    await pool.close()


async def started_pool(*addresses: str) -> tuple[WorkerPool, dict[str, FakeClient]]:
    clients: dict[str, FakeClient] = {}

    def factory(address: str) -> Any:
        clients[address] = FakeClient(address)
        return clients[address]

    options = PoolOptions(retry_s=0.01, load_interval_s=0.01, policy="least_load")
    pool = WorkerPool(addresses, options, client_factory=factory)
    await pool.start()
    return pool, clients


async def settle(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


async def test_pick_and_lease() -> None:
    pool, clients = await started_pool("a:1", "b:2")
    with pytest.raises(OpenAIError) as caught:
        pool.select(RouteRequest("m"))
    assert caught.value.status_code == 503  # nobody healthy yet
    clients["a:1"].health.put_nowait(True)
    clients["b:2"].models = ["other"]
    clients["b:2"].health.put_nowait(True)
    await settle(lambda: all(w.healthy for w in pool.workers))
    assert list(pool.models()) == ["m", "other"]
    with pytest.raises(OpenAIError) as caught:
        pool.select(RouteRequest("nope"))
    assert (caught.value.status_code, caught.value.code) == (404, "model_not_found")
    assert pool.select(RouteRequest("other")).worker.address == "b:2"
    async with pool.lease(pool.select(RouteRequest("m")).worker) as first:
        assert first.address == "a:1" and first.in_flight == 1
    assert first.in_flight == 0 and first.started == 1
    await pool.close()
    assert all(c.closed for c in clients.values())


async def test_a_model_whose_workers_are_down_is_a_503_not_a_404() -> None:
    pool, clients = await started_pool("a:1", "b:2")
    clients["a:1"].health.put_nowait(True)
    clients["b:2"].models = ["other"]
    clients["b:2"].health.put_nowait(True)
    await settle(lambda: all(w.healthy for w in pool.workers))
    clients["b:2"].health.put_nowait(False)
    await settle(lambda: not pool.workers[1].healthy)
    with pytest.raises(OpenAIError) as caught:
        pool.select(RouteRequest("other"))
    assert caught.value.status_code == 503
    assert "other" not in pool.models()
    await pool.close()


async def test_a_broken_watch_marks_unhealthy_and_is_reopened() -> None:
    pool, clients = await started_pool("a:1")
    client = clients["a:1"]
    client.health.put_nowait(True)
    await settle(lambda: pool.any_healthy())
    broken = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gone"
    )
    client.health.put_nowait(broken)
    await settle(lambda: not pool.any_healthy() and client.watches == 2)
    client.models = ["new"]
    client.health.put_nowait(True)
    await settle(lambda: pool.any_healthy())
    assert list(pool.models()) == ["new"]  # refreshed when it turned healthy again
    await pool.close()


async def test_pool_without_workers() -> None:
    pool = WorkerPool([])
    await pool.start()
    assert not pool.any_healthy() and pool.models() == {}
    with pytest.raises(OpenAIError) as caught:
        pool.select(RouteRequest("m"))
    assert caught.value.status_code == 503
    await pool.close()
