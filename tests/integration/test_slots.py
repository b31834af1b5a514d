"""llama-server's /slots and slot files on a real gateway and real workers (SmolLM2).

The slot worker runs with flash attention off and no host KV tier: greedy output then does not
depend on how a prompt was batched or cached, and a prompt's cached tokens can only come from
the slot that holds them.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

#: Two slots of 1024 tokens each.
SLOT_FLAGS = ("--parallel", "2", "--n-ctx", "2048", "--flash-attn", "off", "--host-cache-mib", "0")
PROMPT = (
    "The lighthouse keeper climbed the stairs every evening at dusk. He counted the steps, "
    "one hundred and twelve of them, and at the top he lit the lamp and watched the sea. "
    "One night he saw"
)
MAGIC_LENGTH = 16


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slot-files") / "saved"


@pytest.fixture(scope="module")
def slot_worker(run_dir: Path, save_dir: Path) -> Iterator[Proc]:
    with running(spawn_worker(run_dir, *SLOT_FLAGS, "--slot-save-path", str(save_dir))) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def slot_url(run_dir: Path, slot_worker: Proc) -> Iterator[str]:
    with running(spawn_gateway(run_dir, slot_worker.target)) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        yield url


@pytest.fixture(scope="module")
def slot_stub(slot_worker: Proc) -> Iterator[pb_grpc.InferenceServiceStub]:
    channel = grpc.insecure_channel(slot_worker.target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


def slots(url: str, **params: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/slots", params=params, timeout=30)
    assert reply.status_code == 200, reply.text
    listed = reply.json()
    assert isinstance(listed, list)
    return listed


#: The Content-Type of a JSON body.
JSON = {"content-type": "application/json"}


def action(url: str, slot: int, name: str, body: object = None) -> httpx.Response:
    content = None if body is None else json.dumps(body)
    params = {"action": name}
    return httpx.post(
        f"{url}/slots/{slot}", params=params, content=content, headers=JSON, timeout=60
    )


def greedy(stub: pb_grpc.InferenceServiceStub) -> tuple[str, pb.Usage]:
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=12)
    text, usage = [], pb.Usage()
    for message in stub.Generate(pb.GenerateRequest(prompt=PROMPT, sampling=sampling), timeout=120):
        if message.HasField("chunk"):
            text.append(message.chunk.text)
        else:
            usage = message.final.usage
    return "".join(text), usage


def erase_all(url: str) -> None:
    for slot in slots(url):
        reply = action(url, slot["id"], "erase")
        assert reply.status_code == 200, reply.text
    assert all(slot["tokens_cached"] == 0 for slot in slots(url))


def llama_error(reply: httpx.Response, status: int) -> dict[str, Any]:
    """The error of a reply in llama-server's shape: {"error": {"code", "message", "type"}}."""
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and error["type"]
    assert isinstance(error, dict)
    return error


def test_get_slots_lists_every_slot_in_llama_servers_shape(base_url: str, worker: Proc) -> None:
    listed = slots(base_url)
    assert [slot["id"] for slot in listed] == [0, 1, 2, 3]
    for slot in listed:
        assert slot["n_ctx"] == 8192 // 4
        assert slot["is_processing"] is False and slot["state"] == 0
        assert slot["id_task"] == -1 and slot["task_id"] == -1
        assert isinstance(slot["tokens_cached"], int)
        assert slot["next_token"]["has_next_token"] is False
        assert slot["next_token"]["n_remain"] == -1
        params = slot["params"]
        assert params["temperature"] == pytest.approx(0.8) and params["top_k"] == 40
        assert params["n_predict"] == -1 and isinstance(params["samplers"], list)
        assert slot["temperature"] == params["temperature"]  # the README's flat fields too
        assert slot["worker"] == worker.target and slot["worker_slot"] == slot["id"]
        assert slot["prompt"] == ""  # another client's prompt is not shown
    assert len(slots(base_url, fail_on_no_slot="1")) == 4  # idle slots: no 503


def test_get_slots_refuses_what_it_does_not_know(base_url: str) -> None:
    assert llama_error(httpx.get(f"{base_url}/slots", params={"model": "nope"}), 404)
    error = llama_error(httpx.get(f"{base_url}/slots", params={"verbose": "1"}), 400)
    assert error["reason"] == "unsupported_parameter" and error["param"] == "verbose"
    error = llama_error(httpx.get(f"{base_url}/slots", params={"fail_on_no_slot": "x"}), 400)
    assert error["param"] == "fail_on_no_slot"


def test_slot_actions_are_off_without_a_slot_save_path(base_url: str) -> None:
    for name, body in (("save", {"filename": "a.bin"}), ("restore", {"filename": "a.bin"})):
        error = llama_error(action(base_url, 0, name, body), 501)
        assert error["type"] == "not_supported_error"
        assert "--slot-save-path" in error["message"]
    assert llama_error(action(base_url, 0, "erase"), 501)["type"] == "not_supported_error"


def test_no_slots_endpoint_turns_get_slots_off(run_dir: Path, worker: Proc) -> None:
    with running(spawn_gateway(run_dir, worker.target, extra=["--no-slots-endpoint"])) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        error = llama_error(httpx.get(f"{url}/slots", timeout=30), 501)
        assert error["type"] == "not_supported_error"


def test_save_erase_restore_gives_the_same_greedy_continuation_from_the_cache(
    slot_url: str, slot_stub: pb_grpc.InferenceServiceStub, save_dir: Path
) -> None:
    erase_all(slot_url)
    before, usage = greedy(slot_stub)
    assert usage.cached_tokens == 0 and before
    holding = [slot for slot in slots(slot_url) if slot["tokens_cached"]]
    assert len(holding) == 1
    slot = holding[0]
    saved = action(slot_url, slot["id"], "save", {"filename": "lighthouse.bin"})
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["id_slot"] == slot["id"] and body["filename"] == "lighthouse.bin"
    assert body["n_saved"] == slot["tokens_cached"] >= usage.prompt_tokens
    path = save_dir / "lighthouse.bin"
    assert body["n_written"] == path.stat().st_size and path.stat().st_mode & 0o777 == 0o600
    assert body["timings"]["save_ms"] > 0

    erased = action(slot_url, slot["id"], "erase")
    assert erased.json() == {
        "id_slot": slot["id"],
        "n_erased": slot["tokens_cached"],
        "worker": slot["worker"],
    }
    assert all(s["tokens_cached"] == 0 for s in slots(slot_url))

    restored = action(slot_url, slot["id"], "restore", {"filename": "lighthouse.bin"})
    assert restored.status_code == 200, restored.text
    body = restored.json()
    assert body["n_restored"] == slot["tokens_cached"] and body["n_read"] == path.stat().st_size
    assert body["timings"]["restore_ms"] > 0
    assert slots(slot_url)[slot["id"]]["tokens_cached"] == slot["tokens_cached"]

    after, usage = greedy(slot_stub)
    assert after == before
    assert usage.cached_tokens == usage.prompt_tokens - 1  # all but the token it decodes


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/b", ".hidden", "a\x00b", "..", "a\\b", "x" * 10240, ""]
)
def test_a_filename_that_is_not_a_plain_name_is_refused(
    slot_url: str, save_dir: Path, name: str
) -> None:
    for verb in ("save", "restore"):
        error = llama_error(action(slot_url, 0, verb, {"filename": name}), 400)
        assert error["param"] == "filename"
    assert not (save_dir.parent / "x").exists()


@pytest.mark.parametrize(
    ("path", "params", "body", "param"),
    [
        ("/slots/0", {"action": "explode"}, None, "action"),
        ("/slots/0", {}, None, "action"),
        ("/slots/-1", {"action": "erase"}, None, None),
        ("/slots/1e3", {"action": "erase"}, None, None),
        ("/slots/9999999999", {"action": "erase"}, None, None),
        ("/slots/2", {"action": "erase"}, None, "id_slot"),
        ("/slots/0", {"action": "save"}, {}, "filename"),
        ("/slots/0", {"action": "save"}, {"filename": 7}, "filename"),
        ("/slots/0", {"action": "save"}, {"filename": "a.bin", "path": "/tmp"}, "path"),
        ("/slots/0", {"action": "erase"}, {"filename": "a.bin"}, "filename"),
        ("/slots/0", {"action": "erase", "worker": "x"}, None, "worker"),
    ],
)
def test_a_malformed_slot_action_is_a_400(
    slot_url: str, path: str, params: dict[str, str], body: object, param: str | None
) -> None:
    content = None if body is None else json.dumps(body)
    reply = httpx.post(
        f"{slot_url}{path}", params=params, content=content, headers=JSON, timeout=30
    )
    error = llama_error(reply, 400)
    assert error.get("param") == param


def test_a_body_that_is_not_json_or_not_utf8_is_a_400(slot_url: str) -> None:
    url = f"{slot_url}/slots/0?action=save"
    assert llama_error(httpx.post(url, content=b"{not json", headers=JSON, timeout=30), 400)
    surrogate = b'{"filename": "\\ud800"}'
    assert llama_error(httpx.post(url, content=surrogate, headers=JSON, timeout=30), 400)


def test_restoring_a_missing_file_is_a_400(slot_url: str) -> None:
    error = llama_error(action(slot_url, 0, "restore", {"filename": "never-saved.bin"}), 400)
    assert "never-saved.bin" in error["message"]


def tamper(path: Path, target: Path, **changes: object) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<I", data[MAGIC_LENGTH : MAGIC_LENGTH + 4])
    header = json.loads(data[MAGIC_LENGTH + 4 : MAGIC_LENGTH + 4 + length])
    header.update(changes)
    encoded = json.dumps(header).encode()
    rest = data[MAGIC_LENGTH + 4 + length :]
    target.write_bytes(data[:MAGIC_LENGTH] + struct.pack("<I", len(encoded)) + encoded + rest)


def test_a_file_made_for_another_model_or_settings_is_refused(
    slot_url: str, save_dir: Path, run_dir: Path
) -> None:
    erase_all(slot_url)
    assert action(slot_url, 0, "save", {"filename": "empty.bin"}).status_code == 200
    saved = save_dir / "empty.bin"
    tamper(saved, save_dir / "other-model.bin", model_fingerprint="0" * 64)
    error = llama_error(action(slot_url, 0, "restore", {"filename": "other-model.bin"}), 400)
    assert "model_fingerprint" in error["message"]
    tamper(saved, save_dir / "lying.bin", n_tokens=3)
    assert llama_error(action(slot_url, 0, "restore", {"filename": "lying.bin"}), 400)

    # The same file, into a worker whose slots hold another number of tokens.
    flags = ("--parallel", "2", "--n-ctx", "1024", "--flash-attn", "off")
    with running(spawn_worker(run_dir, *flags, "--slot-save-path", str(save_dir))) as other:
        wait_serving(other)
        with grpc.insecure_channel(other.target, options=channel_options()) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.RestoreSlot(pb.RestoreSlotRequest(id=0, filename="empty.bin"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "n_ctx_slot" in (caught.value.details() or "")


def test_a_busy_slot_is_a_409_and_the_worker_serves_on(
    slot_url: str, slot_stub: pb_grpc.InferenceServiceStub
) -> None:
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True)
    stream = slot_stub.Generate(pb.GenerateRequest(prompt="Count:", sampling=sampling), timeout=300)
    try:
        assert next(stream).HasField("chunk")  # running: it holds a slot
        busy = [slot for slot in slots(slot_url) if slot["is_processing"]]
        assert len(busy) == 1
        running_slot = busy[0]
        assert running_slot["state"] == 1 and running_slot["id_task"] != -1
        assert running_slot["params"]["temperature"] == 0.0
        assert running_slot["n_predict"] == 900
        idle = 1 - running_slot["id"]
        assert action(slot_url, idle, "save", {"filename": "idle.bin"}).status_code == 200
        for verb, body in (
            ("save", {"filename": "busy.bin"}),
            ("restore", {"filename": "idle.bin"}),
            ("erase", None),
        ):
            error = llama_error(action(slot_url, running_slot["id"], verb, body), 409)
            assert error["reason"] == "slot_busy"
    finally:
        stream.cancel()
    text, _ = greedy(slot_stub)
    assert text
