"""What a parser hands back, the limits it holds model output to, and where its deltas collect.

A parser writes into a ``Sink``: ordinary text, reasoning, and tool calls (a call starts once its
name is known, then takes fragments of its arguments' JSON text, then ends with the parsed
arguments). The sink merges neighbouring deltas of one kind, numbers the calls, gives each an
id, and remembers the first error. After an error nothing more is written: the rest of the
output is markup that failed to parse, and none of it may reach the content.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

#: Deepest nesting of JSON objects and arrays in a call (its arguments included).
MAX_NESTING = 64
#: Most characters in one call's JSON text, or in the code of a ``<|python_tag|>`` call.
MAX_CALL_CHARS = 256 * 1024
#: Most tool calls in one output.
MAX_CALLS = 128
#: Longest function name (OpenAI allows 64 characters; a little slack for odd markup).
MAX_NAME_CHARS = 256

_ID_ALPHABET = string.ascii_letters + string.digits
_ID_LENGTH = 24


@dataclass(frozen=True)
class TextDelta:
    """Ordinary content."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Thinking, without its markup."""

    text: str


@dataclass(frozen=True)
class CallDelta:
    """A part of tool call number ``index`` (0-based, in the order the model wrote the calls)."""

    index: int
    #: Set on the call's first delta only.
    id: str | None
    #: Set on the call's first delta only.
    name: str | None
    #: The next fragment of the arguments' JSON text ("" allowed).
    arguments: str


Delta = TextDelta | ReasoningDelta | CallDelta


@dataclass(frozen=True)
class ParsedCall:
    """A complete tool call."""

    id: str
    name: str
    #: Compact JSON text of an object.
    arguments: str


class ParseError(Exception):
    """Why the output is not valid tool-call markup (a short message, never the whole output)."""


class Sink:
    """The deltas, calls and first error of one parse."""

    def __init__(
        self,
        id_prefix: str,
        rng: random.Random,
        tool_names: frozenset[str],
        id_length: int = _ID_LENGTH,
    ) -> None:
        self.deltas: list[Delta] = []
        self.calls: list[ParsedCall] = []
        self.error: str | None = None
        self.tool_names = tool_names
        self._id_prefix = id_prefix
        self._id_length = id_length
        self._rng = rng
        self._open: tuple[int, str, str] | None = None  # index, id, name of the call being read
        self._started = 0

    @property
    def failed(self) -> bool:
        """Whether an error has been recorded (later output is dropped)."""
        return self.error is not None

    def fail(self, message: str) -> None:
        """Record why the output failed to parse; the first reason wins."""
        if self.error is None:
            self.error = message

    def text(self, text: str) -> None:
        """Ordinary content."""
        if text and not self.failed:
            self._add(TextDelta(text))

    def reasoning(self, text: str) -> None:
        """Thinking."""
        if text and not self.failed:
            self._add(ReasoningDelta(text))

    def known_tool(self, name: str) -> bool:
        """Whether name is one of the request's tools (any name is when none were listed)."""
        return not self.tool_names or name in self.tool_names

    def begin_call(self, name: str) -> None:
        """Start a call whose name is known; raises ParseError for a bad or unknown name."""
        if not name or len(name) > MAX_NAME_CHARS:
            raise ParseError(f"a tool call has a function name of {len(name)} characters")
        if not self.known_tool(name):
            raise ParseError(f"the model called {name[:64]!r}, which is not one of the tools")
        if self._started >= MAX_CALLS:
            raise ParseError(f"the output has more than {MAX_CALLS} tool calls")
        call_id = self._id_prefix + "".join(
            self._rng.choice(_ID_ALPHABET) for _ in range(self._id_length)
        )
        self._open = (self._started, call_id, name)
        self._started += 1
        if not self.failed:
            self._add(CallDelta(self._open[0], call_id, name, ""))

    def call_arguments(self, fragment: str) -> None:
        """The next fragment of the open call's arguments."""
        if fragment and self._open is not None and not self.failed:
            self._add(CallDelta(self._open[0], None, None, fragment))

    def end_call(self, arguments: str) -> None:
        """Complete the open call; arguments is the compact JSON of its arguments object."""
        if self._open is None or self.failed:
            return
        _, call_id, name = self._open
        self.calls.append(ParsedCall(call_id, name, arguments))
        self._open = None

    def take(self) -> list[Delta]:
        """The deltas written since the last take."""
        out, self.deltas = self.deltas, []
        return out

    def _add(self, delta: Delta) -> None:
        last = self.deltas[-1] if self.deltas else None
        if isinstance(delta, TextDelta) and isinstance(last, TextDelta):
            self.deltas[-1] = TextDelta(last.text + delta.text)
        elif isinstance(delta, ReasoningDelta) and isinstance(last, ReasoningDelta):
            self.deltas[-1] = ReasoningDelta(last.text + delta.text)
        elif (
            isinstance(delta, CallDelta)
            and isinstance(last, CallDelta)
            and last.index == delta.index
            and delta.id is None
        ):
            merged = last.arguments + delta.arguments
            self.deltas[-1] = CallDelta(last.index, last.id, last.name, merged)
        else:
            self.deltas.append(delta)
