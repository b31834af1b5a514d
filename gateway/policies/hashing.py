"""Stable 64-bit hashes and the consistent-hash ring the affinity policies share."""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterator, Sequence


def hash64(text: str) -> int:
    """A 64-bit hash that is the same in every process and on every run."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Addresses placed at many points of a 64-bit circle (virtual nodes).

    Adding or removing one address moves only the keys that hashed next to its points.
    """

    def __init__(self, addresses: Sequence[str], points_per_address: int = 64) -> None:
        self.addresses = frozenset(addresses)
        points = sorted(
            (hash64(f"{address}#{index}"), address)
            for address in self.addresses
            for index in range(points_per_address)
        )
        self._hashes = [point for point, _ in points]
        self._owners = [owner for _, owner in points]

    def walk(self, key: str) -> Iterator[str]:
        """Every address once, starting from the first point clockwise of ``key``."""
        start = bisect.bisect_left(self._hashes, hash64(key))
        seen: set[str] = set()
        for step in range(len(self._owners)):
            owner = self._owners[(start + step) % len(self._owners)]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.addresses):
                    return
