"""Tool calls and thinking in a generation's output: which parser a request gets, the grammar
that holds a required call to its format, and the parser applied to the request's events.

A request gets an output parser (engine/parsing) when it gives tools and tool_choice is not
none, or when its thinking is split out (reasoning_format split, the worker's default) and the
chat template has a thinking format. The tool-call format comes from the template
(``tool_format_of``) unless ``--tool-call-format`` names one; so does the thinking format.

The parser runs on the event loop, on the text the engine streams (after stop strings are
applied), never on the engine thread, and it changes no token: chunks keep their token ids and
log-probabilities, and a session's transcript keeps the exact generated tokens. What it takes
out of the text goes into the chunk's ``reasoning`` and ``tool_calls``. Control tokens that are
markup of the format (gpt-oss' ``<|channel|>``, Mistral's ``[TOOL_CALLS]``, ...) are rendered
into the text the parser reads (``Job.render_special``); other control tokens still render as
nothing.

At the end, the final event lists every complete call, and its finish reason becomes TOOL_CALLS
when at least one call was made and generation ended by itself (end of sequence or a stop
string). Output that is not valid call markup (a call cut by max_tokens, broken JSON, an
unknown function) leaves the complete calls before it and the text before it; the broken
markup is dropped, never returned as content, and the finish reason is what ended generation.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from llamagrid.worker.engine.events import Chunk, Event, Final, FinishReason, ToolCallDelta
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.parsing import (
    CallDelta,
    OutputParser,
    ReasoningDelta,
    TextDelta,
    ToolSpec,
    make_parser,
    tool_grammar,
)
from llamagrid.worker.engine.requests import (
    GenerationSpec,
    ReasoningFormat,
    ToolCall,
    ToolChoice,
    ToolGrammar,
)
from llamagrid.worker.engine.validation import enforced_tools

log = logging.getLogger(__name__)


def _deepseek(name: str) -> str:
    """A DeepSeek special token: full-width bars around words joined by U+2581."""
    return "<\uff5c" + name.replace("_", "\u2581") + "\uff5c>"


#: What opens a thinking block in the "think" format.
THINK_OPEN = "<think>"
#: The markup of each format: when one of these is a control token, its text is kept in the
#: output for the parser.
MARKUP: Mapping[str, tuple[str, ...]] = {
    "hermes": ("<tool_call>", "</tool_call>"),
    "llama3": ("<|python_tag|>",),
    "mistral": ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"),
    "deepseek": tuple(
        _deepseek(name)
        for name in (
            "tool_calls_begin",
            "tool_calls_end",
            "tool_call_begin",
            "tool_call_end",
            "tool_sep",
        )
    ),
    "gpt-oss": (
        "<|start|>",
        "<|channel|>",
        "<|message|>",
        "<|constrain|>",
        "<|end|>",
        "<|call|>",
        "<|return|>",
    ),
    "generic": (),
    "think": (THINK_OPEN, "</think>"),
}


@dataclass(frozen=True)
class OutputPlan:
    """How one request's output is parsed."""

    #: The tool-call format, or None when no call is to be parsed.
    tool_format: str | None
    #: The thinking format to split out, or None when thinking stays in the text.
    reasoning: str | None
    #: The template's thinking format, split or not (a tool grammar lets the model think).
    thinking: str | None
    tool_names: frozenset[str]
    #: Whether a grammar holds the output to calls (tool_choice required or named).
    enforced: bool = False

    @property
    def markup(self) -> tuple[str, ...]:
        """The markup texts the parser reads."""
        formats = (self.tool_format, self.reasoning)
        return tuple(text for f in formats if f is not None for text in MARKUP.get(f, ()))

    @property
    def needs_thinking_open(self) -> bool:
        """Whether the parser or the grammar must know if the prompt opened a think block."""
        return self.thinking == "think" and (self.reasoning == "think" or self.enforced)


def plan_output(
    spec: GenerationSpec,
    tool_format: str,
    reasoning_format: str | None,
    default_reasoning: ReasoningFormat,
) -> OutputPlan | None:
    """The parsing a validated request needs, or None. ``tool_format`` and
    ``reasoning_format`` are the template's (or the operator's choice)."""
    if spec.messages is None:
        return None
    calls = bool(spec.tools) and spec.tool_choice is not ToolChoice.NONE
    split = (spec.reasoning_format or default_reasoning) is ReasoningFormat.SPLIT
    plan = OutputPlan(
        tool_format if calls else None,
        reasoning_format if split else None,
        reasoning_format,
        frozenset(t.name for t in spec.tools),
        bool(enforced_tools(spec)),
    )
    return plan if plan.tool_format or plan.reasoning else None


def with_tool_grammar(
    spec: GenerationSpec, plan: OutputPlan, thinking_open: bool
) -> GenerationSpec:
    """The request with its tool grammar as its constraint when tool_choice is required or
    names a function (validation made sure it has no other constraint)."""
    enforced = enforced_tools(spec)
    if not enforced or plan.tool_format is None:
        return spec
    grammar = ToolGrammar(
        plan.tool_format,
        tuple(t for t in spec.tools if t.name in enforced),
        spec.tool_function,
        spec.parallel_tool_calls,
        plan.thinking,
        thinking_open,
    )
    return dataclasses.replace(
        spec, sampling=dataclasses.replace(spec.sampling, constraint=grammar)
    )


def tool_call_grammar(constraint: ToolGrammar, limits: RequestLimits) -> str:
    """The GBNF of a tool grammar (on a compile thread: it converts every schema)."""
    specs = [
        ToolSpec(t.name, t.description, json.loads(t.parameters) if t.parameters else {})
        for t in constraint.tools
    ]
    gbnf: str = tool_grammar(
        constraint.tool_format,
        specs,
        name=constraint.name,
        parallel=constraint.parallel,
        reasoning=constraint.reasoning,
        thinking_open=constraint.thinking_open,
        limits=limits,
    )
    return gbnf


class OutputSplitter:
    """Applies a request's output parser to its events: one parser per choice."""

    def __init__(self, plan: OutputPlan, thinking_open: bool, request_id: str = "") -> None:
        self.plan = plan
        self.thinking_open = thinking_open
        self.request_id = request_id
        self._parsers: dict[int, OutputParser] = {}

    def _parser(self, index: int) -> OutputParser:
        parser = self._parsers.get(index)
        if parser is None:
            parser = make_parser(
                self.plan.tool_format,
                self.plan.reasoning,
                thinking_open=self.thinking_open,
                tool_names=self.plan.tool_names,
            )
            self._parsers[index] = parser
        return parser

    def apply(self, batch: list[Event]) -> list[Event]:
        """The batch with each chunk's text parsed, and each final event completed."""
        out: list[Event] = []
        for event in batch:
            if isinstance(event, Chunk):
                parser = self._parser(event.index)
                out.append(_split(event, parser.feed(event.text)))
            elif isinstance(event, Final):
                parser = self._parser(event.index)
                tail = parser.finish()
                if tail:
                    out.append(_split(Chunk("", [], index=event.index), tail))
                out.append(self._final(event, parser))
            else:
                out.append(event)
        return out

    def _final(self, final: Final, parser: OutputParser) -> Final:
        error = parser.error()
        if error is not None:
            log.info("request %r: the output is not valid tool calls: %r", self.request_id, error)
        calls = tuple(ToolCall(c.id, c.name, c.arguments) for c in parser.calls)
        reason = final.finish_reason
        if calls and reason in (FinishReason.EOS, FinishReason.STOP_STRING):
            reason = FinishReason.TOOL_CALLS
        return dataclasses.replace(final, finish_reason=reason, tool_calls=calls)


def _split(chunk: Chunk, deltas: list[TextDelta | ReasoningDelta | CallDelta]) -> Chunk:
    """The chunk with its text replaced by what the parser made of it."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCallDelta] = []
    for delta in deltas:
        if isinstance(delta, TextDelta):
            text.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            reasoning.append(delta.text)
        else:
            calls.append(
                ToolCallDelta(delta.index, delta.id or "", delta.name or "", delta.arguments)
            )
    return dataclasses.replace(
        chunk, text="".join(text), reasoning="".join(reasoning), tool_calls=calls
    )
