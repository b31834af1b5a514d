"""Model output split into content, reasoning and tool calls, as it streams; tool-call grammars.

``make_parser`` builds an ``OutputParser`` for one generation: ``feed`` it the output's text in
pieces of any size (as the detokenizer produces them), then call ``finish``. Each call returns
the deltas that can be sent now:

- ``TextDelta``: content. Text is sent as soon as it cannot be the start of a call's markup;
  only a possible opener at the end of a piece (such as ``<tool_c``) is held back. Once an
  opener appears, none of the markup ever reaches the content; whitespace just before a call,
  between calls and just after them is dropped.
- ``ReasoningDelta``: thinking, without its markup.
- ``CallDelta``: a piece of tool call number ``index``. Its first delta carries the call's id
  (``id_prefix`` and 24 random letters and digits) and name; the following ones carry the
  arguments' JSON text in fragments, as the model writes it. ``OutputParser.calls`` holds the
  complete calls, each with its arguments as compact JSON of an object.

Output that is not valid call markup (invalid JSON, a name that is not one of the tools, JSON
nested deeper than MAX_NESTING or longer than MAX_CALL_CHARS, more than MAX_CALLS calls) stops
the parse: ``error()`` says why, the call is not in ``calls``, and nothing after it is sent (none
of it leaks into the content).

The formats (``TOOL_FORMATS``; ``tool_format_of`` picks one from a chat template) are described
in the modules that read them: ``markup`` (hermes, mistral, deepseek), ``jsoncalls`` (llama3,
generic) and ``harmony`` (gpt-oss). Reasoning formats: ``think`` and ``gpt-oss``.
"""

from __future__ import annotations

import random
from collections.abc import Collection

from llamagrid.worker.engine.parsing.deltas import (
    MAX_CALL_CHARS,
    MAX_CALLS,
    MAX_NAME_CHARS,
    MAX_NESTING,
    CallDelta,
    Delta,
    ParsedCall,
    ReasoningDelta,
    Sink,
    TextDelta,
)
from llamagrid.worker.engine.parsing.detect import (
    REASONING_FORMATS,
    TOOL_FORMATS,
    chosen_tool_format,
    reasoning_format_of,
    tool_format_of,
)
from llamagrid.worker.engine.parsing.grammar import ToolSpec, tool_grammar
from llamagrid.worker.engine.parsing.harmony import HarmonyStage
from llamagrid.worker.engine.parsing.jsoncalls import GenericStage, Llama3Stage
from llamagrid.worker.engine.parsing.markup import DeepSeekStage, HermesStage, MistralStage
from llamagrid.worker.engine.parsing.stage import Stage
from llamagrid.worker.engine.parsing.think import ThinkStage

__all__ = [
    "MAX_CALLS",
    "MAX_CALL_CHARS",
    "MAX_NAME_CHARS",
    "MAX_NESTING",
    "REASONING_FORMATS",
    "TOOL_FORMATS",
    "CallDelta",
    "Delta",
    "OutputParser",
    "ParsedCall",
    "ReasoningDelta",
    "TextDelta",
    "ToolSpec",
    "chosen_tool_format",
    "make_parser",
    "reasoning_format_of",
    "tool_format_of",
    "tool_grammar",
]

_STAGES = {
    "hermes": HermesStage,
    "llama3": Llama3Stage,
    "mistral": MistralStage,
    "deepseek": DeepSeekStage,
    "generic": GenericStage,
}


class OutputParser:
    """One generation's output, split incrementally into content, reasoning and tool calls."""

    def __init__(self, sink: Sink, stage: Stage) -> None:
        self._sink = sink
        self._stage = stage
        self._finished = False

    @property
    def calls(self) -> list[ParsedCall]:
        """The complete calls so far."""
        return self._sink.calls

    def feed(self, text: str) -> list[Delta]:
        """Read the next piece of output; return what can be sent now."""
        if not self._finished:
            self._stage.feed(text)
        return self._sink.take()

    def finish(self) -> list[Delta]:
        """The output is complete: return everything still held back."""
        if not self._finished:
            self._finished = True
            self._stage.finish()
        return self._sink.take()

    def error(self) -> str | None:
        """Why the output was not valid tool calls, if it was not."""
        return self._sink.error


#: The ids the worker gives calls: OpenAI's form, "call_" and 24 letters and digits...
_ID_STYLE = ("call_", 24)
#: ...except where a family's template checks another: Mistral's refuses (raise_exception) a
#: tool_call_id that is not exactly 9 letters and digits.
_ID_STYLES = {"mistral": ("", 9)}


def make_parser(
    tool_format: str | None,
    reasoning: str | None,
    *,
    thinking_open: bool = False,
    tool_names: Collection[str] = (),
    rng: random.Random | None = None,
) -> OutputParser:
    """A parser for one generation.

    tool_format is one of TOOL_FORMATS, or None when the request has no tools (no call is
    parsed). reasoning is one of REASONING_FORMATS, or None for no split. thinking_open says
    that the prompt already opened a think block. tool_names are the request's tools: a call of
    any other name is an error (an empty collection allows any name).
    """
    if tool_format is not None and tool_format not in TOOL_FORMATS:
        raise ValueError(f"unknown tool format {tool_format!r}")
    if reasoning is not None and reasoning not in REASONING_FORMATS:
        raise ValueError(f"unknown reasoning format {reasoning!r}")
    id_prefix, id_length = _ID_STYLES.get(tool_format or "", _ID_STYLE)
    sink = Sink(id_prefix, rng or random.SystemRandom(), frozenset(tool_names), id_length)
    stage: Stage
    if tool_format == "gpt-oss" or reasoning == "gpt-oss":
        stage = HarmonyStage(sink, calls=tool_format is not None, split_reasoning=bool(reasoning))
    else:
        stage = Stage(sink) if tool_format is None else _STAGES[tool_format](sink)
        if reasoning == "think":
            stage = ThinkStage(sink, stage, thinking_open)
    return OutputParser(sink, stage)
