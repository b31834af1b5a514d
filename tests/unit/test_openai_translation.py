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


def completion(**fields: Any) -> pb.GenerateRequest:
    return translate.completion_request(CompletionRequest.model_validate({"model": "m", **fields}))


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
            {"role": "tool", "content": "42"},
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
        ({"n": 2}, "n"),
        ({"tools": []}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": []}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"parallel_tool_calls": True}, "parallel_tool_calls"),
        ({"audio": {}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "assistant", "tool_calls": [{}]}]}, "messages[0].tool_calls"),
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
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "s"}, "suffix"),
        ({"n": 2}, "n"),
    ],
)
def test_unsupported_completion_parameters(fields: dict, param: str) -> None:
    error = refused(completion, prompt="x", **fields)
    assert (error.code, error.param) == ("unsupported_parameter", param)


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


def test_several_prompts_are_refused() -> None:
    assert refused(completion, prompt=["a", "b"]).code == "unsupported_parameter"


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


def test_embed_dimensions_refused() -> None:
    with pytest.raises(OpenAIError) as caught:
        translate.embed_request(EmbeddingRequest(model="m", input="x", dimensions=8))
    assert caught.value.code == "unsupported_parameter"


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
