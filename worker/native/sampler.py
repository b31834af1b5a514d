"""llama.cpp sampler chains, one per sequence, with an optional grammar beside the chain.

Without a grammar, a token is one ``llama_sampler_sample`` call on the chain, as before: a
grammar costs the other requests nothing. With one, the grammar is not in the chain; sampling
follows llama.cpp's common sampler (common/sampling.cpp): the chain picks a token from the raw
logits, the grammar is asked about that one token, and only if it refuses is the grammar
applied to the whole vocabulary and the chain run again. Greedy output is the same as with
the grammar first in the chain; the grammar's full pass, the costly part, is mostly skipped.
When the grammar refuses every token, ``sample`` says so (NO_TOKEN) instead of letting
llama.cpp accept a token its grammar rejects, which throws inside C++ and aborts the process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import llama_cpp as lc

from llamagrid.worker.native.grammar import CompiledGrammar, TokenBuffer
from llamagrid.worker.native.llama_backend import RANDOM_SEED, Context, Model

#: What Sampler.sample returns when the grammar allows no token at all.
NO_TOKEN = -1


@dataclass(frozen=True)
class SamplerConfig:
    """A fully resolved sampling setup (no unset fields)."""

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


class Sampler:
    """A native llama.cpp sampler chain for one sequence; it owns the grammar it is given."""

    def __init__(
        self, model: Model, cfg: SamplerConfig, grammar: CompiledGrammar | None = None
    ) -> None:
        self.grammar = grammar
        self.ptr = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        try:
            self._build(model, cfg)
            self._buffer = TokenBuffer(model.n_vocab) if grammar is not None else None
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: Any) -> None:
        lc.llama_sampler_chain_add(self.ptr, sampler)

    def _build(self, model: Model, cfg: SamplerConfig) -> None:
        if cfg.logit_bias:
            arr = (lc.llama_logit_bias * len(cfg.logit_bias))(
                *[lc.llama_logit_bias(token=t, bias=b) for t, b in cfg.logit_bias.items()]
            )
            self._add(lc.llama_sampler_init_logit_bias(model.n_vocab, len(arr), arr))
        if cfg.repeat_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty:
            self._add(
                lc.llama_sampler_init_penalties(
                    model.n_vocab,
                    cfg.repeat_last_n,
                    cfg.repeat_penalty,
                    cfg.frequency_penalty,
                    cfg.presence_penalty,
                )
            )
        if cfg.temperature <= 0:
            self._add(lc.llama_sampler_init_greedy())
            return
        if cfg.top_k > 0:
            self._add(lc.llama_sampler_init_top_k(cfg.top_k))
        if cfg.typical_p < 1.0:
            self._add(lc.llama_sampler_init_typical(cfg.typical_p, 1))
        if cfg.top_p < 1.0:
            self._add(lc.llama_sampler_init_top_p(cfg.top_p, 1))
        if cfg.min_p > 0.0:
            self._add(lc.llama_sampler_init_min_p(cfg.min_p, 1))
        self._add(lc.llama_sampler_init_temp(cfg.temperature))
        self._add(lc.llama_sampler_init_dist(cfg.seed & 0xFFFFFFFF))

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
