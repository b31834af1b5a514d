"""Chat completions through the official openai SDK."""

from __future__ import annotations

import json

import openai
import pytest

from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import Gateway
from tests.contract.fake_worker import CACHED_TOKENS, MODEL, PROMPT_TOKENS

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}],
    },
]


async def test_chat_non_stream(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    out = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert out.id.startswith("chatcmpl-") and len(out.id) == len("chatcmpl-") + 32
    assert out.object == "chat.completion" and out.model == MODEL and out.created > 0
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello, world!"
    assert choice.finish_reason == "stop" and choice.logprobs is None
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (PROMPT_TOKENS, 4)
    assert out.usage.total_tokens == PROMPT_TOKENS + 4
    assert out.usage.prompt_tokens_details is not None
    assert out.usage.prompt_tokens_details.cached_tokens == CACHED_TOKENS
    sent = gateway.worker.generate_requests()[-1]
    assert sent.request_id == out.id  # the worker logs the id the client sees
    assert sent.model == MODEL and sent.WhichOneof("input") == "chat"
    assert [(m.role, m.content) for m in sent.chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi\nthere"),
    ]


async def test_chat_stream_deltas_concatenate_without_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)  # no usage chunk unless asked for
    assert all(chunk.usage is None for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "Hello, world!"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


async def test_chat_stream_usage_chunk_comes_last_with_no_choices(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=2,
    )
    chunks = [chunk async for chunk in stream]
    last, finish = chunks[-1], chunks[-2]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 2
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == CACHED_TOKENS
    assert finish.choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == "Hello,"


async def test_chat_stop_and_length_finish_reasons(client: openai.AsyncOpenAI) -> None:
    stopped = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stop=[" wor"])
    assert stopped.choices[0].message.content == "Hello,"
    assert stopped.choices[0].finish_reason == "stop"
    cut = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=1
    )
    assert cut.choices[0].message.content == "Hello"
    assert cut.choices[0].finish_reason == "length"


async def test_chat_sampling_fields_reach_the_worker(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    await client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        top_p=0.5,
        seed=-1,
        presence_penalty=0.25,
        frequency_penalty=-0.5,
        logit_bias={"42": -100},
        stop="x",
        max_tokens=3,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "integer"}, "strict": True},
        },
        extra_body={"top_k": 5, "min_p": 0.1, "repeat_penalty": 1.1, "ignore_eos": True},
    )
    sampling = gateway.worker.generate_requests()[-1].sampling
    assert sampling.HasField("temperature") and sampling.temperature == 0
    assert sampling.top_p == pytest.approx(0.5) and sampling.seed == 2**64 - 1
    assert sampling.presence_penalty == pytest.approx(0.25)
    assert sampling.frequency_penalty == pytest.approx(-0.5)
    assert dict(sampling.logit_bias) == {42: -100.0}
    assert list(sampling.stop) == ["x"] and sampling.max_tokens == 3
    assert json.loads(sampling.json_schema) == {"type": "integer"}
    assert sampling.top_k == 5 and sampling.min_p == pytest.approx(0.1)
    assert sampling.repeat_penalty == pytest.approx(1.1) and sampling.ignore_eos
    assert not sampling.HasField("typical_p") and not sampling.HasField("top_logprobs")


async def test_chat_logprobs(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    out = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, logprobs=True, top_logprobs=2
    )
    assert gateway.worker.generate_requests()[-1].sampling.top_logprobs == 2
    logprobs = out.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert [entry.token for entry in logprobs.content] == ["Hello", ",", " world", "!"]
    first = logprobs.content[0]
    assert first.logprob == pytest.approx(-0.25) and first.bytes == list(b"Hello")
    assert [top.token for top in first.top_logprobs] == ["Hello", "alt0"]


async def test_chat_stream_logprobs(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, logprobs=True, stream=True
    )
    tokens = [
        entry.token
        async for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content
        for entry in chunk.choices[0].logprobs.content
    ]
    assert tokens == ["Hello", ",", " world", "!"]


async def test_json_object_becomes_an_object_schema(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    await client.chat.completions.create(
        model=MODEL, messages=MESSAGES, response_format={"type": "json_object"}
    )
    sent = gateway.worker.generate_requests()[-1].sampling
    assert sent.WhichOneof("constraint") == "json_schema"
    assert json.loads(sent.json_schema) == {"type": "object"}


async def test_unknown_fields_are_refused_by_name(client: openai.AsyncOpenAI) -> None:
    """No silent drops: a field the gateway does not know is a 400 naming it, at any depth."""
    cases = [
        ({"frobnicate": 1}, MESSAGES, "frobnicate"),
        (
            {},
            [{"role": "user", "content": "hi", "cache_control": {"type": "x"}}],
            "messages[0].cache_control",
        ),
        (
            {"response_format": {"type": "json_object", "strict_mode": True}},
            MESSAGES,
            "response_format.strict_mode",
        ),
    ]
    for extra, messages, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model=MODEL,
                messages=messages,  # type: ignore[arg-type]
                extra_body=extra,
            )
        body = caught.value.body
        assert isinstance(body, dict)
        assert (body["code"], body["param"]) == ("unsupported_parameter", param)


async def test_empty_unknown_fields_and_accepted_no_ops_pass(client: openai.AsyncOpenAI) -> None:
    """What SDKs echo back (a null refusal, no annotations) and OpenAI's fields that cannot
    change the output are accepted."""
    echoed = {"role": "assistant", "content": "Hi", "refusal": None, "annotations": []}
    out = await client.chat.completions.create(
        model=MODEL,
        messages=[*MESSAGES, echoed, *MESSAGES],  # type: ignore[list-item]
        metadata={"app": "test"},
        store=False,
        service_tier="auto",
        extra_body={"safety_identifier": "u-1", "prompt_cache_key": "k", "frobnicate": None},
    )
    assert out.choices[0].message.content == "Hello, world!"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, service_tier="flex")
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["code"], body["param"]) == ("unsupported_parameter", "service_tier")


def test_finish_reason_enum_is_complete() -> None:
    from llamagrid.gateway.openai.rendering import FINISH_REASONS

    assert set(FINISH_REASONS) == set(pb.FinishReason.values()) - {pb.FINISH_REASON_UNSPECIFIED}
