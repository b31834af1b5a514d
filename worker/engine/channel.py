"""Hands events from the engine thread to one asyncio consumer.

The engine thread never blocks on a slow client: events pile up in a per-request deque (at most
one per generated token plus one final event, so bounded by max_tokens) and the consumer takes
everything pending at once. The loop is woken only when the deque goes from empty to
non-empty, so a consumer that falls behind costs fewer cross-thread calls, not more.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class EventChannel(Generic[T]):
    """Single-producer (any thread), single-consumer (one event loop) channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()

    def push(self, item: T) -> None:
        """Add an item from any thread."""
        with self._lock:
            wake = not self._items
            self._items.append(item)
        if wake and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list[T]:
        """Wait for at least one item and return every item pending, oldest first."""
        while True:
            self._ready.clear()
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
            await self._ready.wait()
