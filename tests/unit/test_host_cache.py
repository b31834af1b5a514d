"""The host tier's bookkeeping (engine/host_cache.py): what is found, what is superseded, what
goes first when the budget is full. The saved data here is plain bytes; the real tier (llama.cpp's
per-sequence state) runs in tests/integration/test_session_tiers.py."""

from __future__ import annotations

from llamagrid.worker.engine.host_cache import HostCache


def test_find_returns_the_longest_shared_prefix_within_the_limit() -> None:
    cache = HostCache(budget_bytes=1000, min_tokens=2)
    assert cache.find([1, 2, 3], 2) is None
    cache.add([1, 2, 3, 4], b"x" * 10, session=False)
    cache.add([1, 9, 9], b"y" * 10, session=False)
    found = cache.find([1, 2, 3, 4, 5], 4)
    assert found is not None and found[0].tokens == [1, 2, 3, 4] and found[1] == 4
    found = cache.find([1, 2, 3, 4, 5], 2)  # never the whole prompt: one token is decoded
    assert found is not None and found[1] == 2


def test_a_longer_save_supersedes_its_prefixes_and_a_restore_leaves_the_tier() -> None:
    cache = HostCache(budget_bytes=1000, min_tokens=2)
    cache.add([1, 2], b"a" * 10, session=True)
    assert not cache.worth_saving([1, 2])  # held already
    assert cache.worth_saving([1, 2, 3])
    cache.add([1, 2, 3], b"b" * 20, session=True)
    assert [e.tokens for e in cache.entries] == [[1, 2, 3]] and cache.bytes_used == 20
    entry = cache.entries[0]
    cache.take(entry)
    assert cache.entries == [] and cache.bytes_used == 0 and cache.restored == 1


def test_a_full_budget_drops_anonymous_entries_before_sessions_then_the_oldest() -> None:
    cache = HostCache(budget_bytes=30, min_tokens=2)
    cache.add([1, 1], b"s" * 10, session=True)
    cache.add([2, 2], b"a" * 10, session=False)
    cache.add([3, 3], b"s" * 10, session=True)
    cache.add([4, 4], b"n" * 10, session=True)  # the anonymous entry goes first
    assert sorted(e.tokens[0] for e in cache.entries) == [1, 3, 4]
    cache.add([5, 5], b"n" * 10, session=True)  # then the oldest session
    assert sorted(e.tokens[0] for e in cache.entries) == [3, 4, 5]
    assert cache.dropped == 2 and cache.bytes_used == 30
    assert not cache.add([6, 6], b"z" * 31, session=False)  # larger than the budget


def test_off_means_nothing_is_worth_saving() -> None:
    assert not HostCache(budget_bytes=0).enabled
    assert not HostCache(budget_bytes=0).worth_saving(list(range(100)))
    short = HostCache(budget_bytes=100, min_tokens=16)
    assert not short.worth_saving(list(range(15))) and short.worth_saving(list(range(16)))


def test_an_entry_taken_out_survives_saves_that_fill_the_budget() -> None:
    """The scheduler takes an entry out before saving the sequence it restores into: that
    save may evict or supersede every other entry (found by the soak)."""
    cache = HostCache(budget_bytes=20, min_tokens=2)
    cache.add([1, 2, 3], b"r" * 10, session=False)
    found = cache.find([1, 2, 3, 4], 3)
    assert found is not None
    entry = found[0]
    cache.take(entry)
    cache.add([1, 2, 3, 4, 5], b"s" * 20, session=False)  # fills the budget
    assert entry.data == b"r" * 10 and cache.bytes_used == 20
