"""Tool calls written in JSON, read as they stream, on top of ``jsonscan.JsonScanner``.

- ``CallObject``: a call written as one object, ``{"name": ..., "arguments": {...}}``.
- ``ArgsValue``: a call whose name came in markup and whose arguments are the whole value.
- ``CallArray``: a JSON array of call objects (Mistral's and the generic format).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llamagrid.worker.engine.parsing.deltas import ParseError, Sink
from llamagrid.worker.engine.parsing.jsonscan import WHITESPACE, JsonScanner, compact


class NotACall(Exception):
    """JSON that looked like the start of a call but is not one (it is content)."""


def _loads_object(text: str) -> dict[str, Any]:
    """The object text holds (text was checked by a JsonScanner: valid and not too deep)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"invalid JSON in a tool call: {str(exc)[:80]}") from None
    if not isinstance(value, dict):
        raise ParseError("a tool call's arguments are not a JSON object")
    return value


class ArgsValue:
    """A call's arguments as a whole JSON object, streamed as it is read.

    Whitespace before the object is skipped. The call must have been started on the sink.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.scanner = JsonScanner()
        self._parts: list[str] = []
        self._started = False

    @property
    def done(self) -> bool:
        """Whether the object is complete (and the call ended)."""
        return self.scanner.done

    def feed(self, text: str) -> int:
        """Read what text holds of the object; return how many characters were read."""
        skipped = 0
        if not self._started:
            skipped = len(text) - len(text.lstrip(WHITESPACE))
            text = text[skipped:]
            if not text:
                return skipped
            if text[0] != "{":
                raise ParseError(f"expected a JSON object of arguments, found {text[0]!r}")
            self._started = True
        used, _ = self.scanner.feed(text)
        self.scanner.check()
        piece = text[:used]
        self._parts.append(piece)
        self.sink.call_arguments(piece)
        if self.scanner.done:
            self.sink.end_call(compact(_loads_object("".join(self._parts))))
        return skipped + used

    def finish(self) -> None:
        """The output ended: raise ParseError if the object is incomplete."""
        if not self.scanner.done:
            raise ParseError("the output ends inside a tool call's arguments")


class CallObject:
    """A call written as one JSON object with its name and its arguments as members.

    The arguments (the first member named in ``arg_keys``) are streamed once the name is known;
    arguments written before the name wait for it. A string of JSON text is accepted as the
    arguments too (it is parsed at the end). With ``strict`` off, an object that turns out not
    to be a call (invalid JSON, or a name that is not one of the tools, before anything was
    sent) raises NotACall so that the caller can send it as content.
    """

    def __init__(self, sink: Sink, arg_keys: Sequence[str], strict: bool = True) -> None:
        self.sink = sink
        self.arg_keys = tuple(arg_keys)
        self.strict = strict
        self.scanner = JsonScanner()
        self.name: str | None = None
        self.started = False  # whether the call was started on the sink
        self._role: str | None = None  # the member being captured: "name", "args" or None
        self._name_parts: list[str] = []
        self._args_key: str | None = None
        self._args_kind = ""  # the first character of the arguments' value
        self._args_parts: list[str] = []
        self._args_complete = False
        self._sent = 0  # how many argument parts were streamed

    @property
    def done(self) -> bool:
        """Whether the object is complete (and the call ended)."""
        return self.scanner.done

    def feed(self, text: str) -> int:
        """Read what text holds of the object; return how many characters were read."""
        used, events = self.scanner.feed(text)
        start = 0
        for kind, at, key in events:
            if kind == "start":
                self._begin_member(key, text, at)
                start = at
            elif self._role is not None:
                self._capture(text[start:at])
                self._end_member()
        if self._role is not None:
            self._capture(text[start:used])
        if self.scanner.failure is not None:
            raise self._not_a_call(str(self.scanner.failure))
        if self.scanner.done:
            self._complete()
        return used

    def finish(self) -> None:
        """The output ended: raise ParseError (or NotACall) if the object is incomplete."""
        if not self.scanner.done:
            if not self.strict and not self.started:
                raise NotACall("incomplete")
            raise ParseError("the output ends inside a tool call")

    def _begin_member(self, key: str, text: str, at: int) -> None:
        if key == "name" and self.name is None and not self._name_parts:
            if text[at] != '"':
                raise self._not_a_call("a tool call's name is not a string")
            self._role = "name"
        elif key in self.arg_keys and self._args_key is None:
            self._args_key = key
            self._args_kind = text[at]
            self._role = "args"
        else:
            self._role = None

    def _capture(self, piece: str) -> None:
        if self._role == "name":
            self._name_parts.append(piece)
        elif self._role == "args":
            self._args_parts.append(piece)
            self._stream()

    def _end_member(self) -> None:
        if self._role == "name":
            self.name = json.loads("".join(self._name_parts))
            self._start_call()
        elif self._role == "args":
            self._args_complete = True
        self._role = None

    def _start_call(self) -> None:
        assert self.name is not None
        if not self.strict and not self.sink.known_tool(self.name):
            raise NotACall(self.name)
        self.sink.begin_call(self.name)
        self.started = True
        self._stream()

    def _stream(self) -> None:
        """Send the argument text read so far, when the name is known and it is an object."""
        if not self.started or self._args_kind != "{":
            return
        for piece in self._args_parts[self._sent :]:
            self.sink.call_arguments(piece)
        self._sent = len(self._args_parts)

    def _complete(self) -> None:
        if self.name is None:
            raise self._not_a_call("a tool call has no name")
        if self._args_key is None:
            self.sink.call_arguments("{}")
            self.sink.end_call("{}")
            return
        raw = "".join(self._args_parts)
        if self._args_kind == "{":
            self.sink.end_call(compact(_loads_object(raw)))
            return
        if self._args_kind != '"':
            raise ParseError("a tool call's arguments are not a JSON object")
        inner = json.loads(raw)
        check = JsonScanner()
        used, _ = check.feed(inner.strip())
        check.check()
        if not check.done or inner.strip()[used:]:
            raise ParseError("a tool call's arguments are a string that is not a JSON object")
        text = compact(_loads_object(inner))
        self.sink.call_arguments(text)
        self.sink.end_call(text)

    def _not_a_call(self, message: str) -> Exception:
        if not self.strict and not self.started:
            return NotACall(message)
        return ParseError(message)


class CallArray:
    """A JSON array of call objects, its ``[`` already read: the Mistral and generic forms."""

    def __init__(self, sink: Sink, arg_keys: Sequence[str]) -> None:
        self.sink = sink
        self.arg_keys = arg_keys
        self.call: CallObject | None = None
        self.items = 0
        self.done = False
        self._want_item = True  # after "[" or ","

    def feed(self, text: str) -> int:
        """Read the array's items up to its closing bracket; return how much was read."""
        i, n = 0, len(text)
        while i < n and not self.done:
            if self.call is not None:
                i += self.call.feed(text[i:])
                if self.call.done:
                    self.call = None
                    self.items += 1
                    self._want_item = False
                continue
            c = text[i]
            if c in WHITESPACE:
                i += 1
            elif self._want_item and c == "{":
                self.call = CallObject(self.sink, self.arg_keys)
            elif (c == "]" and not self._want_item) or (c == "]" and self.items == 0):
                self.done = True
                i += 1
            elif c == "," and not self._want_item:
                self._want_item = True
                i += 1
            else:
                raise ParseError(f"unexpected {c!r} in an array of tool calls")
        return i

    def finish(self) -> None:
        """The output ended: an incomplete call is an error (complete calls before it stand)."""
        if self.call is not None:
            self.call.finish()
