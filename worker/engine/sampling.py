"""Resolves a request's (already validated) sampling options into a native sampler setup.

The request's grammar or JSON schema is not resolved here: it compiles off the engine thread
(engine/constraints.py) and joins the sampler when the job is admitted.
"""

from __future__ import annotations

from typing import TypeVar

from llamagrid.worker.engine.requests import Sampling
from llamagrid.worker.engine.validation import check_repeat_last_n
from llamagrid.worker.native.llama_backend import RANDOM_SEED
from llamagrid.worker.native.sampler import SamplerConfig

N = TypeVar("N", int, float)


def resolve(s: Sampling, context_per_slot: int) -> SamplerConfig:
    """Fill unset options with llama.cpp's usual defaults."""
    base = SamplerConfig()
    check_repeat_last_n(s.repeat_last_n, context_per_slot)
    last_n = s.repeat_last_n if s.repeat_last_n is not None else base.repeat_last_n
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
    )


def _pick(value: N | None, default: N) -> N:
    return default if value is None else value
