"""gpt-oss's harmony format: the output is a series of messages on named channels.

Each message is a header, ``<|message|>``, a body, and an end marker (``<|end|>``; ``<|call|>``
after a call, ``<|return|>`` after the last answer; the worker may stop before writing the last
one). The first header follows the prompt's ``<|start|>assistant``; later ones start with
``<|start|>assistant`` themselves.

- ``<|channel|>analysis<|message|>...`` is reasoning. Without a reasoning split, the whole
  message, markup included, is content (as llama-server does with ``reasoning_format: none``).
- A header naming a recipient, ``to=functions.f`` (before or after ``<|channel|>``, with or
  without ``<|constrain|>json``), makes the body the JSON arguments of a call of ``f``. A
  recipient outside ``functions.`` is called by its full name. Without tools, such a body is
  content.
- ``<|channel|>final<|message|>...`` is the answer, and so is ``commentary`` without a recipient
  (the preamble gpt-oss may write before its calls): both are content.
- Text that does not start like a header is content up to the next end marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from llamagrid.worker.engine.parsing.calls import ArgsValue
from llamagrid.worker.engine.parsing.deltas import ParseError, Sink
from llamagrid.worker.engine.parsing.jsonscan import WHITESPACE
from llamagrid.worker.engine.parsing.stage import FULL, NO, PARTIAL, Stage, expect, partial_suffix

MESSAGE = "<|message|>"
START = "<|start|>"
ENDS = ("<|end|>", "<|call|>", "<|return|>")
_BOUNDARIES = (*ENDS, START)
_HEADER_STARTS = (START, "<|channel|>", "to=", "<|constrain|>")
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z0-9_-]+)")
#: Longest header (role, channel, recipient and constraint).
MAX_HEADER_CHARS = 512


def _starts_header(text: str, complete: bool) -> bool:
    """Whether text starts like a message header (or, when not complete, could still)."""
    return any(text.startswith(s) or (not complete and s.startswith(text)) for s in _HEADER_STARTS)


class HarmonyStage(Stage):
    """gpt-oss output: reasoning, calls and content, each in its own messages."""

    def __init__(self, sink: Sink, calls: bool, split_reasoning: bool) -> None:
        super().__init__(sink)
        self.calls = calls
        self.split_reasoning = split_reasoning
        self.mode = self.header
        self.args: ArgsValue | None = None
        self.raw = False  # an analysis message passed through as content, markup and all

    def header(self) -> bool:
        stripped = self.buf.lstrip(WHITESPACE)
        if not stripped:
            return False
        at = stripped.find(MESSAGE)
        head = stripped if at < 0 else stripped[:at]
        if not _starts_header(head, complete=at >= 0):
            return self.to(self.text_body)  # plain text, whitespace and all
        self.buf = stripped
        if at < 0:
            if len(self.buf) > MAX_HEADER_CHARS:
                raise ParseError(f"a message header is longer than {MAX_HEADER_CHARS} characters")
            return False
        self.consume(at + len(MESSAGE))
        recipient = _RECIPIENT.search(head)
        channel = _CHANNEL.search(head)
        if recipient is not None and self.calls:
            name = recipient.group(1).removeprefix("functions.")
            self.sink.begin_call(name)
            self.args = ArgsValue(self.sink)
            return self.to(self.call_body)
        if recipient is None and channel is not None and channel.group(1) == "analysis":
            if self.split_reasoning:
                return self.to(self.reasoning_body)
            self.sink.text(head + MESSAGE)
            self.raw = True
        return self.to(self.text_body)

    def reasoning_body(self) -> bool:
        return self._body(self.sink.reasoning)

    def text_body(self) -> bool:
        return self._body(self.sink.text)

    def _body(self, send: Callable[[str], None]) -> bool:
        buf = self.buf
        best: tuple[int, str] | None = None
        for marker in _BOUNDARIES:
            at = buf.find(marker)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, marker)
        if best is not None:
            at, marker = best
            send(buf[:at])
            ends = marker != START  # a new message without an end marker: its header is read
            if self.raw and ends:
                self.sink.text(marker)
            self.buf = buf[at + len(marker) if ends else at :]
            self.raw = False
            return self.to(self.header)
        keep = 0 if self.final else partial_suffix(buf, _BOUNDARIES)
        send(buf[: len(buf) - keep])
        self.buf = buf[len(buf) - keep :]
        return False

    def call_body(self) -> bool:
        assert self.args is not None
        self.consume(self.args.feed(self.buf))
        return self.args.done and self.to(self.call_end)

    def call_end(self) -> bool:
        if not self.skip_whitespace():
            return False
        for marker in ENDS:
            found = expect(self.buf, marker)
            if found == FULL:
                self.consume(len(marker))
                return self.to(self.header)
            if found == PARTIAL:
                return False
        if expect(self.buf, START) != NO:
            return self.to(self.header)
        raise ParseError("expected <|call|> after a tool call's arguments")

    def at_end(self) -> None:
        if self.mode == self.call_body and self.args is not None:
            self.args.finish()
        elif self.mode == self.header and not self.buf.lstrip(WHITESPACE).startswith("<|"):
            self.sink.text(self.buf.strip(WHITESPACE) and self.buf)  # a little plain text
        # A cut-off header or end marker is markup, and is dropped.
