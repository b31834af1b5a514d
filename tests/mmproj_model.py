"""A small llava-style vision projector GGUF for the test model, and PNG test images.

No vision model can be downloaded here, so the tests make one: a CLIP-like vision tower and a
two-layer MLP projector (llama.cpp's ``mlp`` projector type, as in LLaVA 1.5) with seeded
random weights, written with numpy and the ``gguf`` package in the layout that llama.cpp's
``tools/mtmd/clip.cpp`` loads. It is not trained: its answers are meaningless, but different
pixels give different embeddings, which is what the tests look at.

Shapes, from what clip.cpp does with an ``mlp`` projector:

- every image is resized to ``IMAGE_SIZE`` x ``IMAGE_SIZE`` and cut into ``PATCH_SIZE`` patches:
  (56 / 14)^2 = 16 patches, so an image is ``IMAGE_TOKENS`` = 16 tokens in the text model;
- the tower has ``BLOCKS`` = 2 blocks, of which clip.cpp runs all but the last (LLaVA takes
  the second-to-last layer's output); both are loaded, so both are written;
- the projector maps the tower's width (``VISION_WIDTH``) to ``PROJECTION_DIM``, which must be
  the text model's embedding width (SmolLM2-135M: 576) or mtmd refuses the pair;
- ``clip.cpp`` swaps a block's FFN up and down weights when the down weight's input width equals
  the tower's width (a fix for old conversions), so ``VISION_FF`` differs from ``VISION_WIDTH``.

Weights are drawn with a standard deviation of 1/sqrt(fan-in), so activations stay of order
one through the tower, and the projector's output layer is scaled to ``EMBEDDING_STD``, about
the spread of SmolLM2's own token embeddings. The file is about 1 MB, F32, and the same bytes
for the same seed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

#: Side of the square image the tower sees, in pixels (any image is resized to it).
IMAGE_SIZE = 56
#: Side of a patch, in pixels.
PATCH_SIZE = 14
#: Tokens one image takes in the text model: one per patch.
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
#: SmolLM2-135M's embedding width, which the projector's output must match.
PROJECTION_DIM = 576
#: Width of the vision tower.
VISION_WIDTH = 64
#: Hidden width of each block's feed-forward layer (not VISION_WIDTH: see the module docstring).
VISION_FF = 128
#: Attention heads in each block.
VISION_HEADS = 4
#: Blocks in the tower.
BLOCKS = 2
#: Hidden width of the MLP projector (mm.0's output, mm.2's input).
PROJECTOR_HIDDEN = 256
#: Standard deviation of the projector's output, about that of SmolLM2's token embeddings.
EMBEDDING_STD = 0.1
#: CLIP's pixel normalisation, as LLaVA's projectors declare it.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def _linear(
    rng: np.random.Generator, n_out: int, n_in: int, std: float | None = None
) -> np.ndarray:
    """A weight matrix in numpy's (out, in) order, which is GGML's [in, out] reversed."""
    scale = 1.0 / np.sqrt(n_in) if std is None else std
    return rng.normal(0.0, scale, size=(n_out, n_in)).astype(np.float32)


def _small(rng: np.random.Generator, n: int) -> np.ndarray:
    """A bias vector near zero."""
    return rng.normal(0.0, 0.02, size=n).astype(np.float32)


def _tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every tensor of the projector, by its GGUF name."""
    d, n_pos = VISION_WIDTH, IMAGE_TOKENS + 1  # one position for the class embedding
    ones, zeros = np.ones(d, np.float32), np.zeros(d, np.float32)
    fan_in = 3 * PATCH_SIZE * PATCH_SIZE
    tensors = {
        # numpy (out channels, in channels, kh, kw) is GGML's conv kernel [kw, kh, in, out].
        "v.patch_embd.weight": rng.normal(
            0.0, 1.0 / np.sqrt(fan_in), size=(d, 3, PATCH_SIZE, PATCH_SIZE)
        ).astype(np.float32),
        "v.patch_embd.bias": _small(rng, d),
        "v.class_embd": rng.normal(0.0, 1.0, size=d).astype(np.float32),
        "v.position_embd.weight": rng.normal(0.0, 0.5, size=(n_pos, d)).astype(np.float32),
        "v.pre_ln.weight": ones,
        "v.pre_ln.bias": zeros,
    }
    for i in range(BLOCKS):
        blk = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{blk}.{name}.weight"] = _linear(rng, d, d)
            tensors[f"{blk}.{name}.bias"] = _small(rng, d)
        for norm in ("ln1", "ln2"):
            tensors[f"{blk}.{norm}.weight"] = ones
            tensors[f"{blk}.{norm}.bias"] = zeros
        tensors[f"{blk}.ffn_up.weight"] = _linear(rng, VISION_FF, d)
        tensors[f"{blk}.ffn_up.bias"] = _small(rng, VISION_FF)
        tensors[f"{blk}.ffn_down.weight"] = _linear(rng, d, VISION_FF)
        tensors[f"{blk}.ffn_down.bias"] = _small(rng, d)
    tensors["mm.0.weight"] = _linear(rng, PROJECTOR_HIDDEN, d)
    tensors["mm.0.bias"] = _small(rng, PROJECTOR_HIDDEN)
    out_std = EMBEDDING_STD / np.sqrt(PROJECTOR_HIDDEN)
    tensors["mm.2.weight"] = _linear(rng, PROJECTION_DIM, PROJECTOR_HIDDEN, std=out_std)
    tensors["mm.2.bias"] = np.zeros(PROJECTION_DIM, np.float32)
    return tensors


def write_projector(path: Path, *, seed: int = 0) -> Path:
    """Write the projector to ``path`` (the same bytes for the same seed); returns ``path``."""
    writer = GGUFWriter(path, "clip")
    writer.add_string("general.name", "llamagrid test projector")
    writer.add_string("general.description", f"random llava-style mlp projector, seed {seed}")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.has_llava_projector", True)
    writer.add_string("clip.projector_type", "mlp")
    # clip.cpp reads these with gguf_get_val_u32, which aborts on any other type.
    for key, value in (
        ("image_size", IMAGE_SIZE),
        ("patch_size", PATCH_SIZE),
        ("embedding_length", VISION_WIDTH),
        ("feed_forward_length", VISION_FF),
        ("block_count", BLOCKS),
        ("projection_dim", PROJECTION_DIM),
        ("attention.head_count", VISION_HEADS),
    ):
        writer.add_uint32(f"clip.vision.{key}", value)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-5)
    writer.add_array("clip.vision.image_mean", [float(v) for v in IMAGE_MEAN])
    writer.add_array("clip.vision.image_std", [float(v) for v in IMAGE_STD])
    for name, tensor in _tensors(np.random.default_rng(seed)).items():
        writer.add_tensor(name, tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_image(width: int, height: int, fill: int | tuple[int, int, int]) -> bytes:
    """An 8-bit RGB PNG: seeded noise when ``fill`` is an int seed, else that solid colour."""
    if width <= 0 or height <= 0:
        raise ValueError(f"a PNG needs a positive size, not {width}x{height}")
    if isinstance(fill, int):
        rng = np.random.default_rng(fill)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    else:
        pixels = np.empty((height, width, 3), np.uint8)
        pixels[:, :] = np.array(fill, dtype=np.uint8)
    # Each row starts with its filter type, 0 (none).
    rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels.reshape(height, -1)], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )
