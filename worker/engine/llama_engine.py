"""The Engine interface and LlamaEngine, whose single thread owns every llama.cpp object.

gRPC handlers run on the asyncio loop and never call llama.cpp. They submit work through a
thread-safe inbox; the engine thread runs scheduler steps and answers through EventChannels
(generation) or futures (embed, load). Templates and tokenization (prompts, embedding inputs,
Tokenize, Detokenize) run on a small pool of tokenizer threads before any work reaches the
engine thread, which only decodes (engine/prompts.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar

from llamagrid.worker.engine.channel import EventChannel, WakeGate
from llamagrid.worker.engine.counters import EngineSnapshot
from llamagrid.worker.engine.embedder import EmbedJob
from llamagrid.worker.engine.errors import EngineError, Reason, internal, not_ready
from llamagrid.worker.engine.events import Chunk, Event, Final
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.lora import LoraAdapter, LoraScale, Scales, check_lora, scales_of
from llamagrid.worker.engine.media import Media, PlacedImage, text_tokens
from llamagrid.worker.engine.parsing import chosen_tool_format, reasoning_format_of
from llamagrid.worker.engine.prompts import check_fits
from llamagrid.worker.engine.reports import (
    EmbedResult,
    KvTier,
    Load,
    ModelDescription,
    SessionReport,
    TierCounts,
    TokenPiece,
)
from llamagrid.worker.engine.request_prompts import RequestPrompts
from llamagrid.worker.engine.requests import GenerationSpec, ImageInput, Message, ReasoningFormat
from llamagrid.worker.engine.runtime import Runtime
from llamagrid.worker.engine.sampling import prepare_history, wants_history
from llamagrid.worker.engine.sessions import (
    Session,
    SessionTable,
    check_session_id,
    check_transcript,
)
from llamagrid.worker.engine.slot import Job
from llamagrid.worker.engine.slot_control import SlotControl
from llamagrid.worker.engine.tiers import TierIndex
from llamagrid.worker.engine.tool_stream import (
    THINK_OPEN,
    OutputPlan,
    OutputSplitter,
    plan_output,
    with_tool_grammar,
)
from llamagrid.worker.engine.validation import (
    check_embed_inputs,
    check_generation,
    check_messages,
    check_prompt_logprobs,
    check_text_size,
    check_token_count,
    check_token_ids,
)
from llamagrid.worker.model_source import ModelSource
from llamagrid.worker.native import devices as dv
from llamagrid.worker.native.llama_backend import Model
from llamagrid.worker.native.sampler import SamplerHistory
from llamagrid.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
#: Threads that render templates and tokenize. Tokenizing the largest allowed prompt takes
#: seconds: two threads keep one such request from holding up every other prompt, and leave
#: the cores to decoding.
TOKENIZE_THREADS = 2


class Engine(Protocol):
    """What the gRPC service needs from an inference engine."""

    @property
    def ready(self) -> bool:
        """Loaded and accepting work."""

    @property
    def slot_control(self) -> SlotControl:
        """The slots as llama-server shows them, and slot files (engine/slot_control.py)."""

    def description(self) -> ModelDescription:
        """The model served (only valid once ready)."""

    def placement(self) -> dv.Placement:
        """Where the model runs: devices and layers (only valid once ready)."""

    def metrics_snapshot(self) -> EngineSnapshot | None:
        """Counters and state for /metrics, from any thread; None while not serving."""

    def generate(self, request: GenerationSpec) -> AsyncIterator[list[Event]]:
        """Stream events in batches: everything produced since the previous batch, oldest first
        (several tokens when the consumer falls behind). Closing the iterator early cancels the
        generation."""

    async def embed(
        self, inputs: list[str | list[int]], normalize: bool, dimensions: int | None = None
    ) -> EmbedResult:
        """Embeddings of texts or token lists, truncated to ``dimensions`` when set."""

    async def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[TokenPiece]:
        """Token ids and their bytes."""

    async def detokenize(self, tokens: list[int], render_special: bool) -> str:
        """Text of token ids."""

    async def apply_template(self, messages: list[Message]) -> str:
        """The prompt text of a conversation: the chat template's rendering, no generation."""

    async def load(self) -> Load:
        """Work in progress and KV cache occupancy."""

    def lora_adapters(self) -> list[LoraAdapter]:
        """The LoRA adapters loaded, with the scales a request that gives none runs with."""

    async def set_lora_adapters(self, entries: list[LoraScale]) -> list[LoraAdapter]:
        """Set the scales of the adapters listed, 0 for the others; returns them all."""

    async def drain(self, grace_s: float) -> None:
        """Refuse new work, let running work finish for up to grace_s, then stop."""

    async def open_session(
        self,
        ttl_s: int,
        tokens: list[int],
        turn_ends: list[int],
        images: Sequence[tuple[int, ImageInput]] = (),
    ) -> SessionReport:
        """A new session, empty or resuming from a transcript and its images."""

    async def describe_session(self, session_id: str, with_transcript: bool) -> SessionReport:
        """A session's state, and its transcript when asked."""

    async def fork_session(self, session_id: str, turns: int, ttl_s: int) -> SessionReport:
        """A new session holding the first turns of another."""

    async def rollback_session(self, session_id: str, turns: int) -> SessionReport:
        """Drop a session's turns after the first ``turns``."""

    async def close_session(self, session_id: str) -> None:
        """Delete a session, cancelling a turn that runs on it."""

    async def cancel_turn(self, session_id: str) -> bool:
        """Cancel the turn running on a session; False when none runs."""


class LlamaEngine:
    """An Engine on llama.cpp, with one thread that loads the model and runs the scheduler."""

    def __init__(self, settings: WorkerSettings, source: ModelSource) -> None:
        self.settings = settings
        self.source = source
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        #: Held by the engine thread during each step: a step's events reach the loop at once.
        self._gate = WakeGate()
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._stopping = False
        self._desc: ModelDescription | None = None
        self._placement: dv.Placement | None = None
        self._lock = threading.Lock()
        self._queued = 0
        self._running = 0
        self._limits = RequestLimits.from_settings(settings)
        #: Set once loaded: templates and tokenization, called on the tokenizer threads.
        self._prompts: RequestPrompts | None = None
        self._tokenizer_pool = concurrent.futures.ThreadPoolExecutor(
            TOKENIZE_THREADS, thread_name_prefix="llama-tokenize"
        )
        #: Embedding inputs accepted and not yet answered (on the event loop only).
        self._embed_queued = 0
        #: Why the engine thread died while serving, if it did.
        self.failure: BaseException | None = None
        #: The tool-call and thinking formats of the chat template (found on first use).
        self._formats: tuple[str, str | None] | None = None
        #: Conversations kept here (on the event loop's thread only).
        self.sessions = SessionTable(
            settings.max_sessions,
            settings.session_ttl_s,
            settings.max_session_ttl_s,
            max_images=settings.max_session_images,
            image_bytes=settings.session_image_mib << 20,
        )
        #: GetSlots and slot files (--slot-save-path), run through this engine's thread.
        self.slot_control = SlotControl(settings.slot_save_path, self._call)
        #: The LoRA adapters' file names and global scales (set by the engine thread).
        self._lora_files: tuple[str, ...] = ()
        self._lora_scales: Scales = ()

    # Life cycle.
    def start(self) -> None:
        """Start loading in the engine thread; `ready` turns true when done."""
        self._thread.start()

    async def wait_loaded(self) -> None:
        """Wait until loading ends; raises if it failed."""
        await asyncio.to_thread(self._loaded.wait)
        if isinstance(self._load_error, dv.OffloadError):
            raise self._load_error
        if self._load_error is not None:
            raise RuntimeError(f"model failed to load: {self._load_error}")

    @property
    def ready(self) -> bool:
        """Loaded, not shutting down."""
        return self._desc is not None and not self._stopping

    @property
    def busy(self) -> int:
        """Requests waiting or running."""
        return self._queued + self._running

    def description(self) -> ModelDescription:
        """The model served."""
        if self._desc is None:
            raise not_ready("the model is still loading")
        return self._desc

    def placement(self) -> dv.Placement:
        """Devices and layer placement of the model served."""
        self.description()
        assert self._placement is not None
        return self._placement

    def metrics_snapshot(self, timeout_s: float = 5.0) -> EngineSnapshot | None:
        """A snapshot taken by the engine thread between two steps; None if it doesn't answer."""
        if self._desc is None or not self._thread.is_alive():
            return None
        future: concurrent.futures.Future[EngineSnapshot] = concurrent.futures.Future()
        self._inbox.put(("call", self._snapshot, future))
        try:
            snapshot = future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            log.warning("the engine did not answer a metrics scrape within %.0f s", timeout_s)
            return None
        # Sessions by tier, counted here rather than on the engine thread.
        tiers = TierIndex(*snapshot.tier_holders).counts(self.sessions.transcripts())
        return dataclasses.replace(snapshot, session_tiers=tiers, tier_holders=([], []))

    def _snapshot(self, rt: Runtime) -> EngineSnapshot:
        sched = rt.scheduler
        kv = sched.kv_use()
        return EngineSnapshot(
            counters=rt.counters.copy(),
            slots=self.settings.parallel,
            slots_busy=sched.active,
            queued=self._queued,
            max_queue=self.settings.max_queue,
            kv_cells_used=kv.used,
            kv_cells_total=kv.total,
            prefix_cache_tokens=sum(
                len(sched.cache.held(seq)) for seq, s in enumerate(sched.slots) if s is None
            ),
            embed_queued=rt.embedder.queued_inputs,
            device_layers={d.name: d.layers for d in rt.placement.devices},
            sessions=len(self.sessions),  # plain reads: safe from this thread
            session_tokens_reprefilled=self.sessions.reprefilled_tokens,
            host_bytes=sched.host.bytes_used,
            host_entries=len(sched.host.entries),
            tier_holders=sched.tier_holders(),
        )

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests, wait up to grace_s for running ones, then stop the thread."""
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + grace_s
        while self.busy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        self._inbox.put(("stop",))
        await asyncio.to_thread(self._thread.join, 30)
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    # Work.
    async def generate(self, request: GenerationSpec) -> AsyncIterator[list[Event]]:
        """Stream the events of one generation, in batches of everything pending. A session
        turn commits to its session when its final event comes (engine/sessions.py)."""
        self._check_accepting()
        desc = self.description()
        check_generation(
            request,
            desc.vocab_size,
            self._limits,
            desc.context_per_slot,
            desc.slots,
            media_marker=desc.media_marker,
            model=desc.alias,
        )
        if request.lora is not None:
            check_lora(request.lora, len(self._lora_files))
        tool_format, reasoning_format = self._output_formats(desc.chat_template)
        plan = plan_output(
            request, tool_format, reasoning_format, ReasoningFormat(self.settings.reasoning_format)
        )
        session = self.sessions.begin_turn(request.session) if request.session else None
        turn_id = session.turn_id if session is not None else 0
        batches = self._generate(request, desc.context_per_slot, session, plan)
        try:
            async with contextlib.aclosing(batches):  # closing generate closes the job now
                async for batch in batches:
                    yield batch
        finally:
            if session is not None:  # unless it committed: that ended it
                self.sessions.end_turn(session, turn_id)

    def _output_formats(self, template: str) -> tuple[str, str | None]:
        """The tool-call format (--tool-call-format, else the template's) and the thinking
        format of the chat template, found once."""
        if self._formats is None:
            chosen = chosen_tool_format(self.settings.tool_call_format, template)
            self._formats = (chosen, reasoning_format_of(template))
        return self._formats

    async def _thinking_open(self, plan: OutputPlan | None, prompt: list[int]) -> bool:
        """Whether a prompt ends inside a thinking block, when the request's parser or tool
        grammar needs to know."""
        if plan is None or not plan.needs_thinking_open:
            return False
        return await self._off_thread(self._tokenizer().opens_thinking, prompt, THINK_OPEN)

    def _render_special(self, plan: OutputPlan | None) -> frozenset[int]:
        """The control tokens of the markup a request's parser reads."""
        if plan is None:
            return frozenset()
        specials = self._tokenizer().specials.by_text
        return frozenset(specials[text].id for text in plan.markup if text in specials)

    async def _generate(
        self,
        request: GenerationSpec,
        seq_ctx: int,
        session: Session | None,
        plan: OutputPlan | None = None,
    ) -> AsyncGenerator[list[Event], None]:
        prompts = self._tokenizer()
        with self._lock:
            free = self.settings.parallel - self._running
            if self._queued >= self.settings.max_queue + max(free, 0):
                raise EngineError(
                    Reason.QUEUE_FULL,
                    f"all {self.settings.parallel} slots are busy and the queue is full "
                    f"({self.settings.max_queue} waiting)",
                    retry_after_s=1.0,
                )
            self._queued += 1  # a queue place, held while the prompt is tokenized
        media: Media | None = None  # the prompt's images, owned here until the job has them
        try:
            if session is None:
                turn: list[int] = []
                if request.all_images:
                    prompt, media = await self._off_thread(prompts.prompt_media, request)
                else:
                    prompt = await self._off_thread(prompts.prompt_tokens, request)
            else:
                history, placed = session.tokens.tolist(), list(session.images)
                turn, media = await self._off_thread(prompts.turn_media, request, history, placed)
                prompt = history + turn
                self.sessions.check_open(session)
                if media is not None:  # the turn's own images, held until it commits or ends
                    self.sessions.reserve(session, media.placed(request.all_images, len(placed)))
            check_fits(request, len(prompt), seq_ctx)
            check_prompt_logprobs(request, len(prompt), self._limits)
            echo = await self._echo_text(request) if request.echo else None
            text = text_tokens(prompt) if media is not None else prompt  # no image positions
            thinking_open = await self._thinking_open(plan, text)
            sampler_history = await self._sampler_history(request, seq_ctx, text)
            self._check_accepting()
        except BaseException:  # refused, failed or cancelled while tokenizing
            with self._lock:
                self._queued -= 1
            if media is not None:
                media.close()
            raise
        splitter = None
        if plan is not None:
            splitter = OutputSplitter(plan, thinking_open, request.request_id)
            request = with_tool_grammar(request, plan, thinking_open)
        job = Job(
            request,
            EventChannel(asyncio.get_running_loop(), self._gate),
            prompt=prompt,
            render_special=self._render_special(plan),
            echo_text=echo,
            sampler_history=sampler_history,
            media=media,
        )
        finals = 0
        if session is not None:
            session.cancel = functools.partial(self._abort_job, job)
        self._inbox.put(("job", job))
        done = False
        generated: list[int] = []
        try:
            while not done:
                batch: list[Event] = []
                for item in await job.channel.take():
                    if isinstance(item, BaseException):
                        done = True  # the job has ended: nothing to cancel
                        if batch:
                            yield splitter.apply(batch) if splitter else batch
                        raise item
                    if session is not None and isinstance(item, Chunk):
                        generated += item.token_ids
                    elif session is not None and isinstance(item, Final):
                        # Prefilled beyond the turn's own tokens and the one token a turn
                        # that ended at max_tokens leaves undecoded: earlier turns, again.
                        u = item.usage
                        fresh = len(turn) + 1
                        again = u.prompt_tokens - u.cached_tokens - u.restored_tokens - fresh
                        self.sessions.reprefilled_tokens += max(0, again)
                        commit = self.sessions.commit(session, turn + generated)
                        item = dataclasses.replace(item, session=commit)
                    batch.append(item)
                    finals += isinstance(item, Final)
                    done = finals == request.choices  # one final event per choice
                yield splitter.apply(batch) if splitter else batch
        finally:
            if not done:
                job.cancelled = True
                self._inbox.put(("wake",))

    async def _echo_text(self, request: GenerationSpec) -> str:
        """The prompt's text to send back: a text prompt as given, token ids as their text
        (special tokens written out, since the client sent them)."""
        if request.prompt is not None:
            return request.prompt
        tokens = list(request.tokens or ())
        return await self._off_thread(self._tokenizer().detokenize, tokens, True)

    def _abort_job(self, job: Job, error: EngineError) -> None:
        """End a job from the loop's side: its stream gets the error, the engine drops it."""
        job.cancelled = True
        job.channel.push(error)
        self._inbox.put(("wake",))

    # Sessions (engine/sessions.py): the table lives on the event loop's thread.
    async def open_session(
        self,
        ttl_s: int,
        tokens: list[int],
        turn_ends: list[int],
        images: Sequence[tuple[int, ImageInput]] = (),
    ) -> SessionReport:
        """A new session, empty or resuming from a transcript and its images (each image's
        tokens begin at its position)."""
        self._check_accepting()
        desc = self.description()
        check_token_count(len(tokens), self._limits, "transcript.token_ids")
        check_transcript(tokens, turn_ends, desc.context_per_slot)
        placed: list[PlacedImage] = []
        text = tokens
        if images:
            self.sessions.check_image_count(len(images), "transcript.images")
            prompts = self._tokenizer()
            placed, text = await self._off_thread(prompts.transcript_images, tokens, images)
        check_token_ids(text, desc.vocab_size, "transcript.token_ids")
        session = self.sessions.open(ttl_s, tokens, turn_ends, placed)
        return await self._report(session, False)

    async def describe_session(self, session_id: str, with_transcript: bool) -> SessionReport:
        """A session's state, and its transcript when asked."""
        check_session_id(session_id)
        return await self._report(self.sessions.get(session_id), with_transcript)

    async def fork_session(self, session_id: str, turns: int, ttl_s: int) -> SessionReport:
        """A new session holding the first turns of another."""
        check_session_id(session_id)
        return await self._report(self.sessions.fork(session_id, turns, ttl_s), False)

    async def rollback_session(self, session_id: str, turns: int) -> SessionReport:
        """Drop a session's turns after the first ``turns``."""
        check_session_id(session_id)
        return await self._report(self.sessions.rollback(session_id, turns), False)

    async def close_session(self, session_id: str) -> None:
        """Delete a session, cancelling a turn that runs on it."""
        check_session_id(session_id)
        self.sessions.close(session_id)

    async def cancel_turn(self, session_id: str) -> bool:
        """Cancel the turn running on a session; False when none runs."""
        check_session_id(session_id)
        return self.sessions.cancel_turn(session_id)

    async def _tier_index(self) -> TierIndex:
        """What each KV tier holds, taken between two engine steps and indexed off the engine
        thread."""

        def holders(rt: Runtime) -> tuple[list[list[int]], list[list[int]]]:
            return rt.scheduler.tier_holders()

        return TierIndex(*await self._call(holders))

    async def _report(self, session: Session, with_transcript: bool) -> SessionReport:
        tokens = session.tokens.tolist()
        tier = (await self._tier_index()).tier(tokens) if self.ready else KvTier.TRANSCRIPT
        remaining = session.expires_at() - time.monotonic()
        return SessionReport(
            session_id=session.session_id,
            length=len(tokens),
            turn_ends=tuple(session.turn_ends),
            expires_unix_ms=int((time.time() + remaining) * 1000),
            ttl_s=session.ttl_s,
            kv_tier=tier,
            busy=session.busy,
            images=len(session.images),
            tokens=tuple(tokens) if with_transcript else None,
            placed=tuple(session.images) if with_transcript else (),
        )

    async def embed(
        self, inputs: list[str | list[int]], normalize: bool, dimensions: int | None = None
    ) -> EmbedResult:
        """Embeddings of texts or token lists, in order, batched with concurrent requests;
        truncated to their first ``dimensions`` components (before normalising) when set."""
        self._check_accepting()
        desc = self.description()
        check_embed_inputs(inputs, desc.vocab_size, self._limits)
        desc.embedding_dimensions.check_request(dimensions, desc.embedding_size)
        if self._embed_queued + len(inputs) > self.settings.max_embed_queue:
            raise EngineError(
                Reason.QUEUE_FULL,
                f"{self._embed_queued} embedding inputs are waiting; at most "
                f"{self.settings.max_embed_queue} may",
                retry_after_s=1.0,
            )
        self._embed_queued += len(inputs)
        try:
            return await self._embed(inputs, normalize, dimensions)
        finally:
            self._embed_queued -= len(inputs)

    async def _embed(
        self, inputs: list[str | list[int]], normalize: bool, dimensions: int | None
    ) -> EmbedResult:
        tokens = await self._off_thread(self._tokenizer().embed_tokens, inputs)

        def run(rt: Runtime) -> EmbedJob:
            job = rt.embedder.submit(tokens, normalize, dimensions)
            rt.counters.on_embed([len(t) for t in tokens])
            return job

        job = await self._call(run)
        try:
            return await asyncio.wrap_future(job.future)
        finally:
            if not job.future.done():  # the caller went away: drop the inputs not yet decoded
                job.abandoned = True
                self._inbox.put(("wake",))

    async def load(self) -> Load:
        """Work in progress and KV cache occupancy, read between two engine steps."""

        def run(rt: Runtime) -> Load:
            kv = rt.scheduler.kv_use()
            return Load(
                active=rt.scheduler.active,
                queued=self._queued,
                slots=self.settings.parallel,
                max_queue=self.settings.max_queue,
                kv_cells_used=kv.used,
                kv_cells_total=kv.total,
                embed_queued=rt.embedder.queued_inputs,
                decode_steps=rt.counters.decode_calls,
                host_cache_bytes=rt.scheduler.host.bytes_used,
                host_cache_saves=rt.counters.host_saves,
                host_cache_restores=rt.counters.host_restores,
            )

        load = await self._call(run)
        tiers = TierCounts()
        if len(self.sessions):
            tiers = (await self._tier_index()).counts(self.sessions.transcripts())
        return dataclasses.replace(
            load,
            sessions=len(self.sessions),
            session_tiers=tiers,
            max_sessions=self.sessions.max_sessions,
            session_tokens_reprefilled=self.sessions.reprefilled_tokens,
        )

    def lora_adapters(self) -> list[LoraAdapter]:
        """The LoRA adapters loaded, with the scales a request that gives none runs with."""
        files, scales = self._lora_files, self._lora_scales
        return [LoraAdapter(i, f, s) for i, (f, s) in enumerate(zip(files, scales, strict=True))]

    async def set_lora_adapters(self, entries: list[LoraScale]) -> list[LoraAdapter]:
        """Set the scales of the adapters listed, 0 for the others, for the requests admitted
        from now on (those running keep theirs); returns every adapter."""
        self._check_accepting()
        check_lora(entries, len(self._lora_files), "adapters")
        scales = scales_of(entries, len(self._lora_files))

        def run(rt: Runtime) -> None:  # on the engine thread, so that calls apply in order
            rt.scheduler.lora_scales = self._lora_scales = scales

        await self._call(run)
        return self.lora_adapters()

    async def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[TokenPiece]:
        """Token ids of text, with their bytes."""
        self._check_accepting()
        check_text_size([text], self._limits, "text")
        return await self._off_thread(self._tokenizer().pieces, text, add_special, parse_special)

    async def detokenize(self, tokens: list[int], render_special: bool) -> str:
        """Text of token ids."""
        self._check_accepting()
        check_token_count(len(tokens), self._limits, "token_ids")
        check_token_ids(tokens, self.description().vocab_size, "token_ids")
        return await self._off_thread(self._tokenizer().detokenize, tokens, render_special)

    async def apply_template(self, messages: list[Message]) -> str:
        """The prompt text of a conversation, checked as a chat input of Generate is."""
        self._check_accepting()
        check_messages(messages, self._limits)
        return await self._off_thread(self._tokenizer().chat_text, messages)

    def _check_accepting(self) -> None:
        if self._stopping:
            raise not_ready("the worker is shutting down")
        self.description()

    def _tokenizer(self) -> RequestPrompts:
        self._check_accepting()
        if self._prompts is None:
            raise not_ready("the model is still loading")
        return self._prompts

    async def _sampler_history(
        self, request: GenerationSpec, seq_ctx: int, prompt: list[int]
    ) -> SamplerHistory | None:
        """The request's penalties and DRY samplers, given the prompt, made on a tokenizer
        thread: DRY reads the whole vocabulary per sequence breaker (engine/sampling.py)."""
        if not wants_history(request.sampling, seq_ctx):
            return None
        prompts = self._tokenizer()
        model = prompts.vocab
        assert isinstance(model, Model)
        make = functools.partial(prepare_history, model, request.sampling, seq_ctx, prompt)
        return await self._off_thread(prompts.holding_model, make)

    async def _off_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run fn on a tokenizer thread. A caller that goes away before it starts cancels it;
        once started it finishes there (the size limits bound it) and its result is dropped."""
        try:
            return await asyncio.wrap_future(self._tokenizer_pool.submit(fn, *args, **kwargs))
        except EngineError:
            raise
        except Exception as exc:  # a bug this request hit: it fails alone
            log.exception("tokenizing a request failed")
            raise internal(f"the request could not be tokenized: {exc}") from exc

    async def _call(self, fn: Callable[[Runtime], T]) -> T:
        self._check_accepting()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._inbox.put(("call", fn, future))
        return await asyncio.wrap_future(future)

    # The engine thread.
    def _run(self) -> None:
        runtime: Runtime | None = None
        try:
            runtime = Runtime(self.settings, self.source)
            self._placement = runtime.placement
            self._prompts = runtime.prompts
            self._lora_files = runtime.lora_files
            self._lora_scales = runtime.scheduler.lora_scales
            self._desc = runtime.describe()
        except BaseException as exc:  # report any load failure to the waiting server
            if not isinstance(exc, dv.OffloadError):  # whose message says it all
                log.exception("loading %s failed", self.source.path)
            if runtime is not None:
                runtime.close()
            self._load_error = exc
            self._loaded.set()
            return
        self._loaded.set()
        log.info("model %s ready (%s)", self._desc.alias, self.source.path)
        try:
            self._loop(runtime)
        except BaseException as exc:  # the worker can't serve without this thread: say so
            log.exception("the engine thread died")
            self.failure = exc
            self._stopping = True
        finally:
            runtime.close()  # fails every waiting and running job
            self._fail_inbox(not_ready("the worker's engine stopped"))

    def _fail_inbox(self, error: EngineError) -> None:
        """Answer whatever is still in the inbox: nothing will run it any more."""
        while not self._inbox.empty():
            cmd = self._inbox.get_nowait()
            if cmd[0] == "job":
                cmd[1].fail(error)
            elif cmd[0] == "call" and cmd[2].set_running_or_notify_cancel():
                cmd[2].set_exception(error)

    async def wait_stopped(self) -> None:
        """Return when the engine thread has ended: after drain(), or because it failed
        (``failure`` then holds why)."""
        await asyncio.to_thread(self._thread.join)

    def _loop(self, rt: Runtime) -> None:
        sched = rt.scheduler
        sched.on_dequeue = self._on_dequeue
        while True:
            block = not sched.active and not sched.waiting and not rt.embedder.pending
            if not self._handle(rt, self._inbox.get() if block else None):
                return
            while not self._inbox.empty():
                if not self._handle(rt, self._inbox.get_nowait()):
                    return
            try:
                with self._gate.held():
                    sched.step()
            except Exception as exc:  # a failed decode must not kill the worker
                log.exception("decode step failed; failing the running requests")
                sched.fail_all(internal(f"decode failed: {exc}"))
            rt.embedder.step()
            self._running = sched.active

    def _on_dequeue(self, job: Job) -> None:
        with self._lock:
            self._queued -= 1
            self._running += 1

    def _handle(self, rt: Runtime, cmd: tuple[Any, ...] | None) -> bool:
        if cmd is None or cmd[0] == "wake":
            return True
        if cmd[0] == "stop":
            return False
        if cmd[0] == "job":
            rt.scheduler.enqueue(cmd[1])
        elif cmd[0] == "call":
            fn, future = cmd[1], cmd[2]
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(rt))
                except Exception as exc:  # handed back to the awaiting handler
                    future.set_exception(exc)
        return True
