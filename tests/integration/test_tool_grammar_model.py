"""Tool-call grammars in llama.cpp, on SmolLM2's vocabulary: they load, they accept exactly the
markup the output parsers read, and they make even this small model write a valid call.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import numpy as np
import pytest

from llamagrid.worker.engine.parsing import ToolSpec, make_parser, tool_grammar
from llamagrid.worker.model_source import default_model_path
from llamagrid.worker.native import llama_backend as lb
from llamagrid.worker.native.grammar import CompiledGrammar, TokenBuffer

WEATHER = ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {
        "type": "object",
        "properties": {
            "city": {"enum": ["Paris", "Tokyo", "Lima"]},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
)
SEARCH = ToolSpec(
    "search",
    "Web search.",
    {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
)
TOOLS = [WEATHER, SEARCH]
ARGS = {"city": "Paris", "unit": "celsius"}
BAR, LOW = "\uff5c", "\u2581"


def ds(words: str) -> str:
    return f"<{BAR}{words.replace(' ', LOW)}{BAR}>"


#: For each format: one call of get_weather, as the grammar writes it (two calls when parallel).
def canonical(tool_format: str, parallel: bool) -> str:
    args = json.dumps(ARGS)
    second = json.dumps({"q": "rain"})
    if tool_format == "hermes":
        one = '<tool_call>\n{"name": "get_weather", "arguments": ' + args + "}\n</tool_call>"
        two = '<tool_call>\n{"name": "search", "arguments": ' + second + "}\n</tool_call>"
        return one + "\n" + two if parallel else one
    if tool_format == "llama3":
        one = '{"name": "get_weather", "parameters": ' + args + "}"
        return one + '\n{"name": "search", "parameters": ' + second + "}" if parallel else one
    if tool_format == "mistral":
        one = "[TOOL_CALLS]get_weather[ARGS]" + args
        return one + "[TOOL_CALLS]search[ARGS]" + second if parallel else one
    if tool_format == "deepseek":
        one = (
            f"{ds('tool call begin')}function{ds('tool sep')}get_weather\n```json\n{args}\n```"
            f"{ds('tool call end')}"
        )
        two = f"{ds('tool call begin')}search{ds('tool sep')}{second}{ds('tool call end')}"
        calls = one + "\n" + two if parallel else one
        return ds("tool calls begin") + calls + ds("tool calls end")
    if tool_format == "gpt-oss":
        return (
            "<|channel|>analysis<|message|>The user wants the weather.<|end|><|start|>assistant"
            "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>" + args
        )
    items = '{"name": "get_weather", "arguments": ' + args + "}"
    if parallel:
        items += ', {"name": "search", "arguments": ' + second + "}"
    return '{"tool_calls": [' + items + "]}"


@pytest.fixture(scope="module")
def model() -> Iterator[lb.Model]:
    lb.init_backend()
    loaded = lb.Model(lb.ModelOptions(path=str(default_model_path())))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def eog(model: lb.Model) -> int:
    return next(t for t in range(model.n_vocab) if model.is_eog(t))


def walk(model: lb.Model, grammar: str, text: str) -> CompiledGrammar:
    """Feed text's tokens through the grammar, each of which it must allow; return it."""
    compiled = CompiledGrammar(model, grammar)
    for token in model.tokenize(text, False, False):
        assert compiled.allows(token), (model.piece(token), text)
        compiled.accept(token)
    return compiled


def calls_of(text: str, tool_format: str, reasoning: str | None = None) -> list[tuple[str, dict]]:
    parser = make_parser(tool_format, reasoning, tool_names=[t.name for t in TOOLS])
    parser.feed(text)
    parser.finish()
    assert parser.error() is None, parser.error()
    return [(c.name, json.loads(c.arguments)) for c in parser.calls]


@pytest.mark.parametrize("tool_format", ["hermes", "llama3", "mistral", "deepseek", "generic"])
@pytest.mark.parametrize("parallel", [False, True])
def test_each_grammar_accepts_the_calls_the_parser_reads(
    model: lb.Model, eog: int, tool_format: str, parallel: bool
) -> None:
    grammar = tool_grammar(tool_format, TOOLS, name=None, parallel=parallel)
    text = canonical(tool_format, parallel)
    compiled = walk(model, grammar, text)
    assert compiled.allows(eog)  # the call is complete: the model may stop
    compiled.close()
    expected = [("get_weather", ARGS)] + ([("search", {"q": "rain"})] if parallel else [])
    assert calls_of(text, tool_format) == expected


def test_gpt_oss_grammar_allows_analysis_then_one_call(model: lb.Model, eog: int) -> None:
    grammar = tool_grammar("gpt-oss", TOOLS, name=None, parallel=True)
    text = canonical("gpt-oss", False)
    compiled = walk(model, grammar, text)
    assert compiled.allows(eog)
    compiled.close()
    assert calls_of(text, "gpt-oss", "gpt-oss") == [("get_weather", ARGS)]


@pytest.mark.parametrize("thinking_open", [False, True])
def test_reasoning_comes_before_the_forced_call(
    model: lb.Model, eog: int, thinking_open: bool
) -> None:
    grammar = tool_grammar(
        "hermes", TOOLS, name=None, parallel=False, reasoning="think", thinking_open=thinking_open
    )
    thought = "Paris <b>weather</b>, a < b; then </thin k.\n</think>\n\n"
    text = ("" if thinking_open else "<think>\n") + thought + canonical("hermes", False)
    compiled = walk(model, grammar, text)
    assert compiled.allows(eog)
    compiled.close()
    parser = make_parser("hermes", "think", thinking_open=thinking_open, tool_names=["get_weather"])
    deltas = parser.feed(text) + parser.finish()
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [("get_weather", ARGS)]
    assert "".join(getattr(d, "text", "") for d in deltas).startswith("Paris <b>weather</b>")


def test_a_grammar_refuses_what_is_not_a_call(model: lb.Model, eog: int) -> None:
    grammar = tool_grammar("hermes", TOOLS, name="get_weather", parallel=False)
    for wrong in (
        "Sure! " + canonical("hermes", False),  # content first
        canonical("hermes", False).replace("get_weather", "get_weathr"),  # another name
        canonical("hermes", False).replace("Paris", "Rome"),  # outside the enum
        canonical("hermes", True),  # a second call
    ):
        compiled = CompiledGrammar(model, grammar)
        tokens = model.tokenize(wrong, False, False)
        refused = False
        for token in tokens:
            if not compiled.allows(token):
                refused = True
                break
            compiled.accept(token)
        assert refused or not compiled.allows(eog), wrong
        compiled.close()
    # Nor may the model stop before the call is complete.
    compiled = walk(model, grammar, canonical("hermes", False)[:-3])
    assert not compiled.allows(eog)
    compiled.close()


def greedy(model: lb.Model, grammar: str, prompt: str, limit: int = 400) -> tuple[str, bool]:
    """Greedy decoding under the grammar: the text, and whether the model chose to stop.

    The most likely allowed token is found among the 64 most likely tokens when it is there,
    as llama.cpp's sampler does (checking the whole vocabulary at every step is slow). One
    thread: on a busy machine, threads that wait for each other slow decoding down badly.
    """
    context = lb.Context(model, lb.ContextOptions(n_ctx=1024, n_threads=1, flash_attn="off"))
    batch = lb.Batch(512)
    compiled = CompiledGrammar(model, grammar)
    buffer = TokenBuffer(model.n_vocab)
    pieces: list[bytes] = []
    try:
        tokens = model.tokenize(prompt, model.adds_bos, True)
        for pos, token in enumerate(tokens):
            batch.add(token, pos, 0, pos == len(tokens) - 1)
        context.decode(batch)
        index, pos = len(tokens) - 1, len(tokens)
        for _ in range(limit):
            logits = context.logits(index)
            token = next((int(t) for t in np.argsort(-logits)[:64] if compiled.allows(int(t))), -1)
            if token < 0:  # no likely token is allowed: apply the grammar to the whole vocabulary
                buffer.fill(logits)
                compiled.apply(buffer)
                token = buffer.best()
            if model.is_eog(token):
                return b"".join(pieces).decode(), True
            compiled.accept(token)
            pieces.append(model.piece(token))
            batch.clear()
            index = batch.add(token, pos, 0, True)
            pos += 1
            context.decode(batch)
        return b"".join(pieces).decode(errors="replace"), False
    finally:
        compiled.close()
        batch.close()
        context.close()


@pytest.mark.parametrize("tool_format", ["hermes", "llama3", "mistral", "deepseek", "generic"])
def test_the_small_model_writes_a_valid_call_under_each_grammar(
    model: lb.Model, tool_format: str
) -> None:
    prompt = (
        "<|im_start|>user\nWhat is the weather in Tokyo, in celsius?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    grammar = tool_grammar(tool_format, TOOLS, name="get_weather", parallel=False)
    text, stopped = greedy(model, grammar, prompt)
    assert stopped, text  # the grammar's language is finite: the model has to stop
    ((name, args),) = calls_of(text, tool_format)
    assert name == "get_weather"
    assert args["city"] in ("Paris", "Tokyo", "Lima") and args["unit"] in ("celsius", "fahrenheit")
    # And the same output, streamed a token at a time, gives the same call.
    parser = make_parser(tool_format, None, tool_names=["get_weather"], rng=random.Random(1))
    for i in range(0, len(text), 3):
        parser.feed(text[i : i + 3])
    parser.finish()
    assert [(c.name, json.loads(c.arguments)) for c in parser.calls] == [(name, args)]
