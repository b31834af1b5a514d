"""The gateway's memory session store (gateway/session_store.py): appends check the length,
records expire after their TTL, and the oldest go beyond the cap on records or on image bytes.
The session directory's copy of a turn's images (gateway/sessions.py). The Redis store runs the
same operations against a real redis-server in tests/integration/test_session_store_redis.py."""

from __future__ import annotations

import time

import pytest

from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.session_directory import (
    SessionDirectory,
    request_images,
    transcript_of,
)
from llamagrid.gateway.session_store import MemoryStore, SessionImage, SessionRecord, create_store
from llamagrid.v1 import inference_pb2 as pb

PNG = SessionImage(start=2, data=b"\x89PNG one", mime_type="image/png")
JPEG = SessionImage(start=7, data=b"\xff\xd8 two", mime_type="image/jpeg")


def record(ttl_s: int = 60, images: list[SessionImage] | None = None) -> SessionRecord:
    return SessionRecord(
        model="m", home="w:1", worker_id="ses_1", ttl_s=ttl_s, images=list(images or [])
    )


def image_of(data: bytes, mime_type: str = "") -> SessionImage:
    return SessionImage(0, data, mime_type)


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


async def test_images_go_in_with_their_turn_and_only_at_the_expected_length() -> None:
    store = MemoryStore()
    await store.put("a", record(images=[PNG]))
    assert await store.append("a", 0, [1, 2, -5, -6, 3, 4, 5, -7, -8], [JPEG])
    assert not await store.append("a", 0, [9], [image_of(b"stale")])  # nothing written
    assert await store.append("a", 9, [10])  # a turn without images
    stored = await store.get("a")
    assert stored is not None and stored.images == [PNG, JPEG]
    assert stored.turn_ends.tolist() == [9, 10] and store.image_bytes == stored.image_bytes


async def test_the_least_recently_written_records_go_beyond_the_image_byte_budget() -> None:
    store = MemoryStore(max_image_bytes=10)
    await store.put("a", record(images=[image_of(b"1234")]))
    await store.put("b", record(images=[image_of(b"5678")]))
    await store.put("text", record())
    assert await store.append("a", 0, [1], [image_of(b"90")])  # a is now the newest: 10 bytes
    assert await store.get("b") is not None and store.image_bytes == 10
    await store.put("c", record(images=[image_of(b"abc")]))  # 13 bytes: b, the oldest, goes
    held = [await store.get(name) is not None for name in ("a", "b", "text", "c")]
    assert held == [True, False, True, True] and store.image_bytes == 9
    await store.put("huge", record(images=[image_of(b"x" * 50)]))  # alone over the budget: kept
    assert await store.get("huge") is not None and store.image_bytes == 50
    assert all([await store.get(name) is None for name in ("a", "text", "c")])
    await store.delete("huge")
    assert store.image_bytes == 0


async def test_a_rewritten_or_expired_record_gives_back_its_image_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    store = MemoryStore()
    await store.put("a", record(ttl_s=5, images=[PNG, JPEG]))
    await store.put("a", record(ttl_s=5, images=[PNG]))
    assert store.image_bytes == len(PNG.data)
    now[0] += 6
    assert await store.get("a") is None and store.image_bytes == 0


def committed(length: int, appended: list[int], starts: list[int]) -> pb.GenerateFinal:
    commit = pb.SessionCommit(length=length, appended_token_ids=appended, image_starts=starts)
    return pb.GenerateFinal(session=commit)


async def test_the_directory_keeps_a_turns_images_at_the_starts_the_worker_gave() -> None:
    store = MemoryStore()
    directory = SessionDirectory(store, WorkerPool([]))
    await store.put("s", record())
    images = [pb.Image(data=PNG.data, mime_type=PNG.mime_type), pb.Image(data=JPEG.data)]
    await directory.committed("s", "m", "w:1", committed(9, [0] * 9, [2, 7]), images)
    stored = await store.get("s")
    assert stored is not None and stored.tokens.tolist() == [0] * 9
    assert stored.images == [PNG, SessionImage(7, JPEG.data, "")]
    # Starts that do not match the request's images are not guessed at: nothing is appended
    # (the copy is fetched again from the worker, which this pool does not know).
    await directory.committed("s", "m", "w:1", committed(12, [1, 2, 3], [10]), [])
    assert stored.tokens.tolist() == [0] * 9 and len(stored.images) == 2
    transcript = transcript_of(stored)
    assert [(i.start, i.image.data, i.image.mime_type) for i in transcript.images] == [
        (2, PNG.data, "image/png"),
        (7, JPEG.data, ""),
    ]


def test_a_requests_images_are_its_image_parts_in_order_or_its_prompts() -> None:
    one, two = pb.Image(data=b"1"), pb.Image(data=b"2")
    chat = pb.ChatConversation(
        messages=[
            pb.ChatMessage(
                role="user", parts=[pb.ContentPart(text="a"), pb.ContentPart(image=one)]
            ),
            pb.ChatMessage(role="assistant", content="b"),
            pb.ChatMessage(role="user", parts=[pb.ContentPart(image=two)]),
        ]
    )
    assert request_images(pb.GenerateRequest(chat=chat)) == [one, two]
    assert request_images(pb.GenerateRequest(prompt="<m><m>", images=[two, one])) == [two, one]
    assert request_images(pb.GenerateRequest(prompt="text")) == []
