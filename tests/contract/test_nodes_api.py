"""The node API (LMDeploy's proxy shape) on a real uvicorn, with the fake worker as the node:
who may call it, add/status/remove with draining, registration leases, limits, hostile bodies."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import Gateway, eventually, serve
from tests.contract.fake_worker import MODEL, FakeWorker

ADMIN_KEY = "admin-secret"
USER_KEY = "sk-user"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}


@contextlib.asynccontextmanager
async def nodes_gateway(worker: FakeWorker, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway with no --worker, a user key and (unless overridden) an admin key."""
    values: dict[str, Any] = {
        "api_key": USER_KEY,
        "admin_key": ADMIN_KEY,
        "health_retry_s": 0.05,
        "node_rate_per_s": 1000.0,  # the tests poll /nodes/status
        **settings,
    }
    gateway_settings = GatewaySettings(**values)
    pool = create_pool(gateway_settings)
    async with serve(create_app(gateway_settings, pool)) as url:
        yield Gateway(url, pool, worker)


async def status(http: httpx.AsyncClient) -> dict[str, Any]:
    reply = await http.get("/nodes/status", headers=ADMIN)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def healthy(http: httpx.AsyncClient, address: str) -> bool:
    node = (await status(http)).get(address)
    return node is not None and node["healthy"] and node["models"] == [MODEL]


async def test_without_an_admin_key_the_node_api_does_not_exist(worker: FakeWorker) -> None:
    async with nodes_gateway(worker, admin_key=[]) as gw, gw.http() as http:
        for path in ("/nodes/status", "/nodes/add", "/nodes/remove", "/nodes/register"):
            method = http.get if path == "/nodes/status" else http.post
            reply = await method(path, headers={"Authorization": f"Bearer {USER_KEY}"})
            assert reply.status_code == 404, path


async def test_the_node_api_needs_the_admin_key_and_refuses_the_user_key(
    worker: FakeWorker,
) -> None:
    async with nodes_gateway(worker) as gw, gw.http() as http:
        body = {"url": worker.address}
        for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic x"}):
            for reply in (
                await http.get("/nodes/status", headers=headers),
                await http.post("/nodes/add", json=body, headers=headers),
            ):
                assert reply.status_code == 401
                assert reply.json()["error"]["code"] == "invalid_api_key"
        user = {"Authorization": f"Bearer {USER_KEY}"}
        for reply in (
            await http.get("/nodes/status", headers=user),
            await http.post("/nodes/add", json=body, headers=user),
            await http.post("/nodes/remove", json=body, headers=user),
        ):
            assert reply.status_code == 403
            assert reply.json()["error"]["code"] == "admin_key_required"
        assert await status(http) == {}  # nothing was added by the refused calls
        # and the admin key is no user key
        with pytest.raises(openai.AuthenticationError):
            await gw.openai(api_key=ADMIN_KEY).models.list()


def test_an_admin_key_that_is_also_a_user_key_is_refused() -> None:
    from llamagrid.gateway.keys import ApiKeyError

    settings = GatewaySettings(api_key="same-key", admin_key="same-key")
    with pytest.raises(ApiKeyError, match="also a user API key"):
        create_app(settings, create_pool(settings))


async def test_an_added_node_serves_and_a_removed_one_drains_its_running_stream(
    worker: FakeWorker,
) -> None:
    async with nodes_gateway(worker) as gw, gw.http() as http:
        reply = await http.post(
            "/nodes/add", json={"url": f"grpc://{worker.address}"}, headers=ADMIN
        )
        assert reply.json() == {"url": worker.address, "state": "added"}
        await eventually(lambda: healthy(http, worker.address))
        node = (await status(http))[worker.address]
        assert node["source"] == "added" and node["available"] and node["latency"] == []
        assert node["unfinished"] == 0 and node["speed"] is None and node["lease_s"] is None
        client = gw.openai(api_key=USER_KEY)
        answer = await client.chat.completions.create(**CHAT)
        assert answer.choices[0].message.content == "Hello, world!"

        worker.script.delay_s = 0.2  # a stream still running when the node is removed
        stream = await client.chat.completions.create(**CHAT, stream=True)
        pieces = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
                if len(pieces) == 1:
                    removed = await http.post(
                        "/nodes/remove", params={"node_url": worker.address}, headers=ADMIN
                    )
                    assert removed.json() == {"url": worker.address, "state": "removed"}
                    assert await status(http) == {}
        assert "".join(pieces) == "Hello, world!"  # the running stream finished
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(**CHAT)
        assert caught.value.status_code == 503
        again = await http.post("/nodes/remove", json={"url": worker.address}, headers=ADMIN)
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "node_not_found"


async def test_a_registered_node_is_ejected_after_missed_heartbeats_and_comes_back(
    worker: FakeWorker,
) -> None:
    registration = {"url": worker.address, "models": ["declared"], "heartbeat_s": 1.0}
    async with nodes_gateway(worker, node_missed_heartbeats=2) as gw, gw.http() as http:
        first = await http.post("/nodes/register", json=registration, headers=ADMIN)
        assert first.json() == {"url": worker.address, "state": "registered", "lease_s": 2.0}
        renewed = await http.post("/nodes/register", json=registration, headers=ADMIN)
        assert renewed.json()["state"] == "renewed"
        node = (await status(http))[worker.address]
        assert node["source"] == "registered" and node["heartbeat_s"] == 1.0
        assert 0 <= node["lease_s"] <= 2.0 and node["last_heartbeat_s"] >= 0
        await eventually(lambda: status_is(http, {}), timeout=10)  # no heartbeat: ejected
        back = await http.post("/nodes/register", json=registration, headers=ADMIN)
        assert back.json()["state"] == "registered"
        await eventually(lambda: healthy(http, worker.address))


async def status_is(http: httpx.AsyncClient, expected: dict[str, Any]) -> bool:
    return await status(http) == expected


async def test_nodes_are_limited_in_number_and_calls_in_rate(worker: FakeWorker) -> None:
    async with nodes_gateway(worker, max_nodes=2) as gw, gw.http() as http:
        for port in (1001, 1002):
            reply = await http.post("/nodes/add", json={"url": f"10.0.0.1:{port}"}, headers=ADMIN)
            assert reply.status_code == 200
        third = await http.post("/nodes/add", json={"url": "10.0.0.1:1003"}, headers=ADMIN)
        assert third.status_code == 409
        assert third.json()["error"]["code"] == "too_many_nodes"
    async with nodes_gateway(worker, node_rate_per_s=0.01) as gw, gw.http() as http:
        assert (await http.get("/nodes/status", headers=ADMIN)).status_code == 200
        assert (await http.get("/nodes/status", headers=ADMIN)).status_code == 200
        limited = await http.get("/nodes/status", headers=ADMIN)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1


HOSTILE_BODIES: list[tuple[str, str, bytes]] = [
    ("/nodes/add", "huge url", json.dumps({"url": "a" * 10_000 + ":80"}).encode()),
    ("/nodes/add", "http scheme", b'{"url": "http://127.0.0.1:8000"}'),
    ("/nodes/add", "ftp scheme", b'{"url": "ftp://127.0.0.1:21"}'),
    ("/nodes/add", "unix socket", b'{"url": "unix:///tmp/worker.sock"}'),
    ("/nodes/add", "port too large", b'{"url": "localhost:99999"}'),
    ("/nodes/add", "port zero", b'{"url": "localhost:0"}'),
    ("/nodes/add", "no port", b'{"url": "localhost"}'),
    ("/nodes/add", "a path", b'{"url": "localhost:80/v1"}'),
    ("/nodes/add", "user info", b'{"url": "user@localhost:80"}'),
    ("/nodes/add", "whitespace", b'{"url": " localhost:80"}'),
    ("/nodes/add", "non-ascii digits", '{"url": "localhost:\u0668\u0660"}'.encode()),
    ("/nodes/add", "bad ipv4", b'{"url": "999.1.1.1:80"}'),
    ("/nodes/add", "bad ipv6", b'{"url": "[::g]:80"}'),
    ("/nodes/add", "empty url", b'{"url": ""}'),
    ("/nodes/add", "no url", b"{}"),
    ("/nodes/add", "nested junk", b'{"url": {"host": ["a", {"b": null}]}}'),
    ("/nodes/add", "a list", b'[{"url": "localhost:80"}]'),
    ("/nodes/add", "deep nesting", b'{"url": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("/nodes/add", "a number", b'{"url": 8080}'),
    ("/nodes/add", "unknown field", b'{"url": "localhost:80", "weight": 3}'),
    ("/nodes/add", "LMDeploy status", b'{"url": "localhost:80", "status": {"speed": 10}}'),
    ("/nodes/add", "not JSON", b"url=localhost:80"),
    ("/nodes/add", "empty body", b""),
    ("/nodes/register", "NaN heartbeat", b'{"url": "localhost:80", "heartbeat_s": NaN}'),
    ("/nodes/register", "huge heartbeat", b'{"url": "localhost:80", "heartbeat_s": 1e308}'),
    ("/nodes/register", "zero heartbeat", b'{"url": "localhost:80", "heartbeat_s": 0}'),
    ("/nodes/register", "string heartbeat", b'{"url": "localhost:80", "heartbeat_s": "5"}'),
    ("/nodes/register", "many models", json.dumps({"url": "h:1", "models": ["m"] * 65}).encode()),
    ("/nodes/register", "long model", json.dumps({"url": "h:1", "models": ["m" * 257]}).encode()),
    ("/nodes/register", "empty model", b'{"url": "h:1", "models": [""]}'),
    ("/nodes/remove", "no address", b""),
    ("/nodes/remove", "bad address", b'{"url": "http://h:1"}'),
]


async def test_hostile_bodies_are_refused_and_the_gateway_keeps_serving(
    worker: FakeWorker,
) -> None:
    async with nodes_gateway(worker) as gw, gw.http() as http:
        for path, name, body in HOSTILE_BODIES:
            headers = {**ADMIN, "Content-Type": "application/json"}
            reply = await http.post(path, content=body, headers=headers)
            assert reply.status_code == 400, (name, reply.status_code, reply.text)
            assert reply.json()["error"]["type"] == "invalid_request_error", name
        both = await http.post(
            "/nodes/remove", params={"node_url": "h:1"}, json={"url": "h:1"}, headers=ADMIN
        )
        assert both.status_code == 400
        bad_query = await http.post("/nodes/remove", params={"node_url": "h:99999"}, headers=ADMIN)
        assert bad_query.status_code == 400
        too_large = await http.post(
            "/nodes/add", content=b'{"url": "' + b"a" * 20_000 + b'"}', headers=ADMIN
        )
        assert too_large.status_code == 413
        assert await status(http) == {}  # nothing got in
        added = await http.post("/nodes/add", json={"url": worker.address}, headers=ADMIN)
        assert added.status_code == 200
        await eventually(lambda: healthy(http, worker.address))
        answer = await gw.openai(api_key=USER_KEY).chat.completions.create(**CHAT)
        assert answer.choices[0].message.content == "Hello, world!"
