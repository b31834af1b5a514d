"""/lora-adapters on the gateway in front of the fake worker: the API key, and bodies the
gateway refuses before any worker is asked (the scales themselves are the worker's to judge:
tests/integration/test_lora.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import Gateway, eventually, serve
from tests.contract.fake_worker import MODEL, FakeWorker


@contextlib.asynccontextmanager
async def gateway_with(worker: FakeWorker, **settings: Any) -> AsyncIterator[Gateway]:
    gateway_settings = GatewaySettings(workers=[worker.address], health_retry_s=0.05, **settings)
    pool = create_pool(gateway_settings)
    async with serve(create_app(gateway_settings, pool)) as url:
        gw = Gateway(url, pool, worker)
        await eventually(pool.any_healthy)
        yield gw


async def test_the_lora_routes_need_the_api_key(worker: FakeWorker) -> None:
    async with gateway_with(worker, api_key="the-key") as gw, gw.http() as http:
        assert (await http.get("/lora-adapters")).status_code == 401
        reply = await http.post("/lora-adapters", json=[{"id": 0, "scale": 0.5}])
        assert reply.status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"id": 0, "scale": 1.0},  # not a list
        [{"id": -1, "scale": 1.0}],
        [{"id": 2**32, "scale": 1.0}],  # beyond the wire's uint32
        [{"id": 0}],
        [{"id": 0, "scale": "high"}],
        [{"id": 0, "scale": 1.0, "extra": True}],
        [[[[[0]]]]],
    ],
)
async def test_a_malformed_body_is_a_400_in_llama_servers_shape(
    worker: FakeWorker, body: Any
) -> None:
    async with gateway_with(worker) as gw, gw.http() as http:
        reply = await http.post("/lora-adapters", json=body)
        assert reply.status_code == 400, reply.text
        error = reply.json()["error"]
        assert error["code"] == 400 and error["message"]


async def test_an_unknown_model_is_a_404_and_the_lora_field_an_empty_list_a_400(
    worker: FakeWorker,
) -> None:
    async with gateway_with(worker, strict_model_names=True) as gw, gw.http() as http:
        reply = await http.get("/lora-adapters", params={"model": "no-such-model"})
        assert reply.status_code == 404 and reply.json()["error"]["code"] == 404
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "lora": []}
        reply = await http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "lora"
