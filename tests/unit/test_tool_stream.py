"""A request's output parser applied to its engine events (engine/tool_stream.py): which
requests get one, what the chunks and the final event become, and what is left untouched."""

from __future__ import annotations

import json

from llamagrid.worker.engine.events import Admitted, Chunk, Event, Final, FinishReason, Usage
from llamagrid.worker.engine.requests import (
    GenerationSpec,
    Grammar,
    Message,
    ReasoningFormat,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    ToolGrammar,
)
from llamagrid.worker.engine.tool_stream import (
    OutputPlan,
    OutputSplitter,
    plan_output,
    with_tool_grammar,
)

TOOL = Tool("get_weather", "", json.dumps({"type": "object", "properties": {}}))
USER = (Message("user", "hi"),)
SPLIT = ReasoningFormat.SPLIT
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'


def plan(**fields: object) -> OutputPlan:
    spec = GenerationSpec(**{"messages": USER, "tools": (TOOL,), **fields})  # type: ignore[arg-type]
    out = plan_output(spec, "hermes", "think", SPLIT)
    assert out is not None
    return out


def run(
    plan_: OutputPlan, pieces: list[str], reason: FinishReason = FinishReason.EOS, index: int = 0
) -> list[Event]:
    """The events of one choice whose output came in ``pieces``, one token each."""
    splitter = OutputSplitter(plan_, thinking_open=False)
    events: list[Event] = [Admitted()]
    events += [Chunk(p, [i], index=index) for i, p in enumerate(pieces)]
    events.append(Final(reason, Usage(3, len(pieces)), index=index))
    return splitter.apply(events)


def joined(events: list[Event]) -> tuple[str, str, dict[int, str], Final]:
    chunks = [e for e in events if isinstance(e, Chunk)]
    (final,) = [e for e in events if isinstance(e, Final)]
    arguments: dict[int, str] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls:
            arguments[delta.index] = arguments.get(delta.index, "") + delta.arguments
    text = "".join(c.text for c in chunks)
    return text, "".join(c.reasoning for c in chunks), arguments, final


def test_which_requests_get_a_parser() -> None:
    assert plan_output(GenerationSpec(prompt="x", tools=(TOOL,)), "hermes", "think", SPLIT) is None
    assert plan_output(GenerationSpec(messages=USER), "hermes", None, SPLIT) is None
    none = GenerationSpec(messages=USER, tools=(TOOL,), tool_choice=ToolChoice.NONE)
    assert plan_output(none, "hermes", None, SPLIT) is None
    thinking = plan_output(none, "hermes", "think", SPLIT)
    assert thinking == OutputPlan(None, "think", "think", frozenset({"get_weather"}), False)
    unsplit = GenerationSpec(messages=USER, reasoning_format=ReasoningFormat.NONE)
    assert plan_output(unsplit, "hermes", "think", SPLIT) is None
    assert (
        plan_output(GenerationSpec(messages=USER), "hermes", "think", ReasoningFormat.NONE) is None
    )
    assert plan(tool_choice=ToolChoice.REQUIRED).enforced
    assert plan(tool_function="get_weather").enforced and not plan().enforced
    assert plan().markup == ("<tool_call>", "</tool_call>", "<think>", "</think>")


def test_a_call_becomes_deltas_and_the_final_lists_it() -> None:
    pieces = ["Let me look. <tool", "_call>\n{", '"name": "get_weather", ', '"arguments": {"ci']
    pieces += ['ty": "Oslo"}}\n</tool_call>']
    events = run(plan(), pieces)
    text, reasoning, arguments, final = joined(events)
    assert reasoning == ""
    assert "tool_call" not in text and text.strip() == "Let me look."
    assert json.loads(arguments[0]) == {"city": "Oslo"}
    assert final.finish_reason is FinishReason.TOOL_CALLS
    (call,) = final.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    first = next(d for e in events if isinstance(e, Chunk) for d in e.tool_calls)
    assert (first.id, first.name) == (call.id, "get_weather")
    # The parser changes no token: every chunk keeps its ids, in order.
    ids = [t for e in events if isinstance(e, Chunk) for t in e.token_ids]
    assert ids == list(range(len(pieces)))


def test_each_choice_has_its_own_parser() -> None:
    splitter = OutputSplitter(plan(), thinking_open=False)
    half = len(CALL) // 2
    events = splitter.apply(
        [
            Chunk(CALL[:half], [1], index=0),
            Chunk("plain answer", [2], index=1),
            Chunk(CALL[half:], [3], index=0),
            Final(FinishReason.EOS, Usage(1, 1), index=1),
            Final(FinishReason.EOS, Usage(1, 2), index=0),
        ]
    )
    finals = {e.index: e for e in events if isinstance(e, Final)}
    assert finals[0].finish_reason is FinishReason.TOOL_CALLS and len(finals[0].tool_calls) == 1
    assert finals[1].finish_reason is FinishReason.EOS and not finals[1].tool_calls
    texts = {
        i: "".join(e.text for e in events if isinstance(e, Chunk) and e.index == i) for i in (0, 1)
    }
    assert texts == {0: "", 1: "plain answer"}


def test_a_call_cut_by_the_length_limit_is_left_out() -> None:
    _, _, _, final = joined(run(plan(), [CALL[:30]], FinishReason.LENGTH))
    assert final.finish_reason is FinishReason.LENGTH and not final.tool_calls


def test_complete_calls_before_the_length_limit_are_kept_with_length() -> None:
    _, _, _, final = joined(run(plan(), [CALL, "\n", CALL[:20]], FinishReason.LENGTH))
    assert final.finish_reason is FinishReason.LENGTH and len(final.tool_calls) == 1


def test_broken_markup_ends_without_calls_and_without_leaking() -> None:
    text, _, _, final = joined(run(plan(), ["Sure. <tool_call>{not json}</tool_call>"]))
    assert text.strip() == "Sure." and not final.tool_calls
    assert final.finish_reason is FinishReason.EOS


def test_thinking_is_split_out_and_a_stop_string_still_counts() -> None:
    pieces = ["<think>Cold", " there.</think>", "Take a coat."]
    text, reasoning, _, final = joined(run(plan(), pieces, FinishReason.STOP_STRING))
    assert (reasoning, text) == ("Cold there.", "Take a coat.")
    assert final.finish_reason is FinishReason.STOP_STRING


def test_the_prompt_may_have_opened_the_thinking() -> None:
    splitter = OutputSplitter(plan(), thinking_open=True)
    events = splitter.apply([Chunk("Hmm.</think>Yes.", [1]), Final(FinishReason.EOS, Usage(1, 1))])
    text, reasoning, _, _ = joined(events)
    assert (reasoning, text) == ("Hmm.", "Yes.")


def test_required_and_named_choices_get_the_tool_grammar() -> None:
    required = GenerationSpec(
        messages=USER, tools=(TOOL, Tool("f")), tool_choice=ToolChoice.REQUIRED
    )
    out = with_tool_grammar(required, plan(tool_choice=ToolChoice.REQUIRED), thinking_open=True)
    assert out.sampling.constraint == ToolGrammar(
        "hermes", required.tools, None, True, "think", True
    )
    named = GenerationSpec(
        messages=USER, tools=(TOOL, Tool("f")), tool_function="f", parallel_tool_calls=False
    )
    grammar = with_tool_grammar(named, plan(tool_function="f"), thinking_open=False)
    assert grammar.sampling.constraint == ToolGrammar(
        "hermes", (Tool("f"),), "f", False, "think", False
    )
    auto = GenerationSpec(messages=USER, tools=(TOOL,), sampling=Sampling(constraint=Grammar("x")))
    assert with_tool_grammar(auto, plan(), thinking_open=False) is auto


def test_calls_are_copied_into_the_final_as_the_engine_type() -> None:
    _, _, _, final = joined(run(plan(), [CALL]))
    assert all(isinstance(c, ToolCall) for c in final.tool_calls)
