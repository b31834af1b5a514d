"""prefix_affinity: requests with the same leading prompt go to the same worker, within a bound.

Consistent hashing with two choices and bounded loads:

- The prompt's leading characters pick a point on a hash ring. The first ``choices`` (2)
  workers clockwise from it are the prefix's candidates.
- The first time the policy sees a prefix, it places it on the candidate that holds the fewest
  prefixes, ties going to the first on the ring, and remembers the placement. With plain
  consistent hashing, a handful of tenants lands on the workers as unevenly as coin flips (8
  prefixes on 2 workers split 2:6 about one time in five); the worker with 6 then has more hot
  prefixes than KV slots and evicts its own cache. Two choices keeps the split within one.
- A request goes to its prefix's worker while that worker's load stays within ``bound`` times
  the average once this request is counted. A hot prefix therefore spills over to the next
  worker on the ring (the same one every time, so its cache warms too) instead of overloading
  its home. A worker with a free slot is never over the bound: a request there starts at once
  and shares the cached prefix, which costs less than computing the prefix again elsewhere.
- A placement not used for ``idle_s`` is forgotten, and so no longer counts against its worker.
  A prefix whose worker left the pool is placed again.

Several gateways place prefixes independently, but always on one of the same two candidates, so
a prefix is cached on at most two workers however many gateways route to them.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from llamagrid.gateway.policies.base import Choice, RouteRequest, W, least_loaded
from llamagrid.gateway.policies.hashing import HashRing, hash64

#: A worker may hold this many times the average load before a prefix spills over.
DEFAULT_BOUND = 1.25
#: Candidate workers per prefix: its first two on the ring.
DEFAULT_CHOICES = 2
#: A placement unused this long (seconds) is forgotten.
DEFAULT_IDLE_S = 600.0
#: At most this many placements are remembered per model (the least recently used go first).
MAX_PLACEMENTS = 65536


@dataclass
class _Placement:
    address: str
    used: float


class PrefixAffinity:
    """Keeps a prompt prefix on one worker until that worker is loaded past the bound."""

    name = "prefix_affinity"

    def __init__(
        self,
        bound: float = DEFAULT_BOUND,
        *,
        choices: int = DEFAULT_CHOICES,
        idle_s: float = DEFAULT_IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bound < 1.0:
            raise ValueError("the load bound must be at least 1")
        if choices < 1:
            raise ValueError("a prefix needs at least one candidate worker")
        self.bound = bound
        self.choices = choices
        self.idle_s = idle_s
        self._clock = clock
        self._ring = HashRing(())
        self._placed: OrderedDict[int, _Placement] = OrderedDict()
        self._held: Counter[str] = Counter()

    def capacity(self, workers: Sequence[W], worker: W) -> int:
        """The most requests ``worker`` may hold, counting the one being placed: its slots, or
        ``bound`` times the average load, whichever is more."""
        total = sum(candidate.requests for candidate in workers) + 1
        return max(1, worker.slots, math.ceil(self.bound * total / len(workers)))

    def held(self, address: str) -> int:
        """Prefixes currently placed on the worker at ``address``."""
        return self._held[address]

    def select(self, workers: Sequence[W], request: RouteRequest) -> Choice[W]:
        """The prefix's worker if it is within the bound, else the next one on the ring that is."""
        if not request.prefix_key:
            return Choice(least_loaded(workers), "least_load:no_prefix")
        by_address = {worker.address: worker for worker in workers}
        if self._ring.addresses != by_address.keys():
            self._ring = HashRing(sorted(by_address))
        walk = self._ring.walk(request.prefix_key)
        candidates = list(itertools.islice(walk, self.choices))
        home = self._home(hash64(request.prefix_key), candidates, by_address.keys())
        rest = (address for address in itertools.chain(candidates, walk) if address != home)
        for address in itertools.chain([home], rest):
            worker = by_address[address]
            if worker.requests + 1 <= self.capacity(workers, worker):
                reason = "home" if address == home else "spill"
                return Choice(worker, f"prefix_affinity:{reason}")
        return Choice(least_loaded(workers), "least_load:all_full")  # unreachable by the bound

    def _home(self, key: int, candidates: list[str], present: Collection[str]) -> str:
        """The prefix's worker: where it was placed while that worker is still present, else
        the candidate holding fewest prefixes."""
        now = self._clock()
        self._forget(now)
        placement = self._placed.get(key)
        if placement is not None and placement.address in present:
            placement.used = now
            self._placed.move_to_end(key)
            return placement.address
        address = min(candidates, key=lambda a: (self._held[a], candidates.index(a)))
        if placement is not None:  # its worker left the pool
            self._release(placement.address)
            del self._placed[key]
        self._placed[key] = _Placement(address, now)
        self._held[address] += 1
        return address

    def _forget(self, now: float) -> None:
        """Drops the placements idle past ``idle_s``, and the oldest beyond ``MAX_PLACEMENTS``."""
        while self._placed:
            key, oldest = next(iter(self._placed.items()))
            if now - oldest.used <= self.idle_s and len(self._placed) <= MAX_PLACEMENTS:
                return
            del self._placed[key]
            self._release(oldest.address)

    def _release(self, address: str) -> None:
        self._held[address] -= 1
        if self._held[address] <= 0:
            del self._held[address]
