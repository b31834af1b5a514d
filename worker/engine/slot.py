"""One sequence in flight: its prompt, KV position, sampler, text stream and timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from llamagrid.worker.engine.channel import EventChannel
from llamagrid.worker.engine.constraints import PendingGrammar
from llamagrid.worker.engine.events import (
    Chunk,
    Event,
    Final,
    FinishReason,
    LogprobEntry,
    TokenLogprob,
    Usage,
)
from llamagrid.worker.engine.requests import GenerationSpec
from llamagrid.worker.engine.text_stream import TextStream
from llamagrid.worker.native.llama_backend import Context, Model
from llamagrid.worker.native.sampler import Sampler


@dataclass(eq=False)
class Job:
    """A generation request from submission until its final event."""

    request: GenerationSpec
    channel: EventChannel[Event | BaseException]
    #: The prompt's token ids, tokenized before the job reached the engine thread.
    prompt: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    #: The request's grammar or JSON schema, compiling off the engine thread while queued.
    grammar: PendingGrammar | None = None

    def fail(self, error: BaseException) -> None:
        """End the job's stream with an error."""
        self.release_grammar()
        self.channel.push(error)

    def release_grammar(self) -> None:
        """Free the job's grammar unless a slot's sampler took it."""
        if self.grammar is not None:
            self.grammar.abandon()


@dataclass(eq=False)
class Slot:
    """A job admitted to a sequence id of the context."""

    seq: int
    job: Job
    prompt: list[int]
    sampler: Sampler
    text: TextStream
    max_tokens: int
    top_logprobs: int | None
    admitted: float = field(default_factory=time.perf_counter)
    #: Positions whose KV cells hold this sequence's tokens (prompt, then generated).
    n_past: int = 0
    #: Prompt tokens whose KV was reused from the prefix cache.
    cached: int = 0
    #: Prompt tokens whose KV was restored from the host tier.
    restored: int = 0
    #: Tokens generated so far (the last one is decoded at the next step, if the job goes on).
    out_tokens: list[int] = field(default_factory=list)
    next_token: int | None = None
    first_token_at: float | None = None

    @property
    def prefilling(self) -> bool:
        """Whether prompt tokens remain to be decoded."""
        return self.n_past < len(self.prompt)

    def decoded(self) -> list[int]:
        """The tokens whose KV cells this sequence holds, in position order."""
        if self.n_past <= len(self.prompt):
            return self.prompt[: self.n_past]
        return self.prompt + self.out_tokens[: self.n_past - len(self.prompt)]

    def emit_token(self, model: Model, ctx: Context, token: int, index: int) -> Final | None:
        """Record a sampled token, push its text; returns the final event if the job is done."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        ignore_eos = self.job.request.sampling.ignore_eos
        if model.is_eog(token) and not ignore_eos:
            return self._finish(FinishReason.EOS)
        self.out_tokens.append(token)
        logprobs = (
            [self._logprob(model, ctx, token, index)] if self.top_logprobs is not None else []
        )
        delta = self.text.feed(model.piece(token))
        self.job.channel.push(Chunk(delta.text, [token], logprobs))
        if delta.stopped_by is not None:
            return self._finish(FinishReason.STOP_STRING, delta.stopped_by)
        if len(self.out_tokens) >= self.max_tokens:
            return self._finish(FinishReason.LENGTH)
        self.next_token = token
        return None

    def _finish(self, reason: FinishReason, matched: str = "") -> Final:
        tail = self.text.finish()
        if tail.text:
            self.job.channel.push(Chunk(tail.text, []))
        if tail.stopped_by is not None:
            reason, matched = FinishReason.STOP_STRING, tail.stopped_by
        now = time.perf_counter()
        first = self.first_token_at or now
        usage = Usage(
            prompt_tokens=len(self.prompt),
            completion_tokens=len(self.out_tokens),
            cached_tokens=self.cached,
            restored_tokens=self.restored,
            queue_ms=(self.admitted - self.job.submitted) * 1000,
            prefill_ms=(first - self.admitted) * 1000,
            decode_ms=(now - first) * 1000,
        )
        return Final(reason, usage, matched)

    def _logprob(self, model: Model, ctx: Context, token: int, index: int) -> TokenLogprob:
        logits = ctx.logits(index).astype(np.float64)
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        n = self.top_logprobs or 0
        top_ids = np.argpartition(-logprobs, n)[:n] if n else np.array([], dtype=np.int64)
        top_ids = top_ids[np.argsort(-logprobs[top_ids])]

        def entry(t: int) -> LogprobEntry:
            return LogprobEntry(t, model.piece(t), float(logprobs[t]))

        return TokenLogprob(entry(token), tuple(entry(int(t)) for t in top_ids))
