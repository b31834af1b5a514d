"""Slow clients against the real gateway on a real uvicorn (gateway/connections.py, admission.py).

Hundreds of raw sockets send half a request (part of a request line, headers without the blank
line that ends them, part of a body) and stall. The gateway closes each within its deadline, a
normal request succeeds while they are open, and connections beyond --max-connections are
refused at once, with the gateway answering again once they are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import uvicorn

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.main import server_config
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import API_KEY, eventually, serve_config, server_url
from tests.contract.fake_worker import MODEL, FakeWorker

#: How late past its deadline a connection may be closed (a loaded machine's scheduling).
MARGIN_S = 2.0
#: Half-sent requests of each kind in the storm.
PER_KIND = 100
CHAT_BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
HALF_LINE = b"POST /v1/chat/comp"
HALF_HEADERS = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"
    b"Authorization: Bearer " + API_KEY.encode() + b"\r\nContent-Type: application/json\r\n"
)
HALF_BODY = (
    HALF_HEADERS + b"Content-Length: " + str(len(CHAT_BODY)).encode() + b"\r\n\r\n"
    b"" + CHAT_BODY[:10].encode()
)


@dataclass
class Served:
    """The gateway's uvicorn server and its base URL."""

    server: uvicorn.Server
    url: str
    port: int

    @property
    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=10
        )


@contextlib.asynccontextmanager
async def gateway(worker: FakeWorker, **limits: Any) -> AsyncIterator[Served]:
    """The gateway as `llamagrid gateway` configures uvicorn, with these limits, on port 0."""
    settings = GatewaySettings(
        workers=[worker.address], api_key=API_KEY, port=0, health_retry_s=0.05, **limits
    )
    pool = create_pool(settings)
    app = create_app(settings, pool)
    config = server_config(app, settings)
    config.log_level = "warning"
    async with serve_config(config) as server:
        await eventually(pool.any_healthy)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(server, server_url(server), port)


@dataclass
class Slow:
    """A raw connection that sent ``sent`` and stalled."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent_at: float


async def send_half(port: int, data: bytes) -> Slow:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if data:
        writer.write(data)
        await writer.drain()
    return Slow(reader, writer, time.monotonic())


async def closed_after(slow: Slow, timeout: float) -> tuple[float, bytes]:
    """Read until the gateway closes the connection: (seconds since the send, bytes read)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(timeout):
            while chunk := await slow.reader.read(65536):
                received += chunk
    return time.monotonic() - slow.sent_at, received


def error_of(response: bytes) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error of a raw HTTP response (one, Content-Length framed)."""
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)["error"]


async def close_all(slow: list[Slow]) -> None:
    for conn in slow:
        conn.writer.close()
    for conn in slow:
        with contextlib.suppress(ConnectionError):
            await conn.writer.wait_closed()


async def chat_succeeds(served: Served) -> None:
    reply = await served.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.choices[0].message.content == "Hello, world!"


async def trickle(port: int, first: bytes = b"") -> tuple[float, bytes]:
    """A connection that sends ``first`` (a whole request, read back), then a request line one
    byte at a time, forever; (seconds from its first trickled byte to the close, bytes read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if first:
        writer.write(first)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if b"content-length" in line
        )
        await reader.readexactly(length)
    slow = Slow(reader, writer, time.monotonic())

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in HALF_HEADERS:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    try:
        return await closed_after(slow, timeout=30)
    finally:
        dripping.cancel()
        writer.close()


async def half_sent(port: int, data: bytes, timeout: float) -> tuple[float, bytes]:
    """Open a connection, send ``data``, stall: (seconds until the gateway closed it, bytes)."""
    slow = await send_half(port, data)
    try:
        return await closed_after(slow, timeout)
    finally:
        await close_all([slow])


async def test_half_sent_requests_are_closed_within_their_deadlines(worker: FakeWorker) -> None:
    timeout = 1.0
    bound = timeout + MARGIN_S
    kinds = [b""] * 10 + [HALF_LINE, HALF_HEADERS] * (PER_KIND // 2) + [HALF_BODY] * PER_KIND
    async with gateway(worker, header_timeout_s=timeout, body_timeout_s=timeout) as served:
        storm = [half_sent(served.port, data, bound + 1) for data in kinds]
        tricklers = [trickle(served.port) for _ in range(3)]
        kept_alive = trickle(served.port, b"GET /livez HTTP/1.1\r\nHost: gateway\r\n\r\n")
        (*results,) = await asyncio.gather(*storm, *tricklers, kept_alive)

    for data, (elapsed, received) in zip([*kinds, *[HALF_HEADERS] * 4], results, strict=True):
        assert timeout / 2 <= elapsed <= bound, (data[:30], elapsed)
        if not data:  # nothing sent: closed without an answer
            assert received == b""
            continue
        status, error = error_of(received)
        assert status == 408 and error["code"] == "request_timeout", (data[:30], received)
        flag = "--body-timeout-s" if data is HALF_BODY else "--header-timeout-s"
        assert flag in error["message"]


async def test_a_normal_request_succeeds_while_hundreds_of_half_sent_requests_are_open(
    worker: FakeWorker,
) -> None:
    async with gateway(worker, header_timeout_s=60, body_timeout_s=60) as served:
        slow = [await send_half(served.port, HALF_HEADERS) for _ in range(PER_KIND)]
        slow += [await send_half(served.port, HALF_BODY) for _ in range(PER_KIND)]
        await eventually(lambda: served.open_connections >= len(slow))
        await chat_succeeds(served)
        assert not any(conn.reader.at_eof() for conn in slow)
        assert served.open_connections >= len(slow)
        await close_all(slow)


async def test_connections_beyond_the_cap_are_refused_at_once_and_service_resumes(
    worker: FakeWorker,
) -> None:
    cap = 50
    async with gateway(worker, max_connections=cap, header_timeout_s=60) as served:
        held = [await send_half(served.port, HALF_LINE) for _ in range(cap)]
        await eventually(lambda: served.open_connections == cap)
        extra = [await send_half(served.port, b"") for _ in range(20)]
        refused = await asyncio.gather(*(closed_after(c, MARGIN_S + 1) for c in extra))
        for elapsed, received in refused:
            assert elapsed <= MARGIN_S
            status, error = error_of(received)
            assert status == 503 and error["code"] == "too_many_connections"
            assert b"retry-after: 1" in received.lower()
        assert not any(conn.reader.at_eof() for conn in held)  # the held ones stay open
        await close_all(held + extra)
        await eventually(lambda: served.open_connections == 0)
        await chat_succeeds(served)


@pytest.mark.parametrize("complete", [True, False], ids=["whole", "unfinished"])
async def test_a_request_head_over_max_header_bytes_is_an_openai_shaped_431(
    worker: FakeWorker, complete: bool
) -> None:
    head = b"GET /livez HTTP/1.1\r\nHost: gateway\r\nX-Pad: "
    async with gateway(worker, max_header_bytes=4096) as served:
        fits = await send_half(served.port, head + b"a" * 3000 + b"\r\n\r\n")
        over = await send_half(served.port, head + b"a" * 8000 + (b"\r\n\r\n" if complete else b""))
        _, answer = await closed_after(over, MARGIN_S)
        reply = await fits.reader.readuntil(b"\r\n\r\n")
        await close_all([fits, over])
    assert reply.startswith(b"HTTP/1.1 200")
    status, error = error_of(answer)
    assert status == 431 and error["code"] == "request_header_fields_too_large"
    assert "--max-header-bytes" in error["message"]


async def test_a_malformed_request_is_an_openai_shaped_400(worker: FakeWorker) -> None:
    async with gateway(worker) as served:
        bad = await send_half(served.port, b"GET /livez HTTP/1.1\r\nno colon here\r\n\r\n")
        _, answer = await closed_after(bad, MARGIN_S)
        await close_all([bad])
    status, error = error_of(answer)
    assert status == 400 and error["code"] == "invalid_http_request"


async def test_a_stream_that_outlasts_the_body_deadline_is_not_cut(worker: FakeWorker) -> None:
    worker.script.delay_s = 0.4  # 4 pieces: the stream lasts about 1.6 s
    async with gateway(worker, body_timeout_s=0.5) as served:
        stream = await served.openai().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    assert "".join(p or "" for p in pieces) == "Hello, world!"


@pytest.mark.parametrize("kind", ["header", "body"])
async def test_a_slow_but_timely_request_is_served(worker: FakeWorker, kind: str) -> None:
    request = (
        HALF_HEADERS + b"Content-Length: " + str(len(CHAT_BODY)).encode() + b"\r\n\r\n"
    ) + CHAT_BODY.encode()
    split = len(HALF_HEADERS) // 2 if kind == "header" else len(request) - 5
    async with gateway(worker, header_timeout_s=5, body_timeout_s=5) as served:
        slow = await send_half(served.port, request[:split])
        await asyncio.sleep(0.3)  # a pause well inside the deadline, not a synchronisation
        slow.writer.write(request[split:])
        head = await slow.reader.readuntil(b"\r\n\r\n")
        await close_all([slow])
    assert head.startswith(b"HTTP/1.1 200"), head


def streaming_request(pieces: int, piece_bytes: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": pieces,
        }
    ).encode()
    head = HALF_HEADERS + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    return head + body


async def open_small_window(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose receive buffer is small, so that an unread response backs up."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def test_a_client_that_stops_reading_a_response_is_dropped(worker: FakeWorker) -> None:
    worker.script.pieces = ["x" * (1 << 20)] * 32  # 32 MiB: more than the socket buffers hold
    timeout = 1.0
    async with gateway(worker, send_timeout_s=timeout) as served:
        reader, writer = await open_small_window(served.port)
        writer.write(streaming_request(32, 1 << 20))  # and read nothing for now
        await eventually(lambda: served.open_connections == 1)
        # Buffers fill within a second; then no byte is taken for `timeout` seconds.
        await eventually(lambda: served.open_connections == 0, timeout=1 + timeout + MARGIN_S)
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(1 << 20):
                received += chunk
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert b"data: [DONE]" not in received  # cut, not finished
    assert len(received) < 32 << 20


async def test_a_client_that_reads_slowly_but_steadily_gets_the_whole_stream(
    worker: FakeWorker,
) -> None:
    # One 20 MiB event: what the socket buffers do not hold (about 16 MiB) takes the client
    # about 3 s to read, three times the send deadline, but every read makes progress, and
    # progress renews the deadline.
    worker.script.pieces = ["x" * (20 << 20)]
    async with gateway(worker, send_timeout_s=1.0) as served:
        reader, writer = await open_small_window(served.port)
        writer.write(streaming_request(1, 20 << 20))
        received = bytearray()
        while not received.endswith(b"\r\n0\r\n\r\n") and not reader.at_eof():  # chunked end
            received += await reader.read(64 << 10)
            await asyncio.sleep(0.01)  # the client's pace: 64 KiB every 10 ms
        writer.close()
    assert received.startswith(b"HTTP/1.1 200")
    assert received.count(b"x" * 4096) >= 5 * 1024
    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
