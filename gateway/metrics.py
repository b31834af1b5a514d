"""The gateway's Prometheus metrics (prometheus-client), served at /metrics.

Everything lives in the app's own registry, so two gateways in one process (tests) never mix.
Per-worker gauges are read from the pool at scrape time rather than kept up to date.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llamagrid.gateway.llamacpp.metrics import LlamaCppSeries

if TYPE_CHECKING:
    from llamagrid.gateway.pool import Worker, WorkerPool

PREFIX = "llamagrid_gateway"
#: Buckets for time to first token, in seconds.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets for the time between two tokens of a stream, in seconds.
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
#: The model label of a request for a model no worker serves (keeps label sets bounded).
UNKNOWN_MODEL = "unknown"


class GatewayMetrics:
    """Every metric the gateway exports."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by route, model and status code.",
            ["route", "model", "status"],
            registry=registry,
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from dispatch to the first generated token of a stream.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            f"{PREFIX}_inter_token_latency_seconds",
            "Time between two consecutive token chunks of a stream.",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens processed.", ["model"], registry=registry
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Tokens generated.", ["model"], registry=registry
        )
        self.cached_tokens = Counter(
            f"{PREFIX}_cached_prompt_tokens",
            "Prompt tokens served from a worker's KV cache instead of being computed.",
            ["model"],
            registry=registry,
        )
        self.retries = Counter(
            f"{PREFIX}_retries",
            "Calls retried on another worker before anything reached the client, by the "
            "status that caused the retry.",
            ["model", "code"],
            registry=registry,
        )
        self.ejections = Counter(
            f"{PREFIX}_worker_ejections",
            "Times the circuit breaker took a worker out of rotation.",
            ["worker"],
            registry=registry,
        )
        self.rate_limited = Counter(
            f"{PREFIX}_rate_limited",
            "Requests answered 429 because the workers' queues were full or timed out.",
            ["model"],
            registry=registry,
        )
        self.routed = Counter(
            f"{PREFIX}_routed",
            "Calls sent to a worker, by model, worker and routing reason.",
            ["model", "worker", "reason"],
            registry=registry,
        )
        self.stream_errors = Counter(
            f"{PREFIX}_stream_errors",
            "Streams that ended with an error event after they had started.",
            ["model"],
            registry=registry,
        )
        registry.register(_PoolCollector(pool))
        #: llama-server's ``llamacpp:`` series (gateway.llamacpp.metrics).
        self.llamacpp = LlamaCppSeries(pool)
        registry.register(self.llamacpp)
        pool.breaker.on_eject = self._ejected

    def model_label(self, model: str) -> str:
        """``model`` if some worker serves it, else ``unknown``."""
        served = any(model in worker.models for worker in self.pool.workers)
        return model if served else UNKNOWN_MODEL

    def _ejected(self, worker: Worker) -> None:
        self.ejections.labels(worker.address).inc()


class _PoolCollector(Collector):
    """Per-worker gauges read from the pool when Prometheus scrapes."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        families = {
            "in_flight": GaugeMetricFamily(
                f"{PREFIX}_worker_in_flight",
                "Calls this gateway has in flight on each worker.",
                labels=["worker"],
            ),
            "requests": GaugeMetricFamily(
                f"{PREFIX}_worker_requests",
                "Running plus queued requests on each worker, as last reported or counted.",
                labels=["worker"],
            ),
            "available": GaugeMetricFamily(
                f"{PREFIX}_worker_available",
                "1 when the worker is SERVING and not ejected, else 0.",
                labels=["worker"],
            ),
            "ejected": GaugeMetricFamily(
                f"{PREFIX}_worker_ejected",
                "1 while the circuit breaker keeps the worker out of rotation.",
                labels=["worker"],
            ),
        }
        for worker in self.pool.workers:
            labels = [worker.address]
            families["in_flight"].add_metric(labels, worker.in_flight)
            families["requests"].add_metric(labels, worker.requests)
            families["available"].add_metric(labels, int(worker.available))
            families["ejected"].add_metric(labels, int(worker.ejected))
        yield from families.values()
