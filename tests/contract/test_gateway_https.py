"""The gateway over HTTPS (--tls-cert/--tls-key), with certificates the test generates.

The gateway runs as `llamagrid gateway` configures uvicorn (gateway/main.py), in front of the
fake worker; clients verify it against the test CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
import uvicorn
from pydantic import ValidationError

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.main import server_config
from llamagrid.gateway.settings import GatewaySettings
from tests.certs import Certs, make_certs
from tests.contract.conftest import API_KEY, eventually, serve_config, server_url
from tests.contract.fake_worker import MODEL, FakeWorker
from tests.contract.test_slow_clients import MARGIN_S, streaming_request


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "certs")


@contextlib.asynccontextmanager
async def https_gateway(
    worker: FakeWorker, certs: Certs, header_timeout_s: float = 10.0, send_timeout_s: float = 60.0
) -> AsyncIterator[uvicorn.Server]:
    settings = GatewaySettings(
        workers=[worker.address],
        api_key=API_KEY,
        port=0,
        health_retry_s=0.05,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        header_timeout_s=header_timeout_s,
        send_timeout_s=send_timeout_s,
    )
    pool = create_pool(settings)
    config = server_config(create_app(settings, pool), settings)
    config.log_level = "warning"
    async with serve_config(config) as server:
        await eventually(pool.any_healthy)
        yield server


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


async def test_the_openai_sdk_gets_a_chat_completion_over_https(
    worker: FakeWorker, certs: Certs
) -> None:
    async with https_gateway(worker, certs) as server:
        url = server_url(server)
        assert url.startswith("https://127.0.0.1:")
        async with httpx2.AsyncClient(verify=trusting(certs.ca)) as http_client:
            client = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, http_client=http_client
            )
            reply = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}]
            )
    assert reply.choices[0].message.content == "Hello, world!"


async def test_plain_http_and_untrusting_clients_fail_on_the_https_port(
    worker: FakeWorker, certs: Certs
) -> None:
    async with https_gateway(worker, certs) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        with pytest.raises(httpx.TransportError):
            async with httpx.AsyncClient(timeout=5) as plain:
                await plain.get(f"http://127.0.0.1:{port}/livez")
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            async with httpx.AsyncClient(timeout=5, verify=trusting(certs.other_ca)) as stranger:
                await stranger.get(f"https://127.0.0.1:{port}/livez")
        async with httpx.AsyncClient(timeout=5, verify=trusting(certs.ca)) as trusted:
            assert (await trusted.get(f"https://127.0.0.1:{port}/livez")).status_code == 200


async def test_a_half_sent_request_over_tls_is_closed_at_its_deadline(
    worker: FakeWorker, certs: Certs
) -> None:
    async with https_gateway(worker, certs, header_timeout_s=1.0) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=trusting(certs.ca), server_hostname="localhost"
        )
        writer.write(b"GET /livez HTTP/1.1\r\nHost: gateway\r\n")
        async with asyncio.timeout(5):
            answer = await reader.read()  # until the gateway closes the connection
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_a_certificate_needs_its_key_and_a_key_its_certificate(certs: Certs) -> None:
    with pytest.raises(ValidationError, match="--tls-cert and --tls-key go together"):
        GatewaySettings(tls_cert=str(certs.server_cert))
    with pytest.raises(ValidationError, match="--tls-cert and --tls-key go together"):
        GatewaySettings(tls_key=str(certs.server_key))


async def test_a_client_that_stops_reading_over_tls_is_dropped(
    worker: FakeWorker, certs: Certs
) -> None:
    worker.script.pieces = ["x" * (1 << 20)] * 32  # 32 MiB: more than the buffers hold
    async with https_gateway(worker, certs, send_timeout_s=1.0) as server:
        port = server.servers[0].sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=trusting(certs.ca), server_hostname="localhost"
        )
        writer.write(streaming_request(32, 1 << 20))  # and read nothing for now
        connections = server.server_state.connections
        await eventually(lambda: len(connections) == 1)
        await eventually(lambda: not connections, timeout=1 + 1.0 + MARGIN_S)
        received = bytearray()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(1 << 20):
                received += chunk
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" not in received
