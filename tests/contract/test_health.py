"""GET /health follows the workers' grpc.health.v1 status."""

from __future__ import annotations

import httpx

from llamagrid.gateway.app import create_app
from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import eventually, running_gateway, serve
from tests.contract.fake_worker import MODEL, FakeWorker


async def test_health_is_503_until_the_worker_serves_then_200() -> None:
    worker = FakeWorker()
    await worker.start(serving=False)
    try:
        async with running_gateway(worker) as gw, gw.http() as http:
            response = await http.get("/health")
            assert response.status_code == 503
            # llama-server's body: scripts that wait for a model to load read it
            assert response.json() == {
                "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            }
            chat = await http.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            )
            assert chat.status_code == 503
            assert worker.generate_requests() == []

            await worker.set_serving(True)

            async def healthy() -> bool:
                return (await http.get("/health")).status_code == 200

            await eventually(healthy)
            assert (await http.get("/health")).json() == {"status": "ok"}
            models = (await http.get("/v1/models")).json()["data"]
            assert [m["id"] for m in models] == [MODEL]

            await worker.set_serving(False)

            async def unhealthy() -> bool:
                return (await http.get("/health")).status_code == 503

            await eventually(unhealthy)
            after = (await http.get("/health")).json()["error"]
            assert after["message"] == "No worker is serving."  # no longer "loading"
            assert (after["code"], after["type"]) == (503, "unavailable_error")
    finally:
        await worker.stop()


async def test_health_recovers_after_the_worker_restarts() -> None:
    worker = FakeWorker()
    await worker.start()
    async with running_gateway(worker) as gw, gw.http() as http:
        await eventually(gw.pool.any_healthy)
        address = worker.address
        await worker.stop()
        await eventually(lambda: not gw.pool.any_healthy())
        assert (await http.get("/health")).status_code == 503

        restarted = FakeWorker(models=("other-model",))
        port = int(address.rpartition(":")[2])
        await restarted.start_on(port)
        try:
            await eventually(gw.pool.any_healthy)
            models = (await http.get("/v1/models")).json()["data"]
            assert [m["id"] for m in models] == ["other-model"]  # the list was refreshed
        finally:
            await restarted.stop()


async def test_health_without_workers_is_503() -> None:
    app = create_app(GatewaySettings(), WorkerPool([]))
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.get("/health")
    assert response.status_code == 503
