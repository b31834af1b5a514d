"""The console's HTTP side against the fake worker: the fleet endpoint's JSON and its key, the
page and its files with their security headers, and --no-console.

The browser side (the page itself, on the real model) is tests/integration/test_console.py.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest

from llamagrid.errors import REASON_QUEUE_FULL
from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.console.activity import BUCKET_S, BUCKETS, RECENT
from llamagrid.gateway.console.schemas import Fleet
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import API_KEY, AUTH_HEADERS, Gateway, eventually, serve
from tests.contract.fake_worker import CACHED_TOKENS, MODEL, PROMPT_TOKENS, FakeWorker

MESSAGES: list[Any] = [{"role": "user", "content": "Hi"}]
FLEET = "/v1/console/fleet"


@contextlib.asynccontextmanager
async def gateway_with(worker: FakeWorker, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway on these settings (the API key sk-test) in front of the fake worker."""
    gateway_settings = GatewaySettings(
        workers=[worker.address], api_key=API_KEY, health_retry_s=0.05, **settings
    )
    pool = create_pool(gateway_settings)
    async with serve(create_app(gateway_settings, pool)) as url:
        gw = Gateway(url, pool, worker)
        await eventually(pool.any_healthy)
        yield gw


async def fleet_json(gateway: Gateway) -> dict[str, Any]:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        reply = await http.get(FLEET)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def test_the_fleet_endpoint_shows_each_worker_and_where_each_request_went(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    async for _ in stream:
        pass
    await client.chat.completions.create(model=MODEL, messages=MESSAGES)

    body = await fleet_json(gateway)
    Fleet.model_validate(body)  # the documented shape, no field missing
    address = gateway.worker.address
    assert body["object"] == "console.fleet"
    assert body["models"] == [{"id": MODEL, "policy": "prefix_affinity", "workers": [address]}]
    (worker,) = body["workers"]
    assert worker["address"] == address and worker["models"] == [MODEL]
    assert (worker["state"], worker["healthy"], worker["breaker"]) == ("up", True, "closed")
    assert worker["requests_started"] == 2 and worker["in_flight"] == 0
    # The fake worker has no GetLoad: what only a load report says is unknown, not zero.
    assert worker["slots_busy"] is None and worker["kv_cells_total"] is None
    assert (worker["prompt_tokens"], worker["cached_tokens"]) == (
        2 * PROMPT_TOKENS,
        2 * CACHED_TOKENS,
    )
    assert worker["cached_ratio"] == pytest.approx(CACHED_TOKENS / PROMPT_TOKENS)

    plain, streamed = body["recent"]  # newest first
    for request in (plain, streamed):
        assert request["route"] == "/v1/chat/completions" and request["method"] == "POST"
        assert (request["model"], request["status"], request["worker"]) == (MODEL, 200, address)
        assert request["reason"].startswith("prefix_affinity:")  # X-Llamagrid-Route
        assert request["attempts"] == 1
        assert (request["prompt_tokens"], request["cached_tokens"]) == (
            PROMPT_TOKENS,
            CACHED_TOKENS,
        )
        assert request["completion_tokens"] == 4 and request["duration_ms"] > 0
    assert streamed["ttft_ms"] is not None and streamed["ttft_ms"] > 0
    assert plain["ttft_ms"] is None  # not a stream: no first token to time

    series = body["series"]
    assert series["interval_s"] == BUCKET_S and len(series["points"]) == BUCKETS
    assert sum(point["requests"] for point in series["points"]) == 2
    assert sum(point["tokens_per_s"] for point in series["points"]) == pytest.approx(8 / BUCKET_S)
    assert [p["time"] for p in series["points"]] == sorted(p["time"] for p in series["points"])


async def test_the_fleet_endpoint_counts_429s_in_its_series(
    gateway: Gateway, client: openai.AsyncOpenAI
) -> None:
    gateway.worker.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", reason=REASON_QUEUE_FULL)
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    body = await fleet_json(gateway)
    assert sum(point["rate_limited"] for point in body["series"]["points"]) == 3
    assert [request["status"] for request in body["recent"]] == [429, 429, 429]


async def test_the_recent_requests_are_bounded(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        for _ in range(RECENT + 5):
            assert (await http.get(f"/v1/models/{MODEL}")).status_code == 200
    # /v1/models/{id} names no model in its state: only calls that do are kept. Embeddings do.
    async with gateway.http(headers=AUTH_HEADERS) as http:
        for _ in range(RECENT + 5):
            body = {"model": MODEL, "input": "x"}
            assert (await http.post("/v1/embeddings", json=body)).status_code == 200
    recent = (await fleet_json(gateway))["recent"]
    assert len(recent) == RECENT
    assert {request["route"] for request in recent} == {"/v1/embeddings"}


@pytest.mark.parametrize("key", [None, "sk-wrong"])
async def test_the_fleet_endpoint_needs_the_api_key(gateway: Gateway, key: str | None) -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with gateway.http(headers=headers) as http:
        reply = await http.get(FLEET)
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "invalid_api_key"
    assert "workers" not in reply.text


async def test_the_page_and_its_files_are_served_with_a_strict_policy(gateway: Gateway) -> None:
    async with gateway.http() as http:  # no key: the page holds no data
        page = await http.get("/")
        script = await http.get("/console/app.js")
        style = await http.get("/console/style.css")
        missing = await http.get("/console/nothing.js")
        traversal = await http.get("/console/..%2Fapp.py")
        again = await http.get("/console/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="console/app.js">' in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    for reply in (page, script, style):
        policy = reply.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["cache-control"] == "no-cache" and reply.headers["etag"]
    assert (missing.status_code, traversal.status_code) == (404, 404)
    assert again.status_code == 304 and not again.content


async def test_the_page_has_no_inline_script_or_remote_reference(gateway: Gateway) -> None:
    async with gateway.http() as http:
        page = (await http.get("/")).text
    assert "<script>" not in page and "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+\s*=", page)  # no inline event handler
    assert "http:" not in page and "https:" not in page and "//" not in page


async def test_no_console_removes_the_page_and_the_fleet_endpoint(worker: FakeWorker) -> None:
    async with gateway_with(worker, console=False) as gw, gw.http(headers=AUTH_HEADERS) as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/console/app.js")).status_code == 404
        assert (await http.get(FLEET)).status_code == 404
        assert (await http.get("/v1/models")).status_code == 200  # the API is unchanged


async def test_the_fleet_endpoint_is_in_the_openapi_schema(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        schema = (await http.get("/openapi.json")).json()
    assert "get" in schema["paths"][FLEET]
    assert "/" not in schema["paths"]
