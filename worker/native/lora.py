"""LoRA adapter files, and setting their scales on a context (llama_set_adapters_lora).

The adapters are loaded once, after the model, on the engine thread; llama.cpp frees them with
the model. Setting scales on a context takes effect from the next decode, so the scheduler sets
them between two decodes, only when they change.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import Any

import llama_cpp as lc

from llamagrid.worker.native.llama_backend import Context, Model


class LoraSet:
    """The adapters a worker loaded, in id order, and the scales its context applies now."""

    def __init__(self, model: Model, paths: Sequence[str]) -> None:
        self.paths = tuple(paths)
        self._handles: list[Any] = []
        for path in self.paths:
            ptr = lc.llama_adapter_lora_init(model.ptr, path.encode())
            if not ptr:
                raise RuntimeError(f"llama.cpp could not load the LoRA adapter {path}")
            self._handles.append(ptr)
        #: The scales last set on the context (None: never set; llama.cpp then applies none).
        self.applied: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self._handles)

    def apply(self, ctx: Context, scales: tuple[float, ...]) -> None:
        """Make the context's next decodes use these scales (one per adapter); adapters at
        scale 0 are left off, as llama-server does."""
        if scales == self.applied or not self._handles:
            return
        chosen = [(h, s) for h, s in zip(self._handles, scales, strict=True) if s != 0.0]
        adapters = (lc.llama_adapter_lora_p_ctypes * max(1, len(chosen)))(*(h for h, _ in chosen))
        values = (ctypes.c_float * max(1, len(chosen)))(*(s for _, s in chosen))
        rc = lc.llama_set_adapters_lora(ctx.ptr, adapters, len(chosen), values)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed with code {rc}")
        self.applied = scales
