"""Where the gateway keeps each session's committed transcript, so a session outlives its worker.

A worker holds its sessions in memory: when it dies, they die with it. The gateway keeps a copy
of every session's transcript (token ids and turn ends, as each turn commits) and which worker
holds the session now. When that worker is gone, the next turn reopens the session on another
worker from the copy, with one full prefill (gateway/sessions.py ``SessionDirectory``).

Two stores: in this process's memory (the default: one gateway), or Redis
(``--session-store redis://HOST:PORT/DB``), which several gateways share. Both keep a record for
the session's TTL after its last write, and drop the oldest records beyond ``max_records``
(memory) or leave that to Redis's own ``maxmemory`` policy.

Transcripts travel as little-endian int32 bytes; a turn's tokens are appended in one atomic
step that first checks the transcript's length, so two gateways cannot interleave turns.
"""

from __future__ import annotations

import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Records the memory store keeps at most (the least recently written go first).
DEFAULT_MAX_RECORDS = 100_000


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


class SessionStore(Protocol):
    """What the gateway needs of a store."""

    async def get(self, session_id: str) -> SessionRecord | None:
        """The record of a session, or None."""

    async def put(self, session_id: str, record: SessionRecord) -> None:
        """Write a whole record (a new session, a move to another worker, a rollback)."""

    async def append(self, session_id: str, length: int, appended: list[int]) -> bool:
        """Add a committed turn; False (and nothing written) unless the stored transcript holds
        exactly ``length`` tokens."""

    async def delete(self, session_id: str) -> None:
        """Forget a session."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """Records in this process, expiring after their TTL, bounded in number."""

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.max_records = max_records
        self._records: OrderedDict[str, tuple[float, SessionRecord]] = OrderedDict()

    async def get(self, session_id: str) -> SessionRecord | None:
        found = self._records.get(session_id)
        if found is None:
            return None
        expires, record = found
        if expires <= time.monotonic():
            del self._records[session_id]
            return None
        return record

    async def put(self, session_id: str, record: SessionRecord) -> None:
        self._records[session_id] = (time.monotonic() + record.ttl_s, record)
        self._records.move_to_end(session_id)
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)

    async def append(self, session_id: str, length: int, appended: list[int]) -> bool:
        record = await self.get(session_id)
        if record is None or len(record.tokens) != length:
            return False
        record.tokens.extend(appended)
        record.turn_ends.append(len(record.tokens))
        await self.put(session_id, record)
        return True

    async def delete(self, session_id: str) -> None:
        self._records.pop(session_id, None)

    async def close(self) -> None:
        self._records.clear()


#: Appends a turn when the transcript has the expected length, and renews the record's TTL
#: (KEYS[1]; ARGV: the length in bytes, the turn's token bytes, the new turn end's bytes).
_APPEND = """
local ttl = redis.call('HGET', KEYS[1], 'ttl_s')
if not ttl or redis.call('HSTRLEN', KEYS[1], 'tokens') ~= tonumber(ARGV[1]) then
  return 0
end
local tokens = redis.call('HGET', KEYS[1], 'tokens') or ''
local ends = redis.call('HGET', KEYS[1], 'turn_ends') or ''
redis.call('HSET', KEYS[1], 'tokens', tokens .. ARGV[2], 'turn_ends', ends .. ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ttl))
return 1
"""


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

    async def get(self, session_id: str) -> SessionRecord | None:
        fields = await self._redis.hgetall(self._key(session_id))
        if not fields:
            return None
        return SessionRecord(
            model=fields[b"model"].decode(),
            home=fields[b"home"].decode(),
            worker_id=fields[b"worker_id"].decode(),
            ttl_s=int(fields[b"ttl_s"]),
            tokens=_unpack(fields.get(b"tokens", b"")),
            turn_ends=_unpack(fields.get(b"turn_ends", b"")),
        )

    async def put(self, session_id: str, record: SessionRecord) -> None:
        key = self._key(session_id)
        mapping = {
            "model": record.model,
            "home": record.home,
            "worker_id": record.worker_id,
            "ttl_s": record.ttl_s,
            "tokens": _pack(record.tokens),
            "turn_ends": _pack(record.turn_ends),
        }
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, record.ttl_s)
            await pipe.execute()

    async def append(self, session_id: str, length: int, appended: list[int]) -> bool:
        end = _pack([length + len(appended)])
        args: list[bytes | int] = [length * 4, _pack(appended), end]
        return bool(await self._append(keys=[self._key(session_id)], args=args))

    async def delete(self, session_id: str) -> None:
        await self._redis.delete(self._key(session_id))

    async def close(self) -> None:
        await self._redis.aclose()


def create_store(url: str, max_records: int = DEFAULT_MAX_RECORDS) -> SessionStore:
    """``memory`` (or empty) or a ``redis://`` / ``rediss://`` URL."""
    if url in ("", "memory"):
        return MemoryStore(max_records)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ValueError(f"--session-store must be 'memory' or a redis:// URL, not {url!r}")
