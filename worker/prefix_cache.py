"""Prefix reuse: which sequence's KV cells already hold the longest prefix of a new prompt.

A sequence keeps its KV cells after its request ends, so the next request with the same
leading tokens (a system prompt, a chat history that grows one turn at a time) skips their
prefill. A new request takes the idle sequence with the longest common prefix, or the least
recently used idle sequence when none shares anything. With a unified KV buffer, a prefix can
also be copied from any other sequence, idle or running: llama.cpp's seq_cp then shares the
cells instead of copying them, so concurrent requests with one system prompt hold it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the common case for a repeated prompt; a C-speed comparison
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect on slice equality
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Reuse:
    """Where a new request's prompt goes, and how much of it is already in the KV cache."""

    #: The sequence id the request gets.
    seq: int
    #: Prompt tokens whose KV cells are reused (never the whole prompt: one token is decoded
    #: so that the request gets logits).
    length: int
    #: Another sequence to copy the first `length` positions from, or None for seq's own cells.
    source: int | None = None


class PrefixCache:
    """Bookkeeping of idle sequences' cached tokens. Call only from the engine thread."""

    def __init__(self, n_seq: int, shareable: bool) -> None:
        self.shareable = shareable
        self._held: list[list[int]] = [[] for _ in range(n_seq)]
        self._used_at = [0] * n_seq
        self._clock = 0

    def held(self, seq: int) -> list[int]:
        """The tokens whose KV an idle sequence holds (position i holds token i)."""
        return self._held[seq]

    def retain(self, seq: int, tokens: list[int]) -> None:
        """Record what a sequence holds once its request has left it."""
        self._clock += 1
        self._held[seq] = tokens
        self._used_at[seq] = self._clock

    def take(self, seq: int) -> None:
        """A request now owns the sequence; its cells are tracked by the request until retain."""
        self._held[seq] = []

    def drop_all(self) -> None:
        """The KV cache was cleared."""
        self._held = [[] for _ in self._held]

    def plan(self, prompt: list[int], free: list[int], busy: Mapping[int, list[int]]) -> Reuse:
        """Pick a free sequence for prompt; busy maps running sequences to their decoded tokens."""
        limit = len(prompt) - 1
        best_free = max(
            free,
            key=lambda s: (min(common_prefix(prompt, self._held[s]), limit), -self._used_at[s]),
        )
        own = min(common_prefix(prompt, self._held[best_free]), limit)
        if self.shareable and busy:
            # An idle sequence can't beat best_free, so only running ones are donors.
            source, shared = max(
                ((s, min(common_prefix(prompt, t), limit)) for s, t in busy.items()),
                key=lambda d: d[1],
            )
            if shared > own:
                return Reuse(self._least_valuable(free), shared, source)
        if own == 0:
            best_free = self._least_valuable(free)
        return Reuse(best_free, own)

    def _least_valuable(self, free: list[int]) -> int:
        """An empty idle sequence, else the least recently used one."""
        return min(free, key=lambda s: (len(self._held[s]) > 0, self._used_at[s]))

    def distinct_tokens(self, sequences: list[list[int]]) -> int:
        """Distinct cached prefixes over the given sequences: KV cells in use when shared."""
        if not self.shareable:
            return sum(len(t) for t in sequences)
        ordered = sorted(t for t in sequences if t)
        total, prev = 0, list[int]()
        for tokens in ordered:
            total += len(tokens) - common_prefix(prev, tokens)
            prev = tokens
        return total
