"""Slot files (worker/engine/slot_files.py): the names a client may give, and the file format,
whose header ties a KV state to its model and settings."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import struct
from pathlib import Path

import pytest

from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.slot_files import (
    MAGIC,
    MAX_FILENAME_BYTES,
    SlotCompat,
    check_filename,
    read_slot_file,
    slot_path,
    write_slot_file,
)

COMPAT = SlotCompat(
    model_file="SmolLM2.gguf",
    model_size=1234,
    model_fingerprint="ab" * 32,
    n_ctx_slot=2048,
    kv_type="f16/f16",
    flash_attn="off",
    kv_unified=False,
    llama_cpp="llama-cpp-python 0.3.36",
)
TOKENS = [1, 2, 3, 40, 500]
STATE = bytes(range(256)) * 4
N_VOCAB = 1000


def write(tmp_path: Path, name: str = "slot.bin") -> Path:
    path = slot_path(str(tmp_path), name)
    write_slot_file(path, COMPAT, TOKENS, memoryview(STATE))
    return path


def read(path: Path, max_tokens: int = 2048) -> object:
    return read_slot_file(path, max_tokens, 1024, N_VOCAB)


def refusal(path: Path, max_tokens: int = 2048) -> str:
    with pytest.raises(EngineError) as caught:
        read(path, max_tokens)
    assert caught.value.reason == Reason.INVALID_VALUE and caught.value.param == "filename"
    return caught.value.message


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "..",
        "/etc/passwd",
        "a/b",
        "a\\b",
        ".hidden",
        "a\x00b",
        "line\nbreak",
        "x" * (MAX_FILENAME_BYTES + 1),
        "é" * (MAX_FILENAME_BYTES // 2 + 1),  # short in characters, too long in bytes
        "a..b",
        "\ud800",  # a lone surrogate: not UTF-8
    ],
)
def test_a_name_that_is_not_a_plain_file_name_is_refused(name: str) -> None:
    with pytest.raises(EngineError) as caught:
        check_filename(name)
    assert caught.value.reason == Reason.INVALID_VALUE
    assert caught.value.param == "filename"
    assert caught.value.message.startswith("invalid filename: ")


@pytest.mark.parametrize(
    "name", ["slot.bin", "a", "x" * MAX_FILENAME_BYTES, "état-0_1.bin", "with space"]
)
def test_a_plain_file_name_is_accepted_and_stays_inside_the_directory(
    tmp_path: Path, name: str
) -> None:
    assert check_filename(name) == name
    assert slot_path(str(tmp_path), name).parent == tmp_path


def test_a_file_round_trips_its_tokens_and_state_and_is_private(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(MAGIC)
    assert [p.name for p in tmp_path.iterdir()] == ["slot.bin"]  # no temporary file left
    file = read_slot_file(path, 2048, 1024, N_VOCAB)
    assert file.tokens == TOKENS
    assert bytes(file.state) == STATE
    assert file.header.compat == COMPAT
    assert file.size == path.stat().st_size
    file.header.check(COMPAT)


def test_the_lora_scales_of_the_cells_round_trip(tmp_path: Path) -> None:
    path = slot_path(str(tmp_path), "lora.bin")
    write_slot_file(path, COMPAT, TOKENS, memoryview(STATE), (0.5, 0.0))
    assert read_slot_file(path, 2048, 1024, N_VOCAB).header.lora_scales == (0.5, 0.0)


def test_saving_again_replaces_the_file_whole(tmp_path: Path) -> None:
    path = write(tmp_path)
    write_slot_file(path, COMPAT, [7], memoryview(b"xyz"))
    assert read_slot_file(path, 2048, 1024, N_VOCAB).tokens == [7]


def test_the_header_is_a_length_prefixed_json_object_naming_model_and_settings(
    tmp_path: Path,
) -> None:
    data = write(tmp_path).read_bytes()
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    header = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length])
    assert header["model_file"] == "SmolLM2.gguf"
    assert header["model_fingerprint"] == COMPAT.model_fingerprint
    assert header["n_ctx_slot"] == 2048
    assert header["kv_type"] == "f16/f16"
    assert header["flash_attn"] == "off"
    assert header["llama_cpp"] == "llama-cpp-python 0.3.36"
    assert header["lora_adapters"] == "[]" and header["lora_scales"] == []
    assert header["n_tokens"] == len(TOKENS)
    assert header["state_bytes"] == len(STATE)
    rest = data[len(MAGIC) + 4 + length :]
    assert rest == struct.pack(f"<{len(TOKENS)}i", *TOKENS) + STATE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model_file", "other.gguf"),
        ("model_size", 99),
        ("model_fingerprint", "cd" * 32),
        ("n_ctx_slot", 1024),
        ("kv_type", "q8_0/q8_0"),
        ("flash_attn", "on"),
        ("kv_unified", True),
        ("llama_cpp", "llama-cpp-python 9.9.9"),
        ("lora_adapters", '["adapter.gguf"]'),
    ],
)
def test_a_state_made_for_another_model_or_settings_is_refused_by_name(
    tmp_path: Path, field: str, value: object
) -> None:
    file = read_slot_file(write(tmp_path), 2048, 1024, N_VOCAB)
    other = dataclasses.replace(COMPAT, **{field: value})
    with pytest.raises(EngineError) as caught:
        file.header.check(other)
    assert caught.value.reason == Reason.INVALID_VALUE
    assert field in caught.value.message


def rewrite_header(path: Path, **changes: object) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    header = json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length])
    header.update(changes)
    body = json.dumps(header).encode()
    rest = data[len(MAGIC) + 4 + length :]
    path.write_bytes(MAGIC + struct.pack("<I", len(body)) + body + rest)


def test_a_flipped_state_byte_fails_the_checksum(tmp_path: Path) -> None:
    path = write(tmp_path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert "checksum" in refusal(path)


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"n_tokens": 6}, "size does not match"),
        ({"state_bytes": 10}, "size does not match"),
        ({"n_tokens": -1}, "not counts"),
        ({"n_ctx_slot": "2048"}, "n_ctx_slot is not of type int"),
        ({"kv_unified": 0}, "kv_unified is not of type bool"),
        ({"checksum": 5}, "checksum is not text"),
        ({"state_bytes": 10**12}, "more than its tokens need"),
        ({"lora_scales": ["1"]}, "lora_scales is not a list of finite numbers"),
        ({"lora_scales": [True]}, "lora_scales is not a list of finite numbers"),
        ({"lora_scales": 1.0}, "lora_scales is not a list of finite numbers"),
    ],
)
def test_a_header_that_lies_about_the_contents_is_refused(
    tmp_path: Path, changes: dict[str, object], problem: str
) -> None:
    path = write(tmp_path)
    rewrite_header(path, **changes)
    assert problem in refusal(path)


def test_more_tokens_than_a_slot_holds_are_refused_before_reading_them(tmp_path: Path) -> None:
    assert "at most 4" in refusal(write(tmp_path), max_tokens=4)


def test_token_ids_outside_the_vocabulary_are_refused(tmp_path: Path) -> None:
    path = slot_path(str(tmp_path), "big.bin")
    write_slot_file(path, COMPAT, [N_VOCAB], memoryview(b""))
    assert "vocabulary" in refusal(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a slot file at all", MAGIC, MAGIC + struct.pack("<I", 10**6), MAGIC + b"\x05"],
)
def test_what_is_not_a_slot_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(content)
    refusal(path)


def test_a_header_that_is_not_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(MAGIC + struct.pack("<I", 3) + b"{x]")
    assert "header cannot be read" in refusal(path)


def test_a_missing_file_a_link_and_a_fifo_are_refused(tmp_path: Path) -> None:
    assert "no slot file" in refusal(tmp_path / "missing.bin")
    target = write(tmp_path, "real.bin")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    refusal(link)
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    assert "not a regular file" in refusal(fifo)  # and the open did not block
