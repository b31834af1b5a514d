"""Reasoning in ``<think>...</think>`` (DeepSeek R1, Qwen 3, QwQ), split from what follows.

The block counts only at the start of the output (after whitespace), or from the very start
when the prompt already opened it (``thinking_open``: DeepSeek R1's template ends its generation
prompt with ``<think>\\n``; a ``<think>`` the model writes again there is dropped). The reasoning
is sent without the tags and without the whitespace around it; the output after ``</think>``,
its leading whitespace dropped, goes to the tool-call stage. An output that ends inside the
block is all reasoning.
"""

from __future__ import annotations

from llamagrid.worker.engine.parsing.deltas import Sink
from llamagrid.worker.engine.parsing.jsonscan import WHITESPACE
from llamagrid.worker.engine.parsing.stage import (
    FULL,
    MAX_HELD_WHITESPACE,
    PARTIAL,
    Stage,
    expect,
    partial_suffix,
)

OPEN, CLOSE = "<think>", "</think>"


class ThinkStage(Stage):
    """Splits a leading think block off, and hands the rest to an inner stage."""

    def __init__(self, sink: Sink, inner: Stage, thinking_open: bool) -> None:
        super().__init__(sink)
        self.inner = inner
        self.mode = self.reopened if thinking_open else self.start

    def start(self) -> bool:
        stripped = self.buf.lstrip(WHITESPACE)
        if not stripped:
            return False
        found = expect(stripped, OPEN)
        if found == PARTIAL and not self.final:
            return False
        if found == FULL:
            self.buf = stripped[len(OPEN) :]
            return self.to(self.leading)
        return self.to(self.passing)

    def reopened(self) -> bool:
        """The prompt opened the block: drop a second opener the model may write."""
        stripped = self.buf.lstrip(WHITESPACE)
        if not stripped:
            return False
        found = expect(stripped, OPEN)
        if found == PARTIAL and not self.final:
            return False
        self.buf = stripped[len(OPEN) :] if found == FULL else stripped
        return self.to(self.leading)

    def leading(self) -> bool:
        """Whitespace at the start of the reasoning is dropped."""
        return self.skip_whitespace() and self.to(self.thinking)

    def thinking(self) -> bool:
        buf = self.buf
        at = buf.find(CLOSE)
        if at >= 0:
            self.sink.reasoning(buf[:at].rstrip(WHITESPACE))
            self.buf = buf[at + len(CLOSE) :]
            return self.to(self.after)
        if self.final:
            self.sink.reasoning(buf.rstrip(WHITESPACE))
            self.buf = ""
            return False
        keep = len(buf) - partial_suffix(buf, [CLOSE])
        cut = max(len(buf[:keep].rstrip(WHITESPACE)), keep - MAX_HELD_WHITESPACE)
        self.sink.reasoning(buf[:cut])
        self.buf = buf[cut:]
        return False

    def after(self) -> bool:
        return self.skip_whitespace() and self.to(self.passing)

    def passing(self) -> bool:
        if self.buf:
            self.inner.feed(self.buf)
            self.buf = ""
        return False

    def at_end(self) -> None:
        if self.mode in (self.start, self.passing):
            self.inner.feed(self.buf)
        self.buf = ""
        self.inner.finish()
