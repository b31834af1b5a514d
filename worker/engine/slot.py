"""One sequence in flight: its prompt, KV position, sampler, text stream and timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llamagrid.worker.engine.channel import EventChannel
from llamagrid.worker.engine.constraints import PendingGrammar
from llamagrid.worker.engine.events import (
    Chunk,
    Event,
    Final,
    FinishReason,
    TokenLogprob,
    Usage,
)
from llamagrid.worker.engine.logprobs import token_logprob
from llamagrid.worker.engine.media import Media
from llamagrid.worker.engine.requests import GenerationSpec
from llamagrid.worker.engine.text_stream import TextStream
from llamagrid.worker.native.llama_backend import Context, Model
from llamagrid.worker.native.sampler import Sampler, SamplerHistory


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
    #: The prompt's text to send back (echo), made before the job reached the engine thread.
    echo_text: str | None = None
    #: Control tokens whose text the output keeps: the tool-call and reasoning markup a parser
    #: reads (engine/tool_stream.py). Other control tokens render as nothing, as ever.
    render_special: frozenset[int] = frozenset()
    #: The request's penalties and DRY samplers, given the prompt on a tokenizer thread; each
    #: of the job's samplers copies them (None: its chain has neither).
    sampler_history: SamplerHistory | None = None
    #: The prompt's images (engine/media.py), owned by the job until it ends (None: none).
    media: Media | None = None

    def fail(self, error: BaseException) -> None:
        """End the job's stream with an error; its other choices, if any run, stop at the next
        step."""
        self.cancelled = True
        self.release_grammar()
        self.close_media()
        self.channel.push(error)

    def close_media(self) -> None:
        """Free the prompt's images (once evaluated, or when the job ends)."""
        if self.media is not None:
            self.media.close()

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
    #: The choice this slot generates (GenerationSpec.n); choice 0 prefills the prompt.
    index: int = 0
    #: For a further choice: the slot prefilling the prompt, whose KV it copies once done.
    #: None once copied (the slot then decodes on its own).
    leader: Slot | None = None
    #: For choice 0 of a request with several: the slots waiting for its prompt.
    followers: list[Slot] = field(default_factory=list)
    #: Alternatives to return with each prompt token's log-probability, or None.
    prompt_logprobs: int | None = None
    #: The prompt tokens' log-probabilities computed so far (prompt_logprobs).
    prompt_entries: list[TokenLogprob] = field(default_factory=list)
    #: The LoRA adapter scales this sequence decodes with (engine/lora.py).
    scales: tuple[float, ...] = ()

    @property
    def prefilling(self) -> bool:
        """Whether prompt tokens remain to be decoded."""
        return self.n_past < len(self.prompt)

    @property
    def waiting(self) -> bool:
        """Whether this choice waits for its leader's prompt (it is in no batch until then)."""
        return self.leader is not None

    def prompt_chunk(self) -> Chunk | None:
        """What choice 0 sends once its prompt is decoded and before its first token: the
        prompt's text (echo) and its tokens' log-probabilities, when asked for."""
        if self.job.echo_text is None and self.prompt_logprobs is None:
            return None
        return Chunk(
            "",
            [],
            index=self.index,
            prompt_text=self.job.echo_text or "",
            prompt_logprobs=self.prompt_entries,
        )

    def finish_empty(self) -> Final:
        """End a choice that generates nothing (max_tokens 0) once its prompt is decoded."""
        self.first_token_at = time.perf_counter()
        return self._finish(FinishReason.LENGTH)

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
            [token_logprob(model, ctx.logits(index), token, self.top_logprobs)]
            if self.top_logprobs is not None
            else []
        )
        delta = self.text.feed(model.piece(token, special=token in self.job.render_special))
        self.job.channel.push(Chunk(delta.text, [token], logprobs, index=self.index))
        if delta.stopped_by is not None:
            return self._finish(FinishReason.STOP_STRING, delta.stopped_by)
        if len(self.out_tokens) >= self.max_tokens:
            return self._finish(FinishReason.LENGTH)
        self.next_token = token
        return None

    def _finish(self, reason: FinishReason, matched: str = "") -> Final:
        tail = self.text.finish()
        if tail.text:
            self.job.channel.push(Chunk(tail.text, [], index=self.index))
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
        if self.index > 0:  # the prompt is counted once, in choice 0's usage
            usage = Usage(0, len(self.out_tokens), decode_ms=usage.decode_ms)
        return Final(reason, usage, matched, index=self.index)
