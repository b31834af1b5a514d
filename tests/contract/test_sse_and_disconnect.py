"""SSE framing and client disconnects, on a real uvicorn server and a real TCP connection."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from tests.contract.conftest import AUTH_HEADERS, Gateway, eventually
from tests.contract.fake_worker import MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
#: The same request to /v1/completions.
TEXT = {"model": MODEL, "prompt": "x", "stream": True}
EVENT = re.compile(r"data: (\{.*\}|\[DONE\])")


async def test_stream_headers_and_no_compression(gateway: Gateway) -> None:
    async with gateway.http(headers={**AUTH_HEADERS, "Accept-Encoding": "gzip"}) as http:
        response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in response.headers
    assert "content-length" not in response.headers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_exact_framing(gateway: Gateway, path: str) -> None:
    body = {**(CHAT if path == "/v1/chat/completions" else TEXT)}
    body["stream_options"] = {"include_usage": True}
    async with gateway.http(headers=AUTH_HEADERS) as http:
        response = await http.post(path, json=body)
    raw = response.text
    assert raw.startswith(": ok\n\n") and raw.endswith("data: [DONE]\n\n")
    events = raw.split("\n\n")
    assert events[0] == ": ok" and events[-1] == ""
    data = events[1:-1]
    assert all(EVENT.fullmatch(event) for event in data), data
    assert data[-1] == "data: [DONE]" and data.count("data: [DONE]") == 1
    payloads = [json.loads(event[len("data: ") :]) for event in data[:-1]]
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] > 0


async def test_headers_arrive_before_the_first_token(gateway: Gateway) -> None:
    gateway.worker.script.first_delay_s = 30  # a long prefill
    async with (
        gateway.http(headers=AUTH_HEADERS) as http,
        http.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        first = await anext(response.aiter_raw())
        assert first.startswith(b": ok\n\n")
        assert gateway.worker.chunks_sent == 0
    await gateway.worker.wait_cancelled()


async def test_disconnect_mid_stream_cancels_the_worker_call(gateway: Gateway) -> None:
    gateway.worker.script.pieces = [f"t{i} " for i in range(1000)]
    gateway.worker.script.delay_s = 0.01
    async with (
        gateway.http(headers=AUTH_HEADERS) as http,
        http.stream("POST", "/v1/chat/completions", json=CHAT) as response,
    ):
        lines = response.aiter_lines()
        async for line in lines:
            if '"t1 "' in line:
                break
    cancelled = await gateway.worker.wait_cancelled()
    assert cancelled.model == MODEL
    assert gateway.worker.chunks_sent < 1000
    await eventually(lambda: gateway.pool.workers[0].in_flight == 0)


async def test_disconnect_during_prefill_cancels_the_worker_call(gateway: Gateway) -> None:
    gateway.worker.script.first_delay_s = 30
    async with (
        gateway.http(headers=AUTH_HEADERS) as http,
        http.stream("POST", "/v1/completions", json=TEXT) as response,
    ):
        assert await anext(response.aiter_raw()) == b": ok\n\n"
    await gateway.worker.wait_cancelled()
    await eventually(lambda: gateway.pool.workers[0].in_flight == 0)


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_while_queued_cancels_the_worker_call(
    gateway: Gateway, stream: bool
) -> None:
    gateway.worker.script.admit_delay_s = 30  # never admitted: no headers, no chunks
    await _request_then_hang_up(gateway, {**CHAT, "stream": stream})
    await gateway.worker.wait_cancelled()
    await eventually(lambda: gateway.pool.workers[0].in_flight == 0)


async def test_disconnect_while_waiting_for_a_non_streamed_answer(gateway: Gateway) -> None:
    gateway.worker.script.first_delay_s = 30
    await _request_then_hang_up(gateway, {**CHAT, "stream": False})
    await gateway.worker.wait_cancelled()
    await eventually(lambda: gateway.pool.workers[0].in_flight == 0)


async def _request_then_hang_up(gateway: Gateway, body: dict) -> None:
    """Send a request, wait until the worker has it, then close the connection."""
    async with gateway.http(headers=AUTH_HEADERS) as http:
        task = asyncio.create_task(http.post("/v1/chat/completions", json=body))
        await eventually(lambda: len(gateway.worker.generate_requests()) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
