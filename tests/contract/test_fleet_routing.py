"""The gateway in front of several (fake) workers: routing by model, failover, the circuit
breaker, affinity, response headers, metrics and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.lifecycle import DrainingServer
from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.conftest import eventually
from tests.contract.fake_worker import MODEL, PROMPT_TOKENS, FakeWorker

MESSAGES = [{"role": "user", "content": "hi"}]


@contextlib.asynccontextmanager
async def workers(*models: tuple[str, ...]) -> AsyncIterator[list[FakeWorker]]:
    fakes = [FakeWorker(m) for m in models]
    for fake in fakes:
        await fake.start(serving=True)
    try:
        yield fakes
    finally:
        for fake in fakes:
            await fake.stop()


@contextlib.asynccontextmanager
async def fleet_gateway(
    fakes: list[FakeWorker], **settings: Any
) -> AsyncIterator[tuple[str, WorkerPool, DrainingServer]]:
    """A real uvicorn (DrainingServer, as `llamagrid gateway` runs) in front of ``fakes``."""
    config_values = {"health_retry_s": 0.05, "request_timeout_s": 10, "retry_backoff_s": 0.01}
    gateway_settings = GatewaySettings(
        workers=[f.address for f in fakes], **{**config_values, **settings}
    )
    pool = create_pool(gateway_settings)
    app = create_app(gateway_settings, pool)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    server = DrainingServer(config, app.state.drain)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started)
    port = server.servers[0].sockets[0].getsockname()[1]
    await eventually(
        lambda: all(w.healthy for w in pool.workers) and len(pool.workers) == len(fakes)
    )
    try:
        yield f"http://127.0.0.1:{port}", pool, server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=10)


async def chat(url: str, model: str = MODEL, **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    body = {"model": model, "messages": MESSAGES, **extra}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.post("/v1/chat/completions", json=body, headers=headers)


async def scrape(url: str) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f"{k}={v}" for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if key.startswith(name + "{") and all(w in key for w in wanted)
    )


async def test_requests_route_by_model_and_unknown_models_are_404() -> None:
    async with workers(("alpha",), ("beta",)) as (a, b), fleet_gateway([a, b]) as (url, pool, _):
        for model, fake in (("alpha", a), ("beta", b)):
            response = await chat(url, model)
            assert response.status_code == 200, response.text
            assert response.headers["x-llamagrid-worker"] == fake.address
            assert response.headers["x-llamagrid-route"] == "prefix_affinity:home"
        missing = await chat(url, "gamma")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
        listed = [m.id async for m in sdk(url).models.list()]
        assert listed == ["alpha", "beta"]
        # A model whose only worker is not serving is no longer listed, and is a 503.
        await b.set_serving(False)
        b_view = next(w for w in pool.workers if w.address == b.address)
        await eventually(lambda: not b_view.healthy)
        assert [m.id async for m in sdk(url).models.list()] == ["alpha"]
        assert (await chat(url, "beta")).status_code == 503


async def test_unavailable_before_the_first_byte_is_retried_and_repeated_failures_eject() -> None:
    async with (
        workers((MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, policy="round_robin", breaker_threshold=2, breaker_cooldown_s=60) as (
            url,
            pool,
            _,
        ),
    ):
        bad, good = sorted(fakes, key=lambda f: f.address)  # round robin starts at the lowest
        bad.fail_with(grpc.StatusCode.UNAVAILABLE, "going away")
        first = await chat(url)
        assert first.status_code == 200
        assert first.headers["x-llamagrid-worker"] == good.address
        assert first.headers["x-llamagrid-attempts"] == "2"
        stream = await sdk(url).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello, world!"
        # Two counted failures: the bad worker is out of rotation, calls go straight to good.
        bad_view = next(w for w in pool.workers if w.address == bad.address)
        assert bad_view.ejected
        calls = len(bad.requests)
        for _ in range(3):
            response = await chat(url)
            assert response.headers["x-llamagrid-attempts"] == "1"
        assert len(bad.requests) == calls
        samples = await scrape(url)
        assert total(samples, "llamagrid_gateway_retries_total", code="UNAVAILABLE") == 2
        assert total(samples, "llamagrid_gateway_worker_ejections_total") == 1
        assert total(samples, "llamagrid_gateway_worker_ejected", worker=bad.address) == 1
        # It returns when its health says SERVING again.
        bad.script.failure = None
        await bad.set_serving(False)
        await eventually(lambda: not bad_view.healthy)
        assert bad_view.ejected
        await bad.set_serving(True)
        await eventually(lambda: not bad_view.ejected)
        seen = {(await chat(url)).headers["x-llamagrid-worker"] for _ in range(2)}
        assert seen == {bad.address, good.address}


async def test_an_ejected_worker_that_stayed_serving_returns_after_a_probe() -> None:
    async with (
        workers((MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, policy="round_robin", breaker_threshold=1, breaker_cooldown_s=0.2) as (
            url,
            pool,
            _,
        ),
    ):
        bad, _good = sorted(fakes, key=lambda f: f.address)
        bad.fail_with(grpc.StatusCode.INTERNAL, "bug")
        assert (await chat(url)).status_code == 500  # INTERNAL is counted but not retried
        bad_view = next(w for w in pool.workers if w.address == bad.address)
        assert bad_view.ejected and bad_view.healthy  # its health never changed
        bad.script.failure = None
        await eventually(lambda: not bad_view.ejected)  # the probe read SERVING


async def test_client_errors_are_neither_retried_nor_counted_against_the_worker() -> None:
    async with (
        workers((MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, policy="round_robin", breaker_threshold=2) as (url, pool, _),
    ):
        for fake in fakes:
            fake.fail_with(
                grpc.StatusCode.INVALID_ARGUMENT, "temperature is bad", param="temperature"
            )
        for _ in range(4):
            response = await chat(url)
            assert response.status_code == 400
            assert response.headers["x-llamagrid-attempts"] == "1"
        assert not any(w.ejected for w in pool.workers)
        assert sum(len(f.requests) for f in fakes) == 4


async def test_a_full_queue_is_retried_on_another_worker() -> None:
    async with (
        workers((MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, policy="round_robin") as (
            url,
            _,
            _,
        ),
    ):
        full, free = sorted(fakes, key=lambda f: f.address)
        full.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", reason="QUEUE_FULL")
        response = await chat(url)
        assert (
            response.status_code == 200 and response.headers["x-llamagrid-worker"] == free.address
        )
        # With every queue full the client gets the 429, with Retry-After.
        free.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", reason="QUEUE_FULL")
        refused = await chat(url)
        assert refused.status_code == 429 and "retry-after" in refused.headers
        samples = await scrape(url)
        assert total(samples, "llamagrid_gateway_rate_limited_total") == 1


async def test_a_stream_that_fails_midway_ends_with_an_error_event_and_is_not_replayed() -> None:
    async with (
        workers((MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, policy="round_robin") as (
            url,
            _,
            _,
        ),
    ):
        first, second = sorted(fakes, key=lambda f: f.address)
        first.fail_with(grpc.StatusCode.UNAVAILABLE, "worker died", after_chunks=2)
        stream = await sdk(url).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        received = []
        with pytest.raises(openai.APIError, match="worker died"):
            async for chunk in stream:
                received.append(chunk)
        assert received  # it had started
        assert len(first.generate_requests()) == 1 and second.generate_requests() == []
        samples = await scrape(url)
        assert total(samples, "llamagrid_gateway_stream_errors_total") == 1
        assert total(samples, "llamagrid_gateway_retries_total") == 0


async def test_session_affinity_keeps_a_session_on_one_worker() -> None:
    async with (
        workers((MODEL,), (MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, model_policies={MODEL: "session_affinity"}) as (url, _, _),
    ):
        for session in ("alice", "bob", "carol"):
            by_header = {
                (await chat(url, headers={"X-Session-ID": session})).headers["x-llamagrid-worker"]
                for _ in range(3)
            }
            by_user = {
                (await chat(url, user=session)).headers["x-llamagrid-worker"] for _ in range(3)
            }
            assert len(by_header) == 1 and by_header == by_user
        response = await chat(url, headers={"X-Session-ID": "alice"})
        assert response.headers["x-llamagrid-route"] == "session_affinity:pinned"


async def test_metrics_count_requests_tokens_and_time_to_first_token() -> None:
    strict = {"strict_model_names": True}  # "nope" is a 404, not the one model
    async with workers((MODEL,)) as fakes, fleet_gateway(fakes, **strict) as (url, _, _):
        assert (await chat(url)).status_code == 200
        stream = await sdk(url).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        async for _ in stream:
            pass
        assert (await chat(url, "nope")).status_code == 404
        samples = await scrape(url)
        route = "/v1/chat/completions"
        assert total(samples, "llamagrid_gateway_requests_total", route=route, status="200") == 2
        assert (
            total(samples, "llamagrid_gateway_requests_total", model="unknown", status="404") == 1
        )
        assert (
            total(samples, "llamagrid_gateway_prompt_tokens_total", model=MODEL)
            == 2 * PROMPT_TOKENS
        )
        assert total(samples, "llamagrid_gateway_completion_tokens_total", model=MODEL) == 8
        assert total(samples, "llamagrid_gateway_cached_prompt_tokens_total", model=MODEL) == 6
        assert total(samples, "llamagrid_gateway_time_to_first_token_seconds_count") == 1
        assert total(samples, "llamagrid_gateway_inter_token_latency_seconds_count") == 3
        assert total(samples, "llamagrid_gateway_worker_in_flight", worker=fakes[0].address) == 0
        assert total(samples, "llamagrid_gateway_routed_total", model=MODEL) == 2


async def test_sigterm_drains_new_requests_get_503_and_running_streams_finish() -> None:
    async with (
        workers((MODEL,)) as fakes,
        fleet_gateway(fakes, drain_grace_s=10) as (
            url,
            _,
            server,
        ),
    ):
        fakes[0].script.delay_s = 0.3
        stream = await sdk(url).chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        first = await anext(aiter(stream))
        server.handle_exit(signal.SIGTERM, None)
        refused = await chat(url)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "draining"
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/health")).status_code == 503  # readiness off
            assert (await http.get("/livez")).status_code == 200
        rest = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
        assert text == "Hello, world!"
        await eventually(lambda: server.should_exit, timeout=5)


async def test_a_request_whose_worker_fails_after_accepting_it_is_not_replayed() -> None:
    async with (
        workers((MODEL,), (MODEL,)) as fakes,
        fleet_gateway(fakes, policy="round_robin") as (url, _, _),
    ):
        first, second = sorted(fakes, key=lambda f: f.address)
        # The worker accepts the call, streams a token, then goes away (as a crash looks).
        first.fail_with(grpc.StatusCode.UNAVAILABLE, "worker died", after_chunks=1)
        response = await chat(url)
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("server_error", "worker_failed")
        assert len(first.requests) == 1 and not second.requests
        # A refusal before acceptance is still failed over.
        first.fail_with(grpc.StatusCode.UNAVAILABLE, "going away")
        answers = [await chat(url), await chat(url)]
        assert [a.status_code for a in answers] == [200, 200]
        assert {a.headers["x-llamagrid-worker"] for a in answers} == {second.address}
        assert sorted(a.headers["x-llamagrid-attempts"] for a in answers) == ["1", "2"]
