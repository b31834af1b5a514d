"""What the engine reports besides generations: embeddings, tokens, the model and its load."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llamagrid.worker.engine.dimensions import EmbeddingDimensions
from llamagrid.worker.engine.media import PlacedImage


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
    #: The widths an Embed request may truncate vectors to (--embedding-dimensions).
    embedding_dimensions: EmbeddingDimensions = field(default_factory=EmbeddingDimensions)
    #: Whether the vocabulary has fill-in-the-middle tokens (infill requests can be served).
    fill_in_middle: bool = False
    #: The text standing for an image in a raw prompt when the model reads images (a vision
    #: projector is loaded); None when it does not.
    media_marker: str | None = None


class KvTier(enum.Enum):
    """Where a session's KV cache is."""

    #: In a sequence of the KV cache: the next turn prefills only its new tokens.
    RESIDENT = "resident"
    #: Saved to host memory: the next turn restores it.
    HOST = "host"
    #: Only the transcript is kept: the next turn prefills the whole session.
    TRANSCRIPT = "transcript"


@dataclass(frozen=True)
class TierCounts:
    """Sessions by the tier their KV cache is in."""

    resident: int = 0
    host: int = 0
    transcript: int = 0


@dataclass(frozen=True)
class SessionReport:
    """What the engine says of a session."""

    session_id: str
    length: int
    turn_ends: tuple[int, ...]
    expires_unix_ms: int
    ttl_s: int
    kv_tier: KvTier
    busy: bool
    #: Images in the transcript.
    images: int = 0
    #: The transcript, when asked for: its token ids and its images.
    tokens: tuple[int, ...] | None = None
    placed: tuple[PlacedImage, ...] = ()


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
    sessions: int = 0
    max_sessions: int = 0
    host_cache_bytes: int = 0
    host_cache_saves: int = 0
    host_cache_restores: int = 0
    session_tokens_reprefilled: int = 0
    #: Sessions by the tier their KV cache is in.
    session_tiers: TierCounts = field(default_factory=TierCounts)
