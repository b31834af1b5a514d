"""Embeddings on a context of their own, packing many inputs into each llama_decode."""

from __future__ import annotations

import numpy as np

from worker.errors import context_exceeded, invalid
from worker.llama_backend import Batch, Context, Model
from worker.requests import EmbedResult


class Embedder:
    """Pooled embeddings of token lists. Call only from the engine thread."""

    def __init__(self, model: Model, ctx: Context) -> None:
        self.model = model
        self.ctx = ctx
        self._batch = Batch(ctx.n_batch, 1)

    @property
    def max_tokens(self) -> int:
        """The longest input that fits one decode."""
        return self.ctx.n_batch

    def close(self) -> None:
        """Free the batch and the context."""
        self._batch.close()
        self.ctx.close()

    def embed(self, inputs: list[list[int]], normalize: bool) -> EmbedResult:
        """One vector per input, in order, decoding as many inputs together as fit."""
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise invalid(f"input {i} is empty", "input")
            if len(tokens) > self.max_tokens:
                raise context_exceeded(
                    f"input {i} has {len(tokens)} tokens; the most this model embeds is "
                    f"{self.max_tokens}",
                    "input",
                )
            self.model.check_tokens(tokens, "input")
        vectors: list[list[float]] = []
        start = 0
        while start < len(inputs):
            end = self._pack(inputs, start)
            vectors.extend(self._decode_group(inputs[start:end], normalize))
            start = end
        return EmbedResult(vectors, [len(t) for t in inputs])

    def _pack(self, inputs: list[list[int]], start: int) -> int:
        used, end = 0, start
        while (
            end < len(inputs)
            and end - start < self.ctx.n_seq_max
            and used + len(inputs[end]) <= self.ctx.n_batch
        ):
            used += len(inputs[end])
            end += 1
        return end

    def _decode_group(self, group: list[list[int]], normalize: bool) -> list[list[float]]:
        batch = self._batch
        batch.clear()
        for seq, tokens in enumerate(group):
            for pos, token in enumerate(tokens):
                batch.add(token, pos, seq, True)
        try:
            self.ctx.decode(batch)
            out = []
            for seq in range(len(group)):
                vec = self.ctx.sequence_embedding(seq)
                if normalize:
                    norm = float(np.linalg.norm(vec))
                    vec = vec / norm if norm > 0 else vec
                out.append(vec.tolist())
            return out
        finally:
            self.ctx.clear()
