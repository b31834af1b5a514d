"""A GBNF grammar checked in Python, the way llama.cpp's parser reads it, before llama.cpp does.

This is a port of ``llama_grammar_parser`` (llama.cpp's src/llama-grammar.cpp) that builds no
rules: it walks the same syntax, counts the rules and elements llama.cpp would allocate, and
applies the same repetition limits. A grammar that passes here parses in llama.cpp (checked
against llama.cpp's own parser on thousands of random grammars). That matters because llama.cpp, on
a parse error, prints the whole grammar to stderr (it cannot be routed or cut), because it
recurses once per nested group (a million parentheses overflow the stack), and because some
inputs it accepts never finish: ``"a"{5,2}`` loops over 2^64 - 3 repetition rules.

What is left to llama.cpp: left recursion (it refuses it with a one-line log) and whether a
``<name>`` token exists in the vocabulary (the compile step tokenizes those; see
``GbnfSummary.token_names``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llamagrid.worker.engine.errors import invalid
from llamagrid.worker.engine.limits import GBNF_MAX_ELEMENTS, GBNF_MAX_REPETITION

_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_DIGITS = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = frozenset('trn\\"[]-')
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_END = "\0"  # the terminator llama.cpp's C string has (a NUL in the text itself is refused)


@dataclass
class GbnfSummary:
    """What checking a grammar found."""

    #: Rules and generated sub-rules, as llama.cpp numbers them.
    rules: int = 0
    #: Deepest nesting of parentheses.
    depth: int = 0
    #: Grammar elements once repetitions are written out.
    elements: int = 0
    #: ``<name>`` tokens, each of which must be exactly one token of the vocabulary.
    token_names: list[str] = field(default_factory=list)


@dataclass
class _Frame:
    """One rule or parenthesised group being read (llama.cpp's parse_alternates)."""

    nested: bool
    symbols_before: int = 0
    size: int = 0  # elements in the rule so far
    last_start: int = 0  # where the last item starts (what a repetition repeats)
    prev_rules: int = 1  # rules the last item made (llama.cpp's n_prev_rules)


class GbnfError(ValueError):
    """Why a grammar does not parse (a short message that never quotes the whole grammar)."""


def check_gbnf(
    text: str,
    max_bytes: int,
    max_depth: int,
    n_vocab: int | None = None,
    param: str = "grammar",
    label: str = "grammar",
) -> GbnfSummary:
    """Check a grammar's size, nesting and syntax; raise an EngineError naming param if bad.

    label names the grammar in messages ("grammar", or the grammar a schema turned into).
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise invalid(f"the {label} is not valid Unicode", param) from None
    if size > max_bytes:
        raise invalid(f"the {label} is {size} bytes; the limit is {max_bytes}", param)
    if _END in text:
        raise invalid(f"the {label} must not contain NUL characters", param)
    try:
        return _Parser(text, max_depth, n_vocab).parse()
    except GbnfError as exc:
        raise invalid(f"the {label} is not valid GBNF: {exc}", param) from None


class _Parser:
    def __init__(self, text: str, max_depth: int, n_vocab: int | None) -> None:
        self.s = text + _END
        self.max_depth = max_depth
        self.n_vocab = n_vocab
        #: Rule names and their ids. Generated rules ("name_12") are only counted: a client's
        #: names cannot hold "_", so they never collide with them.
        self.symbols: dict[str, int] = {}
        self.n_symbols = 0
        self.defined: set[str] = set()
        self.out = GbnfSummary()
        self.frames: list[_Frame] = []

    # Lexical helpers, as in llama.cpp.
    def near(self, i: int) -> str:
        """A short quote of the text at i, for error messages."""
        snippet = self.s[i : i + 20].rstrip(_END)
        return repr(snippet) if snippet else "the end"

    def space(self, i: int, newline_ok: bool) -> int:
        s = self.s
        while True:
            c = s[i]
            if c == "#":
                while s[i] not in "\r\n\0":
                    i += 1
            elif c in " \t" or (newline_ok and c in "\r\n"):
                i += 1
            else:
                return i

    def name_end(self, i: int) -> int:
        j = i
        while self.s[j] in _WORD:
            j += 1
        if j == i:
            raise GbnfError(f"expecting a rule name at {self.near(i)}")
        return j

    def int_end(self, i: int) -> int:
        j = i
        while self.s[j] in _DIGITS:
            j += 1
        if j == i:
            raise GbnfError(f"expecting an integer at {self.near(i)}")
        return j

    def char(self, i: int) -> int:
        """Skip one character or escape of a literal or class (llama.cpp's parse_char)."""
        s = self.s
        if s[i] == "\\":
            kind = s[i + 1]
            if kind in _HEX_ESCAPES:
                end = i + 2 + _HEX_ESCAPES[kind]
                if not all(c in _HEX for c in s[i + 2 : end]) or len(s) - 1 < end:
                    raise GbnfError(f"expecting {_HEX_ESCAPES[kind]} hex digits at {self.near(i)}")
                return end
            if kind in _SIMPLE_ESCAPES:
                return i + 2
            raise GbnfError(f"unknown escape at {self.near(i)}")
        if s[i] == _END:
            raise GbnfError("unexpected end of input")
        return i + 1

    def symbol(self, name: str) -> None:
        if name not in self.symbols:
            self.symbols[name] = self.n_symbols
            self.n_symbols += 1

    # The grammar.
    def parse(self) -> GbnfSummary:
        i = self.space(0, True)
        while self.s[i] != _END:
            i = self.rule(i)
        if not self.defined:
            raise GbnfError("it defines no rule")
        missing = [name for name in self.symbols if name not in self.defined]
        if missing:
            raise GbnfError(f"rule '{missing[0][:40]}' is used but not defined")
        if "root" not in self.symbols:
            raise GbnfError("it has no 'root' rule")
        self.out.rules = self.n_symbols
        return self.out

    def rule(self, i: int) -> int:
        end = self.name_end(i)
        name = self.s[i:end]
        self.symbol(name)
        i = self.space(end, False)
        if self.s[i : i + 3] != "::=":
            raise GbnfError(f"expecting ::= at {self.near(i)}")
        i = self.alternates(self.space(i + 3, True), _Frame(nested=False))
        self.defined.add(name)
        if self.s[i] == "\r":
            i += 2 if self.s[i + 1] == "\n" else 1
        elif self.s[i] == "\n":
            i += 1
        elif self.s[i] != _END:
            raise GbnfError(f"expecting a newline or the end at {self.near(i)}")
        return self.space(i, True)

    def alternates(self, i: int, top: _Frame) -> int:
        """Read a rule's alternatives, groups included, without recursion."""
        self.frames = [top]
        while True:
            frame = self.frames[-1]
            j = self.item(i, frame)
            if j is not None:
                i = j
            elif self.s[i] == "|":
                frame.size += 1
                frame.last_start, frame.prev_rules = frame.size, 1
                i = self.space(i + 1, True)
            else:
                self.end_alternates(frame)
                if not frame.nested:
                    return i
                i = self.close_group(i)

    def end_alternates(self, frame: _Frame) -> None:
        frame.size += 1
        self.count(frame.size)

    def open_group(self, i: int, parent: _Frame) -> int:
        if len(self.frames) > self.max_depth:
            raise GbnfError(f"parentheses nest deeper than {self.max_depth} levels")
        self.frames.append(_Frame(nested=True, symbols_before=self.n_symbols))
        self.n_symbols += 1
        self.out.depth = max(self.out.depth, len(self.frames) - 1)
        return self.space(i + 1, True)

    def close_group(self, i: int) -> int:
        child = self.frames.pop()
        parent = self.frames[-1]
        if self.s[i] != ")":
            raise GbnfError(f"expecting ')' at {self.near(i)}")
        parent.prev_rules = max(1, self.n_symbols - child.symbols_before)
        parent.last_start = parent.size
        parent.size += 1
        return self.space(i + 1, parent.nested)

    def item(self, i: int, frame: _Frame) -> int | None:
        """Read one item of a sequence; None at anything that ends the sequence."""
        c = self.s[i]
        if c == "(":
            return self.open_group(i, frame)
        if c in "*+?":
            self.repeat(frame, 1 if c == "+" else 0, 1 if c == "?" else None, i)
            return self.space(i + 1, frame.nested)
        if c == "{":
            return self.braces(i, frame)
        if c == '"':
            end, n = self.literal(i + 1)
        elif c == "[":
            end, n = self.char_class(i + 1)
        elif c in "<!":
            end, n = self.token(i + 1 if c == "!" else i), 1
        elif c in _WORD:
            end, n = self.name_end(i), 1
            self.symbol(self.s[i:end])
        elif c == ".":
            end, n = i + 1, 1
        else:
            return None
        frame.last_start, frame.prev_rules = frame.size, 1
        frame.size += n
        return self.space(end, frame.nested)

    def literal(self, i: int) -> tuple[int, int]:
        n = 0
        while self.s[i] != '"':
            i = self.char(i)
            n += 1
        return i + 1, n

    def char_class(self, i: int) -> tuple[int, int]:
        s, n = self.s, 0
        if s[i] == "^":
            i += 1
        while s[i] != "]":
            i = self.char(i)
            n += 1
            if s[i] == "-" and s[i + 1] != "]":
                if s[i + 1] == _END:
                    raise GbnfError("unexpected end of input")
                i = self.char(i + 1)
                n += 1
        return i + 1, n

    def token(self, i: int) -> int:
        s = self.s
        if s[i] != "<":
            raise GbnfError(f"expecting '<' at {self.near(i)}")
        if s[i + 1] == "[":
            end = self.int_end(i + 2)
            token = int(s[i + 2 : end]) if end - (i + 2) <= 12 else -1
            if token < 0 or (self.n_vocab is not None and token >= self.n_vocab):
                raise GbnfError(f"token <[{s[i + 2 : min(end, i + 14)]}]> is not in the vocabulary")
            if s[end : end + 2] != "]>":
                raise GbnfError(f"expecting ']>' at {self.near(end)}")
            return end + 2
        end = s.find(">", i)
        if end < 0:
            raise GbnfError(f"expecting '>' after {self.near(i)}")
        self.out.token_names.append(s[i : end + 1])
        return end + 1

    def braces(self, i: int, frame: _Frame) -> int:
        i = self.space(i + 1, frame.nested)
        if self.s[i] not in _DIGITS:
            raise GbnfError(f"expecting an integer at {self.near(i)}")
        end = self.int_end(i)
        low = self.count_value(i, end)
        high: int | None = low
        i = self.space(end, frame.nested)
        if self.s[i] == ",":
            high = None
            i = self.space(i + 1, frame.nested)
            if self.s[i] in _DIGITS:
                end = self.int_end(i)
                high = self.count_value(i, end)
                i = self.space(end, frame.nested)
        if self.s[i] != "}":
            raise GbnfError(f"expecting '}}' at {self.near(i)}")
        self.repeat(frame, low, high, i)
        return self.space(i + 1, frame.nested)

    def count_value(self, start: int, end: int) -> int:
        if end - start > 6 or int(self.s[start:end]) > GBNF_MAX_REPETITION:
            raise GbnfError(f"a repetition count is over {GBNF_MAX_REPETITION}")
        return int(self.s[start:end])

    def repeat(self, frame: _Frame, low: int, high: int | None, i: int) -> None:
        """Count what llama.cpp's handle_repetitions writes out for item{low,high}."""
        prev = frame.size - frame.last_start
        if prev == 0:
            raise GbnfError(f"expecting an item before the repetition at {self.near(i)}")
        if high is not None and high < low:
            raise GbnfError(f"repetition {{{low},{high}}}: the maximum is below the minimum")
        total = high if high else (low if low else 1)
        if frame.prev_rules * total >= GBNF_MAX_REPETITION:
            raise GbnfError(f"nested repetitions make over {GBNF_MAX_REPETITION} rules")
        frame.size = frame.last_start + prev * low
        n_opt = 1 if high is None else high - low
        self.count(n_opt * (prev + 3))
        self.n_symbols += n_opt
        if n_opt:
            frame.size += 1
        frame.prev_rules *= total

    def count(self, elements: int) -> None:
        self.out.elements += elements
        if self.out.elements > GBNF_MAX_ELEMENTS:
            raise GbnfError(f"it expands to over {GBNF_MAX_ELEMENTS} grammar elements")
