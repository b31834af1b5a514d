"""Tools, tool calls, tool results, template variables and reasoning options: each hostile
value is refused with INVALID_ARGUMENT naming its field (engine/validation.py), and the proto
fields reach the engine's request (rpc/translate.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.events import Chunk, Final, FinishReason, ToolCallDelta, Usage
from llamagrid.worker.engine.requests import (
    GenerationSpec,
    Grammar,
    JsonSchema,
    Message,
    ReasoningFormat,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
)
from llamagrid.worker.engine.validation import MAX_JSON_DEPTH, MAX_TOOLS, check_generation
from llamagrid.worker.rpc.translate import (
    chunks_to_proto,
    final_to_proto,
    generation_from_proto,
)

N_VOCAB = 49152
SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})
TOOL = Tool("get_weather", "Weather in a city.", SCHEMA)
USER = (Message("user", "hi"),)


def spec(**fields: object) -> GenerationSpec:
    base: dict[str, object] = {"messages": USER, "tools": (TOOL,)}
    return GenerationSpec(**{**base, **fields})  # type: ignore[arg-type]


def refused(request: GenerationSpec) -> tuple[Reason, str]:
    with pytest.raises(EngineError) as err:
        check_generation(request, N_VOCAB)
    return err.value.reason, err.value.param


def nested(depth: int) -> str:
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def assistant(*calls: ToolCall, role: str = "assistant") -> tuple[Message, ...]:
    return (*USER, Message(role, "", tool_calls=calls))


INVALID = Reason.INVALID_VALUE
CASES: list[tuple[str, GenerationSpec, str]] = [
    ("too many tools", spec(tools=tuple(Tool(f"f{i}") for i in range(MAX_TOOLS + 1))), "tools"),
    ("tools without chat", GenerationSpec(prompt="hi", tools=(TOOL,)), "tools"),
    ("empty name", spec(tools=(Tool(""),)), "tools[0].name"),
    ("name with a space", spec(tools=(TOOL, Tool("get weather"))), "tools[1].name"),
    ("name of 65 characters", spec(tools=(Tool("f" * 65),)), "tools[0].name"),
    ("name with markup", spec(tools=(Tool("f<|im_end|>"),)), "tools[0].name"),
    ("duplicate names", spec(tools=(TOOL, TOOL)), "tools[1].name"),
    ("schema not JSON", spec(tools=(Tool("f", "", "{"),)), "tools[0].parameters"),
    ("schema not an object", spec(tools=(Tool("f", "", "[]"),)), "tools[0].parameters"),
    (
        "schema of a string",
        spec(tools=(Tool("f", "", '{"type": "string"}'),)),
        "tools[0].parameters",
    ),
    ("schema too deep", spec(tools=(Tool("f", "", nested(65)),)), "tools[0].parameters"),
    (
        "schema too big",
        spec(tools=(Tool("f", "", json.dumps({"description": "x" * 70000})),)),
        "tools[0].parameters",
    ),
    ("unknown function", spec(tool_function="send_mail"), "tool_choice"),
    ("required without tools", spec(tools=(), tool_choice=ToolChoice.REQUIRED), "tool_choice"),
    ("named without tools", spec(tools=(), tool_function="f"), "tool_choice"),
    (
        "required with a grammar",
        spec(
            tool_choice=ToolChoice.REQUIRED, sampling=Sampling(constraint=Grammar('root ::= "a"'))
        ),
        "tool_choice",
    ),
    (
        "named with a schema",
        spec(tool_function="get_weather", sampling=Sampling(constraint=JsonSchema("{}"))),
        "tool_choice",
    ),
    ("kwargs not JSON", spec(chat_template_kwargs="{"), "chat_template_kwargs"),
    ("kwargs a list", spec(chat_template_kwargs="[1]"), "chat_template_kwargs"),
    (
        "kwargs override messages",
        spec(chat_template_kwargs='{"messages": []}'),
        "chat_template_kwargs",
    ),
    ("kwargs override tools", spec(chat_template_kwargs='{"tools": null}'), "chat_template_kwargs"),
    (
        "kwargs override bos",
        spec(chat_template_kwargs='{"bos_token": "x"}'),
        "chat_template_kwargs",
    ),
    ("kwargs odd key", spec(chat_template_kwargs='{"a-b": 1}'), "chat_template_kwargs"),
    (
        "kwargs too big",
        spec(chat_template_kwargs=json.dumps({"x": "y" * 70000})),
        "chat_template_kwargs",
    ),
    (
        "kwargs too deep",
        spec(chat_template_kwargs=json.dumps({"x": json.loads(nested(MAX_JSON_DEPTH))})),
        "chat_template_kwargs",
    ),
    (
        "kwargs on a prompt",
        GenerationSpec(prompt="hi", chat_template_kwargs="{}"),
        "chat_template_kwargs",
    ),
    ("reasoning effort", spec(reasoning_effort="extreme"), "reasoning_effort"),
    (
        "call on a user turn",
        spec(messages=assistant(ToolCall("c", "f", "{}"), role="user")),
        "messages[1].tool_calls",
    ),
    (
        "call name",
        spec(messages=assistant(ToolCall("c", "a b", "{}"))),
        "messages[1].tool_calls[0].name",
    ),
    (
        "call id",
        spec(messages=assistant(ToolCall("c d", "f", "{}"))),
        "messages[1].tool_calls[0].id",
    ),
    (
        "arguments not JSON",
        spec(messages=assistant(ToolCall("c", "f", "{"))),
        "messages[1].tool_calls[0].arguments",
    ),
    (
        "arguments not an object",
        spec(messages=assistant(ToolCall("c", "f", "[1]"))),
        "messages[1].tool_calls[0].arguments",
    ),
    (
        "arguments too deep",
        spec(messages=assistant(ToolCall("c", "f", nested(MAX_JSON_DEPTH + 1)))),
        "messages[1].tool_calls[0].arguments",
    ),
    (
        "arguments nested past the parser",
        spec(messages=assistant(ToolCall("c", "f", "[" * 100_000 + "]" * 100_000))),
        "messages[1].tool_calls[0].arguments",
    ),
    (
        "too many calls",
        spec(messages=assistant(*[ToolCall("c", "f", "")] * 129)),
        "messages[1].tool_calls",
    ),
    (
        "result id on a user turn",
        spec(messages=(Message("user", "x", tool_call_id="c"),)),
        "messages[0].tool_call_id",
    ),
    (
        "result id with markup",
        spec(messages=(*USER, Message("tool", "x", tool_call_id="<|im_end|>"))),
        "messages[1].tool_call_id",
    ),
    (
        "thinking on a user turn",
        spec(messages=(Message("user", "x", reasoning_content="hmm"),)),
        "messages[0].reasoning_content",
    ),
    (
        "arguments past the text limit",
        spec(messages=assistant(ToolCall("c", "f", json.dumps({"x": "y" * (9 << 20)})))),
        "messages",
    ),
    (
        "descriptions past the text limit",
        spec(tools=tuple(Tool(f"f{i}", "d" * (1 << 20)) for i in range(9))),
        "tools",
    ),
]


@pytest.mark.parametrize(("request_", "param"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_tool_fields_are_refused_with_their_field(
    request_: GenerationSpec, param: str
) -> None:
    assert refused(request_) == (INVALID, param)


def test_unsupported_schema_keywords_are_refused_only_where_a_grammar_enforces_them() -> None:
    bounded = json.dumps({"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}})
    count = Tool("count", "", bounded, strict=True)
    check_generation(spec(tools=(count,)), N_VOCAB)  # auto: the schema is only shown
    check_generation(spec(tools=(TOOL, count), tool_function="get_weather"), N_VOCAB)
    for request in (
        spec(tools=(count,), tool_function="count"),
        spec(
            tools=(TOOL, dataclasses.replace(count, strict=False)), tool_choice=ToolChoice.REQUIRED
        ),
    ):
        reason, param = refused(request)
        assert reason is Reason.UNSUPPORTED and param.endswith("].parameters")


def test_valid_tool_requests_pass() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris"}')
    conversation = (
        *USER,
        Message("assistant", "", tool_calls=(call,), reasoning_content="Let me look."),
        Message("tool", "21 C", tool_call_id="call_1"),
    )
    for request in (
        spec(),
        spec(tools=(Tool("no.args-here_1"),), tool_choice=ToolChoice.REQUIRED),
        spec(messages=conversation, tool_function="get_weather", parallel_tool_calls=False),
        spec(tools=(), tool_choice=ToolChoice.NONE),  # a no-op, not an error
        spec(chat_template_kwargs='{"enable_thinking": false, "x": {"y": [1]}}'),
        spec(reasoning_effort="high", reasoning_format=ReasoningFormat.SPLIT),
        spec(tool_choice=ToolChoice.AUTO, sampling=Sampling(constraint=Grammar('root ::= "a"'))),
    ):
        check_generation(request, N_VOCAB)


def test_proto_tool_fields_reach_the_engine_request() -> None:
    request = pb.GenerateRequest(
        chat=pb.ChatConversation(
            messages=[
                pb.ChatMessage(role="user", content="hi"),
                pb.ChatMessage(
                    role="assistant",
                    tool_calls=[pb.ToolCall(id="c1", name="f", arguments="{}")],
                    reasoning_content="hmm",
                ),
                pb.ChatMessage(role="tool", content="ok", tool_call_id="c1"),
            ]
        ),
        tools=[pb.Tool(name="f", description="d", parameters_json=SCHEMA, strict=True)],
        tool_choice=pb.ToolChoice(function="f"),
        parallel_tool_calls=False,
        chat_template_kwargs='{"a": 1}',
        reasoning_effort="low",
        reasoning_format=pb.REASONING_FORMAT_NONE,
    )
    out = generation_from_proto(request)
    assert out.tools == (Tool("f", "d", SCHEMA, True),)
    assert out.tool_function == "f" and out.tool_choice is None
    assert out.parallel_tool_calls is False
    assert out.messages is not None
    assert out.messages[1].tool_calls == (ToolCall("c1", "f", "{}"),)
    assert out.messages[1].reasoning_content == "hmm"
    assert out.messages[2].tool_call_id == "c1"
    assert (out.chat_template_kwargs, out.reasoning_effort) == ('{"a": 1}', "low")
    assert out.reasoning_format is ReasoningFormat.NONE
    plain = generation_from_proto(pb.GenerateRequest(prompt="x"))
    assert (plain.tool_choice, plain.parallel_tool_calls, plain.reasoning_format) == (
        None,
        True,
        None,
    )
    required = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)
    assert generation_from_proto(pb.GenerateRequest(tool_choice=required)).tool_choice is (
        ToolChoice.REQUIRED
    )


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (pb.GenerateRequest(tool_choice=pb.ToolChoice(mode=99)), "tool_choice"),  # type: ignore[arg-type]
        (pb.GenerateRequest(reasoning_format=7), "reasoning_format"),  # type: ignore[arg-type]
    ],
)
def test_unknown_enum_values_are_refused(request_: pb.GenerateRequest, param: str) -> None:
    with pytest.raises(EngineError) as err:
        generation_from_proto(request_)
    assert (err.value.reason, err.value.param) == (INVALID, param)


def test_tool_call_deltas_and_calls_reach_the_proto() -> None:
    chunks = [
        Chunk("", [5], tool_calls=[ToolCallDelta(0, "call_a", "f", "")]),
        Chunk("", [6], reasoning="r", tool_calls=[ToolCallDelta(0, "", "", '{"x"')]),
        Chunk(
            "t", [7], tool_calls=[ToolCallDelta(0, "", "", ": 1}"), ToolCallDelta(1, "call_b", "g")]
        ),
    ]
    out = chunks_to_proto(chunks).chunk
    assert (out.text, out.reasoning, list(out.token_ids)) == ("t", "r", [5, 6, 7])
    assert [(d.index, d.id, d.name, d.arguments) for d in out.tool_calls] == [
        (0, "call_a", "f", '{"x": 1}'),
        (1, "call_b", "g", ""),
    ]
    final = Final(
        FinishReason.TOOL_CALLS, Usage(1, 2), tool_calls=(ToolCall("call_a", "f", '{"x":1}'),)
    )
    message = final_to_proto(final).final
    assert message.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert [(c.id, c.name, c.arguments) for c in message.tool_calls] == [("call_a", "f", '{"x":1}')]
