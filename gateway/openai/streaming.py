"""The events of streamed completions, encoded once per worker message, with no model per token.

Every event is the JSON that schemas.ChatCompletionChunk or schemas.Completion would dump, byte
for byte: the same keys in the same order, the same omitted fields (``usage`` except on the usage
chunk, ``system_fingerprint``), and pydantic's own serializer for strings and floats
(``pydantic_core.to_json``, with infinities and NaN as null, like ``model_dump_json``). The unit
tests hold the two to each other. A worker message may carry several tokens (the tokens of one
engine step, or more when the stream fell behind): they make one chunk, whose logprobs list every
token; or, when the message also carries thinking or tool calls, one chunk for each kind, in
OpenAI's shapes (the first chunk has the logprobs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol

from pydantic_core import to_json

from llamagrid.gateway.openai.rendering import (
    CompletionLogprobsBuilder,
    chat_finish_reason,
    chat_logprobs,
    finish_reason,
    missing_final,
    total_usage,
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
    """What the events of both kinds share: the fields each repeats, and the closing events.

    A response of several choices (n, or a completion's list of prompts) gets each choice's
    events under its index, as the worker messages arrive, a finish event per choice, and one
    usage event (the sum of every final message's) after the last.
    """

    def __init__(
        self, response_id: str, kind: str, model: str, include_usage: bool, choices: int = 1
    ) -> None:
        self._head: dict[str, Any] = {
            "id": response_id,
            "object": kind,
            "created": int(time.time()),
            "model": model,
        }
        self.include_usage = include_usage
        self.finished = False
        self.choices = choices
        self._finals: list[pb.GenerateFinal] = []

    def _event(self, choice: dict[str, Any]) -> bytes:
        return encode({**self._head, "choices": [choice]})

    def _closing(self, finish: bytes, final: pb.GenerateFinal) -> list[Event]:
        """A choice's finish event; after the last choice's, the usage event (no choices) when
        the client asked for it."""
        self._finals.append(final)
        self.finished = len(self._finals) >= self.choices
        if not self.include_usage or not self.finished:
            return [finish]
        total = usage_fields(total_usage(self._finals))
        return [finish, encode({**self._head, "choices": [], "usage": total})]


class ChatChunks(_Events):
    """The events of a streamed chat completion."""

    def __init__(
        self, response_id: str, model: str, include_usage: bool, logprobs: bool, choices: int = 1
    ) -> None:
        super().__init__(response_id, "chat.completion.chunk", model, include_usage, choices)
        self.logprobs = logprobs
        #: The choice of the message being rendered.
        self._index = 0

    def render(self, message: Message) -> list[Event]:
        """The role chunk on admission; for each worker chunk a reasoning, a content and tool-call
        chunks, those it has (the first one carries its logprobs); then finish and usage."""
        if isinstance(message, Admitted):
            roles: list[Event] = [ADMITTED]
            for index in range(self.choices):
                self._index = index
                roles.append(self._chunk({"role": "assistant", "content": ""}))
            return roles
        self._index = choice_index(message)
        if message.HasField("chunk"):
            chunk = message.chunk
            deltas: list[dict[str, Any]] = []
            if chunk.reasoning:
                deltas.append({"reasoning_content": chunk.reasoning})
            if chunk.text or (chunk.logprobs and not chunk.reasoning and not chunk.tool_calls):
                deltas.append({"content": chunk.text})
            deltas.extend(tool_call_deltas(chunk.tool_calls))
            if not deltas:
                return []
            logprobs = chat_logprobs(chunk.logprobs) if self.logprobs else None
            first = self._chunk(deltas[0], logprobs)
            return [first, *(self._chunk(delta) for delta in deltas[1:])]
        finish = chat_finish_reason(message.final)
        return self._closing(self._chunk({}, finish=finish), message.final)

    def _chunk(
        self,
        delta: dict[str, Any],
        logprobs: dict[str, Any] | None = None,
        finish: str | None = None,
    ) -> bytes:
        return self._event(
            {"index": self._index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        )


def choice_index(message: pb.GenerateResponse) -> int:
    """The choice a worker message belongs to."""
    return message.chunk.index if message.HasField("chunk") else message.final.index


def tool_call_deltas(deltas: Sequence[pb.ToolCallDelta]) -> list[dict[str, Any]]:
    """The ``delta`` objects for the worker's tool-call deltas, in OpenAI's shape: a call's first
    delta alone (index, id, type, name, arguments ""), then its arguments in fragments (index
    and arguments; consecutive fragments of one call make one)."""
    out: list[dict[str, Any]] = []
    fragment: dict[str, Any] | None = None
    for delta in deltas:
        if delta.id or delta.name:
            function = {"name": delta.name, "arguments": ""}
            head = {"index": delta.index, "id": delta.id, "type": "function", "function": function}
            out.append({"tool_calls": [head]})
            fragment = None
        if not delta.arguments:
            continue
        if fragment is not None and fragment["index"] == delta.index:
            fragment["function"]["arguments"] += delta.arguments
        else:
            fragment = {"index": delta.index, "function": {"arguments": delta.arguments}}
            out.append({"tool_calls": [fragment]})
    return out


class CompletionChunks(_Events):
    """The events of a streamed text completion: prompt i's choice j under index i * n + j. An
    echoed prompt (with its logprobs, when asked for) is each of its choices' first event."""

    def __init__(
        self,
        response_id: str,
        model: str,
        include_usage: bool,
        logprobs: bool,
        offset: int | Sequence[int],
        n: int = 1,
    ) -> None:
        """``offset``: where the generated text starts for text_offset (the prompt's length),
        one for all prompts or one per prompt; ``n``: the choices of each prompt."""
        offsets = [offset] if isinstance(offset, int) else list(offset)
        super().__init__(response_id, "text_completion", model, include_usage, len(offsets) * n)
        self.n = n
        self.logprobs = (
            [CompletionLogprobsBuilder(offsets[i // n]) for i in range(self.choices)]
            if logprobs
            else None
        )

    def render(self, message: Message) -> list[Event]:
        """A comment on admission, a text chunk per chunk, then finish and usage."""
        if isinstance(message, Admitted):
            return [ADMITTED]
        index = choice_index(message)
        if message.HasField("chunk"):
            chunk = message.chunk
            events = self._echo(index, chunk) if chunk.prompt_text or chunk.prompt_logprobs else []
            if chunk.text or chunk.logprobs:
                logprobs = self.logprobs[index].build(chunk.logprobs) if self.logprobs else None
                events.append(self._text(index, chunk.text, logprobs, None))
            return events
        finish = self._text(index, "", None, finish_reason(message.final))
        return self._closing(finish, message.final)

    def _echo(self, first: int, chunk: pb.GenerateChunk) -> list[Event]:
        """The prompt's text (and tokens' logprobs), for each choice of the prompt."""
        events: list[Event] = []
        for index in range(first, first + self.n):
            logprobs = None
            if self.logprobs is not None:
                builder = self.logprobs[index]
                builder.offset = 0
                logprobs = builder.build_prompt(chunk.prompt_logprobs)
                builder.offset = len(chunk.prompt_text)
            events.append(self._text(index, chunk.prompt_text, logprobs, None))
        return events

    def _text(
        self, index: int, text: str, logprobs: dict[str, Any] | None, finish: str | None
    ) -> bytes:
        return self._event(
            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
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
