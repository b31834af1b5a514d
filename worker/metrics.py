"""The worker's Prometheus metrics: llama-server's names where the meaning matches, ours beside.

Counters are plain numbers, each with one writer: EngineCounters on the engine thread,
RequestCounts on the event loop. Nothing on the hot path takes a lock. At scrape time a custom
Collector asks the engine for a snapshot (taken between two engine steps) and turns it into
samples. The /metrics endpoint is prometheus_client's own HTTP server on --metrics-port.

The llama-server metrics are those of llama.cpp's tools/server (`/metrics`). Its throughput
gauges average over the window since the previous scrape, as llama-server's do. The KV cache
gauges carry the names llama-server used until it dropped them (llama.cpp PR #13660).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import grpc
from prometheus_client import start_http_server
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from llamagrid.worker.engine.counters import EngineSnapshot
from llamagrid.worker.engine.events import ENGINE_REASONS, FinishReason

LLAMACPP = "llamacpp:"
OURS = "llamagrid_worker_"


class RequestCounts:
    """Finished RPCs by method and status code. Written only by the event loop thread."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, method: str, code: grpc.StatusCode) -> None:
        """Count one finished call."""
        key = (method, code.name)
        self._counts[key] = self._counts.get(key, 0) + 1

    def items(self) -> list[tuple[tuple[str, str], int]]:
        """(method, code) and count pairs; a copy, safe to read from any thread."""
        return list(self._counts.copy().items())


#: The scalar families: name, type, help. llamacpp: names and help follow llama-server's.
SCALARS: tuple[tuple[str, str, str], ...] = (
    (LLAMACPP + "prompt_tokens_total", "counter",
     "Number of prompt tokens processed, excluding cached tokens."),
    (LLAMACPP + "prompt_tokens_cached_total", "counter",
     "Number of prompt tokens reused from the cache."),
    (LLAMACPP + "prompt_seconds_total", "counter",
     "Total time spent processing prompts (admission to first token), summed over requests."),
    (LLAMACPP + "tokens_predicted_total", "counter", "Number of generation tokens processed."),
    (LLAMACPP + "tokens_predicted_seconds_total", "counter",
     "Total time spent generating tokens (first token to last), summed over requests."),
    (LLAMACPP + "n_decode_total", "counter", "Total number of llama_decode() calls."),
    (LLAMACPP + "n_tokens_max", "gauge",
     "Largest observed sequence length (prompt + generation)."),
    (LLAMACPP + "prompt_tokens_seconds", "gauge",
     "Average prompt throughput in tokens/s since the previous scrape."),
    (LLAMACPP + "predicted_tokens_seconds", "gauge",
     "Average generation throughput in tokens/s since the previous scrape."),
    (LLAMACPP + "requests_processing", "gauge", "Number of requests processing."),
    (LLAMACPP + "requests_deferred", "gauge", "Number of requests deferred (waiting for a slot)."),
    (LLAMACPP + "n_busy_slots_per_decode", "gauge",
     "Average number of busy slots per llama_decode() call."),
    (LLAMACPP + "kv_cache_usage_ratio", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    (LLAMACPP + "kv_cache_tokens", "gauge", "KV-cache tokens (cells in use)."),
    (OURS + "queue_depth", "gauge", "Generation requests waiting for a slot."),
    (OURS + "queue_limit", "gauge", "Generation requests that may wait (--max-queue)."),
    (OURS + "slots", "gauge", "Slots: sequences decoded together in one batch."),
    (OURS + "slots_busy", "gauge", "Slots holding a request."),
    (OURS + "kv_cells", "gauge", "KV cache size in cells (one token of one sequence each)."),
    (OURS + "prefix_cache_tokens", "gauge", "Prompt tokens idle slots keep cached for reuse."),
    (OURS + "embed_inputs_total", "counter", "Embedding inputs accepted."),
    (OURS + "embed_tokens_total", "counter", "Tokens of the embedding inputs accepted."),
    (OURS + "embed_queued_inputs", "gauge", "Embedding inputs waiting for a decode."),
    (OURS + "sessions", "gauge", "Sessions held (SessionService)."),
    (OURS + "host_cache_bytes", "gauge",
     "Host memory holding KV cells saved from evicted sequences (the host tier)."),
    (OURS + "host_cache_entries", "gauge", "Sequences saved in the host tier."),
    (OURS + "host_cache_saves_total", "counter", "Sequences saved to the host tier."),
    (OURS + "host_cache_restores_total", "counter",
     "Sequences restored from the host tier instead of prefilled."),
    (OURS + "prompt_tokens_restored_total", "counter",
     "Prompt tokens whose KV cells were restored from the host tier."),
    (OURS + "session_tokens_reprefilled_total", "counter",
     "Tokens of earlier session turns prefilled again (neither resident nor in the host tier)."),
)  # fmt: skip


class _Rate:
    """A throughput over the window since the previous scrape, as llama-server computes it."""

    def __init__(self) -> None:
        self._last = (0.0, 0.0)

    def update(self, count: float, seconds: float) -> float:
        d_count, d_seconds = count - self._last[0], seconds - self._last[1]
        self._last = (count, seconds)
        return d_count / d_seconds if d_seconds > 0 else 0.0


class SnapshotSource(Protocol):
    """Where the collector gets the engine's snapshot (None while loading or stopped)."""

    def __call__(self) -> EngineSnapshot | None: ...


class WorkerCollector(Collector):
    """Translates engine snapshots and request counts into metric families at scrape time."""

    def __init__(
        self, source: SnapshotSource, requests: RequestCounts, info: dict[str, str]
    ) -> None:
        self.source = source
        self.requests = requests
        self.info = info
        self._prompt_rate = _Rate()
        self._predict_rate = _Rate()

    def collect(self) -> Iterator[Metric]:
        """Every family; the engine's only when it answered."""
        snap = self.source()
        yield InfoMetricFamily(OURS.rstrip("_"), "This worker and the model it serves.", self.info)
        yield GaugeMetricFamily(
            OURS + "ready", "1 once the model is loaded and the engine answers.", int(bool(snap))
        )
        yield self._labelled(
            CounterMetricFamily(
                OURS + "requests",
                "Finished InferenceService calls by method and gRPC status code.",
                labels=("method", "code"),
            ),
            {key: n for key, n in self.requests.items()},
        )
        if snap is None:
            return
        values = self.values(snap)
        for name, kind, doc in SCALARS:
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, doc, value=values[name])
        finished = snap.counters.finished
        yield self._labelled(
            CounterMetricFamily(
                OURS + "generations",
                "Finished generations by finish reason.",
                labels=("finish_reason",),
            ),
            # The engine counts why decoding stopped: a turn that ends in tool calls (decided
            # after it, by the output parser) counts as the end of sequence it was.
            {(r.value,): finished.get(r.value, 0) for r in FinishReason if r in ENGINE_REASONS},
        )
        tiers = snap.session_tiers
        yield self._labelled(
            GaugeMetricFamily(
                OURS + "sessions_by_tier",
                "Sessions by where their KV cache is: resident in a sequence, saved in the host"
                " tier, or only their transcript (the next turn prefills it all).",
                labels=("tier",),
            ),
            {("resident",): tiers.resident, ("host",): tiers.host,
             ("transcript",): tiers.transcript},
        )  # fmt: skip
        yield self._labelled(
            GaugeMetricFamily(
                OURS + "layers", "Model layers placed on each device.", labels=("device",)
            ),
            {(device,): n for device, n in snap.device_layers.items()},
        )

    @staticmethod
    def _labelled(family: Metric, samples: dict[tuple[str, ...], float]) -> Metric:
        for labels, value in sorted(samples.items()):
            family.add_metric(labels, value)  # type: ignore[attr-defined]
        return family

    def values(self, s: EngineSnapshot) -> dict[str, float]:
        """The value of every SCALARS family for a snapshot (advances the rate windows)."""
        c = s.counters
        p, o = LLAMACPP, OURS
        return {
            p + "prompt_tokens_total": c.prompt_tokens,
            p + "prompt_tokens_cached_total": c.prompt_tokens_cached,
            p + "prompt_seconds_total": c.prompt_seconds,
            p + "tokens_predicted_total": c.predicted_tokens,
            p + "tokens_predicted_seconds_total": c.predicted_seconds,
            p + "n_decode_total": c.decode_calls,
            p + "n_tokens_max": c.n_tokens_max,
            p + "prompt_tokens_seconds": self._prompt_rate.update(
                c.prompt_tokens, c.prompt_seconds
            ),
            p + "predicted_tokens_seconds": self._predict_rate.update(
                c.predicted_steps, c.predicted_seconds
            ),
            p + "requests_processing": s.slots_busy,
            p + "requests_deferred": s.queued,
            p + "n_busy_slots_per_decode": c.busy_slots / max(c.decode_calls, 1),
            p + "kv_cache_usage_ratio": s.kv_cells_used / s.kv_cells_total
            if s.kv_cells_total
            else 0.0,
            p + "kv_cache_tokens": s.kv_cells_used,
            o + "queue_depth": s.queued,
            o + "queue_limit": s.max_queue,
            o + "slots": s.slots,
            o + "slots_busy": s.slots_busy,
            o + "kv_cells": s.kv_cells_total,
            o + "prefix_cache_tokens": s.prefix_cache_tokens,
            o + "embed_inputs_total": c.embed_inputs,
            o + "embed_tokens_total": c.embed_tokens,
            o + "embed_queued_inputs": s.embed_queued,
            o + "sessions": s.sessions,
            o + "host_cache_bytes": s.host_bytes,
            o + "host_cache_entries": s.host_entries,
            o + "host_cache_saves_total": c.host_saves,
            o + "host_cache_restores_total": c.host_restores,
            o + "prompt_tokens_restored_total": c.prompt_tokens_restored,
            o + "session_tokens_reprefilled_total": s.session_tokens_reprefilled,
        }


class WorkerMetrics:
    """The worker's registry: request counts from the gRPC layer, the engine at scrape time."""

    def __init__(
        self, source: SnapshotSource, info: dict[str, str], requests: RequestCounts | None = None
    ) -> None:
        self.requests = requests or RequestCounts()
        self.registry = CollectorRegistry()
        self.collector = WorkerCollector(source, self.requests, info)
        self.registry.register(self.collector)
        self._stop: Callable[[], None] | None = None

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on host:port from a prometheus_client thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        self._stop = stop

    def close(self) -> None:
        """Stop the HTTP endpoint, if one runs."""
        if self._stop is not None:
            self._stop()
            self._stop = None
