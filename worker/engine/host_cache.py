"""The host tier of the KV cache: sequences' KV cells saved to host memory, within a budget.

A sequence's KV cells hold the prompt prefix of its last request (engine/prefix_cache.py). When a
new request needs that sequence, its cells used to be lost, and the next request with that prefix
(the next turn of a conversation) prefilled it all again. Now the scheduler first saves them here
(llama.cpp's per-sequence state calls, through the native boundary), and a later prompt that
starts with a saved prefix restores it into a sequence instead of prefilling it: a memory copy,
not a forward pass.

Entries are kept least-recently-used first out, within ``budget_bytes``; an entry whose tokens
are a prefix of a newer entry's is dropped (the newer holds all it held). A restored entry
leaves the tier: its cells are resident again, and are saved again, longer, when evicted.
Sessions' prefixes go last: anonymous entries are evicted before session ones.

Engine-thread only. The saved data is opaque here (the native module's buffer).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass

from llamagrid.worker.engine.prefix_cache import common_prefix


@dataclass(eq=False)
class HostEntry:
    """One saved sequence: the tokens its cells hold (position i holds token i), and the data."""

    tokens: list[int]
    data: Sized
    #: Saved from a session's sequence (evicted after anonymous entries).
    session: bool
    used_at: int
    #: The LoRA adapter scales the cells were computed under (engine/lora.py).
    scales: tuple[float, ...] = ()

    @property
    def size(self) -> int:
        """Bytes of host memory the entry holds."""
        return len(self.data)


class HostCache:
    """Saved sequences within a byte budget. Call only from the engine thread."""

    def __init__(self, budget_bytes: int, min_tokens: int = 16) -> None:
        self.budget_bytes = budget_bytes
        #: Shorter prefixes are not worth saving (a template header).
        self.min_tokens = min_tokens
        #: False when the model's state does not round-trip (checked at startup).
        self.enabled = budget_bytes > 0
        self.entries: list[HostEntry] = []
        self.bytes_used = 0
        self._clock = 0
        #: Totals for /metrics.
        self.saved = 0
        self.restored = 0
        self.dropped = 0

    def find(
        self, prompt: list[int], limit: int, scales: tuple[float, ...] = ()
    ) -> tuple[HostEntry, int] | None:
        """The entry sharing the longest prefix with prompt, and that length (at most limit),
        among those computed under the given adapter scales."""
        entries = [e for e in self.entries if e.scales == scales]
        if not entries:
            return None
        best = max(entries, key=lambda e: min(common_prefix(e.tokens, prompt), limit))
        length = min(common_prefix(best.tokens, prompt), limit)
        return (best, length) if length > 0 else None

    def worth_saving(self, tokens: list[int], scales: tuple[float, ...] = ()) -> bool:
        """Whether a sequence about to lose these cells (computed under these adapter scales)
        should save them first."""
        if not self.enabled or len(tokens) < self.min_tokens:
            return False
        return not any(
            e.scales == scales and common_prefix(e.tokens, tokens) >= len(tokens)
            for e in self.entries
        )

    def add(
        self, tokens: list[int], data: Sized, session: bool, scales: tuple[float, ...] = ()
    ) -> bool:
        """Keep a saved sequence; False when it is larger than the whole budget."""
        size = len(data)
        if size > self.budget_bytes:
            return False
        # Entries whose every token this one holds, under the same scales, are superseded.
        superseded = [
            e
            for e in self.entries
            if e.scales == scales and common_prefix(e.tokens, tokens) >= len(e.tokens)
        ]
        for entry in superseded:
            self._remove(entry)
        while self.bytes_used + size > self.budget_bytes:
            victim = min(self.entries, key=lambda e: (e.session, e.used_at))
            self._remove(victim)
            self.dropped += 1
        self._clock += 1
        self.entries.append(HostEntry(tokens, data, session, self._clock, scales))
        self.bytes_used += size
        self.saved += 1
        return True

    def take(self, entry: HostEntry) -> None:
        """The entry was restored into a sequence: it leaves the tier."""
        self._remove(entry)
        self.restored += 1

    def clear(self) -> None:
        """Forget every entry (the model is going away)."""
        self.entries.clear()
        self.bytes_used = 0

    def _remove(self, entry: HostEntry) -> None:
        self.entries.remove(entry)
        self.bytes_used -= entry.size
