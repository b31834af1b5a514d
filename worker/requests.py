"""The engine's own request and event types, free of gRPC and of llama.cpp."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Sampling options as the client gave them; None means "the worker's default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int | None = None
    grammar: str = ""
    json_schema: str = ""


@dataclass(frozen=True)
class GenerationRequest:
    """Exactly one of prompt, tokens or messages is set."""

    prompt: str | None = None
    tokens: tuple[int, ...] | None = None
    messages: tuple[Message, ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    request_id: str = ""


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


@dataclass(frozen=True)
class Final:
    """The last event of a generation."""

    finish_reason: FinishReason
    usage: Usage
    matched_stop: str = ""


Event = Admitted | Chunk | Final


@dataclass(frozen=True)
class EmbedResult:
    """Vectors in input order and their token counts."""

    vectors: list[list[float]]
    token_counts: list[int]


@dataclass(frozen=True)
class TokenPiece:
    """One token and its bytes."""

    token_id: int
    data: bytes


@dataclass(frozen=True)
class ModelDescription:
    """What GetModelInfo reports."""

    alias: str
    file: str
    hf_repo: str
    context_per_slot: int
    train_context_size: int
    parameter_count: int
    size_bytes: int
    chat_template: str
    can_generate: bool
    can_embed: bool
    slots: int
    embedding_size: int
    vocab_size: int
    pooling: str
    description: str
    backend: str
    visible_devices: tuple[str, ...]
    n_gpu_layers: int
    main_gpu: int
    split_mode: str
    tensor_split: tuple[float, ...]


@dataclass(frozen=True)
class Load:
    """What GetLoad reports: the worker's work in progress and KV cache occupancy."""

    active: int
    queued: int
    slots: int
    max_queue: int
    kv_cells_used: int
    kv_cells_total: int
    embed_queued: int
    decode_steps: int
