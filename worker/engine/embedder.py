"""Embeddings on a context of their own, packing inputs of concurrent requests into each decode.

Requests queue here; every engine step runs at most one embedding decode, filled with inputs
from as many queued requests as fit, so embedding work interleaves with generation steps
instead of stalling them for a whole batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from llamagrid.worker.engine.errors import (
    context_exceeded,
    internal,
    invalid,
    not_ready,
)
from llamagrid.worker.engine.reports import EmbedResult
from llamagrid.worker.native.llama_backend import Batch, Context, Model

log = logging.getLogger(__name__)


@dataclass(eq=False)
class EmbedJob:
    """One Embed request: its token lists, and the vectors computed so far."""

    inputs: list[list[int]]
    normalize: bool
    future: concurrent.futures.Future[EmbedResult]
    #: Keep only this many leading components of each vector (None: all), before normalising.
    dimensions: int | None = None
    vectors: list[list[float]] = field(default_factory=list)
    #: Inputs handed to a decode so far.
    scheduled: int = 0
    #: Set from the event loop when the caller went away: remaining inputs are dropped.
    abandoned: bool = False

    def __post_init__(self) -> None:
        self.vectors = [[] for _ in self.inputs]


class Embedder:
    """Pooled embeddings of token lists. Call only from the engine thread."""

    def __init__(self, model: Model, ctx: Context, step_tokens: int) -> None:
        self.model = model
        self.ctx = ctx
        #: Tokens one decode takes (a longer single input still goes alone).
        self.step_tokens = min(step_tokens, ctx.n_batch)
        self.pending: deque[EmbedJob] = deque()
        self._batch = Batch(ctx.n_batch, 1)

    @property
    def max_tokens(self) -> int:
        """The longest input that fits one decode."""
        return self.ctx.n_batch

    @property
    def queued_inputs(self) -> int:
        """Inputs waiting for a decode."""
        return sum(len(job.inputs) - job.scheduled for job in self.pending)

    def close(self) -> None:
        """Fail queued requests; free the batch and the context."""
        error = not_ready("the worker is shutting down")
        for job in self.pending:
            if not job.future.done():
                job.future.set_exception(error)
        self.pending.clear()
        self._batch.close()
        self.ctx.close()

    def submit(
        self, inputs: list[list[int]], normalize: bool, dimensions: int | None = None
    ) -> EmbedJob:
        """Queue validated inputs; raises EngineError at once for one that cannot be embedded:
        too long to fit, or with no token at all (a text can tokenize to nothing, such as a
        lone control character, and llama.cpp fails a decode of an empty sequence)."""
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise invalid(f"input {i} has no tokens once tokenized", "input")
            if len(tokens) > self.max_tokens:
                raise context_exceeded(
                    f"input {i} has {len(tokens)} tokens; the most this model embeds is "
                    f"{self.max_tokens}",
                    "input",
                )
        job = EmbedJob(inputs, normalize, concurrent.futures.Future(), dimensions)
        if not inputs:
            job.future.set_result(EmbedResult([], []))
        else:
            self.pending.append(job)
        return job

    def warm_up(self, tokens: list[int]) -> None:
        """Decode one input and drop its vector, so that the first Embed request does not pay
        for llama.cpp's first decode on this context."""
        self._decode_group([tokens])

    def step(self) -> bool:
        """Run one decode over as many queued inputs as fit. Returns False when idle."""
        group = self._pack()
        if not group:
            return False
        try:
            vectors = self._decode_group([job.inputs[i] for job, i in group])
        except Exception as exc:  # a failed decode fails only the requests in it
            log.exception("embedding decode failed")
            for job in {job for job, _ in group}:
                self._finish(job, internal(f"decode failed: {exc}"))
            return True
        for (job, i), vec in zip(group, vectors, strict=True):
            if job.dimensions is not None:
                vec = vec[: job.dimensions]
            if job.normalize:
                norm = float(np.linalg.norm(vec))
                vec = vec / norm if norm > 0 else vec
            job.vectors[i] = vec.tolist()
        for job in {job for job, _ in group}:
            if job.scheduled == len(job.inputs) and not job.future.done():
                self._finish(job, None)
        return True

    def _finish(self, job: EmbedJob, error: BaseException | None) -> None:
        if job in self.pending:
            self.pending.remove(job)
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(EmbedResult(job.vectors, [len(t) for t in job.inputs]))

    def _pack(self) -> list[tuple[EmbedJob, int]]:
        """Inputs for the next decode, oldest request first, within the sequence/token budget."""
        group: list[tuple[EmbedJob, int]] = []
        used = 0
        for job in list(self.pending):
            if job.abandoned:  # nobody waits for the result any more
                self.pending.remove(job)
                continue
            if not job.future.running() and not job.future.set_running_or_notify_cancel():
                self.pending.remove(job)  # the caller went away before any work was done
                continue
            while job.scheduled < len(job.inputs) and len(group) < self.ctx.n_seq_max:
                n = len(job.inputs[job.scheduled])
                if group and used + n > self.step_tokens:
                    return group
                group.append((job, job.scheduled))
                job.scheduled += 1
                used += n
            if len(group) >= self.ctx.n_seq_max:
                break
        return group

    def _decode_group(self, group: list[list[int]]) -> list[np.ndarray]:
        batch = self._batch
        batch.clear()
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.add(token, pos, seq, True)
        try:
            self.ctx.decode(batch)
            return [self.ctx.sequence_embedding(seq) for seq in range(len(group))]
        finally:
            self.ctx.clear()
