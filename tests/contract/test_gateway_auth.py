"""Who may call the gateway: several keys, a key file, and /metrics and the docs behind a key or
off, on a real uvicorn in front of the fake worker."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import Gateway, eventually, serve
from tests.contract.fake_worker import MODEL, FakeWorker

DOCS = ("/openapi.json", "/docs", "/redoc")


@contextlib.asynccontextmanager
async def gateway_with(worker: FakeWorker, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway on these settings in front of the fake worker, once it serves."""
    gateway_settings = GatewaySettings(workers=[worker.address], health_retry_s=0.05, **settings)
    pool = create_pool(gateway_settings)
    async with serve(create_app(gateway_settings, pool)) as url:
        gw = Gateway(url, pool, worker)
        await eventually(pool.any_healthy)
        yield gw


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_each_of_several_keys_is_accepted_and_any_other_is_refused(
    worker: FakeWorker,
) -> None:
    async with gateway_with(worker, api_key="key-one,key-two") as gw:
        for key in ("key-one", "key-two"):
            models = await gw.openai(api_key=key).models.list()
            assert [m.id for m in models.data] == [MODEL]
        for key in ("key-three", "key-one,key-two", "key-on", "KEY-ONE"):
            with pytest.raises(openai.AuthenticationError) as caught:
                await gw.openai(api_key=key).models.list()
            assert caught.value.code == "invalid_api_key"
        async with gw.http() as http:
            assert (await http.get("/v1/models")).status_code == 401  # no header at all


async def test_keys_from_a_key_file_are_accepted_beside_the_flag_keys(
    worker: FakeWorker, tmp_path: Path
) -> None:
    path = tmp_path / "api-keys"
    path.write_text("# team A\nfile-key-a\n\n# team B\nfile-key-b\n")
    async with gateway_with(worker, api_key="flag-key", api_key_file=str(path)) as gw:
        for key in ("flag-key", "file-key-a", "file-key-b"):
            reply = await gw.openai(api_key=key).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}]
            )
            assert reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            await gw.openai(api_key="# team A").models.list()


async def test_with_a_key_metrics_and_docs_need_it_by_default(worker: FakeWorker) -> None:
    async with gateway_with(worker, api_key="the-key") as gw, gw.http() as http:
        for path in ("/metrics", *DOCS):
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "invalid_api_key"
            assert (await http.get(path, headers=bearer("wrong"))).status_code == 401, path
            assert (await http.get(path, headers=bearer("the-key"))).status_code == 200, path
        schema = (await http.get("/openapi.json", headers=bearer("the-key"))).json()
        assert "/v1/chat/completions" in schema["paths"]
        metrics = await http.get("/metrics", headers=bearer("the-key"))
        assert "llamagrid_gateway_requests_total" in metrics.text
        for path in ("/health", "/livez"):  # probes never need a key
            assert (await http.get(path)).status_code == 200, path


async def test_metrics_and_docs_can_be_opened_explicitly(worker: FakeWorker) -> None:
    async with (
        gateway_with(worker, api_key="the-key", metrics_access="open", docs_access="open") as gw,
        gw.http() as http,
    ):
        for path in ("/metrics", *DOCS):
            assert (await http.get(path)).status_code == 200, path
        assert (await http.get("/v1/models")).status_code == 401  # the API itself stays closed


async def test_metrics_and_docs_can_be_turned_off(worker: FakeWorker) -> None:
    async with (
        gateway_with(worker, api_key="the-key", metrics_access="off", docs_access="off") as gw,
        gw.http(headers=bearer("the-key")) as http,
    ):
        for path in ("/metrics", *DOCS):
            assert (await http.get(path)).status_code == 404, path
        assert (await http.get("/v1/models")).status_code == 200


async def test_without_a_key_everything_answers_as_before(worker: FakeWorker) -> None:
    async with gateway_with(worker) as gw, gw.http() as http:
        for path in ("/metrics", *DOCS, "/v1/models", "/health"):
            assert (await http.get(path)).status_code == 200, path
