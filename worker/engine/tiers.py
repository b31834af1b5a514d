"""Where the KV cache of a token sequence lives: resident in a sequence, in the host tier, or
nowhere (only the transcript)."""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from llamagrid.worker.engine.reports import KvTier, TierCounts


class TierIndex:
    """The token sequences each tier holds, sorted, so that finding whether a prefix is held
    costs one binary search: the first held sequence not below a prefix starts with it if any
    held sequence does.

    Build it from the scheduler's holders (taken on the engine thread); query it from any
    thread, since it keeps copies."""

    def __init__(self, resident: Iterable[Sequence[int]], host: Iterable[Sequence[int]]) -> None:
        self._resident = sorted(array("i", t) for t in resident if t)
        self._host = sorted(array("i", t) for t in host if t)

    def tier(self, tokens: Sequence[int]) -> KvTier:
        """Where the KV of a prompt made of tokens comes from: a prompt reuses the cells of all
        of its tokens but the last."""
        if len(tokens) < 2:
            return KvTier.TRANSCRIPT
        need = array("i", tokens[: len(tokens) - 1])
        if _holds(self._resident, need):
            return KvTier.RESIDENT
        if _holds(self._host, need):
            return KvTier.HOST
        return KvTier.TRANSCRIPT

    def counts(self, transcripts: Iterable[Sequence[int]]) -> TierCounts:
        """How many of the transcripts are in each tier."""
        tally = dict.fromkeys(KvTier, 0)
        for tokens in transcripts:
            tally[self.tier(tokens)] += 1
        return TierCounts(tally[KvTier.RESIDENT], tally[KvTier.HOST], tally[KvTier.TRANSCRIPT])


def _holds(index: list[array[int]], prefix: array[int]) -> bool:
    i = bisect_left(index, prefix)
    return i < len(index) and index[i][: len(prefix)] == prefix
