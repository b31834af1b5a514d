"""The test projector's GGUF (tests/mmproj_model.py) has what llama.cpp's clip.cpp loads for an
``mlp`` projector, and the PNG writer writes the pixels it is given."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from tests.mmproj_model import (
    BLOCKS,
    IMAGE_SIZE,
    IMAGE_TOKENS,
    PATCH_SIZE,
    PROJECTION_DIM,
    PROJECTOR_HIDDEN,
    VISION_FF,
    VISION_WIDTH,
    png_image,
    write_projector,
)


@pytest.fixture(scope="module")
def projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_projector(tmp_path_factory.mktemp("mmproj") / "mmproj.gguf")


def _field(reader: GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, f"{key} is missing"
    return field.contents()


def test_the_projector_declares_a_llava_mlp_vision_encoder(projector: Path) -> None:
    reader = GGUFReader(projector)
    assert _field(reader, "general.architecture") == "clip"
    assert _field(reader, "clip.has_vision_encoder") is True
    assert _field(reader, "clip.projector_type") == "mlp"
    assert _field(reader, "clip.vision.projection_dim") == PROJECTION_DIM == 576
    assert _field(reader, "clip.vision.image_size") == IMAGE_SIZE
    assert _field(reader, "clip.vision.patch_size") == PATCH_SIZE
    assert (IMAGE_SIZE // PATCH_SIZE) ** 2 == IMAGE_TOKENS == 16
    assert _field(reader, "clip.vision.block_count") == BLOCKS
    assert _field(reader, "clip.vision.image_mean") == pytest.approx([0.4815, 0.4578, 0.4082], 1e-3)
    assert len(_field(reader, "clip.vision.image_std")) == 3  # type: ignore[arg-type]


def test_integer_hyperparameters_are_uint32_as_clip_cpp_requires(projector: Path) -> None:
    """clip.cpp reads them with gguf_get_val_u32, which aborts the process on another type."""
    reader = GGUFReader(projector)
    keys = [k for k in reader.fields if k.startswith("clip.vision.")]
    floats = {"attention.layer_norm_epsilon", "image_mean", "image_std"}
    ints = [k for k in keys if k.removeprefix("clip.vision.") not in floats]
    assert len(ints) == 7
    for key in ints:
        assert reader.fields[key].types == [GGUFValueType.UINT32], key
    eps = reader.fields["clip.vision.attention.layer_norm_epsilon"]
    assert eps.types == [GGUFValueType.FLOAT32]
    assert reader.fields["clip.vision.image_mean"].types == [
        GGUFValueType.ARRAY,
        GGUFValueType.FLOAT32,
    ]


def test_tensor_shapes_match_the_llava_graph(projector: Path) -> None:
    """Shapes in GGML order (ne0 first), as clip.cpp sees them."""
    reader = GGUFReader(projector)
    shapes = {t.name: [int(n) for n in t.shape] for t in reader.tensors}
    d = VISION_WIDTH
    assert shapes["v.patch_embd.weight"] == [PATCH_SIZE, PATCH_SIZE, 3, d]
    assert shapes["v.class_embd"] == [d]
    assert shapes["v.position_embd.weight"] == [d, IMAGE_TOKENS + 1]
    for i in range(BLOCKS):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            assert shapes[f"v.blk.{i}.{name}.weight"] == [d, d]
        assert shapes[f"v.blk.{i}.ffn_up.weight"] == [d, VISION_FF]
        # clip.cpp swaps up and down when down's input width is the tower's width.
        assert shapes[f"v.blk.{i}.ffn_down.weight"] == [VISION_FF, d] != [d, d]
    assert shapes["mm.0.weight"] == [d, PROJECTOR_HIDDEN]
    # clip_n_mmproj_embd: mm.2's output width, checked against the text model's n_embd.
    assert shapes["mm.2.weight"] == [PROJECTOR_HIDDEN, PROJECTION_DIM]
    assert f"v.blk.{BLOCKS}.attn_q.weight" not in shapes
    for t in reader.tensors:
        assert np.isfinite(t.data).all(), t.name


def test_the_file_is_small_and_the_same_for_the_same_seed(tmp_path: Path) -> None:
    a = write_projector(tmp_path / "a.gguf", seed=3).read_bytes()
    b = write_projector(tmp_path / "b.gguf", seed=3).read_bytes()
    c = write_projector(tmp_path / "c.gguf", seed=4).read_bytes()
    assert a == b
    assert a != c and len(a) == len(c)
    assert len(a) < 2 * 1024 * 1024


def _decode_png(data: bytes) -> np.ndarray:
    """The pixels of an 8-bit RGB PNG with unfiltered rows, as png_image writes them."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks[kind] = body
        pos += 12 + length
    width, height, depth, colour, _, _, _ = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert (depth, colour) == (8, 2)
    assert b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert (rows[:, 0] == 0).all()
    return rows[:, 1:].reshape(height, width, 3)


def test_a_solid_png_holds_its_colour_at_its_size() -> None:
    pixels = _decode_png(png_image(7, 3, (10, 200, 30)))
    assert pixels.shape == (3, 7, 3)
    assert (pixels == [10, 200, 30]).all()


def test_a_seeded_png_is_noise_that_depends_on_the_seed_only() -> None:
    a, b, c = png_image(56, 56, 1), png_image(56, 56, 1), png_image(56, 56, 2)
    assert a == b and a != c
    pixels = _decode_png(a)
    assert pixels.shape == (56, 56, 3)
    assert len(np.unique(pixels)) > 200


@pytest.mark.parametrize("size", [(0, 5), (5, 0), (-1, 5)])
def test_a_png_needs_a_positive_size(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="positive size"):
        png_image(*size, (0, 0, 0))
