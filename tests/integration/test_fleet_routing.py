"""prefix_affinity on two real workers: a shared system prompt stays on one worker, whose KV
cache then serves it (cached_tokens), until that worker is loaded past the bound; then the
overflow spills to the other worker, and the prefix goes home again once the load is gone."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

SYSTEM = (
    "You are the support assistant of the Northwind Trading Company. Answer briefly, politely "
    "and only about orders, shipping, returns and invoices. "
) * 8


@dataclass
class Streamed:
    worker: str
    reason: str
    response: httpx.Response
    lines: Iterator[str]


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("routing")
    flags = ("--parallel", "2", "--n-ctx", "4096", "--n-threads", "1")
    with running(spawn_worker(tmp, *flags)) as a, running(spawn_worker(tmp, *flags)) as b:
        for worker in (a, b):
            wait_serving(worker)
        extra = ("--policy", "prefix_affinity", "--affinity-bound", "1.25")
        with running(spawn_gateway(tmp, a.target, b.target, extra=extra)) as gateway:
            url = f"http://127.0.0.1:{gateway.port}"
            wait_http_ok(f"{url}/health")
            _wait_both_listed(gateway)
            yield url


def _wait_both_listed(gateway: Proc) -> None:
    wait_gauge(f"http://127.0.0.1:{gateway.port}", "llamagrid_gateway_worker_available", 1.0)


def wait_gauge(url: str, name: str, value: float) -> None:
    """Until the gateway's per-worker gauge ``name`` has ``value`` for both workers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = httpx.get(f"{url}/metrics").text
        values = [
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name
        ]
        if values == [value, value]:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name} never reached {value} for both workers")


def body(question: str, max_tokens: int, stream: bool = False) -> dict[str, object]:
    request: dict[str, object] = {
        "model": "smollm2",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        request |= {"stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
    return request


def ask(url: str, question: str) -> tuple[str, str, int, int]:
    """One non-streamed chat: worker, routing reason, prompt tokens, cached tokens."""
    reply = httpx.post(f"{url}/v1/chat/completions", json=body(question, 8), timeout=120)
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    return (
        reply.headers["x-llamagrid-worker"],
        reply.headers["x-llamagrid-route"],
        usage["prompt_tokens"],
        usage["prompt_tokens_details"]["cached_tokens"],
    )


def test_a_shared_system_prompt_stays_home_and_is_served_from_its_cache(gateway_url: str) -> None:
    replies = [
        ask(gateway_url, q)
        for q in (
            "Where is my order?",
            "How do I return a lamp?",
            "Can I get a copy of invoice 42?",
        )
    ]
    homes = {worker for worker, *_ in replies}
    assert len(homes) == 1 and {reason for _, reason, *_ in replies} == {"prefix_affinity:home"}
    first_cached = replies[0][3]
    for _, _, prompt, cached in replies[1:]:
        # Everything up to the user's question came from the home worker's KV cache.
        assert cached > 200 and cached > first_cached and cached < prompt


def test_a_loaded_home_spills_over_then_the_prefix_returns(gateway_url: str) -> None:
    home = ask(gateway_url, "What are your opening hours?")[0]
    with contextlib.ExitStack() as stack:
        opened: list[Streamed] = []
        # Three long streams at once: the home worker's 2 slots, then its bound, are full.
        for number in range(3):
            http = stack.enter_context(httpx.Client(base_url=gateway_url, timeout=120))
            response = stack.enter_context(
                http.stream(
                    "POST", "/v1/chat/completions", json=body(f"Question {number}?", 96, True)
                )
            )
            assert response.status_code == 200
            lines = response.iter_lines()
            next(line for line in lines if line.startswith((":", "data:")))
            worker = response.headers["x-llamagrid-worker"]
            opened.append(Streamed(worker, response.headers["x-llamagrid-route"], response, lines))
        routes = [(s.worker == home, s.reason) for s in opened]
        assert routes == [
            (True, "prefix_affinity:home"),
            (True, "prefix_affinity:home"),
            (False, "prefix_affinity:spill"),
        ]
        for streamed in opened:
            events = [json.loads(line[6:]) for line in streamed.lines if line.startswith("data: {")]
            assert events[-1]["usage"]["completion_tokens"] == 96
    # With the load gone (as the workers' next load reports say), the prefix goes home again
    wait_gauge(gateway_url, "llamagrid_gateway_worker_requests", 0.0)
    # and is served from the cache there.
    worker, reason, _, cached = ask(gateway_url, "Do you ship to Norway?")
    assert (worker, reason) == (home, "prefix_affinity:home") and cached > 200
