"""The fleet endpoint's answer, from the pool (health, breaker, GetLoad) and the activity."""

from __future__ import annotations

from llamagrid.gateway.console.activity import BUCKET_S, Activity, Bucket, RequestRecord
from llamagrid.gateway.console.schemas import (
    Fleet,
    ModelView,
    RequestView,
    Series,
    SeriesPoint,
    WorkerState,
    WorkerView,
)
from llamagrid.gateway.pool import Worker, WorkerPool


def fleet(pool: WorkerPool, activity: Activity) -> Fleet:
    """A snapshot of the pool's workers, its models and the recent traffic."""
    workers = pool.workers
    activity.forget_except({worker.address for worker in workers})
    served: dict[str, list[str]] = {}
    for worker in workers:
        for alias in worker.models:
            served.setdefault(alias, []).append(worker.address)
    options = pool.options
    models = [
        ModelView(
            id=alias, policy=options.model_policies.get(alias, options.policy), workers=addresses
        )
        for alias, addresses in sorted(served.items())
    ]
    return Fleet(
        time=activity.now(),
        models=models,
        workers=[worker_view(worker, activity) for worker in workers],
        recent=[request_view(record) for record in reversed(activity.recent)],
        series=Series(interval_s=BUCKET_S, points=[point(bucket) for bucket in activity.series()]),
    )


def state(worker: Worker) -> WorkerState:
    """'ejected' while the breaker holds it out, else 'up' or 'down' by its health."""
    if worker.ejected:
        return "ejected"
    return "up" if worker.healthy else "down"


def worker_view(worker: Worker, activity: Activity) -> WorkerView:
    """One worker: what routing knows of it, and its latest GetLoad report."""
    load = worker.load
    tokens = activity.tokens.get(worker.address)
    prompt, cached = (tokens.prompt, tokens.cached) if tokens is not None else (0, 0)
    return WorkerView(
        address=worker.address,
        models=sorted(worker.models),
        state=state(worker),
        healthy=worker.healthy,
        breaker="open" if worker.ejected else "closed",
        failures=worker.failures,
        in_flight=worker.in_flight,
        requests_started=worker.started,
        slots_busy=load.active_requests if load is not None else None,
        slots_total=worker.slots,
        queued=load.queued_requests if load is not None else None,
        max_queue=load.max_queue if load is not None else None,
        kv_cells_used=load.kv_cells_used if load is not None else None,
        kv_cells_total=load.kv_cells_total if load is not None else None,
        sessions=worker.sessions,
        prompt_tokens=prompt,
        cached_tokens=cached,
        cached_ratio=cached / prompt if prompt else None,
    )


def request_view(record: RequestRecord) -> RequestView:
    """One recent request, times in milliseconds."""
    return RequestView(
        time=record.time,
        method=record.method,
        route=record.route,
        model=record.model,
        status=record.status,
        worker=record.worker,
        reason=record.reason,
        attempts=record.attempts,
        ttft_ms=record.ttft_s * 1000 if record.ttft_s is not None else None,
        duration_ms=record.duration_s * 1000,
        prompt_tokens=record.prompt_tokens,
        cached_tokens=record.cached_tokens,
        completion_tokens=record.completion_tokens,
    )


def point(bucket: Bucket) -> SeriesPoint:
    """One interval of the series."""
    ttft = bucket.ttft_sum_s / bucket.ttft_count * 1000 if bucket.ttft_count else None
    return SeriesPoint(
        time=bucket.start,
        requests=bucket.requests,
        tokens_per_s=bucket.completion_tokens / BUCKET_S,
        ttft_ms=ttft,
        rate_limited=bucket.rate_limited,
        errors=bucket.errors,
    )
