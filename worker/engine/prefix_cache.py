"""Prefix reuse: which sequence's KV cells already hold the longest prefix of a new prompt.

A sequence keeps its KV cells after its request ends, so the next request with the same
leading tokens (a system prompt, a chat history that grows one turn at a time) skips their
prefill. A new request takes the idle sequence with the longest common prefix. When none shares
enough to matter, it takes the least valuable idle sequence instead: an empty one, else one
whose prefix another sequence also holds, else the least recently used.

A running sequence can donate its prefix too, so a request does not prefill a system prompt
again only because another request with the same prompt is running. With a unified KV buffer,
llama.cpp's seq_cp shares the cells at no cost. With a buffer per sequence, it copies the
donor's whole buffer before the next decode and the copy is trimmed to the prefix: a memory
copy, worth it once the prefix is ``min_copy`` tokens longer than what the idle sequence has.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the common case for a repeated prompt; a C-speed comparison
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]: bisect on slice equality
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class Reuse:
    """Where a new request's prompt goes, and how much of it is already in the KV cache."""

    #: The sequence id the request gets.
    seq: int
    #: Prompt tokens whose KV cells are reused (never the whole prompt: one token is decoded
    #: so that the request gets logits).
    length: int
    #: Another sequence to copy the first `length` positions from, or None for seq's own cells.
    source: int | None = None
    #: The `length` positions were restored from the host tier (engine/host_cache.py).
    restored: bool = False


#: For eviction, a sequence's prefix is also held elsewhere when another sequence starts with
#: the same first three quarters of it, or the same first this many tokens.
_HEAD = 256


def _head(tokens: list[int]) -> tuple[int, ...]:
    """The part of a sequence that, held by another sequence too, makes it a duplicate."""
    return tuple(tokens[: min(_HEAD, max(1, len(tokens) * 3 // 4))])


class PrefixCache:
    """Bookkeeping of idle sequences' cached tokens. Call only from the engine thread."""

    def __init__(
        self, n_seq: int, shareable: bool, *, min_reuse: int = 16, min_copy: int = 32
    ) -> None:
        #: Whether sequences share cells (a unified KV buffer): donating a prefix is then free.
        self.shareable = shareable
        #: Fewer common tokens than this (a chat template's header) are not worth keeping an
        #: idle sequence for: the least valuable sequence is overwritten instead.
        self.min_reuse = min_reuse
        #: Without shared cells, a running sequence donates only this many more tokens.
        self.min_copy = min_copy
        self._held: list[list[int]] = [[] for _ in range(n_seq)]
        #: Whether a sequence's prefix is a session's (evicted after anonymous ones).
        self._session = [False] * n_seq
        self._used_at = [0] * n_seq
        self._clock = 0

    def held(self, seq: int) -> list[int]:
        """The tokens whose KV an idle sequence holds (position i holds token i)."""
        return self._held[seq]

    def retain(self, seq: int, tokens: list[int], session: bool = False) -> None:
        """Record what a sequence holds once its request has left it."""
        self._clock += 1
        self._held[seq] = tokens
        self._session[seq] = session
        self._used_at[seq] = self._clock

    def is_session(self, seq: int) -> bool:
        """Whether an idle sequence holds a session's prefix."""
        return self._session[seq]

    def take(self, seq: int) -> None:
        """A request now owns the sequence; its cells are tracked by the request until retain."""
        self._held[seq] = []
        self._session[seq] = False

    def drop_all(self) -> None:
        """The KV cache was cleared."""
        self._held = [[] for _ in self._held]

    def plan(
        self,
        prompt: list[int],
        free: list[int],
        busy: Mapping[int, list[int]],
        foreign: frozenset[int] = frozenset(),
    ) -> Reuse:
        """Pick a free sequence for prompt; busy maps running sequences to their decoded tokens.
        The cells of foreign sequences (computed under other LoRA scales) are worth nothing."""
        limit = len(prompt) - 1

        def reuse(tokens: list[int]) -> int:
            return min(common_prefix(prompt, tokens), limit)

        def own_reuse(seq: int) -> int:
            return 0 if seq in foreign else reuse(self._held[seq])

        seq = max(free, key=lambda s: (own_reuse(s), -self._used_at[s]))
        own = own_reuse(seq)
        spare = None
        if own < self.min_reuse:
            seq = spare = self._least_valuable(free, busy)
            own = own_reuse(seq)
        if busy:
            # An idle sequence can't beat the best free one, so only running ones are donors.
            source, shared = max(((s, reuse(t)) for s, t in busy.items()), key=lambda d: d[1])
            gain = shared - own
            if gain > 0 and (self.shareable or gain >= self.min_copy):
                # Into the least valuable sequence, so that seq keeps what it holds.
                target = spare if spare is not None else self._least_valuable(free, busy)
                return Reuse(target, shared, source)
        return Reuse(seq, own)

    def spare(self, free: list[int], busy: Mapping[int, list[int]]) -> int:
        """The free sequence whose cached prefix is worth least, for a request that reuses no
        prefix (a further choice of a request, or one that wants its prompt's logits)."""
        return self._least_valuable(free, busy)

    def _least_valuable(self, free: list[int], busy: Mapping[int, list[int]]) -> int:
        """An empty idle sequence, else an anonymous prefix before a session's, one whose
        prefix another sequence also holds first, else the least recently used one."""
        heads = {s: _head(self._held[s]) for s in free if self._held[s]}
        # How many sequences start with each head: one hash pass per distinct head length (most
        # heads are _HEAD long), not a comparison per pair of sequences.
        others = [*busy.values(), *(self._held[s] for s in free)]
        starts = {
            length: Counter(tuple(tokens[:length]) for tokens in others if len(tokens) >= length)
            for length in {len(head) for head in heads.values()}
        }

        def duplicated(seq: int) -> bool:
            head = heads.get(seq)
            return head is not None and starts[len(head)][head] > 1

        return min(
            free,
            key=lambda s: (
                len(self._held[s]) > 0,
                self._session[s],
                not duplicated(s),
                self._used_at[s],
            ),
        )

    def distinct_tokens(self, sequences: list[list[int]]) -> int:
        """Distinct cached prefixes over the given sequences: KV cells in use when shared."""
        if not self.shareable:
            return sum(len(t) for t in sequences)
        ordered = sorted(t for t in sequences if t)
        total, prev = 0, list[int]()
        for tokens in ordered:
            total += len(tokens) - common_prefix(prev, tokens)
            prev = tokens
        return total
