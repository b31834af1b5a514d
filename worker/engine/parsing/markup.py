"""Tool calls in tagged markup: Hermes/Qwen, Mistral and DeepSeek.

- Hermes 2 Pro, Qwen 2.5 and Qwen 3 write each call as
  ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>``, several in a row for parallel
  calls, after optional content.
- Mistral writes ``[TOOL_CALLS]`` and then either a JSON array of
  ``{"name": "f", "arguments": {...}}`` objects (Mistral Nemo, Mistral Small 3.0/3.1) or, in
  the newer form, ``f[ARGS]{...}`` (Devstral, Magistral, Mistral Small 3.2, whose
  ``f[CALL_ID]id[ARGS]{...}`` is read too; the model's id is not kept, calls get ours), with
  ``[TOOL_CALLS]`` again before each further call.
- DeepSeek R1 and V3 write ``<|tool_calls_begin|>``, then per call
  ``<|tool_call_begin|>function<|tool_sep|>f\\n```json\\n{...}\\n```<|tool_call_end|>``, then
  ``<|tool_calls_end|>`` (shown here in ASCII: the real markers use U+FF5C for each "|" and
  U+2581 for each "_"). DeepSeek V3.1's ``<|tool_call_begin|>f<|tool_sep|>{...}<|tool_call_end|>``
  is read too, and so are the misspelt openers that R1 distills write (those llama.cpp accepts).

Text after the calls is content; whitespace between calls, or around them, is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from llamagrid.worker.engine.parsing.calls import ArgsValue, CallArray, CallObject
from llamagrid.worker.engine.parsing.deltas import MAX_NAME_CHARS, ParseError, Sink
from llamagrid.worker.engine.parsing.stage import FULL, NO, PARTIAL, Stage, expect

_ARG_KEYS = ("arguments", "parameters")


class HermesStage(Stage):
    """``<tool_call>{"name": ..., "arguments": ...}</tool_call>``, as often as the model likes."""

    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.call: CallObject | None = None

    def content(self) -> bool:
        if self.scan_content([self.OPEN]) is None:
            return False
        self.call = None
        return self.to(self.read_call)

    def read_call(self) -> bool:
        if self.call is None:
            if not self.skip_whitespace():
                return False
            if self.buf[0] != "{":
                raise ParseError(f"expected a JSON object after {self.OPEN}")
            self.call = CallObject(self.sink, _ARG_KEYS)
        self.consume(self.call.feed(self.buf))
        return self.call.done and self.to(self.close)

    def close(self) -> bool:
        if not self.skip_whitespace():
            return False
        found = expect(self.buf, self.CLOSE)
        if found == PARTIAL:
            return False
        if found == NO:
            raise ParseError(f"expected {self.CLOSE} after a tool call")
        self.consume(len(self.CLOSE))
        return self.to(self.after)

    def after(self) -> bool:
        return self.skip_whitespace() and self.to(self.content)

    def at_end(self) -> None:
        if self.mode == self.content:
            self.sink.text(self.buf)
        elif self.mode == self.read_call:
            if self.call is None:
                raise ParseError(f"the output ends right after {self.OPEN}")
            self.call.finish()
        # In close or after, the calls are complete: a cut-off closing tag is forgiven.


class MistralStage(Stage):
    """``[TOOL_CALLS]`` followed by a JSON array of calls, or by ``name[ARGS]{...}``."""

    OPEN, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
    _NAME = re.compile(r"[A-Za-z0-9_.:-]+\Z")

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.calls: CallArray | None = None
        self.args: ArgsValue | None = None

    def content(self) -> bool:
        if self.scan_content([self.OPEN]) is None:
            return False
        return self.to(self.opened)

    def opened(self) -> bool:
        if not self.skip_whitespace():
            return False
        if self.buf[0] == "[":
            self.consume(1)
            self.calls = CallArray(self.sink, _ARG_KEYS)
            return self.to(self.array)
        return self.to(self.name)

    def array(self) -> bool:
        assert self.calls is not None
        self.consume(self.calls.feed(self.buf))
        return self.calls.done and self.to(self.after)

    # The name[ARGS]{...} form.
    def name(self) -> bool:
        at = self.buf.find("[")
        if at < 0:
            if len(self.buf) > MAX_NAME_CHARS:
                raise ParseError(f"no {self.ARGS} within {MAX_NAME_CHARS} characters of a name")
            return False
        name = self.buf[:at].strip()
        if not self._NAME.match(name):
            raise ParseError(f"expected a function name after {self.OPEN}")
        rest = self.buf[at:]
        for marker, then in ((self.ARGS, self.arguments), (self.CALL_ID, self.call_id)):
            found = expect(rest, marker)
            if found == FULL:
                self.consume(at + len(marker))
                self.sink.begin_call(name)
                self.args = ArgsValue(self.sink)
                return self.to(then)
            if found == PARTIAL:
                return False
        raise ParseError(f"expected {self.ARGS} after the function name {name[:64]!r}")

    def call_id(self) -> bool:
        at = self.buf.find(self.ARGS)
        if at < 0:
            if len(self.buf) > 64 + len(self.ARGS):
                raise ParseError(f"expected {self.ARGS} after {self.CALL_ID}")
            return False
        self.consume(at + len(self.ARGS))
        return self.to(self.arguments)

    def arguments(self) -> bool:
        assert self.args is not None
        self.consume(self.args.feed(self.buf))
        return self.args.done and self.to(self.after)

    def after(self) -> bool:
        return self.skip_whitespace() and self.to(self.content)

    def at_end(self) -> None:
        if self.mode == self.content:
            self.sink.text(self.buf)
        elif self.mode == self.array and self.calls is not None:
            self.calls.finish()
        elif self.mode == self.arguments and self.args is not None:
            self.args.finish()
        elif self.mode in (self.opened, self.name, self.call_id):
            raise ParseError(f"the output ends inside a {self.OPEN} call")


_BAR, _SPACE = "\uff5c", "\u2581"  # DeepSeek's markers: a fullwidth bar, a lower block


def deepseek_marker(words: str) -> str:
    """A DeepSeek marker: "tool calls begin" becomes <|tool_calls_begin|> in its characters."""
    return f"<{_BAR}{words.replace(' ', _SPACE)}{_BAR}>"


#: The openers of DeepSeek's call block: the real one, then the misspellings R1 distills write.
DEEPSEEK_OPENERS = (
    deepseek_marker("tool calls begin"),
    f"<{_BAR}tool_calls_begin{_BAR}>",
    f"<{_BAR}tool calls begin{_BAR}>",
    f"<{_BAR}tool\\_calls\\_begin{_BAR}>",
    deepseek_marker("tool calls"),
)


class DeepSeekStage(Stage):
    """DeepSeek R1 / V3 / V3.1 call blocks."""

    CALLS_END = deepseek_marker("tool calls end")
    CALL_BEGIN = deepseek_marker("tool call begin")
    CALL_END = deepseek_marker("tool call end")
    SEP = deepseek_marker("tool sep")
    FENCES = ("```json", "```")

    def __init__(self, sink: Sink) -> None:
        super().__init__(sink)
        self.args: ArgsValue | None = None
        self.kind = ""

    def content(self) -> bool:
        if self.scan_content(DEEPSEEK_OPENERS) is None:
            return False
        return self.to(self.calls)

    def calls(self) -> bool:
        if not self.skip_whitespace():
            return False
        for marker, then in ((self.CALLS_END, self.after), (self.CALL_BEGIN, self.head)):
            found = expect(self.buf, marker)
            if found == FULL:
                self.consume(len(marker))
                return self.to(then)
            if found == PARTIAL:
                return False
        return self.to(self.head)  # "function" and SEP, without CALL_BEGIN

    def head(self) -> bool:
        at = self.buf.find(self.SEP)
        if at < 0:
            if len(self.buf) > MAX_NAME_CHARS:
                raise ParseError(f"expected {self.SEP} in a DeepSeek tool call")
            return False
        self.kind = self.buf[:at].strip()
        self.consume(at + len(self.SEP))
        return self.to(self.name)

    def name(self) -> bool:
        if not self.skip_whitespace():
            return False
        if self.kind != "function" or self.buf[0] == "{":  # V3.1: the name came before SEP
            return self._start(self.kind, self.arguments)
        at = self.buf.find("\n")
        if at < 0:
            if len(self.buf) > MAX_NAME_CHARS:
                raise ParseError("a DeepSeek tool call's name line is too long")
            return False
        name = self.buf[:at].strip()
        self.consume(at + 1)
        return self._start(name, self.fence)

    def _start(self, name: str, then: Callable[[], bool]) -> bool:
        self.sink.begin_call(name)
        self.args = ArgsValue(self.sink)
        return self.to(then)

    def fence(self) -> bool:
        if not self.skip_whitespace():
            return False
        for fence in self.FENCES:
            found = expect(self.buf, fence)
            if found == PARTIAL:
                return False
            if found == FULL:
                self.consume(len(fence))
                break
        return self.to(self.arguments)

    def arguments(self) -> bool:
        assert self.args is not None
        self.consume(self.args.feed(self.buf))
        return self.args.done and self.to(self.tail)

    def tail(self) -> bool:
        if not self.skip_whitespace():
            return False
        fence = expect(self.buf, "```")
        if fence == FULL:
            self.consume(3)
            return True
        found = expect(self.buf, self.CALL_END)
        if fence == PARTIAL and found == NO:
            return False
        if found == PARTIAL:
            return False
        if found == NO:
            raise ParseError(f"expected {self.CALL_END} after a DeepSeek tool call")
        self.consume(len(self.CALL_END))
        return self.to(self.calls)

    def after(self) -> bool:
        return self.skip_whitespace() and self.to(self.content)

    def at_end(self) -> None:
        if self.mode == self.content:
            self.sink.text(self.buf)
        elif self.mode == self.arguments and self.args is not None:
            self.args.finish()
        elif self.mode in (self.head, self.name, self.fence):
            raise ParseError("the output ends inside a DeepSeek tool call")
        # calls, tail, after: every call read is complete.
