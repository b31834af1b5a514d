"""llama.cpp sampler chains, one per sequence, with an optional grammar beside the chain.

The chain is built the way llama.cpp's common sampler builds it (common/sampling.cpp): logit
bias first; then, without Mirostat, the samplers of ``samplers`` in that order (llama-server's
names) and a final draw from what is left (``dist``, or adaptive-p when asked for); with
Mirostat, temperature and Mirostat only. A sampler whose settings make it do nothing (top-k 0,
top-p 1, XTC probability 0, DRY multiplier 0, ...) is left out, so the chain shows what runs.
At temperature 0 the token is the most likely one: when the samplers before the temperature
only change logits (penalties, DRY) and then drop unlikely tokens (top-k, top-p, min-p,
top-n-sigma, which never drop the most likely one), the drops are left out and ``greedy`` picks
the same token without sorting the vocabulary.

Penalties and DRY remember tokens: like llama-server, they are given the prompt before the
first token. They can be made ahead of time, on any thread (``SamplerHistory``): DRY reads the
whole vocabulary for each sequence breaker, milliseconds to tens of them each, which the
engine thread must not spend.

Without a grammar, a token is one ``llama_sampler_sample`` call on the chain: a grammar costs
the other requests nothing. With one, the grammar is not in the chain; sampling follows
llama.cpp's common sampler: the chain picks a token from the raw logits, the grammar is asked
about that one token, and only if it refuses is the grammar applied to the whole vocabulary
and the chain run again. Greedy output is the same as with the grammar first in the chain; the
grammar's full pass, the costly part, is mostly skipped. When the grammar refuses every token,
``sample`` says so (NO_TOKEN) instead of letting llama.cpp accept a token its grammar rejects,
which throws inside C++ and aborts the process.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as lc

from llamagrid.worker.native.grammar import CompiledGrammar, TokenBuffer
from llamagrid.worker.native.llama_backend import RANDOM_SEED, Context, Model

log = logging.getLogger(__name__)

#: What Sampler.sample returns when the grammar allows no token at all.
NO_TOKEN = -1

#: llama-server's sampler names, each with its one-letter code (``samplers`` as a string).
SAMPLER_LETTERS: dict[str, str] = {
    "penalties": "e",
    "dry": "d",
    "top_n_sigma": "s",
    "top_k": "k",
    "typ_p": "y",
    "top_p": "p",
    "min_p": "m",
    "xtc": "x",
    "temperature": "t",
    "infill": "i",
    "adaptive_p": "a",
}
#: The other ways a client may name a sampler: its letter, and older llama-server's "typical_p".
_ALIASES = {**{letter: name for name, letter in SAMPLER_LETTERS.items()}, "typical_p": "typ_p"}
#: llama-server's default order (infill and adaptive_p run only when asked for).
DEFAULT_SAMPLERS = (
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typ_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
)
#: DRY's default sequence breakers, as in llama-server.
DEFAULT_DRY_BREAKERS = ("\n", ":", '"', "*")
#: Samplers that remember the tokens they are given, and so are given the prompt.
_HISTORY = frozenset({"penalties", "dry"})
#: Samplers that change logits and keep every token.
_MODIFIERS = frozenset({"penalties", "dry"})
#: Samplers that drop tokens, never the most likely one.
_KEEP_BEST = frozenset({"top_k", "top_p", "min_p", "top_n_sigma"})
#: Mirostat 1.0's sample size (llama.cpp's common sampler uses 100, as the paper does).
_MIROSTAT_M = 100


def sampler_name(name: str) -> str | None:
    """llama-server's name of a sampler given by name or letter; None if none is called so."""
    return name if name in SAMPLER_LETTERS else _ALIASES.get(name)


@dataclass(frozen=True)
class SamplerConfig:
    """A fully resolved sampling setup (no unset fields), with llama.cpp's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = RANDOM_SEED
    logit_bias: dict[int, float] = field(default_factory=dict)
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    #: Tokens DRY scans; resolve() turns the client's -1 (the whole context) into a count.
    dry_penalty_last_n: int = 0
    dry_sequence_breakers: tuple[str, ...] = DEFAULT_DRY_BREAKERS
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    min_keep: int = 0
    #: llama-server's names, in order, each at most once.
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    adaptive_target: float = -1.0
    adaptive_decay: float = 0.9


def _active(kind: str, cfg: SamplerConfig) -> bool:
    """Whether a sampler of the order would change anything (llama.cpp skips it otherwise)."""
    if kind == "penalties":
        changes = cfg.repeat_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty
        return cfg.repeat_last_n != 0 and bool(changes)
    if kind == "dry":
        return cfg.dry_multiplier != 0.0 and cfg.dry_base >= 1.0 and cfg.dry_penalty_last_n > 0
    return {
        "top_n_sigma": cfg.top_n_sigma > 0.0,
        "top_k": cfg.top_k > 0,
        "typ_p": cfg.typical_p < 1.0,
        "top_p": cfg.top_p < 1.0,
        "min_p": cfg.min_p > 0.0,
        "xtc": cfg.xtc_probability > 0.0 and cfg.xtc_threshold <= 0.5,
    }.get(kind, True)


def _greedy_prefix(before: Sequence[str]) -> list[str] | None:
    """The samplers to keep before ``greedy`` at temperature 0, given those the order puts
    before the temperature; None when greedy could pick another token than the full chain."""
    kept: list[str] = []
    dropped = False
    for kind in before:
        if kind in _KEEP_BEST:
            dropped = True
        elif kind in _MODIFIERS and not dropped:
            kept.append(kind)
        else:  # typical-p, XTC and infill may drop the most likely token; a modifier after a
            return None  # drop may lift a token that was dropped
    return kept


def chain_plan(cfg: SamplerConfig) -> tuple[str, ...]:
    """The samplers of the chain in order: llama-server's names, plus "logit_bias", "temp"
    (Mirostat's plain temperature), "mirostat", "mirostat_v2", "greedy" and "dist"."""
    head = ("logit_bias",) if cfg.logit_bias else ()
    if cfg.mirostat:
        return (*head, "temp", "mirostat" if cfg.mirostat == 1 else "mirostat_v2")
    order = [k for k in cfg.samplers if k != "adaptive_p" and _active(k, cfg)]
    if cfg.temperature <= 0.0 and cfg.dynatemp_range <= 0.0 and "temperature" in order:
        kept = _greedy_prefix(order[: order.index("temperature")])
        if kept is not None:
            return (*head, *kept, "greedy")
    return (*head, *order, "adaptive_p" if "adaptive_p" in cfg.samplers else "dist")


def _breakers(cfg: SamplerConfig) -> tuple[Any, int]:
    encoded = [b.encode("utf-8") for b in cfg.dry_sequence_breakers]
    return (ctypes.c_char_p * len(encoded))(*encoded), len(encoded)


def _make(kind: str, model: Model, cfg: SamplerConfig) -> Any:
    """A new llama.cpp sampler of one kind of chain_plan."""
    seed = cfg.seed & 0xFFFFFFFF
    if kind == "logit_bias":
        arr = (lc.llama_logit_bias * len(cfg.logit_bias))(
            *[lc.llama_logit_bias(token=t, bias=b) for t, b in cfg.logit_bias.items()]
        )
        return lc.llama_sampler_init_logit_bias(model.n_vocab, len(arr), arr)
    if kind == "penalties":
        return lc.llama_sampler_init_penalties(
            model.n_vocab,
            cfg.repeat_last_n,
            cfg.repeat_penalty,
            cfg.frequency_penalty,
            cfg.presence_penalty,
        )
    if kind == "dry":
        breakers, count = _breakers(cfg)
        return lc.llama_sampler_init_dry(
            model.vocab,
            cfg.dry_multiplier,
            cfg.dry_base,
            cfg.dry_allowed_length,
            cfg.dry_penalty_last_n,
            breakers,
            count,
        )
    if kind == "temperature" and cfg.dynatemp_range > 0.0:
        return lc.llama_sampler_init_temp_ext(
            cfg.temperature, cfg.dynatemp_range, cfg.dynatemp_exponent
        )
    makers = {
        "top_n_sigma": lambda: lc.llama_sampler_init_top_n_sigma(cfg.top_n_sigma),
        "top_k": lambda: lc.llama_sampler_init_top_k(cfg.top_k),
        "typ_p": lambda: lc.llama_sampler_init_typical(cfg.typical_p, cfg.min_keep),
        "top_p": lambda: lc.llama_sampler_init_top_p(cfg.top_p, cfg.min_keep),
        "min_p": lambda: lc.llama_sampler_init_min_p(cfg.min_p, cfg.min_keep),
        "xtc": lambda: lc.llama_sampler_init_xtc(
            cfg.xtc_probability, cfg.xtc_threshold, cfg.min_keep, seed
        ),
        "temperature": lambda: lc.llama_sampler_init_temp(cfg.temperature),
        "temp": lambda: lc.llama_sampler_init_temp(cfg.temperature),
        "infill": lambda: lc.llama_sampler_init_infill(model.vocab),
        "adaptive_p": lambda: lc.llama_sampler_init_adaptive_p(
            cfg.adaptive_target, cfg.adaptive_decay, seed
        ),
        "mirostat": lambda: lc.llama_sampler_init_mirostat(
            model.n_vocab, seed, cfg.mirostat_tau, cfg.mirostat_eta, _MIROSTAT_M
        ),
        "mirostat_v2": lambda: lc.llama_sampler_init_mirostat_v2(
            seed, cfg.mirostat_tau, cfg.mirostat_eta
        ),
        "greedy": lc.llama_sampler_init_greedy,
        "dist": lambda: lc.llama_sampler_init_dist(seed),
    }
    return makers[kind]()


def _window(kind: str, cfg: SamplerConfig) -> int:
    return cfg.repeat_last_n if kind == "penalties" else cfg.dry_penalty_last_n


def needs_history(cfg: SamplerConfig) -> bool:
    """Whether the chain has samplers that must be given the prompt (penalties, DRY)."""
    return any(kind in _HISTORY for kind in chain_plan(cfg))


class SamplerHistory:
    """A chain's penalties and DRY samplers, made and given the prompt's last tokens ahead of
    time, on any thread that may read the vocabulary. Each Sampler built with it gets copies
    (llama_sampler_clone keeps what they saw); this object frees its own when dropped."""

    def __init__(self, model: Model, cfg: SamplerConfig, prompt: Sequence[int]) -> None:
        self._samplers: dict[str, Any] = {}
        try:
            for kind in chain_plan(cfg):
                if kind in _HISTORY:
                    self._samplers[kind] = ptr = _make(kind, model, cfg)
                    window = _window(kind, cfg)
                    for token in prompt[-window:] if window > 0 else ():
                        lc.llama_sampler_accept(ptr, token)
        except BaseException:
            self.close()
            raise

    def copy(self, kind: str) -> Any:
        """A new sampler of one kind, in the state this one is in."""
        return lc.llama_sampler_clone(self._samplers[kind])

    def close(self) -> None:
        """Free the samplers."""
        samplers, self._samplers = self._samplers, {}
        for ptr in samplers.values():
            lc.llama_sampler_free(ptr)

    def __del__(self) -> None:
        self.close()


class Sampler:
    """A native llama.cpp sampler chain for one sequence; it owns the grammar it is given.

    history, when given, holds the chain's penalties and DRY samplers made ahead of time (for
    the same config); without it they are made here and given prompt.
    """

    def __init__(
        self,
        model: Model,
        cfg: SamplerConfig,
        grammar: CompiledGrammar | None = None,
        history: SamplerHistory | None = None,
        prompt: Sequence[int] = (),
    ) -> None:
        self.grammar = grammar
        self.ptr = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            if history is None and needs_history(cfg):
                history = SamplerHistory(model, cfg, prompt)
            for kind in chain_plan(cfg):
                ptr = (
                    history.copy(kind) if history and kind in _HISTORY else _make(kind, model, cfg)
                )
                lc.llama_sampler_chain_add(self.ptr, ptr)
            self._buffer = TokenBuffer(model.n_vocab) if grammar is not None else None
        except BaseException:
            self.close()
            raise
        if log.isEnabledFor(logging.DEBUG):
            log.debug("sampler chain: %s", " -> ".join(self.describe()))

    def describe(self) -> list[str]:
        """The names llama.cpp gives the samplers of the chain, in order ("top-k", "dry",
        "temp-ext", "mirostat-v2", "dist", ...); the grammar is beside the chain, not in it."""
        count = lc.llama_sampler_chain_n(self.ptr)
        return [
            lc.llama_sampler_name(lc.llama_sampler_chain_get(self.ptr, i)).decode()
            for i in range(count)
        ]

    def sample(self, ctx: Context, index: int) -> int:
        """Pick the next token from the logits at batch index and accept it; with a grammar,
        NO_TOKEN if the grammar allows none (nothing is accepted then)."""
        if self.grammar is None or self._buffer is None:
            return int(lc.llama_sampler_sample(self.ptr, ctx.ptr, index))
        grammar, buffer = self.grammar, self._buffer
        logits = ctx.logits(index)
        buffer.fill(logits)
        lc.llama_sampler_apply(self.ptr, buffer.ref)
        token = buffer.selected()
        if not grammar.allows(token):
            buffer.fill(logits)
            grammar.apply(buffer)
            if not buffer.any_allowed():
                return NO_TOKEN
            lc.llama_sampler_apply(self.ptr, buffer.ref)
            token = buffer.selected()
            if not grammar.allows(token):  # a sampler picked a -inf token (typical_p can)
                buffer.fill(logits)
                grammar.apply(buffer)
                token = buffer.best()
        lc.llama_sampler_accept(self.ptr, token)
        grammar.accept(token)
        return token

    def close(self) -> None:
        """Free the chain, every sampler in it, and the grammar."""
        if self.ptr:
            lc.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar is not None:
            self.grammar.close()
