"""SSE keep-alive comments while a stream waits for a worker's queue or for its prefill.

The fake worker holds the call at a gate (before admission: queued; after it: prefilling) until
the test has seen the comments it waits for, so nothing here depends on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import grpc
import httpx
import openai
import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import API_KEY, AUTH_HEADERS, Gateway, eventually, serve
from tests.contract.fake_worker import MODEL, Failure, FakeWorker

KEEPALIVE = ": keep-alive"
#: A tiny interval: every test waits for the comments it needs, however long they take.
INTERVAL_S = 0.02
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
COMPLETION = {"model": MODEL, "prompt": "Hi", "stream": True}
ROUTES = [("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)]
TEXT = "Hello, world!"


@contextlib.asynccontextmanager
async def keepalive_gateway(worker: FakeWorker, interval: float) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        workers=[worker.address], api_key=API_KEY, health_retry_s=0.05, sse_keepalive_s=interval
    )
    pool = create_pool(settings)
    async with serve(create_app(settings, pool)) as url:
        gateway = Gateway(url, pool, worker)
        await eventually(pool.any_healthy)
        yield gateway


async def sse_events(response: httpx.Response) -> AsyncIterator[str]:
    """The response's SSE events (comments included), as they arrive."""
    buffer = b""
    async for raw in response.aiter_raw():
        buffer += raw
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            yield event.decode()


def text_of(events: list[str]) -> str:
    """The generated text carried by the data events (chat deltas or completion text)."""
    parts = []
    for event in events:
        if not event.startswith("data: {"):
            continue
        payload = json.loads(event.removeprefix("data: "))
        for choice in payload["choices"]:
            parts.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
    return "".join(parts)


async def collect(
    gateway: Gateway, path: str, body: dict, on_event: Callable[[list[str]], None]
) -> list[str]:
    """Every event of a streamed request; ``on_event`` sees the list after each one."""
    events: list[str] = []
    async with (
        gateway.http(headers=AUTH_HEADERS) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        async for event in sse_events(response):
            events.append(event)
            on_event(events)
    return events


def first_output(events: list[str]) -> int:
    """The index of the first event that carries generated text."""
    return next(i for i, event in enumerate(events) if text_of([event]))


def release_after(gate: asyncio.Event, comments: int) -> Callable[[list[str]], None]:
    """Opens ``gate`` once ``comments`` keep-alive comments have arrived."""

    def check(events: list[str]) -> None:
        if events.count(KEEPALIVE) >= comments:
            gate.set()

    return check


@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_a_queued_stream_gets_comments_before_admission(
    worker: FakeWorker, path: str, body: dict
) -> None:
    gate = asyncio.Event()
    worker.script.admit_gate = gate
    async with keepalive_gateway(worker, INTERVAL_S) as gateway:
        events = await collect(gateway, path, body, release_after(gate, 3))
    admitted = events.index(": ok")
    assert admitted >= 3 and set(events[:admitted]) == {KEEPALIVE}
    assert KEEPALIVE not in events[first_output(events) :]
    assert events[-1] == "data: [DONE]" and text_of(events) == TEXT


@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_a_prefilling_stream_gets_comments_before_the_first_token(
    worker: FakeWorker, path: str, body: dict
) -> None:
    gate = asyncio.Event()
    worker.script.first_gate = gate
    async with keepalive_gateway(worker, INTERVAL_S) as gateway:
        events = await collect(gateway, path, body, release_after(gate, 3))
    assert events[0] == ": ok"
    opening = 2 if path == "/v1/chat/completions" else 1  # chat: the role chunk comes at once
    first_text = first_output(events)
    assert first_text >= opening + 3
    assert set(events[opening:first_text]) == {KEEPALIVE}
    assert KEEPALIVE not in events[first_text:]
    assert events[-1] == "data: [DONE]" and text_of(events) == TEXT


async def test_comments_stop_once_output_flows(worker: FakeWorker) -> None:
    """Only the opening is kept alive: gaps between tokens get no comments."""
    worker.script.delay_s = 0.1  # five times the interval between two pieces
    async with keepalive_gateway(worker, INTERVAL_S) as gateway:
        events = await collect(gateway, "/v1/completions", COMPLETION, lambda _: None)
    assert KEEPALIVE not in events[first_output(events) :]
    assert text_of(events) == TEXT


class Tap(httpx.AsyncBaseTransport):
    """An HTTP transport that lets a test watch the raw bytes the client receives."""

    def __init__(self, on_bytes: Callable[[bytes], None]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.on_bytes = on_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tapped(response.stream, self.on_bytes),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Tapped(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, on_bytes: Callable[[bytes], None]) -> None:
        self.inner = inner
        self.on_bytes = on_bytes

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.on_bytes(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_the_openai_sdk_ignores_the_comments(worker: FakeWorker) -> None:
    queued, prefilling = asyncio.Event(), asyncio.Event()
    worker.script.admit_gate, worker.script.first_gate = queued, prefilling
    received = bytearray()

    def watch(chunk: bytes) -> None:
        received.extend(chunk)
        comments = received.count(KEEPALIVE.encode())
        if comments >= 2:
            queued.set()
        if comments >= 4 and b": ok" in received:
            prefilling.set()

    async with (
        keepalive_gateway(worker, INTERVAL_S) as gateway,
        httpx.AsyncClient(transport=Tap(watch), timeout=10) as http,
    ):
        client = openai.AsyncOpenAI(
            base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, http_client=http
        )
        chat = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        chunks = [chunk async for chunk in chat]
        assert received.count(KEEPALIVE.encode()) >= 4
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == TEXT
        assert chunks[-1].choices[0].finish_reason == "stop"

        received.clear()
        queued.clear()
        prefilling.clear()
        completion = await client.completions.create(model=MODEL, prompt="Hi", stream=True)
        pieces = [chunk async for chunk in completion]
        assert received.count(KEEPALIVE.encode()) >= 4
        assert "".join(p.choices[0].text for p in pieces) == TEXT


async def test_a_refusal_after_comments_ends_the_stream_with_an_error_event(
    worker: FakeWorker,
) -> None:
    gate = asyncio.Event()
    worker.script.admit_gate = gate
    worker.script.queue_failure = Failure(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "waited too long", reason="QUEUE_TIMEOUT"
    )
    async with keepalive_gateway(worker, INTERVAL_S) as gateway:
        events = await collect(gateway, "/v1/chat/completions", CHAT, release_after(gate, 2))
    assert set(events[:-1]) == {KEEPALIVE}
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "queue_timeout" and error["type"] == "rate_limit_error"
    assert "data: [DONE]" not in events


async def test_a_quick_refusal_is_still_an_http_error(worker: FakeWorker) -> None:
    worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT, "bad value", reason="INVALID_VALUE", param="temperature"
    )
    async with (
        keepalive_gateway(worker, 30.0) as gateway,
        gateway.http(headers=AUTH_HEADERS) as http,
    ):
        response = await http.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"


async def test_leaving_while_queued_cancels_the_worker_call(worker: FakeWorker) -> None:
    worker.script.admit_gate = asyncio.Event()  # never opened
    async with keepalive_gateway(worker, INTERVAL_S) as gateway:
        async with (
            gateway.http(headers=AUTH_HEADERS) as http,
            http.stream("POST", "/v1/chat/completions", json=CHAT) as response,
        ):
            events = sse_events(response)
            assert [await anext(events), await anext(events)] == [KEEPALIVE, KEEPALIVE]
            await events.aclose()
        await worker.wait_cancelled()
        await eventually(lambda: gateway.pool.workers[0].in_flight == 0)


async def test_zero_turns_the_comments_off(worker: FakeWorker) -> None:
    gate = asyncio.Event()
    worker.script.admit_gate = gate

    async def release() -> None:
        await eventually(lambda: bool(worker.generate_requests()))
        await asyncio.sleep(10 * INTERVAL_S)  # a window in which a comment would have gone out
        gate.set()

    async with keepalive_gateway(worker, 0) as gateway:
        opener = asyncio.create_task(release())
        events = await collect(gateway, "/v1/completions", COMPLETION, lambda _: None)
        await opener
    assert KEEPALIVE not in events and events[0] == ": ok"
