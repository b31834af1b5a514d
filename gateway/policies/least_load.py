"""least_load: the worker with the fewest running and queued requests per slot."""

from __future__ import annotations

from collections.abc import Sequence

from llamagrid.gateway.policies.base import Choice, RouteRequest, W, least_loaded


class LeastLoad:
    """Picks the least loaded candidate (requests per slot; ties by count, then address)."""

    name = "least_load"

    def select(self, workers: Sequence[W], request: RouteRequest) -> Choice[W]:
        """The least loaded worker."""
        return Choice(least_loaded(workers), "least_load:lowest")
