"""Slot files: a slot's cached tokens and their KV state, saved to --slot-save-path and back.

A client names a file, never a path: ``check_filename`` accepts a plain name only (no
separator, no "..", no control character, no leading dot, at most MAX_FILENAME_BYTES bytes),
so that nothing outside the directory can be read or written.

A file is, in order:

- MAGIC (16 bytes), then the header's length as a little-endian uint32;
- the header: a JSON object (``SlotHeader``) naming the model (file name, size, fingerprint of
  its metadata) and the settings that make a KV state incompatible (the tokens a slot holds,
  the KV type, flash attention, the KV buffer layout, the llama.cpp build, the LoRA adapters
  loaded), the token count, the state's size, a SHA-256 of the tokens and the state, and the
  LoRA scales the KV cells were computed under;
- the tokens, as little-endian int32;
- the state, as llama.cpp's per-sequence state calls wrote it (opaque here).

Restoring refuses a file whose model or settings differ from the worker's (``SlotHeader.check``)
and one whose sizes or checksum do not add up, before llama.cpp reads anything. Files are
written to a temporary name and renamed into place, mode 0600.

Pure: no llama.cpp, no engine thread (the caller runs these on a thread of its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import stat
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llamagrid.worker.engine.errors import EngineError, Reason, invalid

#: The first bytes of every slot file (format version 1).
MAGIC = b"llamagrid-slot\x00\x01"
#: The longest file name a client may give, in UTF-8 bytes.
MAX_FILENAME_BYTES = 200
#: The largest header a file may carry, in bytes.
MAX_HEADER_BYTES = 64 * 1024
_LENGTH = struct.Struct("<I")
_TOKEN = "i"  # array typecode of a 32-bit token id


def check_filename(name: str) -> str:
    """The name, if it is a plain file name a client may use; else INVALID_VALUE."""
    problem = _filename_problem(name)
    if problem is not None:
        raise invalid(f"invalid filename: {problem}", "filename")
    return name


def _filename_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if size > MAX_FILENAME_BYTES:
        return f"it is {size} bytes long; at most {MAX_FILENAME_BYTES} are allowed"
    if "/" in name or "\\" in name:
        return "it holds a path separator: give a plain file name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "it holds a control character (NUL, newline, ...)"
    if ".." in name:
        return "it holds '..'"
    if name.startswith("."):
        return "it starts with '.'"
    return None


def slot_path(directory: str, name: str) -> Path:
    """The path of a slot file: a checked name inside directory."""
    base = Path(directory)
    path = base / check_filename(name)
    if path.parent != base:  # check_filename made this impossible; kept as a second lock
        raise invalid("invalid filename: it leaves the slot directory", "filename")
    return path


@dataclass(frozen=True)
class SlotCompat:
    """What a KV state belongs to: restoring needs the same model and settings."""

    #: The model's file name (not its path).
    model_file: str
    #: The model's size in bytes, as llama.cpp reports it.
    model_size: int
    #: A SHA-256 of the model's GGUF metadata and shape (native/slot_state.py).
    model_fingerprint: str
    #: Tokens one slot holds.
    n_ctx_slot: int
    #: The KV cache's data type.
    kv_type: str
    #: --flash-attn (it changes the layout of the V cache).
    flash_attn: str
    #: --kv-unified (one buffer for all slots, or one per slot).
    kv_unified: bool
    #: The llama.cpp build that wrote the state.
    llama_cpp: str
    #: The LoRA adapters loaded (--lora, --lora-scaled), as a JSON list of file names.
    lora_adapters: str = "[]"


@dataclass(frozen=True)
class SlotHeader:
    """A slot file's header: what the state belongs to, and the sizes of what follows."""

    compat: SlotCompat
    n_tokens: int
    state_bytes: int
    #: SHA-256 (hex) of the tokens' bytes followed by the state's.
    checksum: str
    #: The LoRA adapter scales the KV cells were computed under (one per adapter).
    lora_scales: tuple[float, ...] = ()

    def to_json(self) -> bytes:
        """The header as written in a file."""
        body = {
            **dataclasses.asdict(self.compat),
            "n_tokens": self.n_tokens,
            "state_bytes": self.state_bytes,
            "checksum": self.checksum,
            "lora_scales": list(self.lora_scales),
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SlotHeader:
        """Parse a header; INVALID_VALUE when it is not one."""
        try:
            body = json.loads(data)
            if not isinstance(body, dict):
                raise TypeError("not an object")
            names = [f.name for f in dataclasses.fields(SlotCompat)]
            compat = SlotCompat(**{name: body[name] for name in names})
            scales = body["lora_scales"]
            if not isinstance(scales, list) or not all(_is_scale(x) for x in scales):
                raise ValueError("lora_scales is not a list of finite numbers")
            header = cls(
                compat, body["n_tokens"], body["state_bytes"], body["checksum"], tuple(scales)
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise _corrupt(f"its header cannot be read ({exc})") from None
        header._check_types()
        return header

    def _check_types(self) -> None:
        expected = {f.name: f.type for f in dataclasses.fields(SlotCompat)}
        for name, kind in expected.items():
            value = getattr(self.compat, name)
            name_of_kind = kind if isinstance(kind, str) else kind.__name__
            wanted = {"str": str, "int": int, "bool": bool}[name_of_kind]
            if type(value) is not wanted:
                raise _corrupt(f"its header's {name} is not of type {wanted.__name__}")
        for value in (self.n_tokens, self.state_bytes):
            if type(value) is not int or value < 0:
                raise _corrupt("its header's sizes are not counts")
        if not isinstance(self.checksum, str):
            raise _corrupt("its header's checksum is not text")

    def check(self, current: SlotCompat) -> None:
        """Refuse (INVALID_VALUE) a state made for another model or other settings."""
        for field in dataclasses.fields(SlotCompat):
            saved, here = getattr(self.compat, field.name), getattr(current, field.name)
            if saved != here:
                raise invalid(
                    f"the slot file was saved with {field.name}={_short(saved)}, but this "
                    f"worker runs with {field.name}={_short(here)}: its KV state cannot be "
                    "used here",
                    "filename",
                )


def _short(value: object) -> str:
    """A header value as an error message quotes it (a header may be 64 KiB long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_scale(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class SlotFile:
    """A slot file's contents."""

    header: SlotHeader
    tokens: list[int]
    #: The KV state, in a buffer llama.cpp can read in place.
    state: bytearray
    #: The file's size in bytes.
    size: int


def _checksum(tokens: array[int], state: memoryview) -> str:
    digest = hashlib.sha256(tokens.tobytes())
    digest.update(state)
    return digest.hexdigest()


def _token_array(tokens: list[int]) -> array[int]:
    data = array(_TOKEN, tokens)
    if data.itemsize != 4:  # pragma: no cover - every platform we build on has 32-bit int
        raise RuntimeError("array('i') is not 32 bits wide here")
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover - big-endian host
        data.byteswap()
    return data


def write_slot_file(
    path: Path,
    compat: SlotCompat,
    tokens: list[int],
    state: memoryview,
    lora_scales: tuple[float, ...] = (),
) -> int:
    """Write a slot file atomically (a temporary name, then a rename), mode 0600; returns its
    size in bytes."""
    data = _token_array(tokens)
    checksum = _checksum(data, state)
    header = SlotHeader(compat, len(tokens), state.nbytes, checksum, lora_scales).to_json()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(MAGIC)
            out.write(_LENGTH.pack(len(header)))
            out.write(header)
            out.write(data.tobytes())
            out.write(state)
            out.flush()
            os.fsync(out.fileno())
            size = out.tell()
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return size


def read_slot_file(path: Path, max_tokens: int, bytes_per_token: int, n_vocab: int) -> SlotFile:
    """Read and check a slot file: at most max_tokens tokens (the slot's context), each below
    n_vocab, a state of at most bytes_per_token per token (plus a fixed allowance), sizes that
    add up and a matching checksum. INVALID_VALUE otherwise (the model and settings are checked
    by the caller, SlotHeader.check)."""
    with _open_for_reading(path) as src:
        size = os.fstat(src.fileno()).st_size
        header, header_size = _read_header(src)
        if header.n_tokens > max_tokens:
            raise _corrupt(
                f"it holds {header.n_tokens} tokens; a slot here holds at most {max_tokens}"
            )
        limit = (header.n_tokens + 1) * bytes_per_token + (1 << 20)
        if header.state_bytes > limit:
            raise _corrupt(f"its state is {header.state_bytes} bytes, more than its tokens need")
        body = len(MAGIC) + _LENGTH.size + header_size
        if size != body + 4 * header.n_tokens + header.state_bytes:
            raise _corrupt("its size does not match its header")
        tokens = array(_TOKEN)
        tokens.frombytes(_read_exactly(src, 4 * header.n_tokens))
        state = bytearray(_read_exactly(src, header.state_bytes))
    if _checksum(tokens, memoryview(state)) != header.checksum:
        raise _corrupt("its checksum does not match its contents")
    if struct.pack("=I", 1) != struct.pack("<I", 1):  # pragma: no cover - big-endian host
        tokens.byteswap()
    if any(t < 0 or t >= n_vocab for t in tokens):
        raise _corrupt("it holds token ids outside this model's vocabulary")
    return SlotFile(header, tokens.tolist(), state, size)


@contextlib.contextmanager
def _open_for_reading(path: Path) -> Iterator[BinaryIO]:
    try:
        # Not through a link; a FIFO must not block the open (it is refused just below).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise invalid(f"no slot file is named '{path.name}'", "filename") from None
    except OSError as exc:
        problem = f"the slot file '{path.name}' cannot be read: {exc.strerror}"
        raise invalid(problem, "filename") from None
    with os.fdopen(fd, "rb") as src:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise invalid(f"'{path.name}' is not a regular file", "filename")
        yield src


def _read_header(src: BinaryIO) -> tuple[SlotHeader, int]:
    """The header, and its size in bytes."""
    if src.read(len(MAGIC)) != MAGIC:
        raise _corrupt("it is not a llamagrid slot file")
    (length,) = _LENGTH.unpack(_read_exactly(src, _LENGTH.size))
    if length > MAX_HEADER_BYTES:
        raise _corrupt(f"its header is {length} bytes long")
    return SlotHeader.from_json(_read_exactly(src, length)), length


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    data = src.read(size)
    if len(data) != size:
        raise _corrupt("it ends early")
    return data


def _corrupt(problem: str) -> EngineError:
    return EngineError(
        Reason.INVALID_VALUE, f"the slot file cannot be restored: {problem}", "filename"
    )
