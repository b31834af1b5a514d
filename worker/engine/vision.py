"""Image chunks evaluated into a request's own sequence, on the engine thread.

A prompt's text still goes through the scheduler's shared batched decode; its images do not
fit a token batch, so each one is encoded by the projector and its embeddings are decoded into
the request's sequence, at the positions the image takes, before the step's shared decode
(engine/scheduler.py calls ``evaluate``). An image costs one encode and a decode per n_batch of
its tokens, and a step evaluates at most one image, so that the other slots' decoding waits
for one image at most between two of their tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llamagrid.worker.engine.slot import Slot
from llamagrid.worker.native.llama_backend import Context

if TYPE_CHECKING:
    from llamagrid.worker.native.mtmd import EmbeddingBatch, Projector


class ImageEvaluator:
    """Puts images' embeddings into sequences of the generation context."""

    def __init__(self, projector: Projector, batch: EmbeddingBatch, ctx: Context) -> None:
        self.projector = projector
        self.batch = batch
        self.ctx = ctx

    def evaluate(self, slot: Slot) -> bool:
        """Evaluate the image chunk that starts where the slot's prefill stands, if one does,
        advancing the slot past it; returns whether one did. Once the last image is in, the
        job's images are freed. Raises when libmtmd or llama.cpp fails (the caller fails the
        slot's job alone)."""
        media = slot.job.media
        span = media.span_at(slot.n_past) if media is not None else None
        if media is None or span is None:
            return False
        if not media.images:
            raise RuntimeError("the request's images were freed before they were evaluated")
        embd = self.projector.encode(media.images[span.image], span.piece)
        self.batch.decode(self.ctx, embd, span.length, slot.n_past, slot.seq, span.piece.non_causal)
        slot.n_past += span.length
        if media.next_start(slot.n_past) is None:
            slot.job.close_media()
        return True

    def close(self) -> None:
        """Free the embedding batch (the runtime frees the projector)."""
        self.batch.close()
