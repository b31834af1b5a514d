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
}


def missing_final() -> OpenAIError:
    """The error for a Generate stream that ended without its final message."""
    return OpenAIError(502, "The worker ended the stream without a final message.", "server_error")


def finish_reason(final: pb.GenerateFinal) -> s.FinishReason:
    """OpenAI's finish reason for a final message."""
    return FINISH_REASONS.get(final.finish_reason, "stop")


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
        logprobs=s.ChoiceLogprobs(**chat_logprobs(generated.logprobs)) if logprobs else None,
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
        logprobs=None if rendered is None else s.CompletionLogprobs(**rendered),
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
