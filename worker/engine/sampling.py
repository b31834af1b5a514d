"""Resolves a request's (already validated) sampling options into a native sampler setup."""

from __future__ import annotations

from typing import TypeVar

from llamagrid.worker.engine.requests import Grammar, JsonSchema, Sampling
from llamagrid.worker.native.llama_backend import (
    RANDOM_SEED,
    SamplerConfig,
    grammar_from_json_schema,
)

N = TypeVar("N", int, float)


def resolve(s: Sampling, context_per_slot: int) -> SamplerConfig:
    """Fill unset options with llama.cpp's usual defaults."""
    base = SamplerConfig()
    last_n = s.repeat_last_n if s.repeat_last_n is not None else base.repeat_last_n
    grammar = ""
    if isinstance(s.constraint, Grammar):
        grammar = s.constraint.text
    elif isinstance(s.constraint, JsonSchema):
        grammar = grammar_from_json_schema(s.constraint.text)
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
