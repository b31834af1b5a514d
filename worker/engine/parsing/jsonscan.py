"""JSON read as it is generated: where a value ends, whether it is valid, and what to stream.

``JsonScanner`` checks one JSON object or array a piece at a time, without ever going back: it
says where the value ends (so markup after it can be read), refuses invalid JSON at the first
character that makes it so, and holds the value to MAX_NESTING levels and MAX_CALL_CHARS
characters. For the members of the outer object it reports where each value starts and ends, so
that a call's ``arguments`` can be streamed while the rest of the object is still coming (the
readers in ``calls`` build on it). ``JsonStringReader`` decodes a JSON string's characters as
they arrive.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llamagrid.worker.engine.parsing.deltas import (
    MAX_CALL_CHARS,
    MAX_NESTING,
    ParseError,
)

WHITESPACE = " \t\n\r"

# Scanner modes: what the next significant character must be.
_VALUE, _FIRST_KEY, _KEY, _COLON, _AFTER, _FIRST_ITEM, _STRING, _NUMBER, _LITERAL, _DONE = range(10)
_STRING_STOP = re.compile(r'["\\\x00-\x1f]')
_NUMBER_CHARS = frozenset("0123456789+-.eE")
_NUMBER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_NUMBER_CHARS = 400

#: A member event of the outer object: ("start" | "end", index in the fed text, member key).
Event = tuple[str, int, str]


def compact(value: Any) -> str:
    """JSON text of value without spaces, non-ASCII characters kept as they are.

    A string holding a lone surrogate (an escape such as "\\ud800" decodes to one) cannot be
    UTF-8: such a value is written with every non-ASCII character escaped instead.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value, separators=(",", ":"))
    return text


class JsonScanner:
    """Checks one JSON object or array incrementally, and reports the outer object's members."""

    def __init__(self, max_depth: int = MAX_NESTING, max_chars: int = MAX_CALL_CHARS) -> None:
        self.max_depth = max_depth
        self.max_chars = max_chars
        self.chars = 0
        self.failure: ParseError | None = None
        self.stack: list[str] = []
        self.mode = _VALUE
        self.key = ""  # the outer object's current member key
        self._is_key = False
        self._key_parts: list[str] = []
        self._escape = False
        self._hex_left = 0
        self._token = ""

    @property
    def done(self) -> bool:
        """Whether the value is complete."""
        return self.mode == _DONE

    def feed(self, text: str) -> tuple[int, list[Event]]:
        """Read text up to the end of the value; return how much was read and the member events."""
        events: list[Event] = []
        room = self.max_chars - self.chars
        n = min(len(text), room + 1)
        i = 0
        try:
            while i < n and self.mode != _DONE:
                i = self._step(text, i, n, events)
        except ParseError as exc:
            self.failure = exc
        self.chars += i
        if self.chars > self.max_chars and self.failure is None:
            self.failure = ParseError(f"a tool call is longer than {self.max_chars} characters")
        return i, events

    def check(self) -> None:
        """Raise the ParseError that stopped the last feed, if one did.

        A feed that meets invalid JSON returns what it read before it, with its events, so that
        the caller handles those in order before the error.
        """
        if self.failure is not None:
            raise self.failure

    def _step(self, text: str, i: int, n: int, events: list[Event]) -> int:
        mode = self.mode
        if mode == _STRING:
            return self._string(text, i, n, events)
        c = text[i]
        if mode == _NUMBER:
            if c in _NUMBER_CHARS:
                self._token += c
                if len(self._token) > _MAX_NUMBER_CHARS:
                    raise ParseError("a number in a tool call is too long")
                return i + 1
            if not _NUMBER_TEXT.match(self._token):
                raise ParseError(f"{self._token[:40]!r} is not a JSON number")
            self._value_done(i, events)
            return i  # the character after the number is read again
        if mode == _LITERAL:
            word = _LITERALS[self._token[0]]
            if c != word[len(self._token)]:
                raise ParseError(f"invalid JSON literal starting {self._token!r}")
            self._token += c
            if len(self._token) == len(word):
                self._value_done(i + 1, events)
            return i + 1
        if c in WHITESPACE:
            return i + 1
        if mode in (_VALUE, _FIRST_ITEM):
            if mode == _FIRST_ITEM and c == "]":
                self._close(i, events)
            else:
                self._begin_value(c, i, events)
        elif mode in (_FIRST_KEY, _KEY):
            if c == '"':
                self._begin_string(key=True)
            elif c == "}" and mode == _FIRST_KEY:
                self._close(i, events)
            else:
                raise ParseError(f"expected a member name in JSON, found {c!r}")
        elif mode == _COLON:
            if c != ":":
                raise ParseError(f"expected ':' in JSON, found {c!r}")
            self.mode = _VALUE
        else:  # _AFTER
            top = self.stack[-1]
            if c == ",":
                self.mode = _KEY if top == "{" else _VALUE
            elif (c == "}" and top == "{") or (c == "]" and top == "["):
                self._close(i, events)
            else:
                raise ParseError(f"expected ',' or the end of a JSON {_kind(top)}, found {c!r}")
        return i + 1

    def _begin_value(self, c: str, i: int, events: list[Event]) -> None:
        if not self.stack and c not in "{[":
            raise ParseError(f"expected a JSON object, found {c!r}")
        if len(self.stack) == 1 and self.stack[0] == "{":
            events.append(("start", i, self.key))
        if c in "{[":
            if len(self.stack) >= self.max_depth:
                raise ParseError(f"a tool call nests JSON deeper than {self.max_depth} levels")
            self.stack.append(c)
            self.mode = _FIRST_KEY if c == "{" else _FIRST_ITEM
        elif c == '"':
            self._begin_string(key=False)
        elif c == "-" or c.isdigit():
            self.mode, self._token = _NUMBER, c
        elif c in _LITERALS:
            self.mode, self._token = _LITERAL, c
        else:
            raise ParseError(f"unexpected {c!r} where a JSON value should start")

    def _begin_string(self, key: bool) -> None:
        self.mode = _STRING
        self._is_key = key
        self._key_parts = []

    def _string(self, text: str, i: int, n: int, events: list[Event]) -> int:
        collect = self._is_key and len(self.stack) == 1
        if self._escape or self._hex_left:
            c = text[i]
            if self._hex_left:
                if c not in _HEX:
                    raise ParseError("invalid \\u escape in a JSON string")
                self._hex_left -= 1
            elif c == "u":
                self._hex_left = 4
            elif c not in _ESCAPES:
                raise ParseError(f"invalid escape \\{c} in a JSON string")
            self._escape = False
            if collect:
                self._key_parts.append(c)
            return i + 1
        found = _STRING_STOP.search(text, i, n)
        end = n if found is None else found.start()
        if collect:
            self._key_parts.append(text[i:end])
        if found is None:
            return n
        c = text[end]
        if c == "\\":
            self._escape = True
            if collect:
                self._key_parts.append(c)
            return end + 1
        if c != '"':
            raise ParseError("a JSON string holds a raw control character")
        if self._is_key:
            if collect:
                self.key = json.loads('"' + "".join(self._key_parts) + '"')
            self.mode = _COLON
        else:
            self._value_done(end + 1, events)
        return end + 1

    def _close(self, i: int, events: list[Event]) -> None:
        self.stack.pop()
        self._value_done(i + 1, events)

    def _value_done(self, end: int, events: list[Event]) -> None:
        if not self.stack:
            self.mode = _DONE
            return
        if len(self.stack) == 1 and self.stack[0] == "{":
            events.append(("end", end, self.key))
        self.mode = _AFTER


def _kind(bracket: str) -> str:
    return "object" if bracket == "{" else "array"


class JsonStringReader:
    """The characters of a JSON string (its opening quote already read), decoded as they come."""

    def __init__(self, max_chars: int) -> None:
        self.done = False
        self.max_chars = max_chars
        self.chars = 0
        self._pending = ""  # an escape not yet complete

    def feed(self, text: str) -> tuple[int, str]:
        """Read text up to the closing quote; return how much was read and the decoded text."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n and not self.done:
            if self._pending:
                status = _escape_status(self._pending, text[i : i + 2])
                if status < 0:
                    break
                if status == 0:
                    self._pending += text[i]
                    i += 1
                else:
                    out.append(_decode_escape(self._pending))
                    self._pending = ""
                continue
            found = _STRING_STOP.search(text, i)
            end = n if found is None else found.start()
            out.append(text[i:end])
            i = end
            if found is None:
                break
            c = text[end]
            if c == '"':
                self.done = True
                i += 1
            elif c == "\\":
                self._pending = "\\"
                i += 1
            else:
                raise ParseError("a JSON string holds a raw control character")
        if self._pending and not self.done and _escape_status(self._pending, text[i : i + 2]) > 0:
            out.append(_decode_escape(self._pending))
            self._pending = ""
        self.chars += i
        if self.chars > self.max_chars:
            raise ParseError(f"a JSON string is longer than {self.max_chars} characters")
        return i, "".join(out)


_HIGH_SURROGATE = re.compile(r"[dD][89abAB][0-9a-fA-F]{2}\Z")


def _escape_status(escape: str, ahead: str) -> int:
    """Whether an escape is complete (1), needs its next character (0), or must wait (-1).

    A high surrogate's escape is complete only once the next characters show whether a low
    surrogate's escape follows; until they arrive, it waits.
    """
    if len(escape) < 2:
        return 0
    if escape[1] != "u":
        return 1
    if len(escape) < 6:
        return 0
    if len(escape) == 6:
        if not _HIGH_SURROGATE.match(escape[2:6]):
            return 1
        if not ahead or (ahead[0] == "\\" and len(ahead) < 2):
            return -1
        return 0 if ahead[:2] == "\\u" else 1
    return 0 if len(escape) < 12 else 1


def _decode_escape(escape: str) -> str:
    try:
        value = str(json.loads('"' + escape + '"'))
    except ValueError:
        raise ParseError(f"invalid escape {escape[:12]!r} in a JSON string") from None
    return _LONE_SURROGATE.sub("\ufffd", value)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
