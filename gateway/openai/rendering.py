"""Rendering of llamagrid.v1 responses as OpenAI responses and stream events."""

from __future__ import annotations

import base64
import contextlib
import struct
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.openai import schemas as s
from llamagrid.gateway.sse import Event, Events
from llamagrid.v1 import inference_pb2 as pb

FINISH_REASONS: dict[int, s.FinishReason] = {
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_STOP_STRING: "stop",
    pb.FINISH_REASON_LENGTH: "length",
}


def missing_final() -> OpenAIError:
    """The error for a Generate stream that ended without its final message."""
    return OpenAIError(502, "The worker ended the stream without a final message.", "server_error")


def finish_reason(final: pb.GenerateFinal) -> s.FinishReason:
    """OpenAI's finish reason for a final message."""
    return FINISH_REASONS.get(final.finish_reason, "stop")


def usage(proto: pb.Usage) -> s.Usage:
    """Token counts, with the prompt tokens served from the KV cache."""
    return s.Usage(
        prompt_tokens=proto.prompt_tokens,
        completion_tokens=proto.completion_tokens,
        total_tokens=proto.prompt_tokens + proto.completion_tokens,
        prompt_tokens_details=s.PromptTokensDetails(cached_tokens=proto.cached_tokens),
    )


def chat_logprobs(entries: Sequence[pb.TokenLogprob]) -> s.ChoiceLogprobs:
    """Log-probabilities in the chat format (``choices[].logprobs.content[]``)."""
    return s.ChoiceLogprobs(
        content=[
            s.TokenLogprob(**_top(entry.chosen).model_dump(), top_logprobs=_tops(entry.top))
            for entry in entries
        ]
    )


def _top(entry: pb.LogprobEntry) -> s.TopLogprob:
    return s.TopLogprob(token=entry.token, logprob=entry.logprob, bytes=list(entry.raw))


def _tops(entries: Sequence[pb.LogprobEntry]) -> list[s.TopLogprob]:
    return [_top(entry) for entry in entries]


@dataclass
class CompletionLogprobsBuilder:
    """Log-probabilities in the legacy completions format, with running text offsets."""

    offset: int = 0

    def build(self, entries: Sequence[pb.TokenLogprob]) -> s.CompletionLogprobs:
        """The logprobs of ``entries``; offsets continue from the previous call."""
        result = s.CompletionLogprobs()
        for entry in entries:
            result.tokens.append(entry.chosen.token)
            result.token_logprobs.append(entry.chosen.logprob)
            result.top_logprobs.append({top.token: top.logprob for top in entry.top})
            result.text_offset.append(self.offset)
            self.offset += len(entry.chosen.token)
        return result


@dataclass
class Generated:
    """A whole Generate stream, gathered."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    final: pb.GenerateFinal | None = None

    @classmethod
    def gather(cls, responses: Sequence[pb.GenerateResponse]) -> Generated:
        """Join the chunks; raises when the final message is missing."""
        generated = cls()
        texts: list[str] = []
        for response in responses:
            if response.HasField("chunk"):
                texts.append(response.chunk.text)
                generated.token_ids.extend(response.chunk.token_ids)
                generated.logprobs.extend(response.chunk.logprobs)
            elif response.HasField("final"):
                generated.final = response.final
        if generated.final is None:
            raise missing_final()
        generated.text = "".join(texts)
        return generated


def chat_completion(
    response_id: str, model: str, generated: Generated, logprobs: bool, token_ids: bool = False
) -> s.ChatCompletion:
    """The response of a non-streamed chat completion."""
    assert generated.final is not None
    choice = s.ChatChoice(
        index=0,
        message=s.AssistantMessage(content=generated.text),
        logprobs=chat_logprobs(generated.logprobs) if logprobs else None,
        finish_reason=finish_reason(generated.final),
        token_ids=generated.token_ids if token_ids else None,
    )
    return s.ChatCompletion(
        id=response_id,
        created=int(time.time()),
        model=model,
        choices=[choice],
        usage=usage(generated.final.usage),
    )


def completion(
    response_id: str, model: str, generated: Generated, logprobs: bool, offset: int
) -> s.Completion:
    """The response of a non-streamed text completion."""
    assert generated.final is not None
    rendered = CompletionLogprobsBuilder(offset).build(generated.logprobs) if logprobs else None
    choice = s.CompletionChoice(
        index=0,
        text=generated.text,
        logprobs=rendered,
        finish_reason=finish_reason(generated.final),
    )
    return s.Completion(
        id=response_id,
        created=int(time.time()),
        model=model,
        choices=[choice],
        usage=usage(generated.final.usage),
    )


def embedding_list(model: str, response: pb.EmbedResponse, encoding: str) -> s.EmbeddingList:
    """The response of an embeddings request; base64 is little-endian float32."""
    data = [
        s.EmbeddingData(index=index, embedding=_encode(embedding.values, encoding))
        for index, embedding in enumerate(response.embeddings)
    ]
    tokens = response.total_tokens
    return s.EmbeddingList(
        data=data, model=model, usage=s.EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens)
    )


def _encode(values: Sequence[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")
    return list(values)


class Renderer(Protocol):
    """Turns each message of a Generate stream into stream events."""

    finished: bool

    def render(self, response: pb.GenerateResponse | None) -> list[Event]:
        """The events for one message; None means the worker has accepted the call."""
        ...


class ChatChunks:
    """The events of a streamed chat completion."""

    def __init__(self, response_id: str, model: str, include_usage: bool, logprobs: bool) -> None:
        self.id, self.created, self.model = response_id, int(time.time()), model
        self.include_usage, self.logprobs = include_usage, logprobs
        self.finished = False

    def render(self, response: pb.GenerateResponse | None) -> list[Event]:
        """The role chunk on acceptance, a content chunk per chunk, then finish and usage."""
        if response is None:
            return [None, self._chunk(s.ChatDelta(role="assistant", content=""))]
        if response.HasField("chunk"):
            chunk = response.chunk
            if not chunk.text and not chunk.logprobs:
                return []
            logprobs = chat_logprobs(chunk.logprobs) if self.logprobs else None
            return [self._chunk(s.ChatDelta(content=chunk.text), logprobs)]
        self.finished = True
        final = response.final
        events: list[Event] = [self._chunk(s.ChatDelta(), finish=finish_reason(final))]
        if self.include_usage:
            events.append(self._envelope([], usage(final.usage)))
        return events

    def _chunk(
        self,
        delta: s.ChatDelta,
        logprobs: s.ChoiceLogprobs | None = None,
        finish: s.FinishReason | None = None,
    ) -> s.ChatCompletionChunk:
        choice = s.ChatChunkChoice(index=0, delta=delta, logprobs=logprobs, finish_reason=finish)
        return self._envelope([choice], None)

    def _envelope(
        self, choices: list[s.ChatChunkChoice], used: s.Usage | None
    ) -> s.ChatCompletionChunk:
        return s.ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=used
        )


class CompletionChunks:
    """The events of a streamed text completion."""

    def __init__(
        self, response_id: str, model: str, include_usage: bool, logprobs: bool, offset: int
    ) -> None:
        self.id, self.created, self.model = response_id, int(time.time()), model
        self.include_usage = include_usage
        self.logprobs = CompletionLogprobsBuilder(offset) if logprobs else None
        self.finished = False

    def render(self, response: pb.GenerateResponse | None) -> list[Event]:
        """A comment on acceptance, a text chunk per chunk, then finish and usage."""
        if response is None:
            return [None]
        if response.HasField("chunk"):
            chunk = response.chunk
            if not chunk.text and not chunk.logprobs:
                return []
            logprobs = self.logprobs.build(chunk.logprobs) if self.logprobs else None
            return [self._event(chunk.text, logprobs, None)]
        self.finished = True
        events: list[Event] = [self._event("", None, finish_reason(response.final))]
        if self.include_usage:
            events.append(self._completion([], usage(response.final.usage)))
        return events

    def _event(
        self, text: str, logprobs: s.CompletionLogprobs | None, finish: s.FinishReason | None
    ) -> s.Completion:
        choice = s.CompletionChoice(index=0, text=text, logprobs=logprobs, finish_reason=finish)
        return self._completion([choice], None)

    def _completion(self, choices: list[s.CompletionChoice], used: s.Usage | None) -> s.Completion:
        return s.Completion(
            id=self.id, created=self.created, model=self.model, choices=choices, usage=used
        )


async def stream_events(
    responses: AsyncGenerator[pb.GenerateResponse | None, None], renderer: Renderer
) -> Events:
    """The events of a Generate stream; closing them closes (and cancels) the stream."""
    async with contextlib.aclosing(responses):
        async for response in responses:
            for event in renderer.render(response):
                yield event
    if not renderer.finished:
        raise missing_final()
