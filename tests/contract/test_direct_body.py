"""Stream chunks written straight to the socket (gateway.connections.DirectBody), on a real
uvicorn: the bytes on the wire are what h11 would have written, the fast path is really taken
over HTTP/1.1, and an HTTP/1.0 client (whose body h11 does not frame as chunks) gets the ASGI
path and a whole stream."""

from __future__ import annotations

import asyncio
import json

import h11
import pytest

from llamagrid.gateway import connections
from tests.contract.fake_worker import FakeWorker
from tests.contract.test_slow_clients import gateway, streaming_request


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the gateway closes or ends the chunked body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    received = bytearray()
    while not received.endswith(b"\r\n0\r\n\r\n") and (chunk := await reader.read(65536)):
        received += chunk
    writer.close()
    return bytes(received)


def events(body: bytes) -> list[str]:
    """The SSE data lines of a body."""
    return [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]


@pytest.fixture
def direct_writes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each DirectBody.write call answered."""
    answers: list[bool] = []
    write = connections.DirectBody.write

    def spy(self: connections.DirectBody, data: bytes) -> bool:
        answers.append(write(self, data))
        return answers[-1]

    monkeypatch.setattr(connections.DirectBody, "write", spy)
    return answers


async def test_http11_chunks_go_straight_to_the_socket_and_parse(
    worker: FakeWorker, direct_writes: list[bool]
) -> None:
    worker.script.pieces = [f"piece {i} " for i in range(20)]
    async with gateway(worker) as served:
        raw = await exchange(served.port, streaming_request(20, 0))
    # h11 itself reads the response back: framing errors raise.
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
    client.receive_data(raw)
    body = bytearray()
    while (event := client.next_event()) not in (h11.NEED_DATA, h11.PAUSED):
        if isinstance(event, h11.Data):
            body += event.data
        if isinstance(event, h11.EndOfMessage):
            break
    assert isinstance(event, h11.EndOfMessage)
    data = events(bytes(body))
    assert data[-1] == "[DONE]"
    text = "".join(
        json.loads(d)["choices"][0]["delta"].get("content", "")
        for d in data[:-1]
        if json.loads(d)["choices"]
    )
    assert text == "".join(worker.script.pieces)
    assert direct_writes.count(True) >= 20  # every content chunk took the fast path


async def test_http10_client_gets_a_whole_close_delimited_stream(
    worker: FakeWorker, direct_writes: list[bool]
) -> None:
    worker.script.pieces = [f"piece {i} " for i in range(5)]
    request = streaming_request(5, 0).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    async with gateway(worker) as served:
        raw = await exchange(served.port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    data = events(body)  # no chunk sizes in between: the body is the events alone
    assert data[-1] == "[DONE]"
    assert len(data) == 5 + 3  # role chunk, five pieces, finish chunk, [DONE]
    assert direct_writes and not any(direct_writes)
