"""The API key and the body limit are checked before the gateway reads a request's body."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.errors import TOO_LARGE_CODE
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import API_KEY, AUTH_HEADERS, eventually, serve
from tests.contract.fake_worker import MODEL, FakeWorker

LIMIT = 4096
HUNDRED_MIB = 100 * 1024 * 1024


@contextlib.asynccontextmanager
async def small_gateway(worker: FakeWorker) -> AsyncIterator[str]:
    settings = GatewaySettings(
        workers=[worker.address], api_key=API_KEY, max_body_bytes=LIMIT, health_retry_s=0.05
    )
    pool = create_pool(settings)
    async with serve(create_app(settings, pool)) as url:
        await eventually(pool.any_healthy)
        yield url


async def head_only(url: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    """Send a POST's headers and none of its body; return the status and JSON the gateway
    answers with, which it can only do without waiting for the body."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {address.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    status = int(head.split()[1])
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), timeout=5))
    writer.close()
    return status, body


async def test_a_request_without_a_key_is_refused_before_its_body_is_read(
    worker: FakeWorker,
) -> None:
    async with small_gateway(worker) as url:
        status, body = await head_only(
            url, {"Content-Type": "application/json", "Content-Length": str(HUNDRED_MIB)}
        )
    assert status == 401
    assert body["error"]["code"] == "invalid_api_key"  # type: ignore[index]
    assert not worker.requests


async def test_a_declared_body_over_the_limit_is_a_413_before_it_is_read(
    worker: FakeWorker,
) -> None:
    async with small_gateway(worker) as url:
        status, body = await head_only(
            url,
            {**AUTH_HEADERS, "Content-Type": "application/json", "Content-Length": str(LIMIT + 1)},
        )
    assert status == 413
    error = body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and str(LIMIT) in error["message"]
    assert error["code"] == TOO_LARGE_CODE
    assert not worker.requests


async def test_a_chunked_body_over_the_limit_is_a_413_before_it_ends(worker: FakeWorker) -> None:
    async with small_gateway(worker) as url:
        address = urlsplit(url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        head = [
            "POST /v1/chat/completions HTTP/1.1",
            f"Host: {address.netloc}",
            f"Authorization: Bearer {API_KEY}",
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        opening = b'{"model": "' + MODEL.encode() + b'", "messages": [{"content": "'
        for chunk in (opening, *[b"x" * 1024] * (2 * LIMIT // 1024)):  # twice the limit
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()  # the body's last chunk is never sent
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        writer.close()
    assert int(answer.split()[1]) == 413
    assert not worker.requests


async def test_a_body_under_the_limit_is_served(worker: FakeWorker) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    async with small_gateway(worker) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        response = await http.post("/v1/chat/completions", json=body, headers=AUTH_HEADERS)
    assert response.status_code == 200, response.text
