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

A request for n choices waits until n slots are free (later requests wait behind it, so that it
is not starved). Choice 0 prefills the prompt alone; the step that decodes its last prompt token
copies its KV cells into the other choices' sequences, and every choice samples its first token
from those same logits with a sampler (and grammar) of its own. No prompt token is decoded
twice. With a KV buffer per sequence, llama.cpp performs a copy at the next decode: until then
neither sequence is saved to or restored from the host tier.

A request that wants its prompt's log-probabilities asks llama.cpp for the logits of every
prompt position, at most PROMPT_LOGPROB_ROWS positions per step (they bound llama.cpp's output
buffer: rows times the vocabulary, in floats); it reuses no cached prefix, since a cached
position has no logits.

With LoRA adapters loaded (engine/lora.py), each slot has the adapter scales fixed when it was
admitted. A step decodes only slots with equal scales (the groups take turns), and sets those
scales on the context first when they changed. Each sequence remembers the scales its KV cells
were computed under: a prompt reuses cells, resident or from the host tier, only when they were
computed under its own scales.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

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
from llamagrid.worker.engine.logprobs import block_logprobs, first_prompt_entry
from llamagrid.worker.engine.lora import Scales, scales_of
from llamagrid.worker.engine.media import image_boundary, text_tokens
from llamagrid.worker.engine.prefix_cache import PrefixCache, Reuse
from llamagrid.worker.engine.prompts import PromptTokenizer, check_fits
from llamagrid.worker.engine.requests import GenerationSpec, Message, Sampling
from llamagrid.worker.engine.sampling import resolve
from llamagrid.worker.engine.slot import Job, Slot
from llamagrid.worker.engine.text_stream import TextStream
from llamagrid.worker.engine.vision import ImageEvaluator
from llamagrid.worker.native.grammar import CompiledGrammar
from llamagrid.worker.native.llama_backend import Batch, Context, Model
from llamagrid.worker.native.lora import LoraSet
from llamagrid.worker.native.sampler import NO_TOKEN, Sampler

log = logging.getLogger(__name__)

#: The most prompt positions whose logits one step asks for (prompt_logprobs requests).
PROMPT_LOGPROB_ROWS = 128


@dataclass(frozen=True)
class PromptRows:
    """Prompt positions of one slot whose logits a step asked for, to score the tokens that
    follow them (prompt_logprobs)."""

    slot: Slot
    #: The batch index of the first position.
    index: int
    #: The first position.
    pos: int
    count: int


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
        lora: LoraSet | None = None,
        lora_scales: Scales = (),
        vision: ImageEvaluator | None = None,
    ) -> None:
        self.model = model
        #: Evaluates prompts' images into their sequences (None: the model reads no images).
        self.vision = vision
        #: The sequence whose image goes first at the next step (one image a step, in turn).
        self._image_turn = 0
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
        #: Sequences a cross-stream KV copy reads or writes at the next decode (a buffer per
        #: sequence: llama.cpp copies then): not saved to or restored from the host tier.
        self._copying: set[int] = set()
        #: The LoRA adapters loaded, and the scales of a request that gives none of its own.
        self.lora = lora
        self.lora_scales = lora_scales
        #: The adapter scales each sequence's KV cells were computed under.
        self._kv_scales: list[Scales] = [lora_scales] * ctx.n_seq_max
        if lora is not None:
            lora.apply(ctx, lora_scales)

    @property
    def active(self) -> int:
        """Slots in use."""
        return sum(s is not None for s in self.slots)

    def settled(self, seq: int) -> bool:
        """Whether a sequence runs no request and has its KV cells in place (no copy into or
        out of it waits for the next decode): its state may be saved, restored or dropped."""
        return self.slots[seq] is None and seq not in self._copying

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
        if self.vision is not None:
            self.vision.close()

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
        self._copying.clear()
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
        live = self._same_scales(live)
        if self.vision is not None:
            live = self._evaluate_images(live)
            if not live:
                return True
        outputs, rows = self._fill_batch(live)
        if not len(self._batch):  # only images were evaluated: every slot waits for its next
            return True
        self.ctx.decode(self._batch)
        self._copying.clear()  # the decode ran the pending copies first
        self.counters.on_decode(len(live))
        for part in rows:
            self._score_prompt(part)
        for slot, index in outputs:
            for choice in self._choices_ready(slot):
                if choice.job.cancelled:  # another choice failed: all go at the next step
                    continue
                final = self._sample(choice, index)
                if final is not None:
                    self.counters.on_final(final)
                    choice.job.channel.push(final)
                    self._release(choice)
        return True

    def _evaluate_images(self, live: list[Slot]) -> list[Slot]:
        """Evaluate the image that comes next in one prefilling slot's prompt (engine/vision.py:
        one image a step, the slots in turn); returns the slots to batch. A failure fails that
        slot's job alone: its sequence is cut back to what it held, and the slot is released
        at the next step."""
        assert self.vision is not None
        ready = [s for s in live if s.prefilling and not s.waiting and not s.job.cancelled]
        ready = [s for s in ready if s.job.media and s.job.media.span_at(s.n_past)]
        if not ready:
            return live
        turn = self._image_turn
        slot = min(ready, key=lambda s: (s.seq - turn) % len(self.slots))
        self._image_turn = slot.seq + 1
        try:
            self.vision.evaluate(slot)
        except Exception as exc:
            log.exception("evaluating an image failed for %s", slot.job.request.request_id)
            self.ctx.trim(slot.seq, slot.n_past)
            slot.job.fail(internal(f"the image could not be evaluated: {exc}"))
            return [s for s in live if s is not slot]
        return live

    def _same_scales(self, live: list[Slot]) -> list[Slot]:
        """The slots this step decodes: those whose adapter scales come next in turn (all of
        them when every slot has the same), with their scales set on the context."""
        if self.lora is None:
            return live
        groups: dict[Scales, list[Slot]] = {}
        for slot in live:
            groups.setdefault(slot.scales, []).append(slot)
        keys = sorted(groups)
        last = self.lora.applied
        later = [k for k in keys if last is not None and k > last]
        chosen = later[0] if later else keys[0]
        self.lora.apply(self.ctx, chosen)
        return groups[chosen]

    def kv_scales(self, seq: int) -> Scales:
        """The LoRA scales a sequence's KV cells were computed under."""
        return self._kv_scales[seq]

    def set_kv_scales(self, seq: int, scales: Scales) -> None:
        """Record the LoRA scales of cells put into an idle sequence from elsewhere (a slot
        file): a prompt reuses them only under the same scales."""
        self._kv_scales[seq] = scales

    def scales_for(self, request: GenerationSpec) -> Scales:
        """The adapter scales a request runs with: its own list's, else the worker's."""
        if request.lora is None or self.lora is None:
            return self.lora_scales
        return scales_of(request.lora, len(self.lora))

    def _score_prompt(self, part: PromptRows) -> None:
        """Add the log-probabilities of the prompt tokens that follow a block of positions."""
        slot = part.slot
        if slot.prompt_logprobs is None or slot.job.cancelled:
            return
        try:
            rows = self.ctx.logits_rows(part.index, part.count)
            targets = slot.prompt[part.pos + 1 : part.pos + 1 + part.count]
            entries = block_logprobs(self.model, rows, targets, slot.prompt_logprobs)
        except Exception as exc:  # this request fails alone
            log.exception("prompt log-probabilities failed for %s", slot.job.request.request_id)
            slot.job.fail(internal(f"prompt log-probabilities failed: {exc}"))
            return
        slot.prompt_entries.extend(entries)

    def _choices_ready(self, slot: Slot) -> list[Slot]:
        """The slots that sample from a slot's output: itself, and when it is choice 0 whose
        prompt is now decoded, the other choices (their KV cells copied from it). Choice 0
        first sends the prompt's text and log-probabilities, if asked for."""
        if slot.first_token_at is not None or slot.index != 0:
            return [slot]
        chunk = slot.prompt_chunk()
        if chunk is not None and not slot.job.cancelled:
            slot.job.channel.push(chunk)
        ready = [slot]
        followers, slot.followers = slot.followers, []
        for follower in followers:
            follower.leader = None
            if self.ctx.share(slot.seq, follower.seq, len(slot.prompt)):
                follower.n_past = len(slot.prompt)
                if not self.ctx.unified:
                    self._copying.update((slot.seq, follower.seq))
                ready.append(follower)
            else:  # this memory cannot copy a sequence: the choice prefills the prompt itself
                log.warning("could not copy a prompt's KV cells; prefilling it again")
        return ready

    def _sample(self, slot: Slot, index: int) -> Final | None:
        """Sample and emit a slot's next token. A failure ends this slot's job only."""
        try:
            if slot.max_tokens == 0:  # only the prompt was wanted (echo, prompt_logprobs)
                return slot.finish_empty()
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

    def _fill_batch(self, live: list[Slot]) -> tuple[list[tuple[Slot, int]], list[PromptRows]]:
        """Fill the batch; returns the slots to sample (with their batch index), and the prompt
        positions whose logits were asked for (prompt_logprobs)."""
        batch = self._batch
        batch.clear()
        outputs: list[tuple[Slot, int]] = []
        rows: list[PromptRows] = []
        row_budget = PROMPT_LOGPROB_ROWS
        for slot in live:
            if not slot.prefilling and slot.next_token is not None:
                outputs.append((slot, batch.add(slot.next_token, slot.n_past, slot.seq, True)))
                slot.n_past += 1
        for slot in live:
            room = batch.capacity - len(batch)
            every = slot.prompt_logprobs is not None  # logits at every prompt position
            if every:
                room = min(room, row_budget)
            if not slot.prefilling or slot.waiting or room <= 0:
                continue
            start, end = slot.n_past, min(len(slot.prompt), slot.n_past + room)
            image = slot.job.media.next_start(start) if slot.job.media is not None else None
            if image is not None:  # an image is evaluated on its own (engine/vision.py)
                end = min(end, image)
                if end <= start:
                    continue
            first = len(batch)
            for pos in range(start, end):
                last = pos == len(slot.prompt) - 1
                index = batch.add(slot.prompt[pos], pos, slot.seq, last or every)
                if last:
                    outputs.append((slot, index))
            scored = min(end, len(slot.prompt) - 1) - start  # the last position scores nothing
            if every and scored > 0:
                rows.append(PromptRows(slot, first, start, scored))
            if every:
                row_budget -= end - start
            slot.n_past = end
        return outputs, rows

    def _leave_queue(self, job: Job) -> Job:
        self.on_dequeue(job)
        return job

    def _drop_cancelled(self) -> None:
        if any(job.cancelled for job in self.waiting):
            for job in self.waiting:
                if job.cancelled:
                    self._leave_queue(job).release_grammar()
                    job.close_media()
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
        slot.job.close_media()
        self.slots[slot.seq] = None

    def _admit(self) -> None:
        """Admit waiting jobs in order while slots are free; a job whose grammar is still
        compiling keeps its place, one whose grammar failed or took too long fails now. Once
        a job lacks slots (it may want several), the jobs behind it wait too."""
        now, kept = time.perf_counter(), deque[Job]()
        short = False
        while self.waiting:
            job = self.waiting.popleft()
            problem = job.grammar.problem(now) if job.grammar is not None else None
            if problem is not None:
                self._leave_queue(job).fail(problem)
            elif job.cancelled:
                self._leave_queue(job).release_grammar()
                job.close_media()
            elif job.grammar is not None and not job.grammar.ready:
                kept.append(job)
            elif short or self.slots.count(None) < job.request.choices:
                short = True
                kept.append(job)
            else:
                self._admit_job(self._leave_queue(job))
        self.waiting = kept

    def _admit_job(self, job: Job) -> None:
        """Give a job a slot for each of its choices, or fail it (holding none)."""
        taken: list[Slot] = []
        try:
            leader = self._make_slot(job)
            self.slots[leader.seq] = leader
            taken.append(leader)
            for index in range(1, job.request.choices):
                follower = self._make_follower(leader, index)
                self.slots[follower.seq] = follower
                taken.append(follower)
                leader.followers.append(follower)
        except Exception as exc:
            error = exc
            if not isinstance(exc, EngineError):  # a bug this request hit: it fails alone
                log.exception("admitting a request failed")
                error = internal(f"the request could not be admitted: {exc}")
            for slot in taken:
                slot.leader, slot.followers = None, []
                self._release(slot)
            job.fail(error)
            return
        job.channel.push(Admitted())

    def _make_follower(self, leader: Slot, index: int) -> Slot:
        """The slot of a further choice: a sequence of its own (filled later with a copy of
        the leader's prompt cells), and a sampler of its own, seeded seed + index when the
        request has a seed."""
        job, s = leader.job, leader.job.request.sampling
        config = resolve(s, self.seq_ctx)
        if s.seed is not None:
            config = replace(config, seed=s.seed + index)
        grammar = leader.sampler.grammar
        sampler = Sampler(
            self.model,
            config,
            grammar.clone() if grammar is not None else None,
            job.sampler_history,
            text_tokens(leader.prompt) if job.media is not None else leader.prompt,
        )
        seq = self._claim(leader.scales)
        return Slot(
            seq=seq,
            job=job,
            prompt=leader.prompt,
            sampler=sampler,
            text=TextStream(s.stop),
            max_tokens=leader.max_tokens,
            top_logprobs=leader.top_logprobs,
            admitted=leader.admitted,
            index=index,
            leader=leader,
            scales=leader.scales,
        )

    def _claim(self, scales: Scales) -> int:
        """A free sequence emptied for a prompt that reuses no cached prefix: the one whose
        cells are worth least (saved to the host tier first, when worth it)."""
        free = [seq for seq, s in enumerate(self.slots) if s is None]
        busy = {s.seq: s.decoded() for s in self.slots if s is not None}
        seq = self.cache.spare(free, busy)
        self._save_before_loss(seq, 0)
        self.cache.take(seq)
        self.ctx.forget(seq)
        self._kv_scales[seq] = scales
        return seq

    def _place(self, prompt: list[int], scales: Scales, reuse_prefix: bool = True) -> Reuse:
        """Choose the sequence for a prompt and set its KV cells to the reused prefix: cells a
        sequence already holds, or a longer prefix saved in the host tier. Cells about to be
        lost are saved to the host tier first (engine/host_cache.py). Without reuse_prefix,
        the sequence is emptied. Only cells computed under the prompt's adapter scales count."""
        if not reuse_prefix:
            return Reuse(self._claim(scales), 0)
        free = [seq for seq, s in enumerate(self.slots) if s is None]
        busy = {s.seq: s.decoded() for s in self.slots if s is not None and s.scales == scales}
        foreign = frozenset(seq for seq in free if self._kv_scales[seq] != scales)
        reuse = self.cache.plan(prompt, free, busy, foreign)
        reuse = replace(reuse, length=image_boundary(prompt, reuse.length))
        found = self.host.find(prompt, len(prompt) - 1, scales) if self.host.enabled else None
        if found is not None:  # an image's cells are reused whole or not at all
            found = (found[0], image_boundary(prompt, found[1]))
        usable = found is not None and reuse.seq not in self._copying
        if found is not None and usable and found[1] >= reuse.length + self.cache.min_reuse:
            return self._restore(reuse.seq, *found)
        if reuse.source is None:
            self._save_before_loss(reuse.seq, reuse.length)
        else:
            self._save_before_loss(reuse.seq, 0)
        self.cache.take(reuse.seq)
        self._kv_scales[reuse.seq] = scales  # cells it held under other scales go below
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
        scales = self._kv_scales[seq]
        if len(held) - keep < self.host.min_tokens or not self.host.worth_saving(held, scales):
            return
        if seq in self._copying:  # its cells are not in place until the next decode
            return
        data = self.ctx.save_sequence(seq)
        session = self.cache.is_session(seq)
        if data is not None and self.host.add(held, data, session, self._kv_scales[seq]):
            self.counters.host_saves += 1

    def _restore(self, seq: int, entry: HostEntry, length: int) -> Reuse:
        """Put a saved prefix into a free sequence (saving what that sequence held first)."""
        # Out of the tier first: saving the sequence's own cells may evict or supersede it.
        self.host.take(entry)
        self._save_before_loss(seq, 0)
        self.cache.take(seq)
        self.ctx.forget(seq)
        self._kv_scales[seq] = entry.scales
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
        scales = self.scales_for(req)
        seen = text_tokens(prompt) if job.media is not None else prompt  # no image positions
        sampler = Sampler(self.model, config, self._take_grammar(job), job.sampler_history, seen)
        try:
            # A request that wants every prompt position's logits reuses no cached prefix.
            reuse = self._place(prompt, scales, reuse_prefix=req.prompt_logprobs is None)
        except BaseException:
            sampler.close()
            raise
        first = (
            [first_prompt_entry(self.model, prompt[0])] if req.prompt_logprobs is not None else []
        )
        return Slot(
            seq=reuse.seq,
            job=job,
            prompt=prompt,
            sampler=sampler,
            text=TextStream(s.stop),
            max_tokens=room if s.max_tokens is None else min(s.max_tokens, room),
            top_logprobs=s.top_logprobs,
            n_past=reuse.length,
            cached=0 if reuse.restored else reuse.length,
            restored=reuse.length if reuse.restored else 0,
            prompt_logprobs=req.prompt_logprobs,
            prompt_entries=first,
            scales=scales,
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
