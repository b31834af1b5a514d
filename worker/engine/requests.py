"""What a client asks the engine to generate: messages or a prompt, and sampling options."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class Grammar:
    """Output constrained by a GBNF grammar."""

    text: str


@dataclass(frozen=True)
class JsonSchema:
    """Output constrained to JSON valid against a schema (JSON text)."""

    text: str


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
    #: What the output must match, if anything: one grammar or one JSON schema, never both.
    constraint: Grammar | JsonSchema | None = None


@dataclass(frozen=True)
class SessionRef:
    """The session a generation is the next turn of."""

    session_id: str
    #: Run only if the session has exactly this many committed turns.
    expected_turns: int | None = None


@dataclass(frozen=True)
class GenerationSpec:
    """One generation to run: exactly one of prompt, tokens or messages is set. With a
    session, the input is only the new turn, put after the session's transcript."""

    prompt: str | None = None
    tokens: tuple[int, ...] | None = None
    messages: tuple[Message, ...] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    request_id: str = ""
    session: SessionRef | None = None
