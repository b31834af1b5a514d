"""The gateway runs Generate calls over one Relay stream per worker, and copes without one."""

from __future__ import annotations

import asyncio

import grpc

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import AUTH_HEADERS, Gateway, eventually, running_gateway, serve
from tests.contract.fake_worker import MODEL, FakeWorker

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def _chat(gateway: Gateway, stream: bool) -> str:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        response = await http.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert response.status_code == 200, response.text
        return response.text


async def test_every_call_shares_one_relay_stream(gateway: Gateway) -> None:
    texts = await asyncio.gather(*(_chat(gateway, stream=i % 2 == 0) for i in range(8)))
    assert all("world" in text for text in texts)
    assert gateway.worker.relay_streams == 1
    assert len(gateway.worker.generate_requests()) == 8
    # Calls on the stream are leased and released like any other.
    await eventually(lambda: gateway.pool.workers[0].in_flight == 0)


async def test_a_worker_without_relay_is_served_by_generate_calls(worker: FakeWorker) -> None:
    worker.relay = False
    async with running_gateway(worker) as gateway:
        await eventually(gateway.pool.any_healthy)
        first = await _chat(gateway, stream=True)
        assert "world" in first
        assert "world" in await _chat(gateway, stream=False)
    assert worker.relay_streams == 0
    assert len(worker.generate_requests()) == 2


async def test_no_relay_setting_makes_one_call_per_request(worker: FakeWorker) -> None:
    settings = GatewaySettings(workers=[worker.address], relay=False, health_retry_s=0.05)
    pool = create_pool(settings)
    async with serve(create_app(settings, pool)) as url:
        gateway = Gateway(url, pool, worker)
        await eventually(pool.any_healthy)
        assert "world" in await _chat(gateway, stream=True)
    assert worker.relay_streams == 0


async def test_a_lost_worker_fails_every_call_on_its_stream_and_the_next_call_reconnects(
    worker: FakeWorker,
) -> None:
    worker.script.pieces = [f"t{i} " for i in range(1000)]
    worker.script.delay_s = 0.01
    async with AsyncInferenceClient(worker.address) as client:
        request = pb.GenerateRequest(model=MODEL, prompt="x")
        calls = [client.relay(request, timeout=10) for _ in range(3)]
        for call in calls:
            await call.admitted()
            await anext(call)
        port = int(worker.address.rsplit(":", 1)[1])
        await worker.stop()
        for call in calls:
            try:
                async for _ in call:
                    pass
            except grpc.aio.AioRpcError as error:
                assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            else:
                raise AssertionError("a call outlived its worker")
        await worker.start_on(port)
        worker.script.pieces = ["a", "b"]
        worker.script.delay_s = 0
        fresh = client.relay(request, timeout=10)
        await fresh.admitted()
        assert [r.chunk.text async for r in fresh if r.HasField("chunk")] == ["a", "b"]
        assert worker.relay_streams == 2


async def test_a_refused_start_reaches_only_its_call(worker: FakeWorker) -> None:
    async with AsyncInferenceClient(worker.address) as client:
        good = client.relay(pb.GenerateRequest(model=MODEL, prompt="x"), timeout=10)
        bad = client.relay(pb.GenerateRequest(model="nope", prompt="x"), timeout=10)
        try:
            await bad.admitted()
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("an unknown model was admitted")
        await good.admitted()
        assert "".join([r.chunk.text async for r in good if r.HasField("chunk")]) == (
            "Hello, world!"
        )
