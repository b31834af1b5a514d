"""The engine thread's scheduler: admission, batching and the decode step, all in one place.

Each step builds one llama_batch from every active slot: one token per decoding slot, and as
much of each prefilling slot's prompt as the remaining token budget (n_batch) allows. One
llama_decode runs it, then every slot whose logits were produced samples its next token.
A request joins the batch at the step after it arrives; finished and cancelled ones leave it
at once, keeping their KV cells for the prefix cache. Requests that wait longer than the queue
timeout are refused with RESOURCE_EXHAUSTED.

A request with a grammar or JSON schema waits in the queue until its grammar has compiled on a
compile thread (engine/constraints.py): the engine thread never parses one. A grammar that
later allows no token ends its own request; a sampling failure of one slot never ends another.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llamagrid.worker.engine.constraints import (
    GrammarCompiler,
    compile_constraint,
    constraint_label,
    constraint_param,
)
from llamagrid.worker.engine.counters import EngineCounters
from llamagrid.worker.engine.errors import (
    EngineError,
    Reason,
    internal,
    invalid,
    not_ready,
)
from llamagrid.worker.engine.events import Admitted, Final
from llamagrid.worker.engine.host_cache import HostCache, HostEntry
from llamagrid.worker.engine.limits import DEFAULT_LIMITS, RequestLimits
from llamagrid.worker.engine.prefix_cache import PrefixCache, Reuse
from llamagrid.worker.engine.prompts import PromptTokenizer, check_fits
from llamagrid.worker.engine.requests import GenerationSpec, Message, Sampling
from llamagrid.worker.engine.sampling import resolve
from llamagrid.worker.engine.slot import Job, Slot
from llamagrid.worker.engine.text_stream import TextStream
from llamagrid.worker.native.grammar import CompiledGrammar
from llamagrid.worker.native.llama_backend import Batch, Context, Model
from llamagrid.worker.native.sampler import NO_TOKEN, Sampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KvUse:
    """KV cache occupancy in cells (one cell holds one token of one or more sequences)."""

    used: int
    total: int


class Scheduler:
    """Owns the generation context's sequences. Call only from the engine thread."""

    def __init__(
        self,
        model: Model,
        ctx: Context,
        prompts: PromptTokenizer,
        queue_timeout_s: float = 0.0,
        counters: EngineCounters | None = None,
        limits: RequestLimits = DEFAULT_LIMITS,
        host_budget_bytes: int = 0,
    ) -> None:
        self.model = model
        self.ctx = ctx
        #: Used here only to warm up: jobs arrive with their prompt tokenized.
        self.prompts = prompts
        self.queue_timeout_s = queue_timeout_s
        #: Tokens one request may hold (prompt plus completion): the context split by the slots.
        self.seq_ctx = ctx.n_ctx // ctx.n_seq_max
        self.slots: list[Slot | None] = [None] * ctx.n_seq_max
        self.waiting: deque[Job] = deque()
        self.cache = PrefixCache(ctx.n_seq_max, shareable=ctx.unified)
        #: Evicted prefixes saved to host memory (off until check_host_tier passes).
        self.host = HostCache(host_budget_bytes)
        self._batch = Batch(ctx.n_batch, 1)
        #: Totals for /metrics (decode calls, finished generations), kept on this thread.
        self.counters = counters or EngineCounters()
        #: Called once for every job that leaves the wait queue (admitted, cancelled or failed).
        self.on_dequeue: Callable[[Job], None] = lambda job: None
        self.limits = limits
        self.compiler = GrammarCompiler(
            functools.partial(compile_constraint, model, limits=limits), limits.grammar_timeout_s
        )

    @property
    def active(self) -> int:
        """Slots in use."""
        return sum(s is not None for s in self.slots)

    def tier_holders(self) -> tuple[list[list[int]], list[list[int]]]:
        """The tokens whose KV each tier holds: every sequence's (running or idle), and every
        host entry's. The lists are not changed afterwards, so a TierIndex may copy them on
        another thread."""
        resident = [
            s.decoded() if s is not None else self.cache.held(seq)
            for seq, s in enumerate(self.slots)
        ]
        host = [e.tokens for e in self.host.entries] if self.host.enabled else []
        return resident, host

    def kv_use(self) -> KvUse:
        """Cells in use: running sequences' tokens plus idle sequences' cached prefixes."""
        held = [
            s.decoded() if s is not None else self.cache.held(seq)
            for seq, s in enumerate(self.slots)
        ]
        return KvUse(self.cache.distinct_tokens(held), self.ctx.n_ctx)

    def close(self) -> None:
        """Free native resources; fail whatever is still pending."""
        self.fail_all(not_ready("the worker is shutting down"))
        self.compiler.close()
        self._batch.close()

    def warm_up(self) -> None:
        """Pay now for what llama.cpp and the OS do on the first decode, not on the first request.

        The first decodes create llama.cpp's thread pool and build its graphs for a prompt and
        for one-token steps, and the OS pages in the mmapped weights as they are first read.
        A short chat is rendered, prefilled into sequence 0, one token is sampled and decoded,
        then the sequence is forgotten: no slot, cached prefix or counter changes.
        """
        hello = GenerationSpec(messages=(Message("user", "Hello"),))
        prompt = self.prompts.prompt_tokens(hello)
        prompt = prompt[: min(self.ctx.n_batch, self.seq_ctx - 1)]  # one batch, room for a token
        sampler = Sampler(self.model, resolve(Sampling(), self.seq_ctx))
        try:
            index = 0
            for pos, token in enumerate(prompt):
                index = self._batch.add(token, pos, 0, pos == len(prompt) - 1)
            self.ctx.decode(self._batch)
            token = sampler.sample(self.ctx, index)
            self._batch.clear()
            index = self._batch.add(token, len(prompt), 0, True)
            self.ctx.decode(self._batch)
            sampler.sample(self.ctx, index)
        finally:
            self._batch.clear()
            sampler.close()
            self.ctx.forget(0)

    def fail_all(self, error: EngineError) -> None:
        """End every waiting and running job with error, and empty the KV cache."""
        while self.waiting:
            self._leave_queue(self.waiting.popleft()).fail(error)
        for slot in self.slots:
            if slot is not None:
                slot.job.fail(error)
                slot.sampler.close()
                self.slots[slot.seq] = None
        self.ctx.clear()
        self.cache.drop_all()
        self.host.clear()

    def step(self) -> bool:
        """Admit, batch, decode and sample once. Returns False when there was nothing to do."""
        self._drop_cancelled()
        self._expire_waiting()
        self._admit()
        live = [s for s in self.slots if s is not None]
        if not live:
            compiling = [job.grammar for job in self.waiting if job.grammar is not None]
            if compiling:  # nothing to decode until a grammar is ready: doze, 5 ms at most
                self.compiler.wait(compiling, 0.005)
            return False
        outputs = self._fill_batch(live)
        self.ctx.decode(self._batch)
        self.counters.on_decode(len(live))
        for slot, index in outputs:
            final = self._sample(slot, index)
            if final is not None:
                self.counters.on_final(final)
                slot.job.channel.push(final)
                self._release(slot)
        return True

    def _sample(self, slot: Slot, index: int) -> Final | None:
        """Sample and emit a slot's next token. A failure ends this slot's job only."""
        try:
            token = slot.sampler.sample(self.ctx, index)
            if token == NO_TOKEN:
                raise self._dead_end(slot)
            return slot.emit_token(self.model, self.ctx, token, index)
        except Exception as exc:
            if not isinstance(exc, EngineError):
                log.exception("sampling failed for request %s", slot.job.request.request_id)
                exc = internal(f"sampling failed: {exc}")
            slot.job.fail(exc)
            self._release(slot)
            return None

    @staticmethod
    def _dead_end(slot: Slot) -> EngineError:
        constraint = slot.job.request.sampling.constraint
        assert constraint is not None  # only a grammar can refuse every token
        return invalid(
            f"the {constraint_label(constraint)} allows no token after the "
            f"{len(slot.out_tokens)} generated so far: no output can satisfy it",
            constraint_param(constraint),
        )

    def _fill_batch(self, live: list[Slot]) -> list[tuple[Slot, int]]:
        batch = self._batch
        batch.clear()
        outputs: list[tuple[Slot, int]] = []
        for slot in live:
            if not slot.prefilling and slot.next_token is not None:
                outputs.append((slot, batch.add(slot.next_token, slot.n_past, slot.seq, True)))
                slot.n_past += 1
        for slot in live:
            room = batch.capacity - len(batch)
            if not slot.prefilling or room <= 0:
                continue
            end = min(len(slot.prompt), slot.n_past + room)
            for pos in range(slot.n_past, end):
                last = pos == len(slot.prompt) - 1
                index = batch.add(slot.prompt[pos], pos, slot.seq, last)
                if last:
                    outputs.append((slot, index))
            slot.n_past = end
        return outputs

    def _leave_queue(self, job: Job) -> Job:
        self.on_dequeue(job)
        return job

    def _drop_cancelled(self) -> None:
        if any(job.cancelled for job in self.waiting):
            for job in self.waiting:
                if job.cancelled:
                    self._leave_queue(job).release_grammar()
            self.waiting = deque(job for job in self.waiting if not job.cancelled)
        for slot in self.slots:
            if slot is not None and slot.job.cancelled:
                log.debug("request %s cancelled", slot.job.request.request_id)
                self._release(slot)

    def _expire_waiting(self) -> None:
        if not self.queue_timeout_s or not self.waiting:
            return
        oldest = time.perf_counter() - self.queue_timeout_s
        while self.waiting and self.waiting[0].submitted < oldest:
            job = self._leave_queue(self.waiting.popleft())
            job.fail(
                EngineError(
                    Reason.QUEUE_TIMEOUT,
                    f"the request waited {self.queue_timeout_s:g} s for a free slot",
                    retry_after_s=self.queue_timeout_s,
                )
            )

    def _release(self, slot: Slot) -> None:
        """End a slot's request; its KV cells stay as the sequence's cached prefix."""
        self.cache.retain(slot.seq, slot.decoded(), slot.job.request.session is not None)
        slot.sampler.close()
        self.slots[slot.seq] = None

    def _admit(self) -> None:
        """Admit waiting jobs in order while slots are free; a job whose grammar is still
        compiling keeps its place, one whose grammar failed or took too long fails now."""
        now, kept = time.perf_counter(), deque[Job]()
        while self.waiting:
            job = self.waiting.popleft()
            problem = job.grammar.problem(now) if job.grammar is not None else None
            if problem is not None:
                self._leave_queue(job).fail(problem)
            elif job.cancelled:
                self._leave_queue(job).release_grammar()
            elif (job.grammar is not None and not job.grammar.ready) or None not in self.slots:
                kept.append(job)
            else:
                self._admit_job(self._leave_queue(job))
        self.waiting = kept

    def _admit_job(self, job: Job) -> None:
        try:
            slot = self._make_slot(job)
        except EngineError as exc:
            job.fail(exc)
            return
        except Exception as exc:  # a bug this request hit: it fails alone, the others run on
            log.exception("admitting a request failed")
            job.fail(internal(f"the request could not be admitted: {exc}"))
            return
        self.slots[slot.seq] = slot
        job.channel.push(Admitted())

    def _place(self, prompt: list[int]) -> Reuse:
        """Choose the sequence for a prompt and set its KV cells to the reused prefix: cells a
        sequence already holds, or a longer prefix saved in the host tier. Cells about to be
        lost are saved to the host tier first (engine/host_cache.py)."""
        free = [seq for seq, s in enumerate(self.slots) if s is None]
        busy = {s.seq: s.decoded() for s in self.slots if s is not None}
        reuse = self.cache.plan(prompt, free, busy)
        found = self.host.find(prompt, len(prompt) - 1) if self.host.enabled else None
        if found is not None and found[1] >= reuse.length + self.cache.min_reuse:
            return self._restore(reuse.seq, *found)
        if reuse.source is None:
            self._save_before_loss(reuse.seq, reuse.length)
        else:
            self._save_before_loss(reuse.seq, 0)
        self.cache.take(reuse.seq)
        if reuse.source is not None:
            self.ctx.forget(reuse.seq)
            if not self.ctx.share(reuse.source, reuse.seq, reuse.length):
                return Reuse(reuse.seq, 0)
        elif not self.ctx.trim(reuse.seq, reuse.length):
            self.ctx.forget(reuse.seq)  # this memory can't cut a sequence: start it afresh
            return Reuse(reuse.seq, 0)
        return reuse

    def _save_before_loss(self, seq: int, keep: int) -> None:
        """Save an idle sequence's cells to the host tier if more than ``keep`` of its tokens
        are about to be overwritten and no saved entry holds them already."""
        held = self.cache.held(seq)
        if len(held) - keep < self.host.min_tokens or not self.host.worth_saving(held):
            return
        data = self.ctx.save_sequence(seq)
        if data is not None and self.host.add(held, data, self.cache.is_session(seq)):
            self.counters.host_saves += 1

    def _restore(self, seq: int, entry: HostEntry, length: int) -> Reuse:
        """Put a saved prefix into a free sequence (saving what that sequence held first)."""
        # Out of the tier first: saving the sequence's own cells may evict or supersede it.
        self.host.take(entry)
        self._save_before_loss(seq, 0)
        self.cache.take(seq)
        self.ctx.forget(seq)
        if not self.ctx.restore_sequence(seq, entry.data):
            log.warning("llama.cpp refused a saved sequence; prefilling instead")
            return Reuse(seq, 0)
        self.counters.host_restores += 1
        if length < len(entry.tokens) and not self.ctx.trim(seq, length):
            self.ctx.forget(seq)
            return Reuse(seq, 0)
        return Reuse(seq, length, restored=True)

    def check_host_tier(self) -> None:
        """Save and restore a short sequence and compare the next token's logits with a plain
        prefill's. A model whose state does not round-trip (sliding-window or recurrent
        memory) runs without the host tier, and the log says so."""
        if not self.host.enabled:
            return
        hello = GenerationSpec(messages=(Message("user", "Hello, how are you today?"),))
        prompt = self.prompts.prompt_tokens(hello)[: min(self.ctx.n_batch, self.seq_ctx - 1)]
        head, last = prompt[:-1], prompt[-1]
        try:
            self._prefill(0, head)
            expected = self._next_logits(0, last, len(head))
            self.ctx.forget(0)
            self._prefill(0, head)
            data = self.ctx.save_sequence(0)
            self.ctx.forget(0)
            same = (
                data is not None
                and self.ctx.restore_sequence(0, data)
                and bool(np.allclose(self._next_logits(0, last, len(head)), expected, atol=1e-3))
            )
        except Exception:  # any failure turns the tier off; the worker serves on
            log.exception("the host KV tier's self-test failed")
            same = False
        finally:
            self._batch.clear()
            self.ctx.forget(0)
        if same:
            log.info("host KV tier on: up to %d MiB", self.host.budget_bytes >> 20)
        else:
            self.host.enabled = False
            log.warning(
                "host KV tier off: this model's KV state does not round-trip through host "
                "memory (sliding-window or recurrent memory?); evicted prefixes are prefilled "
                "again"
            )

    def _prefill(self, seq: int, tokens: list[int]) -> None:
        self._batch.clear()
        for pos, token in enumerate(tokens):
            self._batch.add(token, pos, seq, False)
        self.ctx.decode(self._batch)
        self._batch.clear()

    def _next_logits(self, seq: int, token: int, pos: int) -> np.typing.NDArray[np.float32]:
        self._batch.clear()
        index = self._batch.add(token, pos, seq, True)
        self.ctx.decode(self._batch)
        logits = self.ctx.logits(index)
        self._batch.clear()
        return logits

    def _make_slot(self, job: Job) -> Slot:
        req = job.request
        s = req.sampling
        prompt = job.prompt
        if not prompt:
            raise invalid("the prompt is empty", "prompt")
        # Checked before queueing too (LlamaEngine.generate); the context cannot change since.
        check_fits(req, len(prompt), self.seq_ctx)
        room = self.seq_ctx - len(prompt)
        config = resolve(s, self.seq_ctx)
        sampler = Sampler(self.model, config, self._take_grammar(job))
        reuse = self._place(prompt)
        return Slot(
            seq=reuse.seq,
            job=job,
            prompt=prompt,
            sampler=sampler,
            text=TextStream(s.stop),
            max_tokens=min(s.max_tokens or room, room),
            top_logprobs=s.top_logprobs,
            n_past=reuse.length,
            cached=0 if reuse.restored else reuse.length,
            restored=reuse.length if reuse.restored else 0,
        )

    @staticmethod
    def _take_grammar(job: Job) -> CompiledGrammar | None:
        if job.grammar is None:
            return None
        grammar = job.grammar.take()
        assert isinstance(grammar, CompiledGrammar)
        return grammar

    def enqueue(self, job: Job) -> None:
        """Add a job to the wait queue (limits are checked by the caller), and start compiling
        its grammar or JSON schema if it has one."""
        constraint = job.request.sampling.constraint
        if constraint is not None:
            job.grammar = self.compiler.submit(constraint)
        self.waiting.append(job)
