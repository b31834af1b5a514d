"""What a generation streams back: admission, chunks of text and tokens, and the final event."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llamagrid.worker.engine.requests import ToolCall


class FinishReason(enum.Enum):
    """Why a generation ended."""

    EOS = "eos"
    STOP_STRING = "stop_string"
    LENGTH = "length"
    #: The model called tools (Final.tool_calls lists the calls). Set by the output parser
    #: (engine/tool_stream.py) in place of EOS or STOP_STRING, never by the engine thread.
    TOOL_CALLS = "tool_calls"


#: The reasons the engine thread ends a generation with.
ENGINE_REASONS = frozenset({FinishReason.EOS, FinishReason.STOP_STRING, FinishReason.LENGTH})


@dataclass(frozen=True)
class LogprobEntry:
    """A token and its log-probability."""

    token_id: int
    token_bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token and the most likely alternatives."""

    chosen: LogprobEntry
    top: tuple[LogprobEntry, ...]


@dataclass(frozen=True)
class ToolCallDelta:
    """A part of tool call number ``index`` (from 0) in a stream: the first part carries the
    call's id and name, later ones further fragments of its arguments' JSON text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True)
class Admitted:
    """The request passed validation and holds a slot: it will produce a stream."""


@dataclass
class Chunk:
    """Text and tokens produced since the previous event."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    #: New thinking, taken out of text (reasoning split).
    reasoning: str = ""
    #: Parts of tool calls, taken out of text.
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    #: The choice the chunk belongs to (GenerationSpec.n).
    index: int = 0
    #: The prompt's text (echo), in the first chunk of choice 0 only.
    prompt_text: str = ""
    #: One entry per prompt token (prompt_logprobs), in the first chunk of choice 0 only; the
    #: first token's entry has logprob 0 and no alternatives (nothing precedes it).
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class Usage:
    """Token counts and phase timings of one generation."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    #: Prompt tokens whose KV was restored from host memory.
    restored_tokens: int = 0


@dataclass(frozen=True)
class SessionCommit:
    """What a session turn added to its session."""

    turns: int
    length: int
    appended: tuple[int, ...]
    #: Where each image of the turn begins in the transcript, in the request's image order.
    image_starts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Final:
    """The last event of a generation."""

    finish_reason: FinishReason
    usage: Usage
    matched_stop: str = ""
    #: Set on the final event of a session turn.
    session: SessionCommit | None = None
    #: Every complete tool call the model made.
    tool_calls: tuple[ToolCall, ...] = ()
    #: The choice this event closes. Only choice 0's usage counts the prompt.
    index: int = 0


Event = Admitted | Chunk | Final
