"""Tool-call grammars: several schemas in one grammar, each format's markup, and their limits.

That llama.cpp loads these grammars and that they accept exactly what the parsers read is shown
on the real vocabulary in tests/integration/test_tool_grammar_model.py.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.gbnf import check_gbnf
from llamagrid.worker.engine.limits import DEFAULT_LIMITS
from llamagrid.worker.engine.parsing import TOOL_FORMATS, ToolSpec, tool_grammar

WEATHER = ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
SEARCH = ToolSpec(
    "search",
    "Web search.",
    {"type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}},
)
NO_ARGS = ToolSpec("now")
TOOLS = [WEATHER, SEARCH, NO_ARGS]


def rules_of(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines())


def referenced(grammar: str) -> set[str]:
    """Every rule name a body refers to (outside literals, classes and counts)."""
    names: set[str] = set()
    for body in rules_of(grammar).values():
        stripped = re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}', " ", body)
        names.update(re.findall(r"[A-Za-z0-9-]+", stripped))
    return names


@pytest.mark.parametrize("tool_format", TOOL_FORMATS)
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("reasoning", [None, "think"])
def test_every_format_makes_a_valid_grammar_naming_every_tool(
    tool_format: str, parallel: bool, reasoning: str | None
) -> None:
    grammar = tool_grammar(tool_format, TOOLS, name=None, parallel=parallel, reasoning=reasoning)
    summary = check_gbnf(grammar, 65536, 1024)
    rules = rules_of(grammar)
    assert "root" in rules
    assert referenced(grammar) <= rules.keys()  # nothing is left undefined by the renaming
    for tool in TOOLS:
        assert tool.name in grammar
    # One argument rule per tool, under its own prefix; the primitives are written once.
    assert {"t0-root", "t1-root", "t2-root"} <= rules.keys()
    assert grammar.count("\nspace ::= ") + grammar.startswith("space ::= ") == 1
    assert summary.rules >= len(rules)
    if reasoning == "think" and tool_format != "gpt-oss":
        assert "</think>" in rules["think-end"]


@pytest.mark.parametrize("tool_format", TOOL_FORMATS)
def test_a_named_function_allows_only_that_tool(tool_format: str) -> None:
    grammar = tool_grammar(tool_format, TOOLS, name="search", parallel=False)
    assert '"search' in grammar or "search" in grammar
    assert "get_weather" not in grammar and '"now' not in grammar
    assert "t1-root" not in rules_of(grammar)


def test_one_call_or_several() -> None:
    one = rules_of(tool_grammar("hermes", TOOLS, name=None, parallel=False))["root"]
    several = rules_of(tool_grammar("hermes", TOOLS, name=None, parallel=True))["root"]
    assert one == "( tool-call )"
    assert several == '( tool-call ( "\\n" tool-call )* )'


def test_thinking_open_requires_the_end_of_the_thinking() -> None:
    grammar = tool_grammar(
        "deepseek", TOOLS, name=None, parallel=False, reasoning="think", thinking_open=True
    )
    root = rules_of(grammar)["root"]
    assert root.startswith('"<think>"? think-text think-end ')
    closed = rules_of(tool_grammar("deepseek", TOOLS, name=None, parallel=False, reasoning="think"))
    assert closed["root"].startswith('( "<think>" think-text think-end )? ')


def test_same_definition_names_in_two_tools_stay_apart() -> None:
    def tool(name: str, item_type: str) -> ToolSpec:
        schema = {
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/item"}},
            "$defs": {"item": {"type": item_type}},
        }
        return ToolSpec(name, "", schema)

    first, second = tool("a", "string"), tool("b", "integer")
    rules = rules_of(tool_grammar("generic", [first, second], name=None, parallel=True))
    # Each tool's reference resolves to its own definition.
    assert (rules["t0-x"], rules["t1-x"]) == ("string", "integer")


def test_properties_named_like_primitives_do_not_collide() -> None:
    odd = ToolSpec(
        "odd",
        "",
        {"type": "object", "properties": {"space": {"type": "integer"}, "string": {"enum": [1]}}},
    )
    grammar = tool_grammar("hermes", [odd, WEATHER], name=None, parallel=True)
    rules = rules_of(grammar)
    assert rules["space"] == '" "?'  # the shared primitive is intact
    assert rules["t0-string-"] == '"1"'
    assert rules["t0-space-kv"] == '"\\"space\\"" space ":" space integer'


@pytest.mark.parametrize(
    ("tools", "name", "param", "reason", "words"),
    [
        ([], None, "tool_choice", Reason.INVALID_VALUE, "at least one tool"),
        (TOOLS, "delete_everything", "tool_choice", Reason.INVALID_VALUE, "not one of"),
        ([ToolSpec('bad"name')], None, "tools", Reason.INVALID_VALUE, "letters"),
        ([ToolSpec("x" * 65)], None, "tools", Reason.INVALID_VALUE, "letters"),
        ([ToolSpec("s", "", {"type": "string"})], None, "tools", Reason.INVALID_VALUE, "object"),
        (
            [ToolSpec("m", "", {"type": "object", "properties": {"n": {"minimum": 3}}})],
            None,
            "tools",
            Reason.UNSUPPORTED,
            "minimum",
        ),
        (
            [ToolSpec("p", "", {"type": "object", "properties": {"s": {"pattern": "^[ -~]+$"}}})],
            None,
            "tools",
            Reason.INVALID_VALUE,
            "tool 'p'",
        ),
    ],
)
def test_unusable_tools_are_refused(
    tools: list[ToolSpec], name: str | None, param: str, reason: Reason, words: str
) -> None:
    with pytest.raises(EngineError) as caught:
        tool_grammar("hermes", tools, name=name, parallel=False)
    assert caught.value.param == param
    assert caught.value.reason is reason
    assert words in caught.value.message


def test_hostile_schemas_are_held_to_the_request_limits() -> None:
    deep: dict[str, object] = {"type": "string"}
    for _ in range(100):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(EngineError) as caught:
        tool_grammar("hermes", [ToolSpec("deep", "", deep)], name=None, parallel=False)
    assert caught.value.param == "tools"
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(300)}}
    with pytest.raises(EngineError) as caught:
        tool_grammar("hermes", [ToolSpec("wide", "", wide)], name=None, parallel=False)
    assert caught.value.param == "tools"


def test_many_tools_are_held_to_the_grammar_size_limit() -> None:
    many = [dataclasses.replace(SEARCH, name=f"search_{i}") for i in range(40)]
    assert tool_grammar("hermes", many, name=None, parallel=True)  # fits the default limit
    small = dataclasses.replace(DEFAULT_LIMITS, max_grammar_bytes=4096)
    with pytest.raises(EngineError) as caught:
        tool_grammar("hermes", many, name=None, parallel=True, limits=small)
    assert caught.value.param == "tools"
    assert "4096" in caught.value.message


def test_an_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        tool_grammar("xml", TOOLS, name=None, parallel=False)
