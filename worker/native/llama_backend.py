"""The llama.cpp wrappers for the model, the context and the batch (the native room imports
llama_cpp; samplers and grammars are in sampler.py and grammar.py).

Everything here runs on the engine thread, except what only reads the loaded vocabulary
(Model.tokenize, piece, detokenize and special_tokens): the tokenizer threads
(engine/prompts.py) and grammar compilation call those while the engine thread decodes, as
llama-server tokenizes in its HTTP threads. The wrappers own their native handles and free
them in ``close``; nothing else in the worker touches a llama.cpp pointer.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any

import llama_cpp as lc
import numpy as np
import numpy.typing as npt

from llamagrid.worker.native.ggml_devices import backend_names as backend_names
from llamagrid.worker.native.ggml_devices import devices as devices
from llamagrid.worker.native.ggml_devices import model_device_names

_log = logging.getLogger("llama.cpp")
#: ggml's log levels (NONE=0, DEBUG, INFO, WARN, ERROR, CONT=5 continues the previous line).
_LOG_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]
#: While a model loads: the "load_tensors:" lines llama.cpp logs (layer placement among them).
_load_lines: list[str] | None = None


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _forward_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    """Route llama.cpp's own log lines into Python logging (INFO chatter is dropped by default)."""
    if _load_lines is not None and text.startswith(b"load_tensors:"):
        _load_lines.append(text.decode("utf-8", errors="replace"))
    py_level = _last_level[0] if level == 5 else _LOG_LEVELS.get(level, logging.DEBUG)
    _last_level[0] = py_level
    if _log.isEnabledFor(py_level):
        _log.log(py_level, "%s", text.decode("utf-8", errors="replace").rstrip())


FloatArray = npt.NDArray[np.float32]

_SPLIT_MODES = {
    "none": lc.LLAMA_SPLIT_MODE_NONE,
    "layer": lc.LLAMA_SPLIT_MODE_LAYER,
    "row": lc.LLAMA_SPLIT_MODE_ROW,
}
_FLASH_ATTN = {
    "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
POOLING_NAMES = {
    lc.LLAMA_POOLING_TYPE_NONE: "none",
    lc.LLAMA_POOLING_TYPE_MEAN: "mean",
    lc.LLAMA_POOLING_TYPE_CLS: "cls",
    lc.LLAMA_POOLING_TYPE_LAST: "last",
    lc.LLAMA_POOLING_TYPE_RANK: "rank",
}
_POOLING_BY_NAME = {name: value for value, name in POOLING_NAMES.items()}
#: The seed llama.cpp reads as "pick a random one".
RANDOM_SEED = lc.LLAMA_DEFAULT_SEED


def init_backend(verbose: bool = False) -> None:
    """Initialise llama.cpp once per process."""
    _log.setLevel(logging.DEBUG if verbose else logging.WARNING)
    lc.llama_log_set(_forward_log, ctypes.c_void_p(0))
    lc.llama_backend_init()


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build can offload layers to a GPU."""
    return bool(lc.llama_supports_gpu_offload())


@dataclass(frozen=True)
class ModelOptions:
    """How to load the weights."""

    path: str
    n_gpu_layers: int = 0
    main_gpu: int = 0
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] = ()
    use_mmap: bool = True
    use_mlock: bool = False


@dataclass(frozen=True)
class ContextOptions:
    """How to build a context over a loaded model."""

    n_ctx: int
    n_seq_max: int = 1
    n_batch: int = 512
    n_ubatch: int = 512
    n_threads: int = 0
    n_threads_batch: int = 0
    flash_attn: str = "auto"
    embeddings: bool = False
    pooling: str = "model"
    kv_unified: bool = False


class Model:
    """A loaded GGUF model and its vocabulary."""

    def __init__(self, opts: ModelOptions) -> None:
        params = lc.llama_model_default_params()
        params.n_gpu_layers = opts.n_gpu_layers if opts.n_gpu_layers >= 0 else 2**31 - 1
        params.main_gpu = opts.main_gpu
        params.split_mode = _SPLIT_MODES[opts.split_mode]
        params.load_mode = _load_mode(opts.use_mmap, opts.use_mlock)
        self._tensor_split: Any = None
        if opts.tensor_split:
            size = lc.llama_max_devices()
            values = list(opts.tensor_split)[:size] + [0.0] * max(0, size - len(opts.tensor_split))
            self._tensor_split = (ctypes.c_float * size)(*values)
            params.tensor_split = self._tensor_split
        global _load_lines
        _load_lines = []
        try:
            ptr = lc.llama_model_load_from_file(opts.path.encode(), params)
        finally:
            #: What llama.cpp logged about the tensors, e.g. the device of each layer.
            self.load_log, _load_lines = _load_lines, None
        if not ptr:
            raise RuntimeError(f"llama.cpp could not load the model file {opts.path}")
        self.ptr = ptr
        self.options = opts
        self.vocab = lc.llama_model_get_vocab(ptr)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        #: Layers llama.cpp can place on a device: the repeating ones and the output layer.
        self.n_layers = int(lc.llama_model_n_layer(ptr) + lc.llama_model_n_layer_nextn(ptr) + 1)
        #: The devices llama.cpp gave the model besides the CPU (layers and offloaded operations
        #: go there); None if this llama.cpp does not export llama_model_get_device.
        self.device_names = model_device_names(ptr)
        #: Each token's bytes, without and with special tokens rendered (filled as asked).
        self._pieces: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})

    def close(self) -> None:
        """Free the weights."""
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None

    # Vocabulary.
    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids of text."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        buf = (lc.llama_token * n_max)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            buf = (lc.llama_token * n_max)()
            n = lc.llama_tokenize(
                self.vocab, data, len(data), buf, n_max, add_special, parse_special
            )
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        """The exact bytes of one token (special tokens render empty unless special is set)."""
        cache = self._pieces[special]
        if (cached := cache.get(token)) is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        data = buf.raw[:n]
        cache[token] = data
        return data

    def detokenize(self, tokens: list[int], render_special: bool) -> str:
        """The text of a token list; invalid UTF-8 is replaced."""
        arr = (lc.llama_token * len(tokens))(*tokens)
        size = max(64, len(tokens) * 16)
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_detokenize(self.vocab, arr, len(tokens), buf, size, False, render_special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = -n
        raise RuntimeError("llama_detokenize failed")

    def special_tokens(self) -> list[tuple[int, str, bool, bool, bool]]:
        """Every token llama.cpp matches in text only when parsing special tokens (control
        tokens and the unknown token), as (id, text, control, lstrip, rstrip)."""
        wanted = lc.LLAMA_TOKEN_ATTR_CONTROL | lc.LLAMA_TOKEN_ATTR_UNKNOWN
        out: list[tuple[int, str, bool, bool, bool]] = []
        for token in range(self.n_vocab):
            attr = int(lc.llama_vocab_get_attr(self.vocab, token))
            if attr & wanted:
                text = lc.llama_vocab_get_text(self.vocab, token) or b""
                out.append(
                    (
                        token,
                        text.decode("utf-8", errors="replace"),
                        bool(attr & lc.LLAMA_TOKEN_ATTR_CONTROL),
                        bool(attr & lc.LLAMA_TOKEN_ATTR_LSTRIP),
                        bool(attr & lc.LLAMA_TOKEN_ATTR_RSTRIP),
                    )
                )
        return out

    def is_eog(self, token: int) -> bool:
        """Whether token ends generation (EOS, EOT, ...)."""
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    def special_text(self, token: int) -> str:
        """The text of a special token such as BOS, or "" if the model has none."""
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    @property
    def bos_text(self) -> str:
        """BOS as text."""
        return self.special_text(lc.llama_vocab_bos(self.vocab))

    @property
    def eos_text(self) -> str:
        """EOS as text."""
        return self.special_text(lc.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        """Whether tokenizing with add_special prepends BOS."""
        return bool(lc.llama_vocab_get_add_bos(self.vocab))

    def fim_tokens(self) -> tuple[int, int, int, int, int]:
        """The fill-in-the-middle token ids llama.cpp found in the vocabulary (from the GGUF
        metadata, or from their usual texts): prefix, suffix, middle, repository and file
        separator, each -1 when there is none."""
        v = self.vocab
        calls = (
            lc.llama_vocab_fim_pre,
            lc.llama_vocab_fim_suf,
            lc.llama_vocab_fim_mid,
            lc.llama_vocab_fim_rep,
            lc.llama_vocab_fim_sep,
        )
        pre, suf, mid, rep, sep = (int(call(v)) for call in calls)
        return pre, suf, mid, rep, sep

    # Metadata.
    def meta(self, key: str) -> str:
        """A GGUF metadata value as text, or ""."""
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        if n < 0:
            return ""
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str:
        """The chat template stored in the GGUF, or ""."""
        raw = lc.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def describe(self) -> dict[str, Any]:
        """Numbers about the model for ModelInfo."""
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, buf, len(buf))
        return {
            "n_params": int(lc.llama_model_n_params(self.ptr)),
            "size": int(lc.llama_model_size(self.ptr)),
            "n_embd": int(lc.llama_model_n_embd(self.ptr)),
            "n_ctx_train": int(lc.llama_model_n_ctx_train(self.ptr)),
            "desc": buf.value.decode("utf-8", errors="replace"),
            "has_decoder": bool(lc.llama_model_has_decoder(self.ptr)),
        }


def _address(pointer: Any) -> int:
    """The address a ctypes pointer holds (0 for NULL)."""
    return int(ctypes.cast(pointer, ctypes.c_void_p).value or 0)


def _load_mode(use_mmap: bool, use_mlock: bool) -> int:
    if use_mmap and use_mlock:
        return int(lc.LLAMA_LOAD_MODE_MMAP_MLOCK)
    if use_mlock:
        return int(lc.LLAMA_LOAD_MODE_MLOCK)
    return int(lc.LLAMA_LOAD_MODE_MMAP if use_mmap else lc.LLAMA_LOAD_MODE_NONE)


class Context:
    """A llama.cpp context (KV cache plus compute buffers) over a model."""

    def __init__(self, model: Model, opts: ContextOptions) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = opts.n_ctx
        params.n_batch = opts.n_batch
        params.n_ubatch = min(opts.n_ubatch, opts.n_batch)
        params.n_seq_max = opts.n_seq_max
        if opts.n_threads:
            params.n_threads = opts.n_threads
        params.n_threads_batch = opts.n_threads_batch or params.n_threads
        params.flash_attn_type = _FLASH_ATTN[opts.flash_attn]
        params.embeddings = opts.embeddings
        params.kv_unified = opts.kv_unified
        params.no_perf = True
        if opts.embeddings and opts.pooling != "model":
            params.pooling_type = _POOLING_BY_NAME[opts.pooling]
        ptr = lc.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.ptr = ptr
        self.model = model
        self.memory = lc.llama_get_memory(ptr)
        self.n_ctx = int(lc.llama_n_ctx(ptr))
        self.n_ctx_seq = int(lc.llama_n_ctx_seq(ptr))
        self.n_batch = opts.n_batch
        self.n_seq_max = opts.n_seq_max
        self.unified = opts.kv_unified

    def close(self) -> None:
        """Free the context."""
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None

    @property
    def pooling(self) -> str:
        """The pooling this context applies to embeddings."""
        return POOLING_NAMES.get(int(lc.llama_pooling_type(self.ptr)), "none")

    def decode(self, batch: Batch) -> None:
        """Run one llama_decode over the batch."""
        rc = lc.llama_decode(self.ptr, batch.native)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def logits(self, index: int) -> FloatArray:
        """A copy of the logits at a batch position whose output was requested."""
        ptr = lc.llama_get_logits_ith(self.ptr, index)
        return np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).copy()

    def logits_rows(self, first: int, count: int) -> FloatArray:
        """The logits at ``count`` consecutive batch positions from ``first``, all of which
        requested output: a (count, n_vocab) view of llama.cpp's buffer, valid until the next
        decode. llama.cpp keeps the outputs in batch order, so the rows are adjacent."""
        n_vocab = self.model.n_vocab
        start = lc.llama_get_logits_ith(self.ptr, first)
        end = lc.llama_get_logits_ith(self.ptr, first + count - 1)
        gap = _address(end) - _address(start)
        if not start or gap != (count - 1) * n_vocab * ctypes.sizeof(ctypes.c_float):
            raise RuntimeError(f"llama.cpp's logits for batch positions {first}+{count} are apart")
        return np.ctypeslib.as_array(start, shape=(count, n_vocab))

    def forget(self, seq: int) -> None:
        """Drop a sequence's KV cells."""
        lc.llama_memory_seq_rm(self.memory, seq, -1, -1)

    def trim(self, seq: int, keep: int) -> bool:
        """Keep only positions [0, keep) of a sequence; False if the memory can't cut there."""
        return bool(lc.llama_memory_seq_rm(self.memory, seq, keep, -1))

    def share(self, source: int, seq: int, length: int) -> bool:
        """Give an empty sequence the source's positions [0, length); False if it can't.

        Unified cells are shared. With a buffer per sequence, llama.cpp copies only whole
        buffers (before the next decode), so the copy is trimmed to the prefix afterwards.
        """
        if self.unified:
            lc.llama_memory_seq_cp(self.memory, source, seq, 0, length)
            return True
        lc.llama_memory_seq_cp(self.memory, source, seq, -1, -1)
        if self.trim(seq, length):
            return True
        self.forget(seq)
        return False

    def clear(self) -> None:
        """Drop every sequence's KV cells."""
        lc.llama_memory_clear(self.memory, True)

    def save_sequence(self, seq: int) -> ctypes.Array[ctypes.c_ubyte] | None:
        """A copy of a sequence's KV cells in host memory (llama_state_seq_get_data_ext), or
        None when llama.cpp cannot save it."""
        size = int(lc.llama_state_seq_get_size_ext(self.ptr, seq, 0))
        if size <= 0:
            return None
        data = (ctypes.c_ubyte * size)()
        written = int(lc.llama_state_seq_get_data_ext(self.ptr, data, size, seq, 0))
        return data if written == size else None

    def restore_sequence(self, seq: int, data: Sized) -> bool:
        """Put saved KV cells (what save_sequence returned) into an empty sequence; False when
        llama.cpp refuses them (the sequence is then left empty)."""
        assert isinstance(data, ctypes.Array)
        read = int(lc.llama_state_seq_set_data_ext(self.ptr, data, len(data), seq, 0))
        if read == 0:
            self.forget(seq)
            return False
        return True

    def sequence_embedding(self, seq: int) -> FloatArray:
        """The pooled embedding of a sequence after decode."""
        ptr = lc.llama_get_embeddings_seq(self.ptr, seq)
        if not ptr:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        n = lc.llama_model_n_embd(self.model.ptr)
        return np.ctypeslib.as_array(ptr, shape=(n,)).copy()


class Batch:
    """A reusable llama_batch holding tokens of any number of sequences."""

    def __init__(self, capacity: int, n_seq_max: int = 1) -> None:
        self.capacity = capacity
        self.native = lc.llama_batch_init(capacity, 0, n_seq_max)
        self.native.n_tokens = 0

    def __len__(self) -> int:
        return int(self.native.n_tokens)

    def clear(self) -> None:
        """Empty the batch for the next step."""
        self.native.n_tokens = 0

    def add(self, token: int, pos: int, seq: int, output: bool) -> int:
        """Append one token; returns its index (for logits when output is set)."""
        b = self.native
        i = int(b.n_tokens)
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = output
        b.n_tokens = i + 1
        return i

    def close(self) -> None:
        """Free the native batch (once)."""
        if self.capacity:
            lc.llama_batch_free(self.native)
            self.capacity = 0
