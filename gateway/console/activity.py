"""What the console's fleet view shows of the traffic: recent requests and a short time series.

The gateway middleware records each finished request once (``Activity.record``), after its
response has gone out, so the bookkeeping is O(1) per request and never on the per-token path:

- **Recent requests**: the last ``RECENT`` requests that named a model (inference, embeddings,
  sessions), newest last, each with where it went and why (the ``X-Llamagrid-*`` facts).
- **A series** of ``BUCKET_S``-second buckets over the last ``BUCKETS`` of them: requests,
  generated tokens (credited when a request ends), time to first token, 429s and 5xx answers.
  Every answered request counts towards the 429s and 5xx, whatever its route.
- **Per worker**: prompt and cached prompt tokens of the requests it served, for its
  cached-token ratio.

Everything is bounded: two deques of fixed length and one pair of counters per worker address
(dropped when the worker leaves the pool, ``forget_except``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

#: Recent requests kept.
RECENT = 200
#: Seconds per bucket of the series.
BUCKET_S = 5
#: Buckets kept: ten minutes.
BUCKETS = 120


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request."""

    #: When it finished (Unix seconds).
    time: float
    method: str
    #: The route's path template (``/v1/chat/completions``, ``/v1/sessions/{session_id}``, ...).
    route: str
    model: str
    status: int
    #: The worker that served it ("" when none was chosen) and why it was chosen.
    worker: str
    reason: str
    attempts: int
    #: Seconds from dispatch to the first token (streams only), and in all.
    ttft_s: float | None
    duration_s: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class Bucket:
    """The traffic of one ``BUCKET_S``-second interval."""

    #: Its start (Unix seconds, a multiple of BUCKET_S).
    start: int
    requests: int = 0
    completion_tokens: int = 0
    ttft_sum_s: float = 0.0
    ttft_count: int = 0
    rate_limited: int = 0
    errors: int = 0


@dataclass(slots=True)
class WorkerTokens:
    """Prompt tokens a worker was sent, and how many of them it found in its KV cache."""

    prompt: int = 0
    cached: int = 0


class Activity:
    """The recent requests, the series and the per-worker token counts of one gateway."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.recent: deque[RequestRecord] = deque(maxlen=RECENT)
        self._buckets: deque[Bucket] = deque(maxlen=BUCKETS)
        self.tokens: dict[str, WorkerTokens] = {}

    def now(self) -> float:
        """The activity's clock (Unix seconds)."""
        return self._clock()

    def answered(self, status: int) -> None:
        """Count an answer that named no model (only its status matters: 429s, 5xx)."""
        self._count_status(self._bucket(self._clock()), status)

    def record(self, record: RequestRecord) -> None:
        """Keep a finished request that named a model."""
        self.recent.append(record)
        bucket = self._bucket(record.time)
        self._count_status(bucket, record.status)
        bucket.requests += 1
        bucket.completion_tokens += record.completion_tokens
        if record.ttft_s is not None:
            bucket.ttft_sum_s += record.ttft_s
            bucket.ttft_count += 1
        if record.worker and record.prompt_tokens:
            tokens = self.tokens.setdefault(record.worker, WorkerTokens())
            tokens.prompt += record.prompt_tokens
            tokens.cached += record.cached_tokens

    def forget_except(self, addresses: Collection[str]) -> None:
        """Drop the token counts of workers no longer in the pool."""
        for address in [a for a in self.tokens if a not in addresses]:
            del self.tokens[address]

    def series(self) -> list[Bucket]:
        """Every bucket of the last ``BUCKETS`` intervals, oldest first, empty ones included
        (the current, unfinished one last)."""
        current = _start(self._clock())
        by_start = {bucket.start: bucket for bucket in self._buckets}
        first = current - (BUCKETS - 1) * BUCKET_S
        return [
            by_start.get(start) or Bucket(start)
            for start in range(first, current + BUCKET_S, BUCKET_S)
        ]

    def _bucket(self, when: float) -> Bucket:
        start = _start(when)
        if self._buckets and self._buckets[-1].start >= start:
            return self._buckets[-1]  # a request that ended a moment before the latest one
        bucket = Bucket(start)
        self._buckets.append(bucket)
        return bucket

    @staticmethod
    def _count_status(bucket: Bucket, status: int) -> None:
        if status == 429:
            bucket.rate_limited += 1
        elif status >= 500:
            bucket.errors += 1


def _start(when: float) -> int:
    return int(when // BUCKET_S) * BUCKET_S
