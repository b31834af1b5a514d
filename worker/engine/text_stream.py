"""Turns a stream of token bytes into safe text deltas.

Two guarantees, per request:
- no delta ends inside a UTF-8 character (bytes of a split character wait for the rest);
- no delta contains a stop string or a prefix of one that the next tokens could complete: such a
  tail is held back until it either completes the stop (and is dropped) or turns out harmless.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Delta:
    """Text that may be sent now, and the stop string that ended the output, if any."""

    text: str
    stopped_by: str | None = None


class TextStream:
    """Incremental UTF-8 decoding with stop-string holdback for one generation."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """Whether a stop string has been seen; later input is ignored."""
        return self._stopped

    def feed(self, data: bytes) -> Delta:
        """Add the bytes of one or more tokens and return the text that is safe to send."""
        if self._stopped:
            return Delta("")
        return self._scan(self._held + self._decoder.decode(data))

    def finish(self) -> Delta:
        """Flush everything held back at the end of generation (no stop string was completed)."""
        if self._stopped:
            return Delta("")
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        found = self._find_stop(text)
        if found is not None:
            self._stopped = True
            return Delta(text[: found[0]], found[1])
        return Delta(text)

    def _scan(self, text: str) -> Delta:
        found = self._find_stop(text)
        if found is not None:
            self._stopped = True
            self._held = ""
            return Delta(text[: found[0]], found[1])
        keep = self._partial_stop_len(text)
        self._held = text[len(text) - keep :] if keep else ""
        return Delta(text[: len(text) - keep])

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self._stops:
            at = text.find(stop)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, stop)
        return best

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
