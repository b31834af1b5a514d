"""CORS (--cors-origin): preflights, the headers of actual requests, and off by default."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import API_KEY, AUTH_HEADERS, Gateway, eventually, serve
from tests.contract.fake_worker import MODEL, FakeWorker

ORIGIN = "https://app.example"
OTHER = "https://evil.example"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


@contextlib.asynccontextmanager
async def cors_gateway(worker: FakeWorker, origins: Sequence[str]) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        workers=[worker.address], api_key=API_KEY, health_retry_s=0.05, cors_origin=origins
    )
    pool = create_pool(settings)
    async with serve(create_app(settings, pool)) as url:
        gateway = Gateway(url, pool, worker)
        await eventually(pool.any_healthy)
        yield gateway


def preflight_headers(origin: str, headers: str = "authorization, content-type") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": headers,
    }


def names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",")}


async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(
    worker: FakeWorker,
) -> None:
    async with cors_gateway(worker, [ORIGIN]) as gateway, gateway.http() as http:
        requested = "authorization, content-type, x-session-id, x-stainless-retry-count"
        response = await http.options(
            "/v1/chat/completions", headers=preflight_headers(ORIGIN, requested)
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "post" in names(response.headers["access-control-allow-methods"])
    assert names(requested) <= names(response.headers["access-control-allow-headers"])
    assert "access-control-allow-credentials" not in response.headers
    assert int(response.headers["access-control-max-age"]) > 0


@pytest.mark.parametrize(
    "origin",
    [OTHER, "null", "https://app.example.evil.example", "http://app.example", ORIGIN + ":444"],
)
async def test_a_preflight_from_another_origin_is_refused(worker: FakeWorker, origin: str) -> None:
    async with cors_gateway(worker, [ORIGIN]) as gateway, gateway.http() as http:
        response = await http.options("/v1/chat/completions", headers=preflight_headers(origin))
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_a_preflight_for_a_header_not_allowed_is_refused(worker: FakeWorker) -> None:
    async with cors_gateway(worker, [ORIGIN]) as gateway, gateway.http() as http:
        headers = preflight_headers(ORIGIN, "authorization, x-forwarded-for")
        response = await http.options("/v1/chat/completions", headers=headers)
    assert response.status_code == 400


async def test_a_request_from_an_allowed_origin_may_read_the_reply_and_its_headers(
    worker: FakeWorker,
) -> None:
    async with cors_gateway(worker, [OTHER, ORIGIN]) as gateway:
        async with gateway.http(headers={**AUTH_HEADERS, "Origin": ORIGIN}) as http:
            reply = await http.post("/v1/chat/completions", json=CHAT)
            streamed = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
        async with gateway.http(headers={"Origin": ORIGIN}) as anonymous:
            refused = await anonymous.post("/v1/chat/completions", json=CHAT)
    for response, status in ((reply, 200), (streamed, 200), (refused, 401)):
        assert response.status_code == status
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert "origin" in names(response.headers.get("vary", ""))
        assert "access-control-allow-credentials" not in response.headers
        exposed = names(response.headers["access-control-expose-headers"])
        assert {"x-llamagrid-worker", "x-llamagrid-route", "retry-after"} <= exposed
    assert reply.headers["x-llamagrid-worker"] == worker.address
    assert streamed.text.endswith("data: [DONE]\n\n")


async def test_a_request_from_another_origin_gets_no_cors_headers(worker: FakeWorker) -> None:
    async with (
        cors_gateway(worker, [ORIGIN]) as gateway,
        gateway.http(headers={**AUTH_HEADERS, "Origin": OTHER}) as http,
    ):
        response = await http.post("/v1/chat/completions", json=CHAT)
    # The server answers (CORS is enforced by the browser), but without the header that would
    # let a page of that origin read the answer.
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-credentials" not in response.headers


async def test_every_origin_only_when_asked_for_explicitly(worker: FakeWorker) -> None:
    async with cors_gateway(worker, ["*"]) as gateway, gateway.http() as http:
        preflight = await http.options("/v1/models", headers=preflight_headers(OTHER))
        models = await http.get("/v1/models", headers={**AUTH_HEADERS, "Origin": OTHER})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert models.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in models.headers


async def test_off_by_default(gateway: Gateway) -> None:
    async with gateway.http() as http:
        preflight = await http.options("/v1/chat/completions", headers=preflight_headers(ORIGIN))
        models = await http.get("/v1/models", headers={**AUTH_HEADERS, "Origin": ORIGIN})
    assert preflight.status_code != 200  # no route answers OPTIONS
    assert models.status_code == 200
    for response in (preflight, models):
        assert not any(name.startswith("access-control-") for name in response.headers)
