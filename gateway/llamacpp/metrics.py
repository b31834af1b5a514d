"""llama-server's ``llamacpp:`` Prometheus series, per model (label ``model``), summed over the
model's workers, so that dashboards made for llama-server keep working.

Token and time counters add up the final messages this gateway relays (their usage): with
several gateways in front of the same workers, each counts its own requests, as each
llama-server counted its own. Load series come from the workers' GetLoad reports (one load
interval old at most). Two are approximations: ``n_busy_slots_per_decode`` is the tokens
predicted through this gateway per decode step of the model's workers (llama-server counts the
busy slots of each step), and ``n_decode_total`` counts the workers' generation steps since they
started (a worker restart starts it again).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamagrid.v1 import inference_pb2 as pb

if TYPE_CHECKING:
    from llamagrid.gateway.pool import WorkerPool

PREFIX = "llamacpp:"


@dataclass
class _Totals:
    """What the gateway counted of one model's requests."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    predicted_tokens: int = 0
    predicted_seconds: float = 0.0


@dataclass
class _Load:
    """One model's workers' load, summed."""

    decodes: int = 0
    cells_used: int = 0
    cells_total: int = 0
    processing: int = 0
    deferred: int = 0


class LlamaCppSeries(Collector):
    """The ``llamacpp:`` series, read at scrape time."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self._totals: dict[str, _Totals] = {}

    def count(self, model: str, usage: pb.Usage) -> None:
        """Add a final message's usage: the prompt tokens computed, the tokens generated, and
        the time each took."""
        totals = self._totals.setdefault(model, _Totals())
        totals.prompt_tokens += usage.prefilled_tokens
        totals.prompt_seconds += usage.prefill_ms / 1000
        totals.predicted_tokens += usage.completion_tokens
        totals.predicted_seconds += usage.decode_ms / 1000

    def describe(self) -> list[Metric]:
        return []

    def _loads(self) -> dict[str, _Load]:
        loads: dict[str, _Load] = {}
        for worker in self.pool.workers:
            report = worker.load
            for model in worker.models:
                load = loads.setdefault(model, _Load())
                if report is None:
                    continue
                load.decodes += report.decode_steps
                load.cells_used += report.kv_cells_used
                load.cells_total += report.kv_cells_total
                load.processing += report.active_requests
                load.deferred += report.queued_requests
        return loads

    def collect(self) -> Iterator[Metric]:
        loads = self._loads()
        models = sorted(set(loads) | set(self._totals))
        counters = {
            "prompt_tokens": "Prompt tokens computed (not reused from cache).",
            "prompt_seconds": "Seconds spent computing prompt tokens.",
            "tokens_predicted": "Tokens generated.",
            "tokens_predicted_seconds": "Seconds spent generating tokens.",
            "n_decode": "Generation decode steps of the model's workers.",
        }
        gauges = {
            "n_busy_slots_per_decode": "Tokens generated per decode step (approximation).",
            "prompt_tokens_seconds": "Average prompt throughput in tokens/s.",
            "predicted_tokens_seconds": "Average generation throughput in tokens/s.",
            "kv_cache_usage_ratio": "KV-cache usage: 1 means 100 percent.",
            "kv_cache_tokens": "KV-cache cells in use.",
            "requests_processing": "Requests holding a slot.",
            "requests_deferred": "Requests waiting for a slot.",
        }
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {
            **{
                name: CounterMetricFamily(PREFIX + name, doc, labels=["model"])
                for name, doc in counters.items()
            },
            **{
                name: GaugeMetricFamily(PREFIX + name, doc, labels=["model"])
                for name, doc in gauges.items()
            },
        }
        for model in models:
            for name, value in _values(self._totals.get(model, _Totals()), loads.get(model)):
                families[name].add_metric([model], value)
        yield from families.values()


def _values(totals: _Totals, load: _Load | None) -> Iterator[tuple[str, float]]:
    load = load or _Load()
    yield "prompt_tokens", totals.prompt_tokens
    yield "prompt_seconds", totals.prompt_seconds
    yield "tokens_predicted", totals.predicted_tokens
    yield "tokens_predicted_seconds", totals.predicted_seconds
    yield "n_decode", load.decodes
    yield "n_busy_slots_per_decode", _ratio(totals.predicted_tokens, load.decodes)
    yield "prompt_tokens_seconds", _ratio(totals.prompt_tokens, totals.prompt_seconds)
    yield "predicted_tokens_seconds", _ratio(totals.predicted_tokens, totals.predicted_seconds)
    yield "kv_cache_usage_ratio", _ratio(load.cells_used, load.cells_total)
    yield "kv_cache_tokens", load.cells_used
    yield "requests_processing", load.processing
    yield "requests_deferred", load.deferred


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0
