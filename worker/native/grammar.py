"""Grammars in llama.cpp: JSON schemas into GBNF, compiled grammars, and grammar-checked sampling.

- ``json_schema_to_gbnf`` wraps llama-cpp-python's converter so that the strings it allows stay
  valid JSON: its ``char`` rule let raw control characters through (``json.loads`` then fails
  with "Invalid control character"), its literals did not escape backslashes, and a pattern's
  ``.`` allowed quotes and control characters.
- ``CompiledGrammar`` is one request's llama.cpp grammar sampler. Building one parses the
  grammar and may take a while, so it is built off the engine thread; the engine thread only
  asks it about tokens.
- ``TokenBuffer`` is a reusable ``llama_token_data_array`` over the vocabulary, for sampling
  with a grammar the way llama.cpp's common sampler does: sample, check the token against the
  grammar, and only when it is refused apply the grammar to every token and sample again.
  llama.cpp must never be asked to accept a token its grammar refuses: it throws (or aborts)
  inside the C++ code, which takes the whole process down.
"""

from __future__ import annotations

import ctypes
import json
import math
from typing import Any

import llama_cpp as lc
import numpy as np
import numpy.typing as npt
from llama_cpp.llama_grammar import DOT, DOTALL, PRIMITIVE_RULES, BuiltinRule, SchemaConverter

from llamagrid.worker.engine.errors import invalid
from llamagrid.worker.native.llama_backend import Model

#: llama_token_data, as numpy sees it: {int32 id; float logit; float p}, 12 bytes, no padding.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)

#: A character of a JSON string: anything but a quote, a backslash or a control character
#: (RFC 8259 section 7), or an escape.
_JSON_CHAR = BuiltinRule(
    r'[^"\\\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])',
    [],
)
#: A pattern's ".", inside a JSON string: any character that needs no escape.
_JSON_DOT = r'[^"\\\x00-\x1F]'
#: What a negated class of a pattern must also exclude, in the pattern's own syntax.
_NEGATED_EXTRA = '"\\\\\\x00-\\x1F'


class _Converter(SchemaConverter):
    """llama-cpp-python's converter, producing only valid JSON."""

    def _format_literal(self, literal: str) -> str:
        # The original escapes only \r, \n and ": json.dumps' backslashes ("\\u0001", "a\\"b")
        # were then read by llama.cpp as escapes of their own.
        return '"' + "".join(_gbnf_char(c) for c in literal) + '"'

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        if rule is PRIMITIVE_RULES["char"]:
            rule = _JSON_CHAR
        return str(super()._add_primitive(name, rule))

    def _add_rule(self, name: str, rule: str) -> str:
        if name == "dot" and rule in (DOT, DOTALL):
            rule = _JSON_DOT
        return str(super()._add_rule(name, rule))  # type: ignore[no-untyped-call]

    def _visit_pattern(self, pattern: str, name: str) -> str:
        safe = _json_safe_pattern(pattern)
        return str(super()._visit_pattern(safe, name))  # type: ignore[no-untyped-call]


def _gbnf_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    if ord(c) < 0x20:
        return f"\\x{ord(c):02X}"
    return c


def _json_safe_pattern(pattern: str) -> str:
    """The pattern, its negated classes also excluding what a JSON string must escape.

    The converter copies a pattern's characters into the JSON string as they are, so one that
    names a quote, a backslash or a control character (or a range holding one) is refused.
    """
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end, negated, ranges = _read_class(pattern, i)
            if negated:
                out.append("[^" + _NEGATED_EXTRA + pattern[i + 2 : end + 1])
            elif any(_spans_escaped(low, high) for low, high in ranges):
                raise ValueError(f"a class in pattern {pattern[:40]!r} holds {_ESCAPED_NAMES}")
            else:
                out.append(pattern[i : end + 1])
            i = end + 1
            continue
        end, code = _read_char(pattern, i)
        if code is not None and _spans_escaped(code, code):
            raise ValueError(f"pattern {pattern[:40]!r} names one of {_ESCAPED_NAMES}")
        out.append(pattern[i:end])
        i = end
    return "".join(out)


_ESCAPED_NAMES = "a quote, a backslash or a control character (JSON escapes them)"
_CHAR_ESCAPES = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B, "0": 0x00}


def _read_char(pattern: str, i: int) -> tuple[int, int | None]:
    """The end of the character or escape at i, and its code point (None for \\d and such)."""
    if pattern[i] != "\\" or i + 1 == len(pattern):
        return i + 1, ord(pattern[i])
    kind = pattern[i + 1]
    width = {"x": 2, "u": 4}.get(kind)
    if width is not None:
        digits = pattern[i + 2 : i + 2 + width]
        try:
            return i + 2 + width, int(digits, 16)
        except ValueError:
            return i + 2, None
    if kind in _CHAR_ESCAPES:
        return i + 2, _CHAR_ESCAPES[kind]
    return i + 2, None if kind.isalnum() else ord(kind)


def _read_class(pattern: str, i: int) -> tuple[int, bool, list[tuple[int, int]]]:
    """Where the class at i ends (its ']'), whether it is negated, and its known ranges."""
    j = i + 1
    negated = pattern[j : j + 1] == "^"
    j += negated
    ranges: list[tuple[int, int]] = []
    while j < len(pattern) and pattern[j] != "]":
        j, low = _read_char(pattern, j)
        high = low
        if pattern[j : j + 1] == "-" and pattern[j + 1 : j + 2] not in ("", "]"):
            j, high = _read_char(pattern, j + 1)
        if low is not None and high is not None:
            ranges.append((low, high))
    if j >= len(pattern):
        raise ValueError(f"unbalanced '[' in pattern {pattern[:40]!r}")
    return j, negated, ranges


def _spans_escaped(low: int, high: int) -> bool:
    return low < 0x20 or low <= 0x22 <= high or low <= 0x5C <= high


def json_schema_to_gbnf(schema: str) -> str:
    """GBNF that accepts exactly the JSON documents (valid JSON) the converter builds for schema.

    The schema must have passed engine.schema_check (size, depth, counts) first.
    """
    try:
        converter: Any = _Converter(  # type: ignore[no-untyped-call]
            prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False
        )
        resolved = converter.resolve_refs(json.loads(schema), "stdin")
        converter.visit(resolved, "")
        return str(converter.format_grammar())
    except RecursionError:
        raise invalid("the JSON schema is too complex to convert", "response_format") from None
    except Exception as exc:  # the converter raises bare Exceptions and asserts
        message = str(exc)[:200] or type(exc).__name__
        raise invalid(f"unusable JSON schema: {message}", "response_format") from exc


class TokenBuffer:
    """A llama_token_data_array over the whole vocabulary, reused for every sample."""

    def __init__(self, n_vocab: int) -> None:
        self.data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._ptr: Any = self.data.ctypes.data_as(lc.llama_token_data_p)
        self.array = lc.llama_token_data_array(
            data=self._ptr, size=n_vocab, selected=-1, sorted=False
        )
        self.ref = ctypes.byref(self.array)

    def fill(self, logits: npt.NDArray[np.float32]) -> None:
        """Every token with its logit, in id order, nothing selected."""
        self.data["id"] = self._ids
        self.data["logit"] = logits
        self.data["p"] = 0.0
        self.array.data, self.array.size = self._ptr, len(self.data)
        self.array.selected, self.array.sorted = -1, False

    def any_allowed(self) -> bool:
        """Whether a token is left with a finite logit (read right after a grammar's apply)."""
        return bool((self.data["logit"] > -np.inf).any())

    def selected(self) -> int:
        """The token a sampler selected (samplers may point data at their own buffer)."""
        index = int(self.array.selected)
        if not 0 <= index < int(self.array.size):
            raise RuntimeError(f"the sampler chain selected no token (index {index})")
        return int(self.array.data[index].id)

    def best(self) -> int:
        """The token with the highest logit (read right after a grammar's apply)."""
        return int(self.data["id"][int(np.argmax(self.data["logit"]))])


class CompiledGrammar:
    """A parsed llama.cpp grammar sampler for one request; built off the engine thread."""

    def __init__(self, model: Model, gbnf: str, param: str = "grammar") -> None:
        ptr = lc.llama_sampler_init_grammar(model.vocab, gbnf.encode("utf-8"), b"root")
        if not ptr:
            # A grammar engine.gbnf accepted fails here only for left recursion (logged in one
            # line by llama.cpp, without the grammar).
            raise invalid("the grammar could not be compiled: is a rule left-recursive?", param)
        self._adopt(ptr, param)

    def _adopt(self, ptr: Any, param: str) -> None:
        self.ptr: Any = ptr
        self.param = param
        self._one = (lc.llama_token_data * 1)()
        self._one_array = lc.llama_token_data_array(
            data=ctypes.cast(self._one, lc.llama_token_data_p), size=1, selected=-1, sorted=False
        )

    def clone(self) -> CompiledGrammar:
        """An independent copy in the same state (llama_sampler_clone copies the parsed rules
        and the parse stacks; nothing is parsed again): one per choice of a request."""
        ptr = lc.llama_sampler_clone(self.ptr)
        if not ptr:
            raise RuntimeError("llama.cpp could not copy a grammar")
        twin = CompiledGrammar.__new__(CompiledGrammar)
        twin._adopt(ptr, self.param)
        return twin

    def allows(self, token: int) -> bool:
        """Whether the grammar, in its present state, accepts token next."""
        one: Any = self._one[0]
        one.id, one.logit, one.p = token, 0.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        lc.llama_sampler_apply(self.ptr, ctypes.byref(self._one_array))
        return math.isfinite(one.logit)

    def apply(self, buffer: TokenBuffer) -> None:
        """Set the logit of every token the grammar refuses to -inf."""
        lc.llama_sampler_apply(self.ptr, buffer.ref)

    def accept(self, token: int) -> None:
        """Advance the grammar past token, which it must allow."""
        lc.llama_sampler_accept(self.ptr, token)

    def allows_some_token(self, n_vocab: int) -> bool:
        """Whether any token of the vocabulary can come first (else nothing ever satisfies it)."""
        buffer = TokenBuffer(n_vocab)
        buffer.fill(np.zeros(n_vocab, dtype=np.float32))
        self.apply(buffer)
        return buffer.any_allowed()

    def close(self) -> None:
        """Free the grammar (once)."""
        if self.ptr:
            lc.llama_sampler_free(self.ptr)
            self.ptr = None
