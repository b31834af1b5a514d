"""What a generation streams back: admission, chunks of text and tokens, and the final event."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class FinishReason(enum.Enum):
    """Why a generation ended."""

    EOS = "eos"
    STOP_STRING = "stop_string"
    LENGTH = "length"


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
class Admitted:
    """The request passed validation and holds a slot: it will produce a stream."""


@dataclass
class Chunk:
    """Text and tokens produced since the previous event."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)


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


@dataclass(frozen=True)
class Final:
    """The last event of a generation."""

    finish_reason: FinishReason
    usage: Usage
    matched_stop: str = ""
    #: Set on the final event of a session turn.
    session: SessionCommit | None = None


Event = Admitted | Chunk | Final
