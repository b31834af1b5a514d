"""The test projector (tests/mmproj_model.py) is one llama.cpp's mtmd loads with SmolLM2 and
runs: a test of the artefact, straight through llama-cpp-python's bindings, not of the worker.

A 56-pixel image is 16 image tokens between the prompt's text tokens, and encoding it gives 16
rows of 576 finite numbers (SmolLM2's embedding width) that depend on the pixels.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_cpp import mtmd_cpp

from llamagrid.worker.model_source import default_model_path
from tests.mmproj_model import IMAGE_TOKENS, PROJECTION_DIM, png_image

PROMPT_TAIL = b" describe"


@dataclass
class Tokenized:
    """A prompt of text and one image, as mtmd cut it into chunks."""

    kinds: list[int]
    n_tokens: list[int]
    image_id: str
    #: The encoded image: one row of PROJECTION_DIM numbers per image token.
    embeddings: np.ndarray
    encode_seconds: float


@pytest.fixture(scope="module")
def text_model() -> Iterator[Any]:
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(str(default_model_path()).encode(), params)
    assert model, "llama.cpp could not load SmolLM2"
    yield model
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="module")
def mtmd(text_model: Any, vision_projector: Path) -> Iterator[Any]:
    params = mtmd_cpp.mtmd_context_params_default()
    params.use_gpu = False
    params.n_threads = 1  # the encode is under a millisecond; two threads on busy cores wait
    params.print_timings = False
    ctx = mtmd_cpp.mtmd_init_from_file(str(vision_projector).encode(), text_model, params)
    assert ctx, "mtmd refused the projector with SmolLM2 (see llama.cpp's log above)"
    yield ctx
    mtmd_cpp.mtmd_free(ctx)


def tokenize_and_encode(ctx: Any, png: bytes) -> Tokenized:
    """Tokenize "<marker> describe" with the image, and encode the image chunk."""
    data = (ctypes.c_uint8 * len(png)).from_buffer_copy(png)
    bitmap = mtmd_cpp.mtmd_helper_bitmap_init_from_buf(ctx, data, len(png), False)
    assert bitmap, "mtmd could not decode the PNG"
    text = mtmd_cpp.mtmd_default_marker() + PROMPT_TAIL
    chunks = mtmd_cpp.mtmd_input_chunks_init()
    try:
        inp = mtmd_cpp.mtmd_input_text(text, len(text), True, True)
        bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd_cpp.mtmd_tokenize(ctx, chunks, ctypes.byref(inp), bitmaps, 1) == 0
        kinds, n_tokens, image_id = [], [], ""
        embeddings, seconds = np.empty(0, np.float32), 0.0
        for i in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
            chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, i)
            kinds.append(mtmd_cpp.mtmd_input_chunk_get_type(chunk))
            n_tokens.append(mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk))
            if kinds[-1] != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                continue
            image_id = (mtmd_cpp.mtmd_input_chunk_get_id(chunk) or b"").decode()
            start = time.perf_counter()
            assert mtmd_cpp.mtmd_encode_chunk(ctx, chunk) == 0
            seconds = time.perf_counter() - start
            out = mtmd_cpp.mtmd_get_output_embd(ctx)
            size = n_tokens[-1] * PROJECTION_DIM
            embeddings = np.ctypeslib.as_array(out, shape=(size,)).copy()
        return Tokenized(kinds, n_tokens, image_id, embeddings, seconds)
    finally:
        mtmd_cpp.mtmd_input_chunks_free(chunks)
        mtmd_cpp.mtmd_bitmap_free(bitmap)


def test_mtmd_loads_the_projector_as_a_causal_vision_model(mtmd: Any) -> None:
    assert mtmd_cpp.mtmd_support_vision(mtmd)
    assert not mtmd_cpp.mtmd_support_audio(mtmd)
    assert not mtmd_cpp.mtmd_decode_use_mrope(mtmd)
    assert not mtmd_cpp.mtmd_decode_use_non_causal(mtmd, None)


def test_a_56_pixel_image_is_16_tokens_before_the_text(mtmd: Any, text_model: Any) -> None:
    got = tokenize_and_encode(mtmd, png_image(56, 56, 1))
    image, text = mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE, mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT
    vocab = llama_cpp.llama_model_get_vocab(text_model)
    bos = 1 if llama_cpp.llama_vocab_get_add_bos(vocab) else 0
    assert got.kinds == [text] * bos + [image, text]
    assert got.n_tokens[bos] == IMAGE_TOKENS == 16
    tail = (llama_cpp.llama_token * 16)()
    n_tail = llama_cpp.llama_tokenize(vocab, PROMPT_TAIL, len(PROMPT_TAIL), tail, 16, False, True)
    assert got.n_tokens[-1] == n_tail > 0
    assert len(got.image_id) == 64  # the SHA-256 of the bytes, in hex
    print(f"\nencoding one image took {got.encode_seconds * 1000:.1f} ms")


def test_an_image_of_another_size_is_resized_to_16_tokens(mtmd: Any) -> None:
    got = tokenize_and_encode(mtmd, png_image(120, 80, (200, 30, 90)))
    assert got.n_tokens[got.kinds.index(mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE)] == IMAGE_TOKENS


def test_the_embeddings_are_finite_and_follow_the_pixels(mtmd: Any) -> None:
    a = tokenize_and_encode(mtmd, png_image(56, 56, 1))
    again = tokenize_and_encode(mtmd, png_image(56, 56, 1))
    b = tokenize_and_encode(mtmd, png_image(56, 56, 2))
    red = tokenize_and_encode(mtmd, png_image(56, 56, (255, 0, 0)))
    for got in (a, b, red):
        assert got.embeddings.shape == (IMAGE_TOKENS * PROJECTION_DIM,)
        assert np.isfinite(got.embeddings).all()
        assert 0.01 < float(got.embeddings.std()) < 1.0
    np.testing.assert_array_equal(a.embeddings, again.embeddings)
    assert a.image_id == again.image_id != b.image_id
    for x, y in ((a, b), (a, red), (b, red)):
        assert float(np.abs(x.embeddings - y.embeddings).max()) > 1e-3
    # The image tokens differ from each other too: positions and patches reach the output.
    rows = a.embeddings.reshape(IMAGE_TOKENS, PROJECTION_DIM)
    assert len({row.tobytes() for row in rows}) == IMAGE_TOKENS
