"""The gateway's memory session store (gateway/session_store.py): appends check the length,
records expire after their TTL, and the oldest go beyond the cap. The Redis store runs the same
operations against a real redis-server in tests/integration/test_session_failover.py."""

from __future__ import annotations

import time

import pytest

from llamagrid.gateway.session_store import MemoryStore, SessionRecord, create_store


def record(ttl_s: int = 60) -> SessionRecord:
    return SessionRecord(model="m", home="w:1", worker_id="ses_1", ttl_s=ttl_s)


async def test_append_adds_a_turn_only_at_the_expected_length() -> None:
    store = MemoryStore()
    await store.put("a", record())
    assert await store.append("a", 0, [1, 2, 3])
    assert not await store.append("a", 0, [9])  # a stale writer: nothing written
    assert await store.append("a", 3, [4])
    stored = await store.get("a")
    assert stored is not None
    assert stored.tokens.tolist() == [1, 2, 3, 4] and stored.turn_ends.tolist() == [3, 4]
    assert not await store.append("missing", 0, [1])


async def test_records_expire_and_the_oldest_go_beyond_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    store = MemoryStore(max_records=2)
    await store.put("short", record(ttl_s=5))
    now[0] += 6
    assert await store.get("short") is None
    for name in ("a", "b", "c"):
        await store.put(name, record())
    assert await store.get("a") is None
    assert await store.get("b") is not None and await store.get("c") is not None
    await store.delete("b")
    assert await store.get("b") is None


def test_store_urls() -> None:
    assert isinstance(create_store("memory"), MemoryStore)
    assert isinstance(create_store(""), MemoryStore)
    with pytest.raises(ValueError, match="--session-store"):
        create_store("postgres://x")
