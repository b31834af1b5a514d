"""Tools and reasoning on /v1/chat/completions, against the fake worker: the request fields the
worker receives, the exact JSON and SSE shapes of its answers, and the openai SDK reading them."""

from __future__ import annotations

import json
from typing import Any

import grpc
import openai
import pytest
from pydantic import BaseModel

from llamagrid.errors import REASON_INVALID_VALUE
from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import AUTH_HEADERS, Gateway
from tests.contract.fake_worker import MODEL, PROMPT_TOKENS, FakeWorker

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": WEATHER_PARAMETERS,
    },
}
CALL_ID = "call_abcdefghijklmnopqrstuvwx"
ARGUMENTS = '{"city": "Paris"}'


class GetWeather(BaseModel):
    """The weather in a city."""

    city: str


#: get_weather as the openai SDK makes it from a model (a strict tool).
WEATHER_MODEL = openai.pydantic_function_tool(GetWeather, name="get_weather")


def script_call(worker: FakeWorker, *, reasoning: str = "", text: str = "") -> None:
    """The worker thinks, says ``text``, then calls get_weather, its arguments in three parts."""
    chunks = []
    if reasoning:
        chunks.append(pb.GenerateChunk(reasoning=reasoning, token_ids=[1]))
    if text:
        chunks.append(pb.GenerateChunk(text=text, token_ids=[2]))
    head = pb.ToolCallDelta(index=0, id=CALL_ID, name="get_weather")
    chunks += [
        pb.GenerateChunk(token_ids=[3]),  # the call's opening markup, held back by the worker
        pb.GenerateChunk(token_ids=[4], tool_calls=[head]),
        pb.GenerateChunk(token_ids=[5], tool_calls=[pb.ToolCallDelta(index=0, arguments='{"ci')]),
        pb.GenerateChunk(
            token_ids=[6, 7], tool_calls=[pb.ToolCallDelta(index=0, arguments='ty": "Paris"}')]
        ),
    ]
    worker.script.chunks = chunks
    worker.script.tool_calls = [pb.ToolCall(id=CALL_ID, name="get_weather", arguments=ARGUMENTS)]


async def post_chat(gateway: Gateway, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        reply = await http.post("/v1/chat/completions", json={"model": MODEL, **body})
    return reply.status_code, reply.json()


async def sse_events(gateway: Gateway, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The data of every event of a streamed chat completion, up to [DONE]."""
    events: list[dict[str, Any]] = []
    async with (
        gateway.http(headers=AUTH_HEADERS) as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": MODEL, "stream": True, **body}
        ) as reply,
    ):
        assert reply.status_code == 200
        async for line in reply.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return events
            events.append(json.loads(line[len("data: ") :]))
    raise AssertionError("the stream ended without [DONE]")


def refusal(status: int, body: dict[str, Any]) -> tuple[str | None, str | None]:
    assert status == 400, body
    return body["error"]["param"], body["error"]["code"]


# ------------------------------------------------------------------------------ requests


async def test_tools_choice_and_parallel_calls_reach_the_worker(gateway: Gateway) -> None:
    status, _ = await post_chat(
        gateway,
        {
            "messages": USER,
            "tools": [WEATHER, {"type": "function", "function": {"name": "now"}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "chat_template_kwargs": {"enable_thinking": False},
            "reasoning_effort": "low",
            "reasoning_format": "deepseek",
        },
    )
    assert status == 200
    sent = gateway.worker.generate_requests()[-1]
    weather, now = sent.tools
    assert (weather.name, weather.description) == ("get_weather", "The weather in a city.")
    assert json.loads(weather.parameters_json) == WEATHER_PARAMETERS
    assert (now.name, now.parameters_json) == ("now", "")
    assert sent.tool_choice.function == "get_weather"
    assert sent.HasField("parallel_tool_calls") and not sent.parallel_tool_calls
    assert json.loads(sent.chat_template_kwargs) == {"enable_thinking": False}
    assert sent.reasoning_effort == "low"
    assert sent.reasoning_format == pb.REASONING_FORMAT_SPLIT


async def test_a_tool_call_conversation_reaches_the_worker_as_sent(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    call = {
        "id": CALL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": ARGUMENTS},
    }
    await client.chat.completions.create(
        model=MODEL,
        messages=[
            *USER,
            {"role": "assistant", "content": None, "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": CALL_ID, "content": "18 C, sunny"},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        extra_body={"reasoning_format": "none"},
    )
    sent = gateway.worker.generate_requests()[-1]
    _, assistant, tool = sent.chat.messages
    assert (assistant.role, assistant.content) == ("assistant", "")
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        (CALL_ID, "get_weather", ARGUMENTS)
    ]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", CALL_ID, "18 C, sunny")
    assert sent.reasoning_format == pb.REASONING_FORMAT_NONE
    assert not sent.HasField("tool_choice")  # unset: the worker's default (auto)


async def test_an_assistant_turn_with_null_content_and_no_calls_is_empty(
    gateway: Gateway,
) -> None:
    messages = [*USER, {"role": "assistant", "content": None}, {"role": "user", "content": "?"}]
    status, _ = await post_chat(gateway, {"messages": messages})
    assert status == 200
    assert gateway.worker.generate_requests()[-1].chat.messages[1].content == ""


async def test_earlier_thinking_reaches_the_worker(gateway: Gateway) -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": "Sunny.", "reasoning_content": "Paris is in France."},
        {"role": "user", "content": "Thanks"},
    ]
    status, _ = await post_chat(gateway, {"messages": messages})
    assert status == 200
    sent = gateway.worker.generate_requests()[-1]
    assert sent.chat.messages[1].reasoning_content == "Paris is in France."


# ------------------------------------------------------------------------------ answers


async def test_a_tool_call_answer_is_openais_exact_json(gateway: Gateway) -> None:
    script_call(gateway.worker, reasoning="Paris: call the tool.")
    status, body = await post_chat(gateway, {"messages": USER, "tools": [WEATHER]})
    assert status == 200
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ARGUMENTS},
                    }
                ],
                "reasoning_content": "Paris: call the tool.",
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
            "token_ids": None,
        }
    ]
    assert body["usage"]["prompt_tokens"] == PROMPT_TOKENS


async def test_a_plain_answer_has_no_tool_or_reasoning_keys(gateway: Gateway) -> None:
    status, body = await post_chat(gateway, {"messages": USER, "tools": [WEATHER]})
    assert status == 200
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello, world!",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_the_openai_sdk_reads_tool_calls(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    script_call(gateway.worker, text="Let me look.")
    out = await client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=[WEATHER],
        tool_choice="required",  # type: ignore[list-item]
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me look."
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id == CALL_ID
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    sent = gateway.worker.generate_requests()[-1]
    assert sent.tool_choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED


async def test_the_openai_sdk_parses_arguments_into_the_tools_model(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    script_call(gateway.worker)
    out = await client.chat.completions.parse(model=MODEL, messages=USER, tools=[WEATHER_MODEL])
    (call,) = out.choices[0].message.tool_calls or []
    assert call.function.parsed_arguments == GetWeather(city="Paris")
    (tool,) = gateway.worker.generate_requests()[-1].tools
    assert tool.name == "get_weather" and tool.strict


async def test_streamed_tool_calls_are_openais_exact_deltas(gateway: Gateway) -> None:
    script_call(gateway.worker, reasoning="Hmm.")
    events = await sse_events(gateway, {"messages": USER, "tools": [WEATHER]})
    assert len({event["id"] for event in events}) == 1
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    choices = [event["choices"] for event in events]
    assert all(len(c) == 1 and c[0]["index"] == 0 for c in choices)
    assert [(c[0]["delta"], c[0]["finish_reason"]) for c in choices] == [
        ({"role": "assistant", "content": ""}, None),
        ({"reasoning_content": "Hmm."}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": CALL_ID,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            },
            None,
        ),
        ({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}, None),
        ({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Paris"}'}}]}, None),
        ({}, "tool_calls"),
    ]


async def test_the_openai_sdk_stream_helper_accumulates_streamed_calls(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    script_call(gateway.worker, reasoning="Hmm.", text="Looking.")
    fragments: list[str] = []
    parsed: list[object] = []
    async with client.chat.completions.stream(
        model=MODEL, messages=USER, tools=[WEATHER_MODEL]
    ) as stream:
        async for event in stream:
            if event.type == "tool_calls.function.arguments.delta":
                assert (event.index, event.name) == (0, "get_weather")
                fragments.append(event.arguments_delta)
            elif event.type == "tool_calls.function.arguments.done":
                parsed.append(event.parsed_arguments)
        final = await stream.get_final_completion()
    assert fragments == ["", '{"ci', 'ty": "Paris"}']  # "": the call's first delta, as OpenAI's
    assert parsed == [GetWeather(city="Paris")]
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Looking."
    (call,) = choice.message.tool_calls or []
    assert (call.id, call.function.arguments) == (CALL_ID, ARGUMENTS)


async def test_the_openai_sdk_keeps_the_reasoning_content(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    gateway.worker.script.chunks = [
        pb.GenerateChunk(reasoning="Two and ", token_ids=[1]),
        pb.GenerateChunk(reasoning="two.", token_ids=[2]),
        pb.GenerateChunk(text="4", token_ids=[3]),
    ]
    out = await client.chat.completions.create(model=MODEL, messages=USER)
    message = out.choices[0].message
    assert (message.content, getattr(message, "reasoning_content", None)) == ("4", "Two and two.")
    assert out.choices[0].finish_reason == "stop" and message.tool_calls is None
    stream = await client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    deltas = [chunk.choices[0].delta async for chunk in stream]
    thinking = "".join(getattr(delta, "reasoning_content", None) or "" for delta in deltas)
    assert thinking == "Two and two."
    assert "".join(delta.content or "" for delta in deltas) == "4"


# ------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": {"type": "function"}}, "tools", None),
        ({"tools": "get_weather"}, "tools", None),
        (
            {"tools": [WEATHER, {"type": "web_search"}]},
            "tools[1].type",
            "unsupported_parameter",
        ),
        ({"tools": [{"type": "function"}]}, "tools[0].function", None),
        ({"tool_choice": "any"}, "tool_choice", None),
        (
            {"tool_choice": {"type": "custom", "custom": {}}},
            "tool_choice.type",
            "unsupported_parameter",
        ),
        ({"functions": [WEATHER["function"]]}, "functions", "unsupported_parameter"),
        ({"function_call": {"name": "get_weather"}}, "function_call", "unsupported_parameter"),
        ({"chat_template_kwargs": "enable_thinking=false"}, "chat_template_kwargs", None),
        ({"reasoning_effort": "minimal"}, "reasoning_effort", "unsupported_parameter"),
        ({"reasoning_format": "deepseek-legacy"}, "reasoning_format", "unsupported_parameter"),
        (
            {"messages": [*USER, {"role": "tool", "content": "18 C"}]},
            "messages[1].tool_call_id",
            None,
        ),
        (
            {"messages": [{"role": "user", "content": "x", "tool_call_id": CALL_ID}]},
            "messages[0].tool_call_id",
            None,
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": CALL_ID}]}]},
            "messages[0].tool_calls[0].function",
            None,
        ),
    ],
)
async def test_malformed_tool_fields_are_400s_before_the_worker(
    gateway: Gateway, fields: dict[str, Any], param: str, code: str | None
) -> None:
    status, body = await post_chat(gateway, {"messages": USER, **fields})
    assert refusal(status, body) == (param, code)
    assert gateway.worker.generate_requests() == []


async def test_ten_thousand_tools_go_to_the_worker_whose_refusal_is_a_400(
    gateway: Gateway,
) -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]
    gateway.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools: 10000 tools, more than 128",
        reason=REASON_INVALID_VALUE,
        param="tools",
    )
    status, body = await post_chat(gateway, {"messages": USER, "tools": tools})
    assert refusal(status, body) == ("tools", REASON_INVALID_VALUE.lower())
    assert body["error"]["message"] == "tools: 10000 tools, more than 128"
    (sent,) = gateway.worker.generate_requests()
    assert [tool.name for tool in sent.tools] == [f"f{i}" for i in range(10_000)]


async def test_a_choice_naming_an_unknown_tool_is_the_workers_call(gateway: Gateway) -> None:
    choice = {"type": "function", "function": {"name": "nope"}}
    status, _ = await post_chat(
        gateway, {"messages": USER, "tools": [WEATHER], "tool_choice": choice}
    )
    assert status == 200  # the fake worker does not judge it; the real one refuses it
    assert gateway.worker.generate_requests()[-1].tool_choice.function == "nope"


#: A chat request's fields after the one a test writes by hand.
REST = ',"model":"' + MODEL + '","messages":[{"role":"user","content":"x"}]}'


async def post_raw(gateway: Gateway, body: str) -> tuple[int, dict[str, Any]]:
    headers = {**AUTH_HEADERS, "Content-Type": "application/json"}
    async with gateway.http(headers=headers) as http:
        reply = await http.post("/v1/chat/completions", content=body)
    return reply.status_code, reply.json()


@pytest.mark.parametrize(
    "head",
    [
        '{"chat_template_kwargs":{"a":',
        '{"tools":[{"type":"function","function":{"name":"f","parameters":{"a":',
    ],
)
async def test_json_nested_beyond_the_parser_is_a_400(gateway: Gateway, head: str) -> None:
    closing = "}" * (head.count("{") - 1) + "]" * head.count("[")
    deep = "[" * 100_000 + "]" * 100_000
    status, body = await post_raw(gateway, head + deep + closing + REST)
    assert status == 400, body
    assert gateway.worker.generate_requests() == []


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
async def test_numbers_json_cannot_carry_are_400s(gateway: Gateway, number: str) -> None:
    status, body = await post_raw(gateway, '{"chat_template_kwargs":{"t":' + number + "}" + REST)
    assert refusal(status, body) == ("chat_template_kwargs", None)
    assert gateway.worker.generate_requests() == []
