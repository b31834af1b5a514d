"""Streamed completions: the JSON rendered without a model per token is what the pydantic response
models dump, byte for byte; SSE batches are framed in one write."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.openai import schemas as s
from llamagrid.gateway.openai import streaming
from llamagrid.gateway.openai.rendering import usage_fields
from llamagrid.gateway.sse import ADMITTED, COMMENT, frame, frames
from llamagrid.v1 import inference_pb2 as pb

#: Texts that JSON escapes differently in different encoders: quotes, backslashes, control
#: characters, line separators, accents, CJK, emoji, and a DEL.
TEXTS = [
    "Hello",
    "",
    ' "quoted" \\ back',
    "tab\there\nnewline\x00\x1f",
    "\u2028\u2029",
    "é 中文 😀\x7f",
]
#: Log-probabilities whose shortest form differs between float formatters (1e-05 vs 0.00001).
LOGPROBS = [-0.0, -1.0, -1e-05, -0.1234567, -3.4028234663852886e38, -123456789.0, -math.inf]


def entry(token: str, logprob: float, raw: bytes | None = None) -> pb.LogprobEntry:
    data = token.encode() if raw is None else raw
    return pb.LogprobEntry(token_id=7, token=token, raw=data, logprob=logprob)


def token_logprob(token: str, logprob: float) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        chosen=entry(token, logprob),
        top=[entry(token, logprob), entry("\ufffd", -2.5, b"\xf0\x9f"), entry("z", -9.75e-7)],
    )


def chunk(text: str, *logprobs: pb.TokenLogprob, ids: int = 1) -> pb.GenerateResponse:
    tokens = list(range(100, 100 + ids))
    return pb.GenerateResponse(
        chunk=pb.GenerateChunk(text=text, token_ids=tokens, logprobs=list(logprobs))
    )


def final(reason: int = pb.FINISH_REASON_EOS) -> pb.GenerateResponse:
    usage = pb.Usage(prompt_tokens=11, completion_tokens=5, cached_tokens=3)
    return pb.GenerateResponse(final=pb.GenerateFinal(finish_reason=reason, usage=usage))


def pydantic_chat_logprobs(entries: list[pb.TokenLogprob]) -> s.ChoiceLogprobs:
    """The chat logprobs as the pydantic path built them, model by model."""

    def top(e: pb.LogprobEntry) -> s.TopLogprob:
        return s.TopLogprob(token=e.token, logprob=e.logprob, bytes=list(e.raw))

    content = [
        s.TokenLogprob(**top(e.chosen).model_dump(), top_logprobs=[top(t) for t in e.top])
        for e in entries
    ]
    return s.ChoiceLogprobs(content=content)


USAGE = s.Usage(
    prompt_tokens=11,
    completion_tokens=5,
    total_tokens=16,
    prompt_tokens_details=s.PromptTokensDetails(cached_tokens=3),
)


def chat_chunk(created: int, choices: list[s.ChatChunkChoice], **extra: Any) -> bytes:
    return (
        s.ChatCompletionChunk(
            id="chatcmpl-1", created=created, model="m-é", choices=choices, **extra
        )
        .model_dump_json()
        .encode()
    )


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("logprob", [None, *LOGPROBS])  # None: logprobs not asked for
def test_a_streamed_chat_chunk_is_byte_for_byte_the_pydantic_dump(
    text: str, logprob: float | None
) -> None:
    asked = logprob is not None
    chunks = streaming.ChatChunks("chatcmpl-1", "m-é", include_usage=True, logprobs=asked)
    entries = [token_logprob(text or "x", logprob)] if logprob is not None else []
    content = text or ("" if asked else "x")  # a chunk with neither text nor logprobs is skipped
    (event,) = chunks.render(chunk(content, *entries))
    assert isinstance(event, bytes)
    created = json.loads(event)["created"]
    logprobs = pydantic_chat_logprobs(entries) if asked else None
    choice = s.ChatChunkChoice(index=0, delta=s.ChatDelta(content=content), logprobs=logprobs)
    assert event == chat_chunk(created, [choice])


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        (pb.FINISH_REASON_EOS, "stop"),
        (pb.FINISH_REASON_STOP_STRING, "stop"),
        (pb.FINISH_REASON_LENGTH, "length"),
    ],
)
def test_the_chat_role_finish_and_usage_chunks_are_the_pydantic_dumps(
    reason: int, finish: s.FinishReason
) -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m-é", include_usage=True, logprobs=False)
    admitted, role = chunks.render(ADMITTED)
    assert admitted is ADMITTED
    assert isinstance(role, bytes)
    created = json.loads(role)["created"]
    role_delta = s.ChatDelta(role="assistant", content="")
    assert role == chat_chunk(created, [s.ChatChunkChoice(index=0, delta=role_delta)])
    finished, used = chunks.render(final(reason))
    finish_choice = s.ChatChunkChoice(index=0, delta=s.ChatDelta(), finish_reason=finish)
    assert finished == chat_chunk(created, [finish_choice])
    assert used == chat_chunk(created, [], usage=USAGE)
    assert chunks.finished


def test_a_chat_stream_without_usage_ends_with_the_finish_chunk() -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m", include_usage=False, logprobs=False)
    (finished,) = chunks.render(final(pb.FINISH_REASON_LENGTH))
    assert isinstance(finished, bytes)
    assert json.loads(finished)["choices"][0]["finish_reason"] == "length"
    assert "usage" not in json.loads(finished)


def test_a_chunk_without_text_or_logprobs_renders_nothing() -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m", include_usage=False, logprobs=False)
    assert chunks.render(chunk("")) == []


def test_a_chunk_of_several_tokens_is_one_chat_event_listing_every_logprob() -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m-é", include_usage=False, logprobs=True)
    entries = [token_logprob("He", -0.5), token_logprob("llo", -1e-05), token_logprob("😀", -2.0)]
    (event,) = chunks.render(chunk("Hello😀", *entries, ids=3))
    assert isinstance(event, bytes)
    created = json.loads(event)["created"]
    choice = s.ChatChunkChoice(
        index=0, delta=s.ChatDelta(content="Hello😀"), logprobs=pydantic_chat_logprobs(entries)
    )
    assert event == chat_chunk(created, [choice])


def completion_event(created: int, choices: list[s.CompletionChoice], **extra: Any) -> bytes:
    return (
        s.Completion(id="cmpl-1", created=created, model="m", choices=choices, **extra)
        .model_dump_json()
        .encode()
    )


@pytest.mark.parametrize("text", TEXTS[:1] + TEXTS[2:])
def test_streamed_completion_events_are_byte_for_byte_the_pydantic_dumps(text: str) -> None:
    chunks = streaming.CompletionChunks("cmpl-1", "m", include_usage=True, logprobs=True, offset=4)
    assert chunks.render(ADMITTED) == [ADMITTED]
    first = [token_logprob(text, LOGPROBS[2]), token_logprob("b", -math.inf)]
    (event,) = chunks.render(chunk(text + "b", *first, ids=2))
    (second,) = chunks.render(chunk("c", token_logprob("c", -0.25)))
    assert isinstance(event, bytes)
    created = json.loads(event)["created"]
    logprobs = s.CompletionLogprobs(
        tokens=[text, "b"],
        token_logprobs=[e.chosen.logprob for e in first],  # as float32 carried them
        top_logprobs=[{t.token: t.logprob for t in e.top} for e in first],
        text_offset=[4, 4 + len(text)],
    )
    choice = s.CompletionChoice(index=0, text=text + "b", logprobs=logprobs, finish_reason=None)
    assert event == completion_event(created, [choice])
    assert json.loads(second)["choices"][0]["logprobs"]["text_offset"] == [5 + len(text)]
    finished, used = chunks.render(final(pb.FINISH_REASON_LENGTH))
    last = s.CompletionChoice(index=0, text="", logprobs=None, finish_reason="length")
    assert finished == completion_event(created, [last])
    assert used == completion_event(created, [], usage=USAGE)


def test_admission_is_a_comment_and_a_batch_is_one_write() -> None:
    assert frame(ADMITTED) == COMMENT == b": ok\n\n"
    assert frame(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert frame({"error": {"message": "é"}}) == 'data: {"error":{"message":"é"}}\n\n'.encode()
    assert frames([ADMITTED, b"{}", b"[]"]) == b": ok\n\ndata: {}\n\ndata: []\n\n"


async def messages(*items: streaming.Message) -> AsyncGenerator[streaming.Message, None]:
    for item in items:
        yield item


async def test_stream_events_yield_one_batch_per_worker_message() -> None:
    chunks = streaming.ChatChunks("chatcmpl-1", "m", include_usage=True, logprobs=False)
    stream = messages(ADMITTED, chunk("a"), chunk(""), chunk("bc", ids=2), final())
    batches = [batch async for batch in streaming.stream_events(stream, chunks)]
    assert [len(batch) for batch in batches] == [2, 1, 1, 2]
    assert batches[0][0] is ADMITTED


async def test_a_stream_that_ends_without_its_final_message_is_an_error() -> None:
    chunks = streaming.CompletionChunks(
        "cmpl-1", "m", include_usage=False, logprobs=False, offset=0
    )
    with pytest.raises(OpenAIError) as caught:
        async for _ in streaming.stream_events(messages(ADMITTED, chunk("a")), chunks):
            pass
    assert caught.value.status_code == 502


def test_tokens_restored_from_the_host_tier_count_as_cached() -> None:
    """A client sees one figure for prompt tokens it did not pay to compute: reused from the KV
    cache or restored from the worker's host memory (issue 12)."""
    usage = pb.Usage(prompt_tokens=100, completion_tokens=5, cached_tokens=10, restored_tokens=80)
    assert usage_fields(usage)["prompt_tokens_details"] == {"cached_tokens": 90}
