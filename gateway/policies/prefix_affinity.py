"""prefix_affinity: requests with the same leading prompt go to the same worker, within a bound.

Consistent hashing with bounded loads: the prompt's leading characters pick a point on a hash
ring, and the request goes to the first worker clockwise whose load stays within ``bound`` times
the average once this request is counted. A hot prefix therefore spills over to the next worker
on the ring (the same one every time, so its cache warms too) instead of overloading its home.

A worker with a free slot is never over the bound: a request there starts at once and shares
the cached prefix, which costs less than computing the prefix again elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gateway.policies.base import Choice, RouteRequest, W, least_loaded
from gateway.policies.hashing import HashRing

#: A worker may hold this many times the average load before a prefix spills over.
DEFAULT_BOUND = 1.25


class PrefixAffinity:
    """Keeps a prompt prefix on one worker until that worker is loaded past the bound."""

    name = "prefix_affinity"

    def __init__(self, bound: float = DEFAULT_BOUND) -> None:
        if bound < 1.0:
            raise ValueError("the load bound must be at least 1")
        self.bound = bound
        self._ring = HashRing(())

    def capacity(self, workers: Sequence[W], worker: W) -> int:
        """The most requests ``worker`` may hold, counting the one being placed: its slots, or
        ``bound`` times the average load, whichever is more."""
        total = sum(candidate.requests for candidate in workers) + 1
        return max(1, worker.slots, math.ceil(self.bound * total / len(workers)))

    def select(self, workers: Sequence[W], request: RouteRequest) -> Choice[W]:
        """The first worker on the ring from the prefix's point that is within the bound."""
        if not request.prefix_key:
            return Choice(least_loaded(workers), "least_load:no_prefix")
        by_address = {worker.address: worker for worker in workers}
        if self._ring.addresses != by_address.keys():
            self._ring = HashRing(sorted(by_address))
        for rank, address in enumerate(self._ring.walk(request.prefix_key)):
            worker = by_address[address]
            if worker.requests + 1 <= self.capacity(workers, worker):
                return Choice(
                    worker, "prefix_affinity:home" if rank == 0 else "prefix_affinity:spill"
                )
        return Choice(least_loaded(workers), "least_load:all_full")  # unreachable by the bound
