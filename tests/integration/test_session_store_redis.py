"""The gateway's Redis session store (gateway/session_store.py) against a real redis-server:
records and their images round-trip, a turn's tokens and images go in together only at the
expected length, each image is a hash field of its own written once, and a record read without
its transcript leaves the images in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from llamagrid.gateway.session_store import RedisStore, SessionImage, SessionRecord

PNG = SessionImage(start=2, data=b"\x89PNG\r\n\x1a\n one", mime_type="image/png")
BARE = SessionImage(start=7, data=b"\x00\xff two, of no type said", mime_type="")
LATER = SessionImage(start=12, data=b"\xff\xd8 three", mime_type="image/jpeg")


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_url, prefix="test:session:")
    yield store
    await store.close()


def record(images: list[SessionImage]) -> SessionRecord:
    return SessionRecord(model="m", home="w:1", worker_id="ses_1", ttl_s=60, images=images)


async def test_images_round_trip_through_put_get_and_append(store: RedisStore) -> None:
    await store.put("a", record([PNG]))
    turn = [1, 2, -5, -6, 3, 4, 5, -7, -8]
    assert await store.append("a", 0, turn, [BARE])
    assert await store.append("a", len(turn), [9, 10, -1, -2], [LATER])
    assert await store.append("a", len(turn) + 4, [11])
    stored = await store.get("a")
    assert stored is not None
    assert stored.images == [PNG, BARE, LATER]
    assert stored.tokens.tolist() == [*turn, 9, 10, -1, -2, 11]
    assert stored.turn_ends.tolist() == [9, 13, 14]
    head = await store.get("a", transcript=False)
    assert head is not None and (head.home, head.worker_id, head.model) == ("w:1", "ses_1", "m")
    await store.put("a", record([LATER]))  # a rewrite leaves no image of the old record
    stored = await store.get("a")
    assert stored is not None and stored.images == [LATER] and len(stored.tokens) == 0


async def test_a_stale_append_writes_no_image(store: RedisStore, redis_url: str) -> None:
    await store.put("b", record([]))
    assert await store.append("b", 0, [1, 2, 3], [PNG])
    assert not await store.append("b", 0, [4], [LATER])  # another writer got there first
    assert not await store.append("missing", 0, [4], [LATER])
    stored = await store.get("b")
    assert stored is not None and stored.images == [PNG] and stored.tokens.tolist() == [1, 2, 3]
    raw = redis.Redis.from_url(redis_url)
    fields = set(raw.hkeys("test:session:b"))
    assert {b"image:0", b"image:0:type"} <= fields and b"image:1" not in fields
    assert not raw.exists("test:session:missing")
    assert raw.hget("test:session:b", "image:0") == PNG.data
