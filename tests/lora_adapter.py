"""A small LoRA adapter GGUF for the test model, written with the ``gguf`` package.

The adapter adds a random low-rank update B·A to some weight matrices of some layers, with
the shapes read from the model file. It is not trained: it only has to change the model's
output measurably at scale 1 (and, being left off at scale 0, not at all there).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

#: The rank of the update (alpha equals it, so that the update is B·A times the scale).
RANK = 8


def write_lora_adapter(
    path: Path,
    model_path: Path,
    seed: int,
    targets: Sequence[str] = ("attn_output", "ffn_down"),
    layers: Sequence[int] = (0, 1, 2, 3),
    strength: float = 0.5,
) -> Path:
    """Write an adapter for the model at ``model_path`` to ``path``: B·A on each target matrix
    of each layer given, B's entries of standard deviation ``strength``."""
    reader = GGUFReader(model_path)
    arch = reader.fields["general.architecture"].contents()
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(RANK))
    for layer in layers:
        for target in targets:
            name = f"blk.{layer}.{target}.weight"
            n_in, n_out = shapes[name]  # GGML order: ne0 is the input width
            # numpy's order is GGML's reversed: lora_a is ne [n_in, r], lora_b is ne [r, n_out].
            a = rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(RANK, n_in)).astype(np.float32)
            b = rng.normal(0.0, strength, size=(n_out, RANK)).astype(np.float32)
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
