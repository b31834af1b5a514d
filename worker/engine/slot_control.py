"""Slots as llama-server shows them (GetSlots), and slot files (SaveSlot, RestoreSlot, EraseSlot).

A slot is one sequence of the generation context: it runs one request at a time, and between
requests keeps the KV cells of its last prompt as a cached prefix (engine/prefix_cache.py).

The engine thread does only what must happen there, between two steps: it copies each slot's
counts (never a token list), and moves one idle slot's KV state out of or into llama.cpp with
the per-sequence state calls the host tier uses. Files are written and read on a thread of their
own, and a file is checked (name, sizes, checksum, model and settings: engine/slot_files.py)
before the engine thread sees it. A restored slot's tokens become its cached prefix, so the next
request that starts with them reuses their cells.

Slot files are off unless the worker has --slot-save-path: every action is then refused with
SLOT_FILES_OFF, as llama-server refuses them without its --slot-save-path.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from llamagrid.worker.engine.errors import EngineError, Reason, internal, invalid
from llamagrid.worker.engine.requests import Sampling
from llamagrid.worker.engine.runtime import Runtime
from llamagrid.worker.engine.scheduler import Scheduler
from llamagrid.worker.engine.slot_files import (
    SlotCompat,
    SlotFile,
    read_slot_file,
    slot_path,
    write_slot_file,
)
from llamagrid.worker.native import slot_state

T = TypeVar("T")


class EngineCall(Protocol):
    """Runs a function on the engine thread between two steps (LlamaEngine._call)."""

    def __call__(self, fn: Callable[[Runtime], T]) -> Awaitable[T]: ...


@dataclass(frozen=True)
class SlotReport:
    """One slot's state, as read between two steps."""

    id: int
    #: Tokens one slot holds.
    n_ctx: int
    processing: bool
    request_id: str = ""
    session_id: str = ""
    #: Tokens whose KV cells the slot holds (decoded so far, or the idle slot's cached prefix).
    tokens_cached: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    max_tokens: int = 0
    #: The choice of the request the slot generates.
    choice: int = 0
    #: The running request's sampling options as given (unset ones: defaults); idle: none.
    sampling: Sampling | None = None


@dataclass(frozen=True)
class SlotSaved:
    """What SaveSlot did."""

    id: int
    filename: str
    tokens: int
    bytes_written: int
    ms: float


@dataclass(frozen=True)
class SlotRestored:
    """What RestoreSlot did."""

    id: int
    filename: str
    tokens: int
    bytes_read: int
    ms: float


def slot_reports(rt: Runtime) -> list[SlotReport]:
    """Every slot's counts (engine thread: no token list is copied)."""
    sched = rt.scheduler
    reports = []
    for seq, slot in enumerate(sched.slots):
        if slot is None:
            held = len(sched.cache.held(seq))
            reports.append(SlotReport(seq, sched.seq_ctx, False, tokens_cached=held))
            continue
        request = slot.job.request
        reports.append(
            SlotReport(
                seq,
                sched.seq_ctx,
                True,
                request_id=request.request_id,
                session_id=request.session.session_id if request.session else "",
                tokens_cached=slot.n_past,
                prompt_tokens=len(slot.prompt),
                generated_tokens=len(slot.out_tokens),
                max_tokens=slot.max_tokens,
                choice=slot.index,
                sampling=request.sampling,
            )
        )
    return reports


class SlotControl:
    """GetSlots and slot files over one engine."""

    def __init__(self, directory: str, call: EngineCall) -> None:
        #: --slot-save-path; empty: slot files are off.
        self.directory = directory
        self._call = call
        #: What this worker's states belong to (computed on first use, on the engine thread).
        self._compat: SlotCompat | None = None

    async def slots(self) -> list[SlotReport]:
        """Every slot's state."""
        return await self._call(slot_reports)

    async def save(self, seq: int, filename: str) -> SlotSaved:
        """Write an idle slot's tokens and KV state to a file."""
        path = self._path(filename)
        started = time.perf_counter()
        compat, tokens, state, scales = await self._call(functools.partial(self._take, seq))
        try:
            size = await asyncio.to_thread(write_slot_file, path, compat, tokens, state, scales)
        except OSError as exc:
            raise internal(f"the slot file could not be written: {exc.strerror}") from None
        ms = (time.perf_counter() - started) * 1000
        return SlotSaved(seq, filename, len(tokens), size, ms)

    async def restore(self, seq: int, filename: str) -> SlotRestored:
        """Load a file written by ``save`` into an idle slot."""
        path = self._path(filename)
        started = time.perf_counter()
        compat, seq_ctx, per_token, n_vocab = await self._call(self._limits)
        read = functools.partial(read_slot_file, path, seq_ctx, per_token, n_vocab)
        try:
            file = await asyncio.to_thread(read)
        except OSError as exc:
            raise invalid(f"the slot file cannot be read: {exc.strerror}", "filename") from None
        file.header.check(compat)
        await self._call(functools.partial(self._put, seq, file))
        ms = (time.perf_counter() - started) * 1000
        return SlotRestored(seq, filename, len(file.tokens), file.size, ms)

    async def erase(self, seq: int) -> int:
        """Drop an idle slot's cached tokens; returns how many it held."""
        self._check_on()
        return await self._call(functools.partial(_erase, seq))

    # Checks made before the engine thread is asked for anything.
    def _check_on(self) -> None:
        if not self.directory:
            raise EngineError(
                Reason.SLOT_FILES_OFF,
                "slot actions are off on this worker: start it with --slot-save-path DIR",
            )

    def _path(self, filename: str) -> Path:
        self._check_on()
        return slot_path(self.directory, filename)

    # On the engine thread.
    def _compat_of(self, rt: Runtime) -> SlotCompat:
        if self._compat is None:
            s = rt.settings
            self._compat = SlotCompat(
                model_file=rt.source.path.name,
                model_size=int(rt.info["size"]),
                model_fingerprint=slot_state.fingerprint(rt.model),
                n_ctx_slot=rt.scheduler.seq_ctx,
                kv_type=slot_state.kv_type(),
                flash_attn=s.flash_attn,
                kv_unified=s.kv_unified,
                llama_cpp=slot_state.build(),
                lora_adapters=json.dumps(list(rt.lora_files)),
            )
        return self._compat

    def _limits(self, rt: Runtime) -> tuple[SlotCompat, int, int, int]:
        per_token = slot_state.state_bytes_per_token(rt.model)
        return self._compat_of(rt), rt.scheduler.seq_ctx, per_token, rt.model.n_vocab

    def _take(
        self, seq: int, rt: Runtime
    ) -> tuple[SlotCompat, list[int], memoryview, tuple[float, ...]]:
        sched = rt.scheduler
        _check_idle(sched, seq)
        tokens = list(sched.cache.held(seq))
        if any(t < 0 for t in tokens):  # image positions (engine/media.py) have no token id
            raise invalid(
                f"slot {seq} holds an image's cells, which slot files cannot store yet", "id"
            )
        state = slot_state.save_state(rt.ctx, seq) if tokens else memoryview(b"")
        if state is None:
            raise internal(f"llama.cpp could not save slot {seq}'s KV state")
        return self._compat_of(rt), tokens, state, sched.kv_scales(seq)

    def _put(self, seq: int, file: SlotFile, rt: Runtime) -> None:
        sched = rt.scheduler
        _check_idle(sched, seq)
        scales = file.header.lora_scales
        if len(scales) != len(rt.lora_files):
            raise invalid("the slot file's LoRA scales do not match its adapters", "filename")
        sched.cache.take(seq)
        rt.ctx.forget(seq)
        tokens = file.tokens
        if tokens and not slot_state.restore_state(rt.ctx, seq, file.state, len(tokens)):
            raise invalid("llama.cpp refused the slot file's KV state", "filename")
        sched.set_kv_scales(seq, scales)
        sched.cache.retain(seq, tokens)


def _erase(seq: int, rt: Runtime) -> int:
    sched = rt.scheduler
    _check_idle(sched, seq)
    held = len(sched.cache.held(seq))
    rt.ctx.forget(seq)
    sched.cache.take(seq)
    return held


def _check_idle(sched: Scheduler, seq: int) -> None:
    """The slot must exist and run nothing (nor wait for a pending KV copy)."""
    count = len(sched.slots)
    if not 0 <= seq < count:
        raise invalid(f"slot {seq} does not exist: this worker has slots 0 to {count - 1}", "id")
    if not sched.settled(seq):
        raise EngineError(
            Reason.SLOT_BUSY, f"slot {seq} is processing a request; retry once it is idle", "id"
        )
