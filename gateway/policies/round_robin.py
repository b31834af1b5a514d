"""round_robin: each worker in turn, whatever its load or the prompt."""

from __future__ import annotations

from collections.abc import Sequence

from llamagrid.gateway.policies.base import Choice, RouteRequest, W


class RoundRobin:
    """Cycles through the candidates in address order."""

    name = "round_robin"

    def __init__(self) -> None:
        self._turn = 0

    def select(self, workers: Sequence[W], request: RouteRequest) -> Choice[W]:
        """The next worker in turn."""
        ordered = sorted(workers, key=lambda worker: worker.address)
        worker = ordered[self._turn % len(ordered)]
        self._turn += 1
        return Choice(worker, "round_robin:turn")
