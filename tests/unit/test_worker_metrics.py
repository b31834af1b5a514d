"""The worker's metrics collector: engine counters and request counts to Prometheus samples."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llamagrid.worker.engine.counters import EngineCounters, EngineSnapshot
from llamagrid.worker.engine.events import Final, FinishReason, Usage
from llamagrid.worker.engine.reports import TierCounts
from llamagrid.worker.metrics import SCALARS, RequestCounts, WorkerMetrics


def final(
    reason: FinishReason,
    prompt: int,
    completion: int,
    cached: int = 0,
    prefill_ms: float = 0.0,
    decode_ms: float = 0.0,
) -> Final:
    return Final(
        reason,
        Usage(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=cached,
            prefill_ms=prefill_ms,
            decode_ms=decode_ms,
        ),
    )


def snapshot(counters: EngineCounters, **state: int) -> EngineSnapshot:
    values = {
        "slots": 4,
        "slots_busy": 1,
        "queued": 2,
        "max_queue": 64,
        "kv_cells_used": 256,
        "kv_cells_total": 1024,
        "prefix_cache_tokens": 40,
        "embed_queued": 3,
    }
    values.update(state)
    return EngineSnapshot(counters=counters.copy(), device_layers={"CPU": 31}, **values)


class Source:
    """Hands the collector whatever snapshot the test sets."""

    def __init__(self) -> None:
        self.current: EngineSnapshot | None = None

    def __call__(self) -> EngineSnapshot | None:
        return self.current


def scrape(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Render and parse the exposition text, as Prometheus would."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return samples[(name, ())]


@pytest.fixture
def metrics() -> tuple[WorkerMetrics, Source]:
    source = Source()
    return WorkerMetrics(source, {"name": "pod-3", "model": "smollm2"}), source


def test_finished_generations_count_as_their_usage_reports() -> None:
    c = EngineCounters()
    c.on_final(final(FinishReason.EOS, 20, 5, cached=8, prefill_ms=120.0, decode_ms=50.0))
    c.on_final(final(FinishReason.LENGTH, 10, 4, prefill_ms=80.0, decode_ms=30.0))
    c.on_final(final(FinishReason.EOS, 7, 0, prefill_ms=10.0))  # EOS as the first token
    assert c.prompt_tokens == (20 - 8) + 10 + 7
    assert c.prompt_tokens_cached == 8
    assert c.prompt_seconds == pytest.approx(0.21)
    assert c.predicted_tokens == 9
    # Tokens sampled by decode steps: EOS ends a stream one sample after its last token.
    assert c.predicted_steps == 5 + (4 - 1) + 0
    assert c.predicted_seconds == pytest.approx(0.08)
    assert c.n_tokens_max == 25
    assert c.finished == {"eos": 2, "length": 1}


def test_scalar_samples_from_a_snapshot(metrics: tuple[WorkerMetrics, Source]) -> None:
    m, source = metrics
    c = EngineCounters()
    c.on_final(final(FinishReason.STOP_STRING, 30, 6, cached=10, prefill_ms=400, decode_ms=100))
    for busy in (1, 2, 2, 3):
        c.on_decode(busy)
    c.on_embed([5, 7, 9])
    source.current = dataclasses.replace(snapshot(c), session_tiers=TierCounts(2, 5, 1))
    s = scrape(m)
    assert value(s, "llamacpp:prompt_tokens_total") == 20
    assert value(s, "llamacpp:prompt_tokens_cached_total") == 10
    assert value(s, "llamacpp:prompt_seconds_total") == pytest.approx(0.4)
    assert value(s, "llamacpp:tokens_predicted_total") == 6
    assert value(s, "llamacpp:tokens_predicted_seconds_total") == pytest.approx(0.1)
    assert value(s, "llamacpp:n_decode_total") == 4
    assert value(s, "llamacpp:n_busy_slots_per_decode") == 2.0
    assert value(s, "llamacpp:n_tokens_max") == 36
    assert value(s, "llamacpp:requests_processing") == 1
    assert value(s, "llamacpp:requests_deferred") == 2
    assert value(s, "llamacpp:kv_cache_usage_ratio") == 0.25
    assert value(s, "llamacpp:kv_cache_tokens") == 256
    assert value(s, "llamagrid_worker_queue_depth") == 2
    assert value(s, "llamagrid_worker_queue_limit") == 64
    assert value(s, "llamagrid_worker_slots") == 4
    assert value(s, "llamagrid_worker_slots_busy") == 1
    assert value(s, "llamagrid_worker_kv_cells") == 1024
    assert value(s, "llamagrid_worker_prefix_cache_tokens") == 40
    assert value(s, "llamagrid_worker_embed_inputs_total") == 3
    assert value(s, "llamagrid_worker_embed_tokens_total") == 21
    assert value(s, "llamagrid_worker_embed_queued_inputs") == 3
    assert value(s, "llamagrid_worker_ready") == 1
    assert s[("llamagrid_worker_layers", (("device", "CPU"),))] == 31
    tiers = {
        labels: v for (name, labels), v in s.items() if name == "llamagrid_worker_sessions_by_tier"
    }
    by_tier = {"resident": 2, "host": 5, "transcript": 1}
    assert tiers == {(("tier", tier),): n for tier, n in by_tier.items()}
    generations = {
        labels: v for (name, labels), v in s.items() if name == "llamagrid_worker_generations_total"
    }
    assert generations == {
        (("finish_reason", "eos"),): 0,
        (("finish_reason", "length"),): 0,
        (("finish_reason", "stop_string"),): 1,
    }
    info = (("model", "smollm2"), ("name", "pod-3"))
    assert s[("llamagrid_worker_info", info)] == 1


def test_every_family_has_its_declared_type(metrics: tuple[WorkerMetrics, Source]) -> None:
    m, source = metrics
    source.current = snapshot(EngineCounters())
    text = generate_latest(m.registry).decode()
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind, _doc in SCALARS:
        # The parser names a counter family without its _total suffix.
        assert types[name.removesuffix("_total")] == kind, name
    # llama-server's names survive the exposition unchanged, colon included.
    assert "llamacpp:prompt_tokens_total 0.0" in text
    assert "llamacpp:n_tokens_max 0.0" in text


def test_throughput_gauges_average_over_the_window_between_scrapes(
    metrics: tuple[WorkerMetrics, Source],
) -> None:
    m, source = metrics
    c = EngineCounters()
    c.on_final(final(FinishReason.LENGTH, 100, 11, prefill_ms=500, decode_ms=200))
    source.current = snapshot(c)
    first = scrape(m)
    assert value(first, "llamacpp:prompt_tokens_seconds") == pytest.approx(200.0)
    assert value(first, "llamacpp:predicted_tokens_seconds") == pytest.approx(50.0)
    # Nothing happened since: no throughput to report (llama-server reports 0 too).
    second = scrape(m)
    assert value(second, "llamacpp:prompt_tokens_seconds") == 0.0
    assert value(second, "llamacpp:predicted_tokens_seconds") == 0.0
    c.on_final(final(FinishReason.EOS, 60, 9, cached=20, prefill_ms=100, decode_ms=300))
    source.current = snapshot(c)
    third = scrape(m)
    assert value(third, "llamacpp:prompt_tokens_seconds") == pytest.approx(40 / 0.1)
    assert value(third, "llamacpp:predicted_tokens_seconds") == pytest.approx(9 / 0.3)
    # The counters stay cumulative.
    assert value(third, "llamacpp:prompt_tokens_total") == 140


def test_request_counts_by_method_and_code(metrics: tuple[WorkerMetrics, Source]) -> None:
    m, _ = metrics
    for method, code in [
        ("Generate", grpc.StatusCode.OK),
        ("Generate", grpc.StatusCode.OK),
        ("Generate", grpc.StatusCode.INVALID_ARGUMENT),
        ("Embed", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("Generate", grpc.StatusCode.CANCELLED),
    ]:
        m.requests.add(method, code)
    s = scrape(m)
    counts = {
        dict(labels)["method"] + "/" + dict(labels)["code"]: v
        for (name, labels), v in s.items()
        if name == "llamagrid_worker_requests_total"
    }
    assert counts == {
        "Generate/OK": 2,
        "Generate/INVALID_ARGUMENT": 1,
        "Generate/CANCELLED": 1,
        "Embed/RESOURCE_EXHAUSTED": 1,
    }


def test_without_an_engine_only_the_worker_families_remain(
    metrics: tuple[WorkerMetrics, Source],
) -> None:
    m, _ = metrics
    m.requests.add("GetModelInfo", grpc.StatusCode.UNAVAILABLE)
    s = scrape(m)  # the source answers None: still loading, or stopped
    assert value(s, "llamagrid_worker_ready") == 0
    names = {name for name, _ in s}
    assert not any(n.startswith("llamacpp:") for n in names)
    assert "llamagrid_worker_requests_total" in names


def test_empty_kv_cache_and_no_decodes_give_zero_ratios(
    metrics: tuple[WorkerMetrics, Source],
) -> None:
    m, source = metrics
    source.current = snapshot(EngineCounters(), kv_cells_total=0, kv_cells_used=0)
    s = scrape(m)
    assert value(s, "llamacpp:kv_cache_usage_ratio") == 0.0
    assert value(s, "llamacpp:n_busy_slots_per_decode") == 0.0


def test_request_counts_copy_is_independent() -> None:
    counts = RequestCounts()
    counts.add("Tokenize", grpc.StatusCode.OK)
    items = counts.items()
    counts.add("Tokenize", grpc.StatusCode.OK)
    assert items == [(("Tokenize", "OK"), 1)]
    assert counts.items() == [(("Tokenize", "OK"), 2)]
