"""Where the gateway keeps each session's committed transcript, so a session outlives its worker.

A worker holds its sessions in memory: when it dies, they die with it. The gateway keeps a copy
of every session's transcript (token ids, turn ends and images, as each turn commits) and which
worker holds the session now. When that worker is gone, the next turn reopens the session on another
worker from the copy, with one full prefill (gateway/session_directory.py).

Two stores: in this process's memory (the default: one gateway), or Redis
(``--session-store redis://HOST:PORT/DB``), which several gateways share. Both keep a record for
the session's TTL after its last write, and drop the least recently written records beyond
``max_records`` or ``max_image_bytes`` of images (memory) or leave that to Redis's own
``maxmemory`` policy.

Transcripts travel as little-endian int32 bytes; a turn's tokens and images are appended in one
atomic step that first checks the transcript's length, so two gateways cannot interleave turns.
In Redis, a record is one hash: its token ids, turn ends and image starts as packed fields, and
each image under fields of its own (``image:N``, ``image:N:type``), written once.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Records the memory store keeps at most (the least recently written go first).
DEFAULT_MAX_RECORDS = 100_000
#: Bytes of images the memory store keeps at most (the least recently written records go first).
DEFAULT_MAX_IMAGE_BYTES = 1 << 30


@dataclass(frozen=True)
class SessionImage:
    """An image of a session's transcript, as the client sent it, and where its tokens start."""

    start: int
    data: bytes
    #: Its media type ("" when the client did not say).
    mime_type: str


@dataclass
class SessionRecord:
    """A session as the gateway knows it."""

    model: str
    #: The worker holding the session now, and the session's id there.
    home: str
    worker_id: str
    ttl_s: int
    tokens: array[int] = field(default_factory=lambda: array("i"))
    turn_ends: array[int] = field(default_factory=lambda: array("i"))
    #: The transcript's images, in the order of their starts.
    images: list[SessionImage] = field(default_factory=list)

    @property
    def image_bytes(self) -> int:
        """The encoded size of the record's images."""
        return sum(len(image.data) for image in self.images)


class SessionStore(Protocol):
    """What the gateway needs of a store."""

    async def get(self, session_id: str, transcript: bool = True) -> SessionRecord | None:
        """The record of a session, or None; without ``transcript``, its tokens, turn ends and
        images may be left out (where the session is is all the caller wants)."""

    async def put(self, session_id: str, record: SessionRecord) -> None:
        """Write a whole record (a new session, a move to another worker, a rollback)."""

    async def append(
        self,
        session_id: str,
        length: int,
        appended: list[int],
        images: Sequence[SessionImage] = (),
    ) -> bool:
        """Add a committed turn and its images; False (and nothing written) unless the stored
        transcript holds exactly ``length`` tokens."""

    async def delete(self, session_id: str) -> None:
        """Forget a session."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """Records in this process, expiring after their TTL, bounded in number and in image bytes
    (the least recently written go first, but never the one just written)."""

    def __init__(
        self, max_records: int = DEFAULT_MAX_RECORDS, max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    ) -> None:
        self.max_records = max_records
        self.max_image_bytes = max_image_bytes
        #: Each record, when it expires, and its image bytes when last written.
        self._records: OrderedDict[str, tuple[float, SessionRecord, int]] = OrderedDict()
        self._image_bytes = 0

    @property
    def image_bytes(self) -> int:
        """Bytes of images held."""
        return self._image_bytes

    async def get(self, session_id: str, transcript: bool = True) -> SessionRecord | None:
        found = self._records.get(session_id)
        if found is None:
            return None
        if found[0] <= time.monotonic():
            self._drop(session_id)
            return None
        return found[1]

    async def put(self, session_id: str, record: SessionRecord) -> None:
        self._drop(session_id)
        self._write(session_id, record, record.image_bytes)

    async def append(
        self,
        session_id: str,
        length: int,
        appended: list[int],
        images: Sequence[SessionImage] = (),
    ) -> bool:
        record = await self.get(session_id)
        if record is None or len(record.tokens) != length:
            return False
        record.tokens.extend(appended)
        record.turn_ends.append(len(record.tokens))
        record.images.extend(images)
        held = self._drop(session_id) + sum(len(image.data) for image in images)
        self._write(session_id, record, held)
        return True

    async def delete(self, session_id: str) -> None:
        self._drop(session_id)

    async def close(self) -> None:
        self._records.clear()
        self._image_bytes = 0

    def _write(self, session_id: str, record: SessionRecord, image_bytes: int) -> None:
        """Hold ``record`` as the most recently written, then drop the least recently written
        beyond the bounds."""
        self._records[session_id] = (time.monotonic() + record.ttl_s, record, image_bytes)
        self._image_bytes += image_bytes
        while len(self._records) > 1 and (
            len(self._records) > self.max_records or self._image_bytes > self.max_image_bytes
        ):
            self._drop(next(iter(self._records)))

    def _drop(self, session_id: str) -> int:
        """Forget a record; the image bytes it held (0 if none was held)."""
        found = self._records.pop(session_id, None)
        held = found[2] if found is not None else 0
        self._image_bytes -= held
        return held


#: Appends a turn and its images when the transcript has the expected length, and renews the
#: record's TTL (KEYS[1]; ARGV: the length in bytes, the turn's token bytes, the new turn end's
#: bytes, the turn's image starts' bytes, then each image's media type and bytes). Each image
#: goes to fields of its own, numbered on from the images already there.
_APPEND = """
local ttl = redis.call('HGET', KEYS[1], 'ttl_s')
if not ttl or redis.call('HSTRLEN', KEYS[1], 'tokens') ~= tonumber(ARGV[1]) then
  return 0
end
local tokens = redis.call('HGET', KEYS[1], 'tokens') or ''
local ends = redis.call('HGET', KEYS[1], 'turn_ends') or ''
local starts = redis.call('HGET', KEYS[1], 'image_starts') or ''
local number = #starts / 4
for i = 5, #ARGV, 2 do
  local name = 'image:' .. string.format('%d', number)
  redis.call('HSET', KEYS[1], name, ARGV[i + 1], name .. ':type', ARGV[i])
  number = number + 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens .. ARGV[2], 'turn_ends', ends .. ARGV[3],
  'image_starts', starts .. ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ttl))
return 1
"""
#: The fields that say where a session is (``get`` without its transcript).
_HEAD = ("model", "home", "worker_id", "ttl_s")


def _pack(values: array[int] | list[int]) -> bytes:
    packed = array("i", values)
    if packed.itemsize != 4:  # pragma: no cover - every platform we run on has 4-byte ints
        raise RuntimeError("array('i') is not 32-bit here")
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _unpack(data: bytes) -> array[int]:
    values = array("i")
    values.frombytes(data)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


_BIG_ENDIAN = array("i", [1]).tobytes()[0] == 0


class RedisStore:
    """Records in Redis, shared by every gateway that uses the same URL."""

    def __init__(self, url: str, prefix: str = "llamagrid:session:") -> None:
        import redis.asyncio as redis  # only gateways with a Redis store need the module

        self._redis: Any = redis.Redis.from_url(url)
        self._prefix = prefix
        self._append = self._redis.register_script(_APPEND)

    def _key(self, session_id: str) -> str:
        return self._prefix + session_id

    async def get(self, session_id: str, transcript: bool = True) -> SessionRecord | None:
        key = self._key(session_id)
        if transcript:
            fields = await self._redis.hgetall(key)
        else:
            head = await self._redis.hmget(key, _HEAD)
            fields = {name.encode(): value for name, value in zip(_HEAD, head, strict=True)}
        if fields.get(b"model") is None:
            return None
        starts = _unpack(fields.get(b"image_starts", b""))
        images = [
            SessionImage(start, fields[b"image:%d" % n], fields[b"image:%d:type" % n].decode())
            for n, start in enumerate(starts)
        ]
        return SessionRecord(
            model=fields[b"model"].decode(),
            home=fields[b"home"].decode(),
            worker_id=fields[b"worker_id"].decode(),
            ttl_s=int(fields[b"ttl_s"]),
            tokens=_unpack(fields.get(b"tokens", b"")),
            turn_ends=_unpack(fields.get(b"turn_ends", b"")),
            images=images,
        )

    async def put(self, session_id: str, record: SessionRecord) -> None:
        key = self._key(session_id)
        mapping: dict[str, str | int | bytes] = {
            "model": record.model,
            "home": record.home,
            "worker_id": record.worker_id,
            "ttl_s": record.ttl_s,
            "tokens": _pack(record.tokens),
            "turn_ends": _pack(record.turn_ends),
            "image_starts": _pack([image.start for image in record.images]),
        }
        for number, image in enumerate(record.images):
            mapping[f"image:{number}"] = image.data
            mapping[f"image:{number}:type"] = image.mime_type
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, record.ttl_s)
            await pipe.execute()

    async def append(
        self,
        session_id: str,
        length: int,
        appended: list[int],
        images: Sequence[SessionImage] = (),
    ) -> bool:
        end = _pack([length + len(appended)])
        starts = _pack([image.start for image in images])
        args: list[bytes | str | int] = [length * 4, _pack(appended), end, starts]
        for image in images:
            args += [image.mime_type, image.data]
        return bool(await self._append(keys=[self._key(session_id)], args=args))

    async def delete(self, session_id: str) -> None:
        await self._redis.delete(self._key(session_id))

    async def close(self) -> None:
        await self._redis.aclose()


def create_store(
    url: str,
    max_records: int = DEFAULT_MAX_RECORDS,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> SessionStore:
    """``memory`` (or empty) or a ``redis://`` / ``rediss://`` URL (the bounds are the memory
    store's)."""
    if url in ("", "memory"):
        return MemoryStore(max_records, max_image_bytes)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ValueError(f"--session-store must be 'memory' or a redis:// URL, not {url!r}")
