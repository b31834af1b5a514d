"""Sessions by KV tier: TierIndex answers as a prefix scan over every holder would."""

from __future__ import annotations

import random
from array import array

import pytest

from llamagrid.worker.engine.reports import KvTier, TierCounts
from llamagrid.worker.engine.tiers import TierIndex

pytestmark = pytest.mark.unit


def scan(holders: list[list[int]], tokens: list[int]) -> bool:
    need = len(tokens) - 1
    return any(len(h) >= need and h[:need] == tokens[:need] for h in holders)


def test_a_prompt_reuses_all_of_its_tokens_but_the_last() -> None:
    index = TierIndex(resident=[[1, 2, 3, 4]], host=[[1, 2, 9, 9, 9], [5]])
    assert index.tier([1, 2, 3, 4, 5]) is KvTier.RESIDENT  # 1..4 resident, 5 is new
    assert index.tier(array("i", [1, 2, 3])) is KvTier.RESIDENT
    assert index.tier([1, 2, 9, 9, 9, 7]) is KvTier.HOST
    assert index.tier([1, 2, 3, 4, 5, 6]) is KvTier.TRANSCRIPT  # 5 is held nowhere
    assert index.tier([5]) is KvTier.TRANSCRIPT  # a one-token prompt reuses nothing
    assert index.tier([]) is KvTier.TRANSCRIPT
    assert TierIndex([], []).tier([1, 2]) is KvTier.TRANSCRIPT


def test_resident_wins_over_host_and_counts_add_up() -> None:
    index = TierIndex(resident=[[1, 2, 3]], host=[[1, 2, 3], [4, 5, 6]])
    counts = index.counts([array("i", [1, 2, 3, 0]), array("i", [4, 5, 6, 0]), array("i", [7])])
    assert counts == TierCounts(resident=1, host=1, transcript=1)


def test_the_index_agrees_with_a_scan_over_random_holders() -> None:
    rng = random.Random(12)
    for _ in range(200):

        def tokens(n: int) -> list[int]:
            return [rng.randrange(3) for _ in range(n)]  # few symbols: many shared prefixes

        resident = [tokens(rng.randrange(0, 8)) for _ in range(rng.randrange(0, 5))]
        host = [tokens(rng.randrange(0, 8)) for _ in range(rng.randrange(0, 5))]
        index = TierIndex(resident, host)
        for _ in range(20):
            prompt = tokens(rng.randrange(0, 9))
            want = (
                KvTier.TRANSCRIPT
                if len(prompt) < 2
                else KvTier.RESIDENT
                if scan(resident, prompt)
                else KvTier.HOST
                if scan(host, prompt)
                else KvTier.TRANSCRIPT
            )
            assert index.tier(prompt) is want, (resident, host, prompt)
