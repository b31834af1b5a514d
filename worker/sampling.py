"""Resolves a request's sampling options into a complete native sampler setup."""

from __future__ import annotations

from typing import TypeVar

from worker.errors import invalid
from worker.llama_backend import RANDOM_SEED, SamplerConfig, grammar_from_json_schema
from worker.requests import Sampling

N = TypeVar("N", int, float)

#: The most alternatives a client may ask for per token, as in the OpenAI API.
MAX_TOP_LOGPROBS = 20


def validate(s: Sampling, n_vocab: int) -> None:
    """Reject values no sampler can honour, naming the field."""
    checks: list[tuple[bool, str, str]] = [
        (
            s.temperature is not None and not 0.0 <= s.temperature <= 100.0,
            "temperature",
            "must be between 0 and 100",
        ),
        (s.top_p is not None and not 0.0 < s.top_p <= 1.0, "top_p", "must be in (0, 1]"),
        (s.top_k is not None and s.top_k < 0, "top_k", "must not be negative"),
        (s.min_p is not None and not 0.0 <= s.min_p <= 1.0, "min_p", "must be in [0, 1]"),
        (
            s.typical_p is not None and not 0.0 < s.typical_p <= 1.0,
            "typical_p",
            "must be in (0, 1]",
        ),
        (
            s.repeat_penalty is not None and s.repeat_penalty <= 0.0,
            "repeat_penalty",
            "must be positive",
        ),
        (
            s.repeat_last_n is not None and s.repeat_last_n < -1,
            "repeat_last_n",
            "must be -1 or more",
        ),
        (
            s.presence_penalty is not None and not -2.0 <= s.presence_penalty <= 2.0,
            "presence_penalty",
            "must be between -2 and 2",
        ),
        (
            s.frequency_penalty is not None and not -2.0 <= s.frequency_penalty <= 2.0,
            "frequency_penalty",
            "must be between -2 and 2",
        ),
        (
            s.top_logprobs is not None and not 0 <= s.top_logprobs <= MAX_TOP_LOGPROBS,
            "top_logprobs",
            f"must be between 0 and {MAX_TOP_LOGPROBS}",
        ),
        (s.max_tokens is not None and s.max_tokens < 1, "max_tokens", "must be at least 1"),
        (bool(s.grammar) and bool(s.json_schema), "grammar", "cannot be combined with json_schema"),
    ]
    for failed, param, rule in checks:
        if failed:
            raise invalid(f"{param} {rule}", param)
    for token, bias in s.logit_bias.items():
        if not 0 <= token < n_vocab:
            raise invalid(f"logit_bias names token {token}, outside the vocabulary", "logit_bias")
        if not -100.0 <= bias <= 100.0:
            raise invalid("logit_bias values must be between -100 and 100", "logit_bias")
    if any(not stop for stop in s.stop):
        raise invalid("stop strings must not be empty", "stop")


def resolve(s: Sampling, context_per_slot: int) -> SamplerConfig:
    """Fill unset options with llama.cpp's usual defaults."""
    base = SamplerConfig()
    last_n = s.repeat_last_n if s.repeat_last_n is not None else base.repeat_last_n
    grammar = s.grammar or (grammar_from_json_schema(s.json_schema) if s.json_schema else "")
    return SamplerConfig(
        temperature=_pick(s.temperature, base.temperature),
        top_k=_pick(s.top_k, base.top_k),
        top_p=_pick(s.top_p, base.top_p),
        min_p=_pick(s.min_p, base.min_p),
        typical_p=_pick(s.typical_p, base.typical_p),
        repeat_penalty=_pick(s.repeat_penalty, base.repeat_penalty),
        repeat_last_n=context_per_slot if last_n == -1 else last_n,
        presence_penalty=_pick(s.presence_penalty, base.presence_penalty),
        frequency_penalty=_pick(s.frequency_penalty, base.frequency_penalty),
        seed=RANDOM_SEED if s.seed is None else s.seed,
        logit_bias=dict(s.logit_bias),
        grammar=grammar,
    )


def _pick(value: N | None, default: N) -> N:
    return default if value is None else value
