"""SSE keep-alive comments on the real model, on every SSE route: a stream queued behind a busy
one-slot worker, and a Responses stream with a long prefill, get ': keep-alive' comments before
their first token, and the SDKs read the streams as usual."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving
from tests.serving import ONE_THREAD

KEEPALIVE = ": keep-alive"
#: A tiny interval; the tests wait for the comments they need rather than for time to pass.
INTERVAL_S = "0.05"
QUEUED_COMMENTS = 3


@pytest.fixture(scope="module")
def one_slot(run_dir: Path) -> Iterator[Proc]:
    """One slot: a second request waits in the queue while the first runs. Small batches: a
    prompt of a few hundred tokens takes several prefill steps."""
    args = ("--parallel", "1", "--n-ctx", "4096", "--n-batch", "64", "--n-ubatch", "64")
    args = (*args, *ONE_THREAD)
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def url(run_dir: Path, one_slot: Proc) -> Iterator[str]:
    extra = ("--sse-keepalive-s", INTERVAL_S)
    with running(spawn_gateway(run_dir, one_slot.target, extra=extra)) as proc:
        base = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{base}/health")
        yield base


@pytest.fixture(scope="module")
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client


def events(response: httpx.Response) -> Iterator[str]:
    """The SSE events of a response (comments included), as they arrive."""
    buffer = b""
    for raw in response.iter_raw():
        buffer += raw
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            yield event.decode()


def generated_text(event: str) -> str:
    """The text an event carries: a chat delta, a completion's text, or a Responses delta."""
    if not event.startswith("data: {"):
        return ""
    payload: dict[str, Any] = json.loads(event.removeprefix("data: "))
    if payload.get("type") == "response.output_text.delta":
        return str(payload["delta"])
    return "".join(
        choice.get("text") or (choice.get("delta") or {}).get("content") or ""
        for choice in payload.get("choices", [])
    )


@contextlib.contextmanager
def busy_slot(http: httpx.Client) -> Iterator[None]:
    """Holds the worker's one slot with a long generation until the block exits (closing the
    stream cancels it)."""
    body = {"model": "smollm2", "prompt": "Count:", "max_tokens": 3000, "ignore_eos": True}
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        stream = events(response)  # held: a collected generator would close the response
        next(event for event in stream if generated_text(event))
        yield


def new_session(http: httpx.Client) -> str:
    reply = http.post("/v1/sessions", json={"model": "smollm2"})
    assert reply.status_code == 201, reply.text
    session: str = reply.json()["id"]
    return session


MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.mark.parametrize("route", ["chat", "completions", "session"])
def test_a_queued_stream_gets_comments_until_it_runs(http: httpx.Client, route: str) -> None:
    path, body = {
        "chat": ("/v1/chat/completions", {"messages": MESSAGES}),
        "completions": ("/v1/completions", {"prompt": "Hello"}),
        "session": (f"/v1/sessions/{new_session(http)}/chat/completions", {"messages": MESSAGES}),
    }[route]
    body = {**body, "model": "smollm2", "max_tokens": 4, "stream": True}
    seen: list[str] = []
    blocker = busy_slot(http)
    blocker.__enter__()
    try:
        with http.stream("POST", path, json=body) as response:
            assert response.status_code == 200
            stream = events(response)
            while seen.count(KEEPALIVE) < QUEUED_COMMENTS:
                seen.append(next(stream))
            assert set(seen) == {KEEPALIVE}  # nothing else while queued
            blocker.__exit__(None, None, None)  # the slot frees: the request runs
            blocker = None
            seen.extend(stream)
    finally:
        if blocker is not None:
            blocker.__exit__(None, None, None)
    assert seen[-1] == "data: [DONE]"
    assert "".join(generated_text(event) for event in seen)


def test_a_responses_stream_gets_comments_during_a_long_prefill(http: httpx.Client) -> None:
    # The Responses route waits for the worker's admission before its response starts, and the
    # worker reports admission once the first prefill step has run: the comments fill the
    # steps after it. A prompt of some 400 tokens, new to the worker (no cached prefix), takes
    # several 64-token steps on one thread, each far longer than the interval.
    words = " ".join(f"w{uuid.uuid4().hex[:6]}" for _ in range(60))
    body = {"model": "smollm2", "input": words, "max_output_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        seen = list(events(response))
    first_delta = next(i for i, event in enumerate(seen) if generated_text(event))
    opening = [json.loads(event.removeprefix("data: "))["type"] for event in seen[:4]]
    assert opening[0] == "response.created"
    assert KEEPALIVE in seen[4:first_delta]
    assert KEEPALIVE not in seen[:4] and KEEPALIVE not in seen[first_delta:]
    assert seen[-1] == "data: [DONE]"


class Tap(httpx.BaseTransport):
    """An HTTP transport that shows a test the raw bytes its client receives."""

    def __init__(self, on_bytes: Callable[[bytes], None]) -> None:
        self.inner = httpx.HTTPTransport()
        self.on_bytes = on_bytes

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tapped(response.stream, self.on_bytes),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


class _Tapped(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, on_bytes: Callable[[bytes], None]) -> None:
        self.inner = inner
        self.on_bytes = on_bytes

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.on_bytes(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def test_the_sdk_reads_a_stream_that_was_kept_alive(url: str) -> None:
    busy, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold_the_slot() -> None:
        try:
            with httpx.Client(base_url=url, timeout=120) as own, busy_slot(own):
                busy.set()
                release.wait(120)
        except BaseException as exc:  # reported by the test below
            failures.append(exc)
            busy.set()

    received = bytearray()

    def watch(chunk: bytes) -> None:
        received.extend(chunk)
        if received.count(KEEPALIVE.encode()) >= QUEUED_COMMENTS:
            release.set()

    holder = threading.Thread(target=hold_the_slot)
    holder.start()
    try:
        assert busy.wait(120) and not failures
        with httpx.Client(transport=Tap(watch), timeout=120) as tapped:
            client = OpenAI(
                base_url=f"{url}/v1", api_key="unused", max_retries=0, http_client=tapped
            )
            stream = client.chat.completions.create(
                model="smollm2",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=4,
                stream=True,
            )
            chunks = list(stream)
    finally:
        release.set()
        holder.join(120)
    assert not failures
    assert received.count(KEEPALIVE.encode()) >= QUEUED_COMMENTS
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
