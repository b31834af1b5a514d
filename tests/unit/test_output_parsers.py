"""Tool-call and reasoning parsers on canned outputs of each family, in every split of the text.

Each output is fed one character at a time, in seeded random pieces, and whole: the deltas must
add up to the same content, reasoning and calls every time, and no markup may reach the content.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from llamagrid.worker.engine.parsing import (
    MAX_CALL_CHARS,
    MAX_CALLS,
    MAX_NESTING,
    CallDelta,
    Delta,
    OutputParser,
    ReasoningDelta,
    TextDelta,
    make_parser,
    reasoning_format_of,
    tool_format_of,
)

TOOLS = ("get_weather", "search", "python", "brave_search")
FIXTURES = Path(__file__).parent.parent / "fixtures" / "chat_templates"
#: Markup that must never appear in content once a format's parser has read it.
MARKUP = (
    "<tool_call>",
    "</tool_call>",
    "<think>",
    "</think>",
    "[TOOL_CALLS]",
    "[ARGS]",
    "[CALL_ID]",
    "<|python_tag|>",
    "<|eom_id|>",
    "<|channel|>",
    "<|message|>",
    "<|end|>",
    "<|call|>",
    "<|start|>",
    "<|constrain|>",
    "tool\u2581call",
    "tool\u2581sep",
    '{"name"',
    '"tool_calls"',
    '"response"',
)


@dataclass
class Result:
    """What one parse produced, put together."""

    deltas: list[Delta]
    content: str = ""
    reasoning: str = ""
    streamed: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # id, name, args
    calls: list[tuple[str, Any]] = field(default_factory=list)  # name, parsed arguments
    error: str | None = None


def pieces_of(text: str, how: str, seed: int = 0) -> list[str]:
    """text split one character at a time, in seeded random pieces of 1-12, or whole."""
    if how == "chars":
        return list(text)
    if how == "whole":
        return [text]
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        out.append(text[i : i + n])
        i += n
    return out


def parse(
    text: str,
    tool_format: str | None,
    reasoning: str | None = None,
    how: str = "chars",
    seed: int = 0,
    **options: Any,
) -> Result:
    options.setdefault("tool_names", TOOLS)
    parser = make_parser(tool_format, reasoning, rng=random.Random(7), **options)
    deltas: list[Delta] = []
    for piece in pieces_of(text, how, seed):
        deltas += parser.feed(piece)
    deltas += parser.finish()
    return collect(parser, deltas)


def collect(parser: OutputParser, deltas: list[Delta]) -> Result:
    out = Result(deltas, error=parser.error())
    content: list[str] = []
    reasoning: list[str] = []
    for delta in deltas:
        if isinstance(delta, TextDelta):
            assert delta.text, "an empty text delta"
            content.append(delta.text)
        elif isinstance(delta, ReasoningDelta):
            assert delta.text, "an empty reasoning delta"
            reasoning.append(delta.text)
        else:
            assert isinstance(delta, CallDelta)
            if delta.index not in out.streamed:
                # The first delta of a call carries its id and name, and calls come in order.
                assert delta.index == len(out.streamed)
                assert delta.id is not None and delta.name is not None
                assert re.fullmatch(r"call_[A-Za-z0-9]{24}|[A-Za-z0-9]{9}", delta.id)
                out.streamed[delta.index] = (delta.id, delta.name, delta.arguments)
            else:
                assert delta.id is None and delta.name is None
                call_id, name, args = out.streamed[delta.index]
                out.streamed[delta.index] = (call_id, name, args + delta.arguments)
    out.content, out.reasoning = "".join(content), "".join(reasoning)
    for call in parser.calls:
        args = json.loads(call.arguments)
        assert isinstance(args, dict)
        assert call.arguments == json.dumps(args, ensure_ascii=False, separators=(",", ":"))
        out.calls.append((call.name, args))
    for index, call in enumerate(parser.calls):
        # What was streamed is the same call: same id and name, arguments of the same value.
        call_id, name, streamed = out.streamed[index]
        assert (call.id, call.name) == (call_id, name)
        assert json.loads(streamed) == json.loads(call.arguments)
    return out


def check_everywhere(
    text: str,
    tool_format: str | None,
    reasoning: str | None = None,
    markup_in_text: bool = False,
    **options: Any,
) -> Result:
    """Parse text in every split; assert they agree and that no markup reached the content.

    markup_in_text: the output holds markup-like text that is not markup (it is content).
    """
    first = parse(text, tool_format, reasoning, "chars", **options)
    for how, seed in (("whole", 0), ("random", 1), ("random", 2), ("random", 3)):
        other = parse(text, tool_format, reasoning, how, seed, **options)
        assert (other.content, other.reasoning, other.calls, other.error) == (
            first.content,
            first.reasoning,
            first.calls,
            first.error,
        ), how
        if first.error is None:  # an error may come before or after a fragment is sent
            assert [v[1:] for v in other.streamed.values()] == [
                v[1:] for v in first.streamed.values()
            ]
    if tool_format is not None and not markup_in_text:
        for marker in MARKUP:
            assert marker not in first.content, marker
    return first


WEATHER = ("get_weather", {"city": "Paris", "unit": "c"})
SEARCH = ("search", {"q": "llama.cpp tool calls", "n": 3})


# ---------------------------------------------------------------------------------------------
# Hermes 2 Pro, Qwen 2.5, Qwen 3: <tool_call>


def test_hermes_a_single_call() -> None:
    text = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        "</tool_call>"
    )
    out = check_everywhere(text, "hermes")
    assert (out.content, out.calls, out.error) == ("", [WEATHER], None)
    # The arguments are streamed as the model wrote them, spaces included.
    assert out.streamed[0][2] == '{"city": "Paris", "unit": "c"}'


def test_hermes_content_before_parallel_calls_and_after_them() -> None:
    text = (
        "Let me look both up.\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        "</tool_call>\n"
        '<tool_call>\n{"name": "search", "arguments": {"q": "llama.cpp tool calls", "n": 3}}\n'
        "</tool_call>\nDone."
    )
    out = check_everywhere(text, "hermes")
    assert out.content == "Let me look both up.Done."
    assert out.calls == [WEATHER, SEARCH]
    assert out.error is None


def test_hermes_arguments_written_before_the_name_or_as_a_string() -> None:
    text = (
        '<tool_call>{"arguments": {"city": "Paris", "unit": "c"}, "name": "get_weather"}'
        "</tool_call>"
        '<tool_call>{"name": "search", "arguments": "{\\"q\\": \\"llama.cpp tool calls\\", '
        '\\"n\\": 3}"}</tool_call>'
    )
    out = check_everywhere(text, "hermes")
    assert out.calls == [WEATHER, SEARCH]
    assert out.error is None


def test_qwen3_thinks_then_calls() -> None:
    text = (
        "<think>\nThe user wants the weather.\nI should call get_weather.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        "</tool_call>"
    )
    out = check_everywhere(text, "hermes", "think")
    assert out.reasoning == "The user wants the weather.\nI should call get_weather."
    assert (out.content, out.calls) == ("", [WEATHER])


def test_text_is_sent_as_soon_as_it_cannot_open_a_call() -> None:
    parser = make_parser("hermes", None, tool_names=TOOLS)
    assert parser.feed("The weather") == [TextDelta("The weather")]
    assert parser.feed(" is <to") == [TextDelta(" is")]  # " <to" could start <tool_call>
    assert parser.feed("day nice") == [TextDelta(" <today nice")]
    assert parser.feed("\n\n") == []  # whitespace waits: it is dropped if a call follows
    assert parser.feed("<tool_call>") == []
    (delta,) = parser.feed('{"name": "search", "arguments": {"q')
    assert isinstance(delta, CallDelta) and (delta.index, delta.name) == (0, "search")
    assert delta.arguments == '{"q'
    assert parser.feed('": "x"}') == [CallDelta(0, None, None, '": "x"}')]
    assert parser.feed("}\n</tool_call>") == []
    assert parser.finish() == []
    assert [(c.name, c.arguments) for c in parser.calls] == [("search", '{"q":"x"}')]


@pytest.mark.parametrize(
    "text",
    [
        "Use the <tool",
        "Use the <tool_call",
        "a < b and c <tool_c",
        "Tags such as <tool_calls> and <tool> are not calls.",
        "Answer: <think> is a tag, </think> too.",
    ],
)
def test_an_opener_that_is_not_one_is_content(text: str) -> None:
    out = check_everywhere(text, "hermes", "think", markup_in_text=True)
    assert (out.content, out.reasoning, out.calls, out.error) == (text, "", [], None)


def test_without_tools_markup_is_content() -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call> <think>x</think>'
    out = check_everywhere(text, None)
    assert (out.content, out.calls, out.error) == (text, [], None)


def test_without_a_reasoning_split_the_think_block_is_content() -> None:
    text = "<think>\nhmm\n</think>\n\nHello"
    out = check_everywhere(text, "hermes", markup_in_text=True)
    assert (out.content, out.reasoning) == (text, "")


# ---------------------------------------------------------------------------------------------
# Llama 3.x: JSON, and <|python_tag|>


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}',
        ' {"type": "function", "name": "get_weather", '
        '"parameters": {"city": "Paris", "unit": "c"}}',
        '{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}',
    ],
)
def test_llama3_json_calls(text: str) -> None:
    out = check_everywhere(text, "llama3")
    assert (out.content, out.calls, out.error) == ("", [WEATHER], None)


def test_llama3_two_calls_one_after_the_other() -> None:
    text = (
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}; '
        '{"name": "search", "parameters": {"q": "llama.cpp tool calls", "n": 3}}'
    )
    out = check_everywhere(text, "llama3")
    assert out.calls == [WEATHER, SEARCH]


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "Bob", "age": 3}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}} is what I would send.',
        'The call would be {"name": "get_weather", "parameters": {}}.',
        "{",
        '{"nam',
    ],
)
def test_llama3_json_that_is_not_a_call_is_content(text: str) -> None:
    if text.endswith("send."):
        # A real call followed by prose: the call stands and the prose is content.
        out = check_everywhere(text, "llama3")
        assert out.calls == [("get_weather", {"city": "Paris"})]
        assert out.content == "is what I would send."
        return
    out = check_everywhere(text, "llama3", markup_in_text=True)
    assert (out.content, out.calls, out.error) == (text, [], None)


def test_llama3_builtin_tool_call() -> None:
    text = '<|python_tag|>brave_search.call(query="weather in Paris", count=3)<|eom_id|>'
    out = check_everywhere(text, "llama3")
    assert out.calls == [("brave_search", {"query": "weather in Paris", "count": 3})]
    assert out.content == ""


def test_llama3_code_for_the_interpreter_is_a_python_call() -> None:
    code = 'import math\nprint("√2 =", math.sqrt(2))\t# done'
    out = check_everywhere("<|python_tag|>" + code + "<|eom_id|>", "llama3")
    assert out.calls == [("python", {"code": code})]
    out = check_everywhere(
        "Computing.\n<|python_tag|>" + code, "llama3", tool_names=["code_interpreter"]
    )
    assert out.calls == [("code_interpreter", {"code": code})]
    assert out.content == "Computing."


def test_llama3_unreadable_builtin_call_is_an_error() -> None:
    out = check_everywhere("<|python_tag|>brave_search.call(query=)", "llama3")
    assert out.calls == [] and out.error is not None and "python_tag" in out.error


# ---------------------------------------------------------------------------------------------
# Mistral: [TOOL_CALLS]


def test_mistral_nemo_array_of_calls() -> None:
    text = (
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}, '
        '"id": "a1b2c3d4e"}, {"name": "search", "arguments": {"q": "llama.cpp tool calls", '
        '"n": 3}, "id": "f5g6h7i8j"}]'
    )
    out = check_everywhere(text, "mistral")
    assert (out.content, out.calls, out.error) == ("", [WEATHER, SEARCH], None)


def test_mistral_name_args_form_with_and_without_call_ids() -> None:
    text = (
        "Checking. [TOOL_CALLS]get_weather[ARGS]"
        '{"city": "Paris", "unit": "c"}[TOOL_CALLS]search[CALL_ID]a1b2c3d4e[ARGS]'
        '{"q": "llama.cpp tool calls", "n": 3}'
    )
    out = check_everywhere(text, "mistral")
    assert (out.content, out.calls, out.error) == ("Checking.", [WEATHER, SEARCH], None)


# ---------------------------------------------------------------------------------------------
# DeepSeek R1 and V3.1

DS_BEGIN, DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL, DS_CALL_END, DS_SEP = (
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁sep｜>",
)


def test_deepseek_r1_thinks_in_the_open_block_then_calls_twice() -> None:
    text = (
        "Okay, the user wants the weather and a search.\n</think>\n\n"
        f"{DS_BEGIN}{DS_CALL}function{DS_SEP}get_weather\n```json\n"
        '{"city": "Paris", "unit": "c"}\n```'
        f"{DS_CALL_END}\n{DS_CALL}function{DS_SEP}search\n```json\n"
        '{"q": "llama.cpp tool calls", "n": 3}\n```'
        f"{DS_CALL_END}{DS_END}"
    )
    out = check_everywhere(text, "deepseek", "think", thinking_open=True)
    assert out.reasoning == "Okay, the user wants the weather and a search."
    assert (out.content, out.calls, out.error) == ("", [WEATHER, SEARCH], None)


def test_deepseek_v31_calls_and_content_around_them() -> None:
    text = (
        f"Let me check.{DS_BEGIN}{DS_CALL}get_weather{DS_SEP}"
        f'{{"city": "Paris", "unit": "c"}}{DS_CALL_END}{DS_END}Anything else?'
    )
    out = check_everywhere(text, "deepseek", "think")
    assert (out.content, out.reasoning) == ("Let me check.Anything else?", "")
    assert out.calls == [WEATHER]


def test_deepseek_r1_repeating_the_think_opener_and_answering_without_tools() -> None:
    text = "<think>\nSimple.\n</think>\n\n2 + 2 = 4."
    out = check_everywhere(text, "deepseek", "think", thinking_open=True)
    assert (out.reasoning, out.content, out.calls) == ("Simple.", "2 + 2 = 4.", [])


def test_reasoning_cut_off_by_the_token_limit_is_all_reasoning() -> None:
    text = "Let me think about <tool_call> tags and </thi"
    out = check_everywhere(text, "hermes", "think", thinking_open=True)
    assert out.reasoning == "Let me think about <tool_call> tags and </thi"
    assert (out.content, out.calls) == ("", [])


# ---------------------------------------------------------------------------------------------
# gpt-oss harmony


def test_gpt_oss_analysis_then_a_call() -> None:
    text = (
        "<|channel|>analysis<|message|>User asks for the weather. Use get_weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city":"Paris","unit":"c"}<|call|>'
    )
    out = check_everywhere(text, "gpt-oss", "gpt-oss")
    assert out.reasoning == "User asks for the weather. Use get_weather."
    assert (out.content, out.calls, out.error) == ("", [WEATHER], None)


def test_gpt_oss_recipient_in_the_role_and_a_stop_before_the_call_token() -> None:
    text = (
        "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant "
        'to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris", '
        '"unit": "c"}'
    )
    out = check_everywhere(text, "gpt-oss", "gpt-oss")
    assert (out.reasoning, out.content, out.calls) == ("Need weather.", "", [WEATHER])


def test_gpt_oss_analysis_then_final_answer() -> None:
    text = (
        "<|channel|>analysis<|message|>Greeting; answer briefly.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?<|return|>"
    )
    out = check_everywhere(text, "gpt-oss", "gpt-oss")
    assert (out.reasoning, out.content, out.calls) == (
        "Greeting; answer briefly.",
        "Hello! How can I help?",
        [],
    )
    # Without a reasoning split the analysis message stays in the content, markup and all.
    raw = parse(text, "gpt-oss", None)
    assert raw.content == (
        "<|channel|>analysis<|message|>Greeting; answer briefly.<|end|>Hello! How can I help?"
    )
    # Reasoning split without tools: a recipient's message is content, not a call.
    no_tools = parse(text, None, "gpt-oss")
    assert (no_tools.reasoning, no_tools.content) == (
        "Greeting; answer briefly.",
        "Hello! How can I help?",
    )


# ---------------------------------------------------------------------------------------------
# Generic JSON


def test_generic_tool_calls_object() -> None:
    text = (
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}, '
        '{"name": "search", "arguments": {"q": "llama.cpp tool calls", "n": 3}}]}'
    )
    out = check_everywhere(text, "generic")
    assert (out.content, out.calls, out.error) == ("", [WEATHER, SEARCH], None)


def test_generic_response_object_is_content() -> None:
    text = '{"response": "Paris is \\"sunny\\" \\u2600\\ufe0f \\ud83d\\ude00\\nBye"}'
    out = check_everywhere(text, "generic")
    assert (out.content, out.calls, out.error) == ('Paris is "sunny" ☀️ 😀\nBye', [], None)


@pytest.mark.parametrize("text", ["Plain answer.", '{"answer": 42}', '["tool_calls"]', "{"])
def test_generic_other_output_is_content(text: str) -> None:
    out = check_everywhere(text, "generic", markup_in_text=True)
    assert (out.content, out.calls, out.error) == (text, [], None)


# ---------------------------------------------------------------------------------------------
# Invalid calls: an error, and nothing after them leaks


@pytest.mark.parametrize(
    ("tool_format", "text"),
    [
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": "x",}}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": "x"}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": [1, 2]}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"arguments": {}}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": NaN}}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": 01}}</tool_call>tail'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": "a\\x"}}</tool_call>t'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": "x"} junk'),
        ("hermes", 'Ok.<tool_call>{"name": "search", "arguments": {"q": "x'),
        ("mistral", 'Ok.[TOOL_CALLS][{"name": 1}, {"name": "search", "arguments": {"q": 1}}]'),
        ("mistral", "Ok.[TOOL_CALLS]not a name[ARGS]{}"),
        ("deepseek", f"Ok.{DS_BEGIN}{DS_CALL}function{DS_SEP}search\n```json\n{{]"),
        ("gpt-oss", "Ok.<|end|><|start|>assistant to=functions.search<|message|>{'q': 1}"),
        ("generic", '{"tool_calls": [{"name": "search", "arguments": 5}, 3]}'),
        ("llama3", '{"name": "search", "parameters": {"q": [1, 2}}'),
        ("llama3", '{"name": "get_weather" oops'),
    ],
)
def test_invalid_calls_set_an_error_and_leak_nothing(tool_format: str, text: str) -> None:
    out = check_everywhere(text, tool_format)
    assert out.error is not None
    assert out.calls == []
    assert out.content in ("", "Ok.")  # what came before the markup, only


@pytest.mark.parametrize(
    ("tool_format", "text"),
    [
        (
            "hermes",
            '<tool_call>{"name": "search", "arguments": {"q": "a"}}</tool_call>'
            '<tool_call>{"name": "search", "arguments": {"q": "b"</tool_call>trailing text',
        ),
        ("hermes", '<tool_call>{"name": "search", "arguments": {"q": "a"}} trailing text'),
        ("mistral", '[TOOL_CALLS][{"name": "search", "arguments": {"q": "a"}} {"name": 1}]'),
        ("generic", '{"tool_calls": [{"name": "search", "arguments": {"q": "a"}}, 3]}'),
    ],
)
def test_complete_calls_before_an_invalid_one_stand(tool_format: str, text: str) -> None:
    out = check_everywhere(text, tool_format)
    assert out.calls == [("search", {"q": "a"})]
    assert out.error is not None and out.content == ""


# ---------------------------------------------------------------------------------------------
# Hostile outputs


def test_a_megabyte_of_prose_with_tools_streams_through() -> None:
    rng = random.Random(5)
    words = ["the", "<tool", "<tool_c", "[TOOL_CALLS", "<|python", "{", "é", "漢字", "🙂", "\n"]
    text = " ".join(rng.choice(words) for _ in range(200_000))[: 1 << 20]
    # In pieces of 1 to 12 characters: linear time (quadratic work would take many minutes).
    started = time.perf_counter()
    out = parse(text, "hermes", "think", how="random", seed=9)
    assert (out.content, out.calls, out.error) == (text, [], None)
    assert time.perf_counter() - started < 60
    for tool_format in ("mistral", "llama3", "deepseek", "generic", "gpt-oss"):
        parser = make_parser(tool_format, "think", tool_names=TOOLS)
        deltas = [d for i in range(0, len(text), 4096) for d in parser.feed(text[i : i + 4096])]
        out = collect(parser, deltas + parser.finish())
        assert (out.content, out.calls, out.error) == (text, [], None), tool_format
    parser = make_parser("hermes", None, tool_names=TOOLS)
    sent = "".join(d.text for d in parser.feed(text) if isinstance(d, TextDelta))
    assert len(sent) >= len(text) - 64  # only a short tail is held back


def test_a_megabyte_of_arguments_is_refused() -> None:
    text = '<tool_call>{"name": "search", "arguments": {"q": "' + "x" * (1 << 20) + '"}}'
    out = parse(text, "hermes", how="random")
    assert out.error is not None and str(MAX_CALL_CHARS) in out.error
    assert out.calls == [] and out.content == ""
    # The same on one piece per character, without holding the whole megabyte anywhere.
    parser = make_parser("hermes", None, tool_names=TOOLS)
    for i in range(0, len(text), 4096):
        parser.feed(text[i : i + 4096])
    parser.finish()
    assert parser.error() is not None and parser.calls == []


@pytest.mark.parametrize("depth", [MAX_NESTING - 1, MAX_NESTING, 1000, 200_000])
def test_deeply_nested_arguments(depth: int) -> None:
    args = "[" * (depth - 1) + "]" * (depth - 1)
    text = '<tool_call>{"name": "search", "arguments": {"q": ' + args + "}}</tool_call>"
    out = parse(text, "hermes", how="random")
    if depth < MAX_NESTING:  # the object holding the arguments is one level more
        assert out.error is None and len(out.calls) == 1
    else:
        assert out.error is not None and "deeper" in out.error
        assert out.calls == []


def test_more_calls_than_the_limit_are_refused() -> None:
    one = '<tool_call>{"name": "search", "arguments": {}}</tool_call>'
    out = parse(one * (MAX_CALLS + 5), "hermes", how="whole")
    assert len(out.calls) == MAX_CALLS
    assert out.error is not None and str(MAX_CALLS) in out.error


def test_unicode_in_content_names_and_arguments() -> None:
    text = (
        "Voilà 🌦️ — 天気を調べます。"
        '<tool_call>{"name": "search", "arguments": {"q": "東京 ☂ \\u00e9\\ud83d\\ude00 🏳️‍🌈",'
        ' "n": 1}}</tool_call>'
    )
    out = check_everywhere(text, "hermes")
    assert out.content == "Voilà 🌦️ — 天気を調べます。"
    assert out.calls == [("search", {"q": "東京 ☂ é😀 🏳️‍🌈", "n": 1})]


def test_a_lone_surrogate_escape_still_gives_utf8_arguments() -> None:
    text = '<tool_call>{"name": "search", "arguments": {"q": "\\ud800x"}}</tool_call>'
    parser = make_parser("hermes", None, tool_names=TOOLS)
    parser.feed(text)
    parser.finish()
    (call,) = parser.calls
    call.arguments.encode("utf-8")  # would raise on a raw surrogate
    assert json.loads(call.arguments) == {"q": "\ud800x"}


def test_call_ids_are_random_but_reproducible_with_a_seeded_rng() -> None:
    text = '<tool_call>{"name": "search", "arguments": {}}</tool_call>' * 2
    ids = [
        [c.id for c in _calls(make_parser("hermes", None, rng=random.Random(seed)), text)]
        for seed in (1, 1, 2)
    ]
    assert ids[0] == ids[1] != ids[2]
    assert len(set(ids[0])) == 2
    assert all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids[0])


def test_mistral_calls_get_the_nine_character_ids_its_template_requires() -> None:
    text = '[TOOL_CALLS][{"name": "search", "arguments": {}}, {"name": "search", "arguments": {}}]'
    calls = _calls(make_parser("mistral", None), text)
    assert len(calls) == 2 and all(re.fullmatch(r"[A-Za-z0-9]{9}", c.id) for c in calls)


def _calls(parser: OutputParser, text: str) -> list[Any]:
    parser.feed(text)
    parser.finish()
    return parser.calls


# ---------------------------------------------------------------------------------------------
# Formats from templates


@pytest.mark.parametrize(
    ("fixture", "tool_format", "reasoning"),
    [
        ("llama-3.1.jinja", "llama3", None),
        ("llama-3.2.jinja", "llama3", None),
        ("qwen2.5.jinja", "hermes", None),
        ("qwen3.jinja", "hermes", "think"),
        ("mistral-nemo.jinja", "mistral", None),
        ("hermes-2-pro.jinja", "hermes", None),
        ("gemma-2.jinja", "generic", None),
        ("phi-3.5.jinja", "generic", None),
        ("deepseek-r1.jinja", "deepseek", "think"),
        ("gpt-oss.jinja", "gpt-oss", "gpt-oss"),
    ],
)
def test_formats_detected_from_each_fixture_template(
    fixture: str, tool_format: str, reasoning: str | None
) -> None:
    source = (FIXTURES / fixture).read_text(encoding="utf-8")
    assert tool_format_of(source) == tool_format
    assert reasoning_format_of(source) == reasoning


def test_every_fixture_is_covered() -> None:
    assert len(list(FIXTURES.glob("*.jinja"))) == 10


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError):
        make_parser("xml", None)
    with pytest.raises(ValueError):
        make_parser(None, "deepthink")


# ---------------------------------------------------------------------------------------------
# Generated outputs: random content, calls and arguments, written in each format's markup

WORDS = ["hello", "<tool", "a<b", "{", "}", "[", "]", "é", "漢字", "🙂", "\n", "json", "TOOL_CALLS"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice([True, False, None])
    if kind == 1:
        return rng.choice([0, -3, 17, 2.5, -1e-7, 123456789012345])
    if kind in (2, 3):
        chars = ["a", " ", '"', "\\", "\n", "é", "😀", "\u2028", "}"]
        return "".join(rng.choice(chars) for _ in range(rng.randrange(8)))
    if kind == 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}": random_value(rng, depth + 1) for i in range(rng.randrange(4))}


def written(tool_format: str, before: str, calls: list[tuple[str, Any]], after: str) -> str:
    """An output of the format: content, the calls, more content."""
    dumps = [json.dumps(args, ensure_ascii=rng_ascii(args)) for _, args in calls]
    if tool_format == "hermes":
        body = "\n".join(
            f'<tool_call>\n{{"name": "{name}", "arguments": {text}}}\n</tool_call>'
            for (name, _), text in zip(calls, dumps, strict=True)
        )
    elif tool_format == "mistral":
        body = "[TOOL_CALLS]" + json.dumps([{"name": n, "arguments": a} for n, a in calls])
    elif tool_format == "deepseek":
        body = (
            DS_BEGIN
            + "\n".join(
                f"{DS_CALL}function{DS_SEP}{name}\n```json\n{text}\n```{DS_CALL_END}"
                for (name, _), text in zip(calls, dumps, strict=True)
            )
            + DS_END
        )
    else:  # gpt-oss: the content is the final message, after the calls
        body = "".join(
            "<|start|>assistant<|channel|>commentary to=functions."
            f"{name} <|constrain|>json<|message|>{text}<|call|>"
            for (name, _), text in zip(calls, dumps, strict=True)
        )
        return (
            f"<|channel|>analysis<|message|>{before}<|end|>{body}"
            f"<|start|>assistant<|channel|>final<|message|>{after}<|return|>"
        )
    return f"{before}\n{body}\n{after}"


def rng_ascii(args: Any) -> bool:
    return len(json.dumps(args)) % 2 == 0  # some arguments escape non-ASCII text, some do not


@pytest.mark.parametrize("tool_format", ["hermes", "mistral", "deepseek", "gpt-oss"])
@pytest.mark.parametrize("seed", range(12))
def test_generated_outputs_parse_back(tool_format: str, seed: int) -> None:
    rng = random.Random(seed)
    before = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 12))).strip() or "x"
    after = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(0, 12))).strip()
    calls = [
        (rng.choice(TOOLS), {f"a{i}": random_value(rng) for i in range(rng.randrange(4))})
        for _ in range(rng.randrange(1, 4))
    ]
    reasoning = "gpt-oss" if tool_format == "gpt-oss" else None
    out = check_everywhere(written(tool_format, before, calls, after), tool_format, reasoning)
    assert out.error is None
    assert out.calls == calls
    if tool_format == "gpt-oss":
        assert (out.reasoning, out.content) == (before, after)
    else:
        assert out.content == before + after
