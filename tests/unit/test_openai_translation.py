"""OpenAI request -> llamagrid.v1 proto, and proto -> OpenAI response."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from pydantic import ValidationError

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.openai import rendering, streaming, translate
from llamagrid.gateway.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from llamagrid.gateway.sse import ADMITTED
from llamagrid.v1 import inference_pb2 as pb

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> pb.GenerateRequest:
    return translate.chat_request(ChatCompletionRequest.model_validate({"model": "m", **fields}))


def completions(**fields: Any) -> list[pb.GenerateRequest]:
    body = CompletionRequest.model_validate({"model": "m", **fields})
    return translate.completion_requests(body)


def completion(**fields: Any) -> pb.GenerateRequest:
    (proto,) = completions(**fields)
    return proto


def refused(build: Any, **fields: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        build(**fields)
    assert caught.value.status_code == 400
    return caught.value


# ------------------------------------------------------------------------------ requests


def test_every_sampling_field() -> None:
    proto = chat(
        messages=USER,
        max_tokens=5,
        temperature=0.0,
        top_p=0.9,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={"12": 3, "0": -100},
        stop=["a", "", "b"],
        top_k=40,
        min_p=0.05,
        typical_p=0.95,
        repeat_penalty=1.1,
        repeat_last_n=64,
        ignore_eos=False,
        grammar="root ::= [a-z]+",
    )
    s = proto.sampling
    assert s.max_tokens == 5 and s.HasField("temperature") and s.temperature == 0.0
    assert (s.top_p, s.seed, s.top_k, s.repeat_last_n) == (pytest.approx(0.9), 7, 40, 64)
    assert s.presence_penalty == 0.5 and s.frequency_penalty == -0.5
    assert dict(s.logit_bias) == {12: 3.0, 0: -100.0}
    assert list(s.stop) == ["a", "", "b"]  # passed on: the worker refuses the empty one
    assert s.min_p == pytest.approx(0.05) and s.typical_p == pytest.approx(0.95)
    assert s.repeat_penalty == pytest.approx(1.1)
    assert s.HasField("ignore_eos") and s.ignore_eos is False
    assert s.WhichOneof("constraint") == "grammar" and s.grammar == "root ::= [a-z]+"
    assert not s.HasField("top_logprobs")


def test_unset_fields_stay_unset() -> None:
    s = chat(messages=USER).sampling
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos"):
        assert not s.HasField(name), name
    assert s.WhichOneof("constraint") is None and not s.stop and not s.logit_bias


def test_max_completion_tokens_wins_and_stop_may_be_a_string() -> None:
    s = chat(messages=USER, max_tokens=9, max_completion_tokens=3, stop="END").sampling
    assert s.max_tokens == 3 and list(s.stop) == ["END"]


def test_negative_seed_wraps_to_uint64() -> None:
    assert chat(messages=USER, seed=-2).sampling.seed == 2**64 - 2


def test_messages_become_a_conversation() -> None:
    proto = chat(
        messages=[
            {"role": "developer", "content": "rules"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
            {"role": "assistant", "content": None, "name": "bot"},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ]
    )
    assert proto.WhichOneof("input") == "chat" and proto.model == "m"
    assert proto.request_id.startswith("chatcmpl-") and len(proto.request_id) == 9 + 32
    messages = [
        (m.role, m.content, m.name if m.HasField("name") else None) for m in proto.chat.messages
    ]
    assert messages == [
        ("system", "rules", None),
        ("user", "a\nb", None),
        ("assistant", "", "bot"),
        ("tool", "42", None),
    ]


@pytest.mark.parametrize(
    ("response_format", "schema"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, {"type": "object"}),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "array"}, "strict": True},
            },
            {"type": "array"},
        ),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, {}),
    ],
)
def test_response_format(response_format: dict, schema: dict | None) -> None:
    s = chat(messages=USER, response_format=response_format).sampling
    if schema is None:
        assert s.WhichOneof("constraint") is None
    else:
        assert s.WhichOneof("constraint") == "json_schema"
        assert json.loads(s.json_schema) == schema


def test_grammar_and_response_format_exclude_each_other() -> None:
    error = refused(chat, messages=USER, grammar="g", response_format={"type": "json_object"})
    assert error.param == "grammar"


def test_logprobs() -> None:
    assert chat(messages=USER, logprobs=True).sampling.top_logprobs == 0
    assert chat(messages=USER, logprobs=True, top_logprobs=5).sampling.top_logprobs == 5
    assert not chat(messages=USER, logprobs=False).sampling.HasField("top_logprobs")
    assert refused(chat, messages=USER, top_logprobs=2).param == "top_logprobs"
    assert completion(prompt="p", logprobs=0).sampling.HasField("top_logprobs")
    assert completion(prompt="p", logprobs=3).sampling.top_logprobs == 3


@pytest.mark.parametrize("key", ["dog", "1.5", str(2**31)])
def test_bad_logit_bias_key(key: str) -> None:
    assert refused(chat, messages=USER, logit_bias={key: 1}).param == "logit_bias"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"functions": []}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "assistant", "function_call": {"name": "f", "arguments": ""}}]},
            "messages[0].function_call",
        ),
    ],
)
def test_unsupported_chat_parameters(fields: dict, param: str) -> None:
    error = refused(chat, **{"messages": USER, **fields})
    assert (error.code, error.param) == ("unsupported_parameter", param)


def test_supported_values_of_refusable_fields_pass() -> None:
    chat(messages=USER, n=1, modalities=["text"])
    completion(prompt="x", n=1, best_of=1, echo=False, suffix="")


def test_stream_options_need_stream() -> None:
    error = refused(chat, messages=USER, stream_options={"include_usage": True})
    assert error.param == "stream_options"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"best_of": 3}, "best_of"),
        ({"suffix": "s", "prompt": [1, 2]}, "suffix"),
    ],
)
def test_unsupported_completion_parameters(fields: dict, param: str) -> None:
    error = refused(completion, **{"prompt": "x", **fields})
    assert (error.code, error.param) == ("unsupported_parameter", param)


def test_a_suffix_makes_each_text_prompt_an_infill_input() -> None:
    protos = completions(prompt=["def f(", "x = "], suffix="):\n", n=2)
    assert [p.WhichOneof("input") for p in protos] == ["infill", "infill"]
    pairs = [(p.infill.prefix, p.infill.suffix) for p in protos]
    assert pairs == [("def f(", "):\n"), ("x = ", "):\n")]
    assert not protos[0].infill.extra and not protos[0].infill.prompt and protos[0].n == 2
    empty_prompt = completion(prompt="", suffix="s")
    assert empty_prompt.WhichOneof("input") == "infill" and empty_prompt.infill.suffix == "s"


@pytest.mark.parametrize(
    ("prompt", "field", "value"),
    [
        ("p", "prompt", "p"),
        (["p"], "prompt", "p"),
        ([1, 2], "tokens", [1, 2]),
        ([[3]], "tokens", [3]),
    ],
)
def test_completion_prompts(prompt: Any, field: str, value: Any) -> None:
    proto = completion(prompt=prompt)
    assert proto.WhichOneof("input") == field
    assert (proto.prompt if field == "prompt" else list(proto.tokens.ids)) == value
    assert proto.sampling.max_tokens == 16


def test_several_prompts_are_a_call_each_with_the_same_fields() -> None:
    protos = completions(prompt=["a", "b"], n=2, echo=True, logprobs=1, max_tokens=0)
    assert [p.prompt for p in protos] == ["a", "b"]
    for proto in protos:
        assert (proto.n, proto.echo, proto.prompt_logprobs) == (2, True, 1)
        assert proto.sampling.max_tokens == 0 and proto.request_id == protos[0].request_id
    assert [list(p.tokens.ids) for p in completions(prompt=[[1], [2, 3]])] == [[1], [2, 3]]


def test_a_prompt_list_longer_than_the_cap_is_refused() -> None:
    error = refused(completions, prompt=["a"] * (translate.MAX_PROMPTS + 1))
    assert error.param == "prompt" and error.code is None


def test_an_empty_token_prompt_goes_to_the_worker_which_decides() -> None:
    proto = completion(prompt=[])
    assert proto.WhichOneof("input") == "tokens" and not proto.tokens.ids


def test_schema_rejects_only_what_the_wire_cannot_carry() -> None:
    # Ranges are the worker's to judge: temperature 3 reaches it (and it answers).
    ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "temperature": 3})
    ChatCompletionRequest.model_validate({"model": "m", "messages": []})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": "hi"})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "temperature": "x"})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": [1, "a"]})
    with pytest.raises(ValidationError):  # does not fit the proto's int32 / uint32
        CompletionRequest.model_validate({"model": "m", "prompt": [2**31]})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "p", "max_tokens": 2**32})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "top_k": 2**31})


@pytest.mark.parametrize(
    ("given", "expected"),
    [("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])],
)
def test_embed_inputs(given: Any, expected: list[Any]) -> None:
    proto = translate.embed_request(EmbeddingRequest(model="m", input=given))
    assert proto.normalize and proto.model == "m"
    got = [i.text if i.HasField("text") else list(i.tokens.ids) for i in proto.inputs]
    assert got == expected


@pytest.mark.parametrize(("given", "count"), [([], 0), ("", 1), ([""], 1), ([[]], 1)])
def test_empty_embed_inputs_go_to_the_worker_which_decides(given: Any, count: int) -> None:
    proto = translate.embed_request(EmbeddingRequest(model="m", input=given))
    assert len(proto.inputs) == count
    assert all(not (i.text or i.tokens.ids) for i in proto.inputs)


def test_embed_dimensions_go_to_the_worker_which_decides() -> None:
    proto = translate.embed_request(EmbeddingRequest(model="m", input="x", dimensions=8))
    assert proto.HasField("dimensions") and proto.dimensions == 8
    assert not translate.embed_request(EmbeddingRequest(model="m", input="x")).HasField(
        "dimensions"
    )


@pytest.mark.parametrize("value", [0, -1, 8.0, 8.5, "8", True, 2**32])
def test_embed_dimensions_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest(model="m", input="x", dimensions=value)


# ------------------------------------------------------------------------------ responses


def entry(token: str, logprob: float, token_id: int = 1) -> pb.LogprobEntry:
    return pb.LogprobEntry(token_id=token_id, token=token, raw=token.encode(), logprob=logprob)


def stream(
    *texts: str, reason: int = pb.FINISH_REASON_EOS, logprobs: bool = False
) -> list[pb.GenerateResponse]:
    responses = []
    for text in texts:
        chunk = pb.GenerateChunk(text=text, token_ids=[1])
        if logprobs:
            chunk.logprobs.append(
                pb.TokenLogprob(chosen=entry(text, -1.0), top=[entry(text, -1.0), entry("z", -2.0)])
            )
        responses.append(pb.GenerateResponse(chunk=chunk))
    usage = pb.Usage(prompt_tokens=10, completion_tokens=len(texts), cached_tokens=4)
    responses.append(pb.GenerateResponse(final=pb.GenerateFinal(finish_reason=reason, usage=usage)))
    return responses


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (pb.FINISH_REASON_EOS, "stop"),
        (pb.FINISH_REASON_STOP_STRING, "stop"),
        (pb.FINISH_REASON_LENGTH, "length"),
    ],
)
def test_chat_completion_rendering(reason: int, expected: str) -> None:
    generated = rendering.Generated.gather(stream("He", "llo", reason=reason))
    out = rendering.chat_completion("chatcmpl-1", "alias", generated, logprobs=False).model_dump()
    assert out["id"] == "chatcmpl-1" and out["object"] == "chat.completion"
    assert out["model"] == "alias"
    assert out["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "refusal": None,
    }
    assert out["choices"][0]["finish_reason"] == expected
    assert out["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_chat_logprobs_rendering() -> None:
    generated = rendering.Generated.gather(stream("é", logprobs=True))
    out = rendering.chat_completion("chatcmpl-1", "m", generated, logprobs=True).model_dump()
    assert out["choices"][0]["logprobs"]["content"] == [
        {
            "token": "é",
            "logprob": -1.0,
            "bytes": [0xC3, 0xA9],
            "top_logprobs": [
                {"token": "é", "logprob": -1.0, "bytes": [0xC3, 0xA9]},
                {"token": "z", "logprob": -2.0, "bytes": [0x7A]},
            ],
        }
    ]


def test_completion_logprobs_rendering_continues_offsets() -> None:
    generated = rendering.Generated.gather(stream("ab", "c", logprobs=True))
    out = rendering.completion("cmpl-1", "m", generated, logprobs=True, offset=5).model_dump()
    assert out["object"] == "text_completion" and out["choices"][0]["text"] == "abc"
    assert out["choices"][0]["logprobs"] == {
        "tokens": ["ab", "c"],
        "token_logprobs": [-1.0, -1.0],
        "top_logprobs": [{"ab": -1.0, "z": -2.0}, {"c": -1.0, "z": -2.0}],
        "text_offset": [5, 7],
    }


def test_a_stream_without_final_is_an_error() -> None:
    with pytest.raises(OpenAIError) as caught:
        rendering.Generated.gather(stream("a")[:-1])
    assert caught.value.status_code == 502


def test_chat_chunks() -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m", include_usage=True, logprobs=False)
    events = [event for r in [ADMITTED, *stream("a", "", "b")] for event in chunks.render(r)]
    assert events[0] is ADMITTED  # flushes the headers
    dumped = [json.loads(e) for e in events[1:]]  # type: ignore[arg-type]
    assert dumped[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [d["choices"][0]["delta"] for d in dumped[1:3]] == [{"content": "a"}, {"content": "b"}]
    assert dumped[3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert dumped[4]["choices"] == [] and dumped[4]["usage"]["total_tokens"] == 13
    assert all("usage" not in d for d in dumped[:4])
    assert len({d["id"] for d in dumped}) == 1 and chunks.finished


def test_completion_chunks_without_usage() -> None:
    chunks = streaming.CompletionChunks(
        "cmpl-1", "m", include_usage=False, logprobs=False, offset=0
    )
    events = [
        event
        for r in [ADMITTED, *stream("a", reason=pb.FINISH_REASON_LENGTH)]
        for event in chunks.render(r)
    ]
    assert events[0] is ADMITTED
    dumped = [json.loads(e) for e in events[1:]]  # type: ignore[arg-type]
    assert [d["choices"][0]["text"] for d in dumped] == ["a", ""]
    assert dumped[-1]["choices"][0]["finish_reason"] == "length"


def test_embeddings_rendering() -> None:
    response = pb.EmbedResponse(
        embeddings=[pb.Embedding(values=[0.5, -1.0], token_count=2)], total_tokens=2
    )
    floats = rendering.embedding_list("m", response, "float").model_dump()
    assert floats["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -1.0]}]
    assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    encoded = rendering.embedding_list("m", response, "base64").data[0].embedding
    assert isinstance(encoded, str)
    assert struct.unpack("<2f", base64.b64decode(encoded)) == (0.5, -1.0)


# ------------------------------------------------------------------------------ tools, reasoning

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": True,
    },
}
BARE = {"type": "function", "function": {"name": "now"}}


def test_tools_tool_choice_and_parallel_tool_calls_become_the_contract_fields() -> None:
    proto = chat(messages=USER, tools=[WEATHER, BARE], tool_choice="required")
    weather, bare = proto.tools
    assert (weather.name, weather.description, weather.strict) == (
        "get_weather",
        "The weather in a city.",
        True,
    )
    assert json.loads(weather.parameters_json) == WEATHER["function"]["parameters"]
    assert (bare.name, bare.description, bare.parameters_json, bare.strict) == (
        "now",
        "",
        "",
        False,
    )
    assert proto.tool_choice.WhichOneof("choice") == "mode"
    assert proto.tool_choice.mode == pb.TOOL_CHOICE_MODE_REQUIRED
    assert not proto.HasField("parallel_tool_calls")
    named = chat(
        messages=USER,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
    )
    assert named.tool_choice.function == "get_weather"
    assert named.HasField("parallel_tool_calls") and not named.parallel_tool_calls


@pytest.mark.parametrize(
    ("choice", "mode"),
    [
        ("auto", pb.TOOL_CHOICE_MODE_AUTO),
        ("none", pb.TOOL_CHOICE_MODE_NONE),
        ("required", pb.TOOL_CHOICE_MODE_REQUIRED),
    ],
)
def test_tool_choice_strings_are_the_contract_modes(choice: str, mode: int) -> None:
    assert chat(messages=USER, tools=[BARE], tool_choice=choice).tool_choice.mode == mode


def test_no_tools_and_an_empty_list_send_nothing() -> None:
    for proto in (chat(messages=USER), chat(messages=USER, tools=[])):
        assert not proto.tools and not proto.HasField("tool_choice")
        assert not proto.chat_template_kwargs and not proto.reasoning_effort
        assert proto.reasoning_format == pb.REASONING_FORMAT_UNSPECIFIED


def test_a_choice_naming_an_unknown_function_is_the_workers_to_judge() -> None:
    choice = {"type": "function", "function": {"name": "nope"}}
    assert chat(messages=USER, tools=[BARE], tool_choice=choice).tool_choice.function == "nope"


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": [BARE, {"type": "custom", "custom": {"name": "x"}}]}, "tools[1].type", True),
        ({"tools": [{"type": "function"}]}, "tools[0].function", False),
        ({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}}, "tool_choice.type", True),
        ({"tool_choice": {"type": "function"}}, "tool_choice.function", False),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"x": 1e999}}}
                ]
            },
            "tools[0].function.parameters",
            False,
        ),
    ],
)
def test_tools_that_are_not_functions_are_refused_by_position(
    fields: dict[str, Any], param: str, code: bool
) -> None:
    error = refused(chat, messages=USER, **fields)
    assert error.param == param
    assert error.code == ("unsupported_parameter" if code else None)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": {"type": "function"}},
        {"tools": "get_weather"},
        {"tools": [{"function": {"name": "f"}}]},
        {"tools": [{"type": "function", "function": {"description": "no name"}}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]},
        {"tool_choice": "always"},
        {"tool_choice": 1},
        {"parallel_tool_calls": "maybe"},
        {"chat_template_kwargs": ["enable_thinking"]},
        {"reasoning_effort": "extreme"},
        {"reasoning_format": "think"},
        {"messages": [{"role": "assistant", "tool_calls": {"id": "c"}}]},
        {"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
        {
            "messages": [
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
                }
            ]
        },
    ],
)
def test_shapes_the_wire_cannot_carry_fail_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}


def test_tool_call_turns_reach_the_worker_as_given() -> None:
    proto = chat(
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [CALL], "reasoning_content": "r"},
            {"role": "tool", "content": "42", "tool_call_id": "call_1"},
        ]
    )
    _, assistant, tool = proto.chat.messages
    assert (assistant.content, assistant.reasoning_content) == ("", "r")
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1", "f", '{"a": 1}')  # the arguments' JSON text, byte for byte
    ]
    assert (tool.role, tool.content, tool.tool_call_id) == ("tool", "42", "call_1")
    assert not tool.tool_calls and not assistant.tool_call_id


@pytest.mark.parametrize(
    ("message", "param", "code"),
    [
        ({"role": "tool", "content": "42"}, "messages[0].tool_call_id", None),
        ({"role": "user", "content": "x", "tool_call_id": "c"}, "messages[0].tool_call_id", None),
        ({"role": "user", "content": "x", "tool_calls": [CALL]}, "messages[0].tool_calls", None),
        (
            {"role": "tool", "content": "x", "tool_call_id": "c", "reasoning_content": "r"},
            "messages[0].reasoning_content",
            None,
        ),
        (
            {"role": "assistant", "tool_calls": [{**CALL, "type": "custom"}]},
            "messages[0].tool_calls[0].type",
            "unsupported_parameter",
        ),
    ],
)
def test_tool_fields_belong_to_their_roles(
    message: dict[str, Any], param: str, code: str | None
) -> None:
    error = refused(chat, messages=[message])
    assert (error.param, error.code) == (param, code)


def test_chat_template_kwargs_go_as_compact_json() -> None:
    kwargs = {"enable_thinking": False, "é": [1, 2.5, None]}
    proto = chat(messages=USER, chat_template_kwargs=kwargs)
    assert proto.chat_template_kwargs == '{"enable_thinking":false,"é":[1,2.5,null]}'
    assert chat(messages=USER, chat_template_kwargs={}).chat_template_kwargs == "{}"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"x": float("nan")}, "chat_template_kwargs"),
        ({"x": float("inf")}, "chat_template_kwargs"),
        ({"x": "\ud800"}, None),  # a lone surrogate: no protobuf string can hold it
    ],
)
def test_chat_template_kwargs_that_are_not_json_are_refused(
    kwargs: dict[str, Any], param: str | None
) -> None:
    assert refused(chat, messages=USER, chat_template_kwargs=kwargs).param == param


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_reasoning_effort_goes_to_the_template(effort: str) -> None:
    assert chat(messages=USER, reasoning_effort=effort).reasoning_effort == effort


@pytest.mark.parametrize("effort", ["none", "minimal", "xhigh", "max"])
def test_openai_reasoning_efforts_without_a_contract_value_are_refused(effort: str) -> None:
    error = refused(chat, messages=USER, reasoning_effort=effort)
    assert (error.code, error.param) == ("unsupported_parameter", "reasoning_effort")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("none", pb.REASONING_FORMAT_NONE),
        ("auto", pb.REASONING_FORMAT_SPLIT),
        ("deepseek", pb.REASONING_FORMAT_SPLIT),
    ],
)
def test_llama_server_reasoning_formats_are_the_contract_formats(name: str, value: int) -> None:
    assert chat(messages=USER, reasoning_format=name).reasoning_format == value


def test_the_deepseek_legacy_reasoning_format_is_refused() -> None:
    error = refused(chat, messages=USER, reasoning_format="deepseek-legacy")
    assert (error.code, error.param) == ("unsupported_parameter", "reasoning_format")


def tool_final(*calls: tuple[str, str, str]) -> pb.GenerateResponse:
    final = pb.GenerateFinal(
        finish_reason=pb.FINISH_REASON_TOOL_CALLS,
        usage=pb.Usage(prompt_tokens=10, completion_tokens=6),
        tool_calls=[pb.ToolCall(id=i, name=n, arguments=a) for i, n, a in calls],
    )
    return pb.GenerateResponse(final=final)


def test_a_turn_that_only_called_tools_has_null_content_and_its_calls() -> None:
    responses = [
        pb.GenerateResponse(chunk=pb.GenerateChunk(reasoning="Think.", token_ids=[1])),
        pb.GenerateResponse(chunk=pb.GenerateChunk(token_ids=[2, 3])),  # call markup, held back
        tool_final(("call_a", "f", '{"a":1}'), ("call_b", "g", "{}")),
    ]
    generated = rendering.Generated.gather(responses)
    out = rendering.chat_completion("chatcmpl-1", "m", generated, logprobs=False)
    choice = out.model_dump(mode="json")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
            {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
        "reasoning_content": "Think.",
    }


def test_text_before_a_call_stays_the_content() -> None:
    responses = [
        pb.GenerateResponse(chunk=pb.GenerateChunk(text="Let me see.")),
        tool_final(("call_a", "f", "{}")),
    ]
    message = rendering.assistant_message(rendering.Generated.gather(responses))
    assert message.content == "Let me see." and message.tool_calls is not None


def tool_delta(index: int, arguments: str = "", call: str = "", name: str = "") -> pb.ToolCallDelta:
    return pb.ToolCallDelta(index=index, id=call, name=name, arguments=arguments)


def test_tool_call_deltas_have_openais_shape() -> None:
    deltas = [
        tool_delta(0, '{"a"', call="call_a", name="f"),  # head and a first fragment
        tool_delta(0, ": 1"),
        tool_delta(0, "}"),
        tool_delta(1, call="call_b", name="g"),
        tool_delta(1, "{}"),
    ]
    assert streaming.tool_call_deltas(deltas) == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "f", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]},
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "g", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    ]


def test_streamed_reasoning_text_and_tool_calls_are_the_pydantic_dumps() -> None:
    from llamagrid.gateway.openai import schemas as s

    chunks = streaming.ChatChunks("chatcmpl-1", "m", include_usage=False, logprobs=False)
    chunk = pb.GenerateChunk(
        reasoning="hmm",
        text="ok",
        token_ids=[1, 2, 3],
        tool_calls=[tool_delta(0, "{}", call="call_a", name="f")],
    )
    events = chunks.render(pb.GenerateResponse(chunk=chunk))
    (finish,) = chunks.render(tool_final(("call_a", "f", "{}")))
    dumped = [json.loads(e) for e in [*events, finish]]  # type: ignore[arg-type]
    created = dumped[0]["created"]
    deltas = [
        s.ChatDelta(reasoning_content="hmm"),
        s.ChatDelta(content="ok"),
        s.ChatDelta(
            tool_calls=[
                s.ToolCallDelta(
                    index=0,
                    id="call_a",
                    type="function",
                    function=s.FunctionDelta(name="f", arguments=""),
                )
            ]
        ),
        s.ChatDelta(
            tool_calls=[s.ToolCallDelta(index=0, function=s.FunctionDelta(arguments="{}"))]
        ),
    ]
    expected = [
        s.ChatCompletionChunk(
            id="chatcmpl-1",
            created=created,
            model="m",
            choices=[s.ChatChunkChoice(index=0, delta=delta)],
        )
        .model_dump_json()
        .encode()
        for delta in deltas
    ]
    assert events == expected
    assert dumped[-1]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert chunks.finished


def test_a_chunk_of_held_back_markup_sends_nothing_but_its_logprobs() -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m", include_usage=False, logprobs=True)
    held = pb.GenerateChunk(token_ids=[5])
    assert chunks.render(pb.GenerateResponse(chunk=held)) == []
    held.logprobs.append(pb.TokenLogprob(chosen=entry("<", -0.5)))
    (event,) = chunks.render(pb.GenerateResponse(chunk=held))
    choice = json.loads(event)["choices"][0]  # type: ignore[arg-type]
    assert choice["delta"] == {"content": ""} and len(choice["logprobs"]["content"]) == 1
