"""The events of streamed completions, encoded once per worker message, with no model per token.

Every event is the JSON that schemas.ChatCompletionChunk or schemas.Completion would dump, byte
for byte: the same keys in the same order, the same omitted fields (``usage`` except on the usage
chunk, ``system_fingerprint``), and pydantic's own serializer for strings and floats
(``pydantic_core.to_json``, with infinities and NaN as null, like ``model_dump_json``). The unit
tests hold the two to each other. A worker message may carry several tokens (the tokens of one
engine step, or more when the stream fell behind): they make one chunk, whose logprobs list every
token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from pydantic_core import to_json

from llamagrid.gateway.openai.rendering import (
    CompletionLogprobsBuilder,
    chat_logprobs,
    finish_reason,
    missing_final,
    usage_fields,
)
from llamagrid.gateway.sse import ADMITTED, Admitted, Event, Events
from llamagrid.v1 import inference_pb2 as pb

#: What a Generate stream yields to a renderer: the admission, then the worker's messages.
Message = Admitted | pb.GenerateResponse


def encode(value: dict[str, Any]) -> bytes:
    """JSON as ``model_dump_json`` writes it."""
    return to_json(value, inf_nan_mode="null")


class Renderer(Protocol):
    """Turns each message of a Generate stream into stream events."""

    finished: bool

    def render(self, message: Message) -> list[Event]:
        """The events for one message (possibly none)."""
        ...


class _Events:
    """What the events of both kinds share: the fields each repeats, and the closing events."""

    def __init__(self, response_id: str, kind: str, model: str, include_usage: bool) -> None:
        self._head: dict[str, Any] = {
            "id": response_id,
            "object": kind,
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage
        self.finished = False

    def _event(self, choice: dict[str, Any]) -> bytes:
        return encode({**self._head, "choices": [choice]})

    def _closing(self, finish: bytes, final: pb.GenerateFinal) -> list[Event]:
        """The finish event, then the usage event (no choices) when the client asked for it."""
        self.finished = True
        if not self.include_usage:
            return [finish]
        return [finish, encode({**self._head, "choices": [], "usage": usage_fields(final.usage)})]


class ChatChunks(_Events):
    """The events of a streamed chat completion."""

    def __init__(self, response_id: str, model: str, include_usage: bool, logprobs: bool) -> None:
        super().__init__(response_id, "chat.completion.chunk", model, include_usage)
        self.logprobs = logprobs

    def render(self, message: Message) -> list[Event]:
        """The role chunk on admission, a content chunk per chunk, then finish and usage."""
        if isinstance(message, Admitted):
            return [ADMITTED, self._chunk({"role": "assistant", "content": ""})]
        if message.HasField("chunk"):
            chunk = message.chunk
            if not chunk.text and not chunk.logprobs:
                return []
            logprobs = chat_logprobs(chunk.logprobs) if self.logprobs else None
            return [self._chunk({"content": chunk.text}, logprobs)]
        return self._closing(self._chunk({}, finish=finish_reason(message.final)), message.final)

    def _chunk(
        self,
        delta: dict[str, str],
        logprobs: dict[str, Any] | None = None,
        finish: str | None = None,
    ) -> bytes:
        return self._event(
            {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        )


class CompletionChunks(_Events):
    """The events of a streamed text completion."""

    def __init__(
        self, response_id: str, model: str, include_usage: bool, logprobs: bool, offset: int
    ) -> None:
        super().__init__(response_id, "text_completion", model, include_usage)
        self.logprobs = CompletionLogprobsBuilder(offset) if logprobs else None

    def render(self, message: Message) -> list[Event]:
        """A comment on admission, a text chunk per chunk, then finish and usage."""
        if isinstance(message, Admitted):
            return [ADMITTED]
        if message.HasField("chunk"):
            chunk = message.chunk
            if not chunk.text and not chunk.logprobs:
                return []
            logprobs = self.logprobs.build(chunk.logprobs) if self.logprobs else None
            return [self._text(chunk.text, logprobs, None)]
        return self._closing(self._text("", None, finish_reason(message.final)), message.final)

    def _text(self, text: str, logprobs: dict[str, Any] | None, finish: str | None) -> bytes:
        return self._event(
            {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        )


async def stream_events(messages: AsyncGenerator[Message, None], renderer: Renderer) -> Events:
    """The events of a Generate stream, one batch per message; closing them closes (and
    cancels) the stream."""
    async with contextlib.aclosing(messages):
        async for message in messages:
            events = renderer.render(message)
            if events:
                yield events
    if not renderer.finished:
        raise missing_final()
