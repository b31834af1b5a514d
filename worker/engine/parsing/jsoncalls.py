"""Tool calls written as bare JSON: Llama 3.x, and the generic format.

Llama 3.1, 3.2 and 3.3 call a tool by answering with one JSON object,
``{"name": "f", "parameters": {...}}`` (``"arguments"`` is read too, and so is a leading
``"type": "function"`` member). Such an object counts as a call only at the start of the output
or right after another call (separated by whitespace or ``;``), and only if its name is one of the
request's tools: an answer that merely is JSON stays content. Llama 3.1 also writes
``<|python_tag|>`` calls, read as follows:

- ``<|python_tag|>{"name": "f", "parameters": {...}}``: a JSON call as above;
- ``<|python_tag|>f.call(query="x", n=3)`` (a built-in tool such as ``brave_search`` or
  ``wolfram_alpha``): a call of ``f`` whose arguments object holds each keyword argument, its
  value read as a Python literal (the arguments arrive in one piece, when the output ends);
- ``<|python_tag|>`` and any other text: code for the code interpreter, a call of the tool
  named ``python`` (or ``code_interpreter``, when that is the request's tool) with the
  arguments ``{"code": "<the text>"}``, streamed as the code arrives.

A ``<|python_tag|>`` call runs to the end of the output (``<|eom_id|>`` or ``<|eot_id|>`` end it
too, when the worker leaves them in the text).

The generic format is for models whose template has no tool-call markup. Their output is one JSON
object: ``{"tool_calls": [{"name": "f", "arguments": {...}}, ...]}`` calls tools, and
``{"response": "text"}`` answers (its string is the content). The grammar that ``tool_grammar``
writes for them forces the first shape. Output of any other shape is plain content.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from typing import Any

from llamagrid.worker.engine.parsing.calls import CallArray, CallObject, NotACall
from llamagrid.worker.engine.parsing.deltas import MAX_CALL_CHARS, MAX_NESTING, ParseError, Sink
from llamagrid.worker.engine.parsing.jsonscan import WHITESPACE, JsonStringReader, compact
from llamagrid.worker.engine.parsing.stage import FULL, NO, PARTIAL, Stage, match_tokens

_LLAMA_OPENERS = (
    ("{", '"name"', ":", '"'),
    ("{", '"type"', ":", '"function"', ",", '"name"', ":", '"'),
)
_LLAMA_ARG_KEYS = ("parameters", "arguments")
PYTHON_TAG = "<|python_tag|>"
_CODE_ENDS = ("<|eom_id|>", "<|eot_id|>")
_BUILTIN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\.\s*call\(")
_BUILTIN_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*(?:\.\s*(?:c(?:a(?:l(?:l)?)?)?)?)?\Z")
_CODE_TOOLS = ("python", "code_interpreter")


def _match_any(text: str, openers: tuple[tuple[str, ...], ...], final: bool) -> tuple[int, int]:
    """The best match of several token sequences: FULL wins, then PARTIAL (not at the end)."""
    partial = False
    for tokens in openers:
        status, end = match_tokens(text, tokens)
        if status == FULL:
            return FULL, end
        partial = partial or status == PARTIAL
    return (PARTIAL, 0) if partial and not final else (NO, 0)


class Llama3Stage(Stage):
    """Llama 3.x: a JSON call at the start, and ``<|python_tag|>`` calls anywhere."""

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.mode = self.start
        self.call: CallObject | None = None
        self.held: list[str] = []  # what a possible call read, in case it is content after all
        self.code: list[str] = []
        self.builtin = ""

    def start(self) -> bool:
        if not self.buf:
            return False
        status, _ = _match_any(self.buf, _LLAMA_OPENERS, self.final)
        if status == PARTIAL:
            return False
        if status == NO:
            return self.to(self.content)
        self.call = CallObject(self.sink, _LLAMA_ARG_KEYS, strict=False)
        self.held = []
        return self.to(self.json_call)

    def json_call(self) -> bool:
        assert self.call is not None
        try:
            used = self.call.feed(self.buf)
        except NotACall:
            return self._not_a_call()
        if not self.call.started:
            self.held.append(self.buf[:used])
        self.consume(used)
        return self.call.done and self.to(self.after_call)

    def _not_a_call(self) -> bool:
        """What looked like a call is content: send it, and read on as content."""
        self.buf = "".join(self.held) + self.buf
        self.held = []
        self.call = None
        return self.to(self.plain_prefix)

    def plain_prefix(self) -> bool:
        """Content that starts with "{": it holds no opener at its start, so send that much."""
        self.sink.text(self.buf[:1])
        self.consume(1)
        return self.to(self.content)

    def after_call(self) -> bool:
        stripped = self.buf.lstrip(WHITESPACE + ";")
        self.buf = stripped
        return bool(stripped) and self.to(self.start)

    def content(self) -> bool:
        if self.scan_content([PYTHON_TAG]) is None:
            return False
        return self.to(self.python)

    def python(self) -> bool:
        if not self.skip_whitespace():
            return False
        if self.buf[0] == "{":
            self.call = CallObject(self.sink, _LLAMA_ARG_KEYS)
            return self.to(self.tagged_json)
        found = _BUILTIN.match(self.buf)
        if found:
            self.sink.begin_call(found.group(1))
            self.consume(found.end())
            return self.to(self.builtin_call)
        if _BUILTIN_PREFIX.match(self.buf) and not self.final and len(self.buf) < 64:
            return False
        names = self.sink.tool_names
        self.sink.begin_call(next((n for n in _CODE_TOOLS if n in names), "python"))
        self.sink.call_arguments('{"code":"')
        return self.to(self.code_call)

    def tagged_json(self) -> bool:
        assert self.call is not None
        self.consume(self.call.feed(self.buf))
        return self.call.done and self.to(self.after_call)

    def builtin_call(self) -> bool:
        return self._read_to_end(self._add_builtin)

    def code_call(self) -> bool:
        return self._read_to_end(self._add_code)

    def _add_builtin(self, text: str) -> None:
        self.builtin += text

    def _add_code(self, text: str) -> None:
        self.code.append(text)
        self.sink.call_arguments(json.dumps(text, ensure_ascii=False)[1:-1])

    def _read_to_end(self, take: Callable[[str], None]) -> bool:
        """Pass the text up to an end marker to take; hold back what could start one."""
        buf = self.buf
        ends = [at for at in (buf.find(end) for end in _CODE_ENDS) if at >= 0]
        if ends:
            take(buf[: min(ends)])
            self.buf = buf[min(ends) :]
            self._end_tagged()
            return self.to(self.after_tagged)
        keep = 0 if self.final else _held(buf)
        take(buf[: len(buf) - keep])
        self.buf = buf[len(buf) - keep :]
        if len(self.builtin) + sum(map(len, self.code)) > MAX_CALL_CHARS:
            raise ParseError(f"a <|python_tag|> call is longer than {MAX_CALL_CHARS} characters")
        return False

    def after_tagged(self) -> bool:
        for end in _CODE_ENDS:
            if self.buf.startswith(end):
                self.consume(len(end))
        return self.skip_whitespace() and self.to(self.content)

    def _end_tagged(self) -> None:
        if self.mode == self.code_call:
            self.sink.call_arguments('"}')
            self.sink.end_call(compact({"code": "".join(self.code)}))
            self.code = []
        elif self.mode == self.builtin_call:
            text = compact(builtin_arguments(self.builtin))
            self.sink.call_arguments(text)
            self.sink.end_call(text)
            self.builtin = ""

    def at_end(self) -> None:
        if self.mode in (self.start, self.content, self.plain_prefix):
            self.sink.text(self.buf)
        elif self.mode in (self.json_call, self.tagged_json):
            assert self.call is not None
            try:
                self.call.finish()
            except NotACall:
                self.sink.text("".join(self.held) + self.buf)
        elif self.mode in (self.code_call, self.builtin_call):
            self._end_tagged()
        elif self.mode == self.python:
            raise ParseError("the output ends right after <|python_tag|>")


def _held(text: str) -> int:
    """How much of the end of text could start an end marker."""
    for n in range(min(len(text), max(map(len, _CODE_ENDS)) - 1), 0, -1):
        if any(end.startswith(text[-n:]) for end in _CODE_ENDS):
            return n
    return 0


def builtin_arguments(source: str) -> dict[str, Any]:
    """The arguments of ``f.call(k=v, ...)`` given what follows ``call(``, as a JSON object."""
    source = source.strip()
    depth = deepest = 0
    for c in source:
        depth += (c in "([{") - (c in ")]}")
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        raise ParseError(f"a <|python_tag|> call nests deeper than {MAX_NESTING} levels")
    try:
        tree = ast.parse("f(" + source, mode="eval")
        call = tree.body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError("positional arguments")
        args = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
        if len(args) != len(call.keywords):
            raise ValueError("**kwargs")
        json.dumps(args)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ParseError(f"unreadable <|python_tag|> call: {str(exc)[:80]}") from None
    return args


class GenericStage(Stage):
    """``{"tool_calls": [...]}`` or ``{"response": "..."}`` as the whole output; else content."""

    _CALLS = ("{", '"tool_calls"', ":", "[")
    _RESPONSE = ("{", '"response"', ":", '"')

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.mode = self.start
        self.calls = CallArray(sink, ("arguments", "parameters"))
        self.response = JsonStringReader(MAX_CALL_CHARS * 64)

    def start(self) -> bool:
        if not self.buf:
            return False
        for tokens, then in ((self._CALLS, self.array), (self._RESPONSE, self.answer)):
            status, end = match_tokens(self.buf, tokens)
            if status == FULL:
                self.consume(end)
                return self.to(then)
        if _match_any(self.buf, (self._CALLS, self._RESPONSE), self.final)[0] == PARTIAL:
            return False
        return self.to(self.content)

    def array(self) -> bool:
        self.consume(self.calls.feed(self.buf))
        return self.calls.done and self.to(self.close)

    def answer(self) -> bool:
        used, text = self.response.feed(self.buf)
        self.consume(used)
        self.sink.text(text)
        return self.response.done and self.to(self.close)

    def close(self) -> bool:
        if not self.skip_whitespace():
            return False
        if self.buf[0] != "}":
            raise ParseError('expected "}" after the tool calls')
        self.consume(1)
        return self.to(self.after)

    def after(self) -> bool:
        return self.skip_whitespace() and self.to(self.content)

    def at_end(self) -> None:
        if self.mode in (self.start, self.content):
            self.sink.text(self.buf)
        elif self.mode == self.array:
            self.calls.finish()
        # answer, close, after: what was read stands (a response cut off by max_tokens too).
