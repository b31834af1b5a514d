"""Resolves a request's (already validated) sampling options into a native sampler setup.

The request's grammar or JSON schema is not resolved here: it compiles off the engine thread
(engine/constraints.py) and joins the sampler when the job is admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from llamagrid.worker.engine.requests import Sampling
from llamagrid.worker.engine.validation import check_look_back, check_repeat_last_n
from llamagrid.worker.native.llama_backend import RANDOM_SEED, Model
from llamagrid.worker.native.sampler import (
    DEFAULT_DRY_BREAKERS,
    SamplerConfig,
    SamplerHistory,
    needs_history,
    sampler_name,
)

N = TypeVar("N", int, float)

#: Options copied as given, or llama.cpp's default when unset.
_PLAIN = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "xtc_probability",
    "xtc_threshold",
    "top_n_sigma",
    "dynatemp_range",
    "dynatemp_exponent",
    "min_keep",
    "adaptive_target",
    "adaptive_decay",
)


def resolve(s: Sampling, context_per_slot: int) -> SamplerConfig:
    """Fill unset options with llama.cpp's usual defaults; -1 look-backs become the context."""
    base = SamplerConfig()
    check_repeat_last_n(s.repeat_last_n, context_per_slot)
    check_look_back(s.dry_penalty_last_n, context_per_slot, "dry_penalty_last_n")
    last_n = _pick(s.repeat_last_n, base.repeat_last_n)
    dry_last_n = _pick(s.dry_penalty_last_n, -1)
    plain = {name: _pick(getattr(s, name), getattr(base, name)) for name in _PLAIN}
    return SamplerConfig(
        **plain,
        repeat_last_n=context_per_slot if last_n == -1 else last_n,
        dry_penalty_last_n=context_per_slot if dry_last_n == -1 else dry_last_n,
        dry_sequence_breakers=s.dry_sequence_breakers or DEFAULT_DRY_BREAKERS,
        samplers=tuple(_names(s.samplers)) if s.samplers else base.samplers,
        seed=RANDOM_SEED if s.seed is None else s.seed,
        logit_bias=dict(s.logit_bias),
    )


def prepare_history(
    model: Model, s: Sampling, context_per_slot: int, prompt: Sequence[int]
) -> SamplerHistory | None:
    """The request's penalties and DRY samplers, given the prompt: made off the engine thread
    (DRY reads the whole vocabulary per sequence breaker); None when its chain has neither."""
    cfg = resolve(s, context_per_slot)
    return SamplerHistory(model, cfg, prompt) if needs_history(cfg) else None


def wants_history(s: Sampling, context_per_slot: int) -> bool:
    """Whether prepare_history would make anything (cheap: no model needed)."""
    return needs_history(resolve(s, context_per_slot))


def _names(samplers: Sequence[str]) -> list[str]:
    names = [sampler_name(name) for name in samplers]
    return [name for name in names if name is not None]  # validation refused the others


def _pick(value: N | None, default: N) -> N:
    return default if value is None else value
