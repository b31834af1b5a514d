"""Hands events from the engine thread to asyncio consumers.

The engine thread never blocks on a slow client: events pile up in a per-request deque (at most
one per generated token plus one final event, so bounded by max_tokens) and the consumer takes
everything pending at once. The loop is woken only when the deque goes from empty to
non-empty, so a consumer that falls behind costs fewer cross-thread calls, not more.

While the engine thread runs a step it holds a ``WakeGate``: the wake-ups of every channel it
fills during the step are sent to the loop in one cross-thread call when the step ends. The loop
then sees all of a step's tokens at once (one wake-up, not one per sequence), which is what lets
a Relay stream carry every sequence's token of a step in one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class WakeGate:
    """Defers channel wake-ups made by one thread while it holds the gate."""

    def __init__(self) -> None:
        self._holder: int | None = None
        self._deferred: dict[asyncio.AbstractEventLoop, list[Callable[[], object]]] = {}

    def defers(self) -> bool:
        """Whether the calling thread holds the gate (so its wake-ups wait for release)."""
        return self._holder == threading.get_ident()

    def defer(self, loop: asyncio.AbstractEventLoop, wake: Callable[[], object]) -> None:
        """Queue a wake-up; call only from the holding thread."""
        self._deferred.setdefault(loop, []).append(wake)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the gate for the block; release every deferred wake-up at its end."""
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            self._holder = None
            deferred, self._deferred = self._deferred, {}
            for loop, wakes in deferred.items():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_run_all, wakes)


def _run_all(wakes: list[Callable[[], object]]) -> None:
    for wake in wakes:
        wake()


class EventChannel(Generic[T]):
    """Single-producer (any thread), single-consumer (one event loop) channel."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gate: WakeGate | None = None) -> None:
        self._loop = loop
        self._gate = gate
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()

    def push(self, item: T) -> None:
        """Add an item from any thread."""
        with self._lock:
            wake = not self._items
            self._items.append(item)
        if not wake:
            return
        if self._gate is not None and self._gate.defers():
            self._gate.defer(self._loop, self._ready.set)
        elif not self._loop.is_closed():
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
