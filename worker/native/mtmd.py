"""llama.cpp's multimodal library (libmtmd): a vision projector, image tokens, image embeddings.

The only module that imports ``llama_cpp.mtmd_cpp`` (which fails to import when llama-cpp-python
was built without libmtmd): the runtime imports it only when the worker has ``--mmproj``.

- ``Projector`` loads a projector GGUF for the loaded text model (mtmd_init_from_file) and says
  whether it reads images and which text stands for one (the media marker).
- ``Projector.tokenize`` (any thread: it only preprocesses pixels) turns one decoded RGB image
  into its chunks (mtmd_tokenize_from_parts with the image alone): the image chunk or chunks,
  and for some models text tokens around them. ``ImageChunks`` owns them; ``close`` frees them.
- ``Projector.encode`` and ``EmbeddingBatch.decode`` (engine thread only) compute an image
  chunk's embeddings (mtmd_encode_chunk, mtmd_get_output_embd) and put them into one sequence of
  the generation context at given positions, through a llama_batch of embeddings.

Every native object is freed by its owner's ``close`` (idempotent), on error paths too.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any

import llama_cpp as lc
import llama_cpp.mtmd_cpp as mt

from llamagrid.worker.engine.media import Chunks, ImagePiece, TextPiece
from llamagrid.worker.native.llama_backend import Context, Model

_log = logging.getLogger("llama.cpp.mtmd")
#: ggml's log levels (NONE=0, DEBUG, INFO, WARN, ERROR, CONT=5 continues the previous line).
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
#: While a projector loads: the error lines libmtmd logs (they say why it refused the file).
_errors: list[str] | None = None
_errors_lock = threading.Lock()


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _forward_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    line = text.decode("utf-8", errors="replace").rstrip()
    if _errors is not None and level == 4 and line:
        _errors.append(line)
    py_level = _LEVELS.get(level, logging.DEBUG)
    if line and _log.isEnabledFor(py_level):
        _log.log(py_level, "%s", line)


class ProjectorError(RuntimeError):
    """The projector file cannot serve this model (the worker refuses to start)."""


class ImageChunks:
    """The chunks of one image (an mtmd_input_chunks it owns), in order."""

    def __init__(self, native: Any, pieces: list[TextPiece | ImagePiece]) -> None:
        self._native = native
        self.pieces = pieces

    def chunk(self, index: int) -> Any:
        """The native chunk at ``index`` (valid until close)."""
        if not self._native:
            raise RuntimeError("the image's chunks were freed")
        return mt.mtmd_input_chunks_get(self._native, index)

    def close(self) -> None:
        """Free the chunks (once)."""
        native, self._native = self._native, None
        if native:
            mt.mtmd_input_chunks_free(native)

    def __del__(self) -> None:  # a safety net: owners close explicitly
        self.close()


class Projector:
    """A vision projector loaded for a text model."""

    def __init__(self, path: str, model: Model, use_gpu: bool, n_threads: int) -> None:
        params = mt.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = max(1, n_threads)
        params.print_timings = False
        global _errors
        with _errors_lock:
            _errors = []
            mt.mtmd_log_set(_forward_log, ctypes.c_void_p(0))
            try:
                ptr = mt.mtmd_init_from_file(path.encode(), model.ptr, params)
            finally:
                errors, _errors = _errors, None
        if not ptr:
            why = "; ".join(errors) or "not a projector file?"
            raise ProjectorError(
                f"llama.cpp could not load the projector {path} for this model "
                f"(n_embd {lc.llama_model_n_embd_inp(model.ptr)}): {why}"
            )
        self.ptr: Any = ptr
        self.n_embd = int(lc.llama_model_n_embd_inp(model.ptr))
        try:
            if not mt.mtmd_support_vision(ptr):
                raise ProjectorError(f"the projector {path} does not read images (audio only?)")
            if mt.mtmd_decode_use_mrope(ptr):
                raise ProjectorError(
                    f"the projector {path} places image tokens in 2D (M-RoPE), which llamagrid "
                    "does not support yet"
                )
        except BaseException:
            self.close()
            raise
        marker = mt.mtmd_default_marker()
        #: The text that stands for an image in a raw prompt.
        self.marker = marker.decode("utf-8") if marker else "<__media__>"

    def close(self) -> None:
        """Free the projector (once)."""
        ptr, self.ptr = self.ptr, None
        if ptr:
            mt.mtmd_free(ptr)

    def tokenize(self, width: int, height: int, rgb: bytes, image_id: str) -> ImageChunks:
        """The chunks of one image given as packed 8-bit RGB rows; ``image_id`` names it (the
        hash of its encoded bytes)."""
        if len(rgb) != width * height * 3:
            raise ValueError(f"{len(rgb)} bytes are not a {width}x{height} RGB image")
        data = (ctypes.c_uint8 * len(rgb)).from_buffer_copy(rgb)
        bitmap = mt.mtmd_bitmap_init(width, height, data)
        if not bitmap:
            raise RuntimeError("libmtmd could not make a bitmap")
        chunks = None
        try:
            mt.mtmd_bitmap_set_id(bitmap, image_id.encode())
            chunks = mt.mtmd_input_chunks_init()
            if not chunks:
                raise RuntimeError("libmtmd could not allocate input chunks")
            part = mt.mtmd_input_part(text=None, bitmap=bitmap)
            parts = (ctypes.POINTER(mt.mtmd_input_part) * 1)(ctypes.pointer(part))
            rc = mt.mtmd_tokenize_from_parts(self.ptr, chunks, parts, 1, False)
            if rc != 0:
                raise RuntimeError(f"libmtmd could not tokenize the image (code {rc})")
            owned = ImageChunks(chunks, [])
            chunks = None  # owned now: freed by its close
            try:
                owned.pieces = self._pieces(owned)
            except BaseException:
                owned.close()
                raise
            return owned
        finally:
            if chunks:
                mt.mtmd_input_chunks_free(chunks)
            mt.mtmd_bitmap_free(bitmap)

    def _pieces(self, chunks: ImageChunks) -> list[TextPiece | ImagePiece]:
        native = chunks._native
        pieces: list[TextPiece | ImagePiece] = []
        for i in range(int(mt.mtmd_input_chunks_size(native))):
            chunk = mt.mtmd_input_chunks_get(native, i)
            kind = int(mt.mtmd_input_chunk_get_type(chunk))
            if kind == mt.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ptr = mt.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                pieces.append(TextPiece(tuple(int(ptr[j]) for j in range(n.value))))
            elif kind == mt.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                pieces.append(
                    ImagePiece(
                        i,
                        int(mt.mtmd_input_chunk_get_n_tokens(chunk)),
                        int(mt.mtmd_input_chunk_get_n_pos(chunk)),
                        bool(mt.mtmd_decode_use_non_causal(self.ptr, chunk)),
                    )
                )
            else:
                raise RuntimeError(f"libmtmd made a chunk of type {kind} out of an image")
        return pieces

    def encode(self, chunks: Chunks, piece: ImagePiece) -> Any:
        """Compute an image chunk's embeddings (engine thread): a float pointer to
        n_tokens * n_embd values, valid until the next encode."""
        if not isinstance(chunks, ImageChunks):
            raise TypeError("chunks made by another projector")
        rc = mt.mtmd_encode_chunk(self.ptr, chunks.chunk(piece.index))
        if rc != 0:
            raise RuntimeError(f"libmtmd could not encode the image (code {rc})")
        embd = mt.mtmd_get_output_embd(self.ptr)
        if not embd:
            raise RuntimeError("libmtmd returned no image embeddings")
        return embd


class EmbeddingBatch:
    """A llama_batch of embeddings (not token ids) for one sequence, reused for every image."""

    def __init__(self, capacity: int, n_embd: int) -> None:
        self.capacity = capacity
        self.n_embd = n_embd
        self.native = lc.llama_batch_init(capacity, n_embd, 1)

    def decode(
        self, ctx: Context, embd: Any, n_tokens: int, pos: int, seq: int, non_causal: bool
    ) -> None:
        """Decode n_tokens embeddings (a float pointer) into ``seq`` at positions pos, pos + 1,
        ..., in batches of at most ``capacity``; no logits are asked for."""
        if non_causal and n_tokens > self.capacity:
            raise ValueError(
                f"the image takes {n_tokens} tokens, more than one batch ({self.capacity}): "
                "raise --n-batch to serve it"
            )
        b = self.native
        row = self.n_embd * ctypes.sizeof(ctypes.c_float)
        base = ctypes.cast(embd, ctypes.c_void_p).value or 0
        if non_causal:
            lc.llama_set_causal_attn(ctx.ptr, False)
        try:
            for start in range(0, n_tokens, self.capacity):
                n = min(self.capacity, n_tokens - start)
                ctypes.memmove(b.embd, base + start * row, n * row)
                for j in range(n):
                    b.pos[j] = pos + start + j
                    b.n_seq_id[j] = 1
                    b.seq_id[j][0] = seq
                    b.logits[j] = False
                b.n_tokens = n
                rc = lc.llama_decode(ctx.ptr, b)
                if rc != 0:
                    raise RuntimeError(f"llama_decode of an image failed with code {rc}")
        finally:
            b.n_tokens = 0
            if non_causal:
                lc.llama_set_causal_attn(ctx.ptr, True)

    def close(self) -> None:
        """Free the native batch (once)."""
        if self.capacity:
            lc.llama_batch_free(self.native)
            self.capacity = 0
