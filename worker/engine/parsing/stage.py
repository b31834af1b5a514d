"""The machinery every format's parser shares: a buffer read by modes, and content scanning.

A stage keeps the text it has not yet placed in ``buf``. Its current mode reads from the front
of the buffer: it consumes what it can place (content, reasoning, a piece of a call) and returns
True, or returns False to wait for more text. At the end of the output (``final``) a mode that
would wait decides with what it has. A ParseError from a mode is recorded on the sink; the rest
of the output is then dropped.

Content is scanned for a format's openers (``<tool_call>``, ``[TOOL_CALLS]`` ...). Text that
cannot be the start of an opener is sent at once; the longest end of the text that could start
one is held back, with the whitespace before it (whitespace just before a call is dropped).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llamagrid.worker.engine.parsing.deltas import ParseError, Sink
from llamagrid.worker.engine.parsing.jsonscan import WHITESPACE

#: Most trailing whitespace held back from content (beyond it, whitespace is sent as it comes).
MAX_HELD_WHITESPACE = 64

#: What a token sequence match found.
FULL, PARTIAL, NO = 1, 0, -1


def partial_suffix(text: str, markers: Sequence[str]) -> int:
    """Length of the longest end of text that is a proper prefix of one of markers."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:n]):
                longest = n
                break
    return longest


def match_tokens(text: str, tokens: Sequence[str], limit: int = 64) -> tuple[int, int]:
    """Match tokens at the start of text, whitespace allowed before each one.

    Returns (FULL, end), (PARTIAL, 0) when text ends inside the match, or (NO, 0). A match
    whose tokens start more than limit characters in fails (it bounds how much is held).
    """
    i, n = 0, len(text)
    for token in tokens:
        while i < n and text[i] in WHITESPACE:
            i += 1
        if i > limit:
            return NO, 0
        if i == n:
            return PARTIAL, 0
        piece = text[i : i + len(token)]
        if piece == token:
            i += len(token)
        elif i + len(piece) == n and token.startswith(piece):
            return PARTIAL, 0
        else:
            return NO, 0
    return FULL, i


def expect(text: str, literal: str) -> int:
    """Whether text starts with literal (FULL), is a proper prefix of it (PARTIAL), or neither."""
    if text.startswith(literal):
        return FULL
    return PARTIAL if literal.startswith(text) else NO


class Stage:
    """A format's parser: modes reading from the front of a buffer."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buf = ""
        self.final = False
        self.mode: Callable[[], bool] = self.content

    def feed(self, text: str) -> None:
        """Read the next piece of output."""
        if self.sink.failed:
            return
        self.buf += text
        self._run()

    def finish(self) -> None:
        """The output is complete: place everything held back."""
        self.final = True
        self._run()
        if not self.sink.failed:
            try:
                self.at_end()
            except ParseError as exc:
                self.sink.fail(str(exc))
        self.buf = ""

    def _run(self) -> None:
        try:
            while not self.sink.failed and self.mode():
                pass
        except ParseError as exc:
            self.sink.fail(str(exc))
        if self.sink.failed:
            self.buf = ""

    # Modes and hooks the formats override.
    def content(self) -> bool:
        """Ordinary text: sent as it comes (a format without markup)."""
        self.sink.text(self.buf)
        self.buf = ""
        return False

    def at_end(self) -> None:
        """The output ended in the current mode, after it read all it could."""
        self.sink.text(self.buf)

    # Helpers for the modes.
    def to(self, mode: Callable[[], bool]) -> bool:
        """Switch to mode (a step of progress)."""
        self.mode = mode
        return True

    def consume(self, n: int) -> None:
        """Drop the first n characters of the buffer."""
        self.buf = self.buf[n:]

    def skip_whitespace(self) -> bool:
        """Drop leading whitespace; return whether anything else is left in the buffer."""
        stripped = self.buf.lstrip(WHITESPACE)
        if len(stripped) != len(self.buf):
            self.buf = stripped
        return bool(stripped)

    def scan_content(self, openers: Sequence[str]) -> str | None:
        """Send content up to the first opener, and consume the opener; return it, if found.

        Without an opener, sends all the buffer but what could still start one (and the
        whitespace before that), or everything at the end of the output.
        """
        buf = self.buf
        best: tuple[int, str] | None = None
        for opener in openers:
            at = buf.find(opener)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, opener)
        if best is not None:
            at, opener = best
            self.sink.text(buf[:at].rstrip(WHITESPACE))
            self.buf = buf[at + len(opener) :]
            return opener
        if self.final:
            self.sink.text(buf)
            self.buf = ""
            return None
        keep = len(buf) - partial_suffix(buf, openers)
        cut = max(len(buf[:keep].rstrip(WHITESPACE)), keep - MAX_HELD_WHITESPACE)
        self.sink.text(buf[:cut])
        self.buf = buf[cut:]
        return None
