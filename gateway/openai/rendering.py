"""Rendering of llamagrid.v1 responses as OpenAI responses (streams: openai.streaming)."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.openai import schemas as s
from llamagrid.v1 import inference_pb2 as pb

FINISH_REASONS: dict[int, s.FinishReason] = {
    pb.FINISH_REASON_EOS: "stop",
    pb.FINISH_REASON_STOP_STRING: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def missing_final() -> OpenAIError:
    """The error for a Generate stream that ended without its final message."""
    return OpenAIError(502, "The worker ended the stream without a final message.", "server_error")


def chat_finish_reason(final: pb.GenerateFinal) -> s.FinishReason:
    """OpenAI's finish reason for a final message of a chat completion."""
    return FINISH_REASONS.get(final.finish_reason, "stop")


def finish_reason(final: pb.GenerateFinal) -> s.TextFinishReason:
    """OpenAI's finish reason for a final message without tools (text completions, LMDeploy's
    interactive chat), where no call can end it."""
    reason = chat_finish_reason(final)
    return "stop" if reason == "tool_calls" else reason


def usage(proto: pb.Usage) -> s.Usage:
    """Token counts, with the prompt tokens served from the KV cache."""
    return s.Usage(**usage_fields(proto))


def usage_fields(proto: pb.Usage) -> dict[str, Any]:
    """``usage`` as plain data: the fields of schemas.Usage, in its order."""
    return {
        "prompt_tokens": proto.prompt_tokens,
        "completion_tokens": proto.completion_tokens,
        "total_tokens": proto.prompt_tokens + proto.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": reused_tokens(proto)},
    }


def total_usage(finals: Sequence[pb.GenerateFinal]) -> pb.Usage:
    """The usage of a response of several choices (or prompts): the sum of their final messages'
    (a Generate call counts its prompt in one of them only)."""
    total = pb.Usage()
    for final in finals:
        u = final.usage
        total.prompt_tokens += u.prompt_tokens
        total.completion_tokens += u.completion_tokens
        total.cached_tokens += u.cached_tokens
        total.restored_tokens += u.restored_tokens
        total.prefilled_tokens += u.prefilled_tokens
    return total


def reused_tokens(proto: pb.Usage) -> int:
    """Prompt tokens not computed for this request: reused from the KV cache, or restored from
    the worker's host tier. OpenAI's ``cached_tokens``."""
    return proto.cached_tokens + proto.restored_tokens


def chat_logprobs(entries: Sequence[pb.TokenLogprob]) -> dict[str, Any]:
    """Log-probabilities in the chat format (``choices[].logprobs``), as plain data: the fields of
    schemas.ChoiceLogprobs, in its order."""
    content = [{**_top(entry.chosen), "top_logprobs": _tops(entry.top)} for entry in entries]
    return {"content": content, "refusal": None}


def _top(entry: pb.LogprobEntry) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.raw)}


def _tops(entries: Sequence[pb.LogprobEntry]) -> list[dict[str, Any]]:
    return [_top(entry) for entry in entries]


@dataclass
class CompletionLogprobsBuilder:
    """Log-probabilities in the legacy completions format, with running text offsets."""

    offset: int = 0

    def build(self, entries: Sequence[pb.TokenLogprob]) -> dict[str, Any]:
        """The logprobs of ``entries`` as plain data (the fields of schemas.CompletionLogprobs,
        in its order); offsets continue from the previous call."""
        offsets = []
        for entry in entries:
            offsets.append(self.offset)
            self.offset += len(entry.chosen.token)
        return {
            "tokens": [entry.chosen.token for entry in entries],
            "token_logprobs": [entry.chosen.logprob for entry in entries],
            "top_logprobs": [{top.token: top.logprob for top in entry.top} for entry in entries],
            "text_offset": offsets,
        }

    def build_prompt(self, entries: Sequence[pb.TokenLogprob]) -> dict[str, Any]:
        """The logprobs of a prompt's tokens (echo), like ``build``, except that the first token
        has none (null): nothing precedes it."""
        rendered = self.build(entries)
        if entries:
            rendered["token_logprobs"][0] = None
            rendered["top_logprobs"][0] = None
        return rendered


def join_logprobs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Completion logprobs (``build``'s output) one after the other, as one."""
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {key: [value for part in parts for value in part[key]] for key in keys}


@dataclass
class Generated:
    """A whole Generate stream, gathered."""

    text: str = ""
    #: The thinking split out of the text (GenerateChunk.reasoning).
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[pb.TokenLogprob] = field(default_factory=list)
    final: pb.GenerateFinal | None = None
    #: The prompt's text (echo) and its tokens' log-probabilities: the worker sends them once
    #: per Generate call, and they belong to every choice of the call.
    prompt_text: str = ""
    prompt_logprobs: list[pb.TokenLogprob] = field(default_factory=list)

    @classmethod
    def gather(cls, responses: Sequence[pb.GenerateResponse]) -> Generated:
        """Join the chunks of a one-choice stream; raises when the final message is missing."""
        return cls.gather_choices(responses, 1)[0]

    @classmethod
    def gather_choices(cls, responses: Sequence[pb.GenerateResponse], n: int) -> list[Generated]:
        """Join the chunks of each of a stream's n choices (by index); raises when a final
        message is missing."""
        choices = [cls() for _ in range(n)]
        texts: list[list[str]] = [[] for _ in range(n)]
        reasoning: list[list[str]] = [[] for _ in range(n)]
        for response in responses:
            if response.HasField("chunk"):
                chunk = response.chunk
                index = _choice_index(chunk.index, n)
                texts[index].append(chunk.text)
                reasoning[index].append(chunk.reasoning)
                choices[index].token_ids.extend(chunk.token_ids)
                choices[index].logprobs.extend(chunk.logprobs)
                if chunk.prompt_text or chunk.prompt_logprobs:
                    for choice in choices:
                        choice.prompt_text = chunk.prompt_text
                        choice.prompt_logprobs = list(chunk.prompt_logprobs)
            elif response.HasField("final"):
                choices[_choice_index(response.final.index, n)].final = response.final
        for index, generated in enumerate(choices):
            if generated.final is None:
                raise missing_final()
            generated.text = "".join(texts[index])
            generated.reasoning = "".join(reasoning[index])
        return choices


def _choice_index(index: int, n: int) -> int:
    if index >= n:
        raise OpenAIError(
            502, f"The worker sent choice {index} of a request for {n}.", "server_error"
        )
    return index


def _choices(generated: Generated | Sequence[Generated]) -> list[Generated]:
    choices = [generated] if isinstance(generated, Generated) else list(generated)
    assert all(choice.final is not None for choice in choices)
    return choices


def chat_completion(
    response_id: str,
    model: str,
    generated: Generated | Sequence[Generated],
    logprobs: bool,
    token_ids: bool = False,
) -> s.ChatCompletion:
    """The response of a non-streamed chat completion: one choice per Generated (n)."""
    choices = _choices(generated)
    rendered = [
        s.ChatChoice(
            index=index,
            message=assistant_message(choice),
            logprobs=s.ChoiceLogprobs(**chat_logprobs(choice.logprobs)) if logprobs else None,
            finish_reason=chat_finish_reason(choice.final),
            token_ids=choice.token_ids if token_ids else None,
        )
        for index, choice in enumerate(choices)
        if choice.final is not None
    ]
    return s.ChatCompletion(
        id=response_id,
        created=int(time.time()),
        model=model,
        choices=rendered,
        usage=usage(total_usage([c.final for c in choices if c.final is not None])),
    )


def assistant_message(generated: Generated) -> s.AssistantMessage:
    """The generated message: its text, the final message's tool calls, and the thinking. The
    content is null when the turn only called tools, as OpenAI's is."""
    assert generated.final is not None
    calls = [
        s.ToolCall(id=call.id, function=s.FunctionCall(name=call.name, arguments=call.arguments))
        for call in generated.final.tool_calls
    ]
    return s.AssistantMessage(
        content=None if calls and not generated.text else generated.text,
        tool_calls=calls or None,
        reasoning_content=generated.reasoning or None,
    )


def completion(
    response_id: str,
    model: str,
    generated: Generated | Sequence[Generated],
    logprobs: bool,
    offset: int | Sequence[int],
) -> s.Completion:
    """The response of a non-streamed text completion: one choice per Generated (prompt i's
    choice j at i * n + j). ``offset`` is where each choice's generated text starts in the
    text that text_offset counts (the prompt's length), one for all or one per choice. An
    echoed prompt comes first in a choice's text, and in its logprobs when asked for."""
    choices = _choices(generated)
    offsets = [offset] * len(choices) if isinstance(offset, int) else list(offset)
    rendered = []
    for index, choice in enumerate(choices):
        assert choice.final is not None
        scored = completion_logprobs(choice, offsets[index]) if logprobs else None
        rendered.append(
            s.CompletionChoice(
                index=index,
                text=choice.prompt_text + choice.text,
                logprobs=None if scored is None else s.CompletionLogprobs(**scored),
                finish_reason=finish_reason(choice.final),
            )
        )
    return s.Completion(
        id=response_id,
        created=int(time.time()),
        model=model,
        choices=rendered,
        usage=usage(total_usage([c.final for c in choices if c.final is not None])),
    )


def completion_logprobs(generated: Generated, offset: int) -> dict[str, Any]:
    """A choice's logprobs in the legacy format: the echoed prompt's tokens first (when the
    worker sent them; text offsets then count from the prompt's start), then the generated."""
    builder = CompletionLogprobsBuilder(0 if generated.prompt_text else offset)
    parts = [builder.build_prompt(generated.prompt_logprobs)] if generated.prompt_logprobs else []
    if generated.prompt_text:
        builder.offset = len(generated.prompt_text)
    parts.append(builder.build(generated.logprobs))
    return join_logprobs(parts)


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
