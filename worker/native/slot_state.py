"""The native side of slot files (engine/slot_files.py): a sequence's KV state out of and into
llama.cpp, and what a state belongs to (the model's fingerprint, the KV type, the build).

The state calls are the host tier's (Context.save_sequence and restore_sequence, the
llama_state_seq_*_ext family). Engine thread only, except ``fingerprint``'s and ``build``'s
callers, which may run anywhere the model is loaded.
"""

from __future__ import annotations

import ctypes
import hashlib

import llama_cpp as lc

from llamagrid.worker.native.llama_backend import Context, Model

#: The type names of the KV cache's element types llama.cpp uses by default.
_TYPE_NAMES = {lc.GGML_TYPE_F32: "f32", lc.GGML_TYPE_F16: "f16"}


def fingerprint(model: Model) -> str:
    """A SHA-256 (hex) of the model's GGUF metadata, keys and values, and its shape: the same
    for the same model file, different for another model."""
    digest = hashlib.sha256()
    buf = ctypes.create_string_buffer(4096)  # longer values count by their first 4 KiB
    readers = (lc.llama_model_meta_key_by_index, lc.llama_model_meta_val_str_by_index)
    for index in range(int(lc.llama_model_meta_count(model.ptr))):
        for read in readers:
            n = int(read(model.ptr, index, buf, len(buf)))
            digest.update(buf.raw[: max(0, min(n, len(buf) - 1))] + b"\x00")
    shape = (model.n_vocab, model.n_layers, int(lc.llama_model_n_embd(model.ptr)))
    digest.update(repr(shape).encode())
    return digest.hexdigest()


def kv_type() -> str:
    """The KV cache's element types (key/value): llama.cpp's defaults, which the worker keeps."""
    params = lc.llama_context_default_params()
    return "/".join(
        _TYPE_NAMES.get(int(t), f"type{int(t)}") for t in (params.type_k, params.type_v)
    )


def build() -> str:
    """The llama.cpp build, as llama-cpp-python's version names it."""
    return f"llama-cpp-python {lc.__version__}"


def state_bytes_per_token(model: Model) -> int:
    """An upper bound of a sequence's saved state per token: keys and values of every layer in
    32-bit floats, twice the embedding width each (attention heads may be wider than the
    embedding), plus the cell's bookkeeping."""
    return model.n_layers * int(lc.llama_model_n_embd(model.ptr)) * 16 + 64


def save_state(ctx: Context, seq: int) -> memoryview | None:
    """A copy of a sequence's KV state as bytes, or None when llama.cpp cannot save it."""
    data = ctx.save_sequence(seq)
    return None if data is None else memoryview(data).cast("B")


def restore_state(ctx: Context, seq: int, state: bytearray, n_tokens: int) -> bool:
    """Put a saved state into an emptied sequence; True when llama.cpp took it and the sequence
    then holds exactly n_tokens positions (it is left empty otherwise)."""
    data = (ctypes.c_ubyte * len(state)).from_buffer(state)
    if not ctx.restore_sequence(seq, data):
        return False
    if int(lc.llama_memory_seq_pos_max(ctx.memory, seq)) + 1 != n_tokens:
        ctx.forget(seq)
        return False
    return True
