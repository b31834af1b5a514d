"""`llamagrid serve --config` on real processes: 3 SmolLM2 workers (2 aliases) and the gateway.

The tests of the shared fleet run in file order: the last one stops the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.fleet import (
    Fleet,
    children,
    environ,
    free_block,
    start_supervisor,
    stop_supervisor,
    supervised,
)
from tests.procs import free_port, wait_http_ok, wait_serving

CHAT = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    port, base, metrics = free_port(), free_block(3), free_block(3)
    config = {
        "gateway": {"host": "127.0.0.1", "port": port},
        "supervisor": {
            "base_port": base,
            "metrics_base_port": metrics,
            "restart_backoff_s": 0.2,
            "drain_grace_s": 30,
        },
        "models": [
            {
                "alias": "smollm2",
                "policy": "round_robin",
                "replicas": 2,
                "n_ctx": 2048,
                "parallel": 2,
                "n_threads": 1,
            },
            # n_threads left at 0: the supervisor gives it its share of the cores.
            {"alias": "smol-b", "replicas": 1, "n_ctx": 2048, "parallel": 2},
        ],
    }
    with supervised(config, tmp_path_factory.mktemp("fleet")) as running_fleet:
        yield running_fleet


def chat(base_url: str, model: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/chat/completions", json={**CHAT, "model": model, **extra}, timeout=120
    )


def test_plan_has_one_worker_per_replica_and_the_gateway(fleet: Fleet) -> None:
    names = [p["name"] for p in fleet.plan["processes"]]
    assert names == ["smollm2-0", "smollm2-1", "smol-b-0", "gateway"]
    gateway_argv = fleet.plan["processes"][-1]["argv"]
    workers = [p["address"] for p in fleet.plan["processes"][:-1]]
    assert [gateway_argv[i + 1] for i, a in enumerate(gateway_argv) if a == "--worker"] == workers


def test_both_aliases_are_served_and_an_unknown_one_is_404(fleet: Fleet) -> None:
    listed = httpx.get(f"{fleet.base_url}/v1/models", timeout=10).json()
    assert {m["id"] for m in listed["data"]} == {"smollm2", "smol-b"}
    for alias in ("smollm2", "smol-b"):
        reply = chat(fleet.base_url, alias)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["model"] == alias and body["choices"][0]["message"]["content"]
    missing = chat(fleet.base_url, "no-such-model")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_children_run_with_the_planned_argv_and_environment(fleet: Fleet) -> None:
    for proc in fleet.plan["processes"]:
        pid = fleet.pid_of(proc["name"])
        env = environ(pid)
        for key, value in proc["env"].items():
            assert env.get(key) == value, (proc["name"], key)
        if proc["role"] == "worker":
            assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
            assert env["CUDA_VISIBLE_DEVICES"] == ""  # CPU replicas see no GPU
    argv = {p["name"]: p["argv"] for p in fleet.plan["processes"]}
    supervisor = fleet.config["supervisor"]
    for i, name in enumerate(["smollm2-0", "smollm2-1", "smol-b-0"]):
        args = argv[name]
        flags = dict(zip(args[3::2], args[4::2], strict=True))
        assert flags["--config-model"] == name.rsplit("-", 1)[0]
        assert flags["--name"] == name
        assert flags["--port"] == str(supervisor["base_port"] + i)
        assert flags["--metrics-port"] == str(supervisor["metrics_base_port"] + i)
        metrics = httpx.get(f"http://127.0.0.1:{flags['--metrics-port']}/metrics", timeout=10)
        assert metrics.status_code == 200
    # smollm2 sets n_threads 1 itself (2 replicas); smol-b gets what is left of the cores.
    assert "--n-threads" not in argv["smollm2-0"] and "--n-threads" not in argv["smollm2-1"]
    smol_b = argv["smol-b-0"]
    assert smol_b[smol_b.index("--n-threads") + 1] == str(max(1, fleet.plan["cores"] - 2))


def test_model_info_reports_the_config_and_placement(fleet: Fleet) -> None:
    for proc in fleet.plan["processes"][:-1]:
        with grpc.insecure_channel(proc["address"]) as channel:
            info = (
                pb_grpc.InferenceServiceStub(channel)
                .GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
                .info
            )
        assert info.alias == proc["model"]
        assert (info.slots, info.context_size) == (2, 1024)  # n_ctx 2048 over 2 slots
        assert info.placement.backend == "cpu"
        assert list(info.placement.visible_devices) == []
        assert info.placement.n_gpu_layers == 0


def test_a_killed_worker_is_restarted_and_gets_traffic_again(fleet: Fleet) -> None:
    victim = fleet.worker("smollm2-1")
    old = fleet.pid_of("smollm2-1")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    new = old
    while new == old:
        assert time.monotonic() < deadline, fleet.log_text()[-4000:]
        time.sleep(0.1)
        with contextlib.suppress(LookupError):
            new = fleet.pid_of("smollm2-1")
    wait_serving(victim["address"], timeout=120)
    assert "smollm2-1 exited with signal SIGKILL" in fleet.log_text()
    # round_robin: within a few requests, one goes to the restarted worker.
    seen = set()
    for _ in range(10):
        reply = chat(fleet.base_url, "smollm2", max_tokens=4)
        assert reply.status_code == 200, reply.text
        seen.add(reply.headers.get("X-Llamagrid-Worker"))
        if victim["address"] in seen:
            break
        time.sleep(0.3)  # the gateway's health watch may take a moment to see it back
    assert victim["address"] in seen, seen


def stream(base_url: str, model: str, started: threading.Event) -> dict[str, Any]:
    """A streamed chat completion read to the end: its chunks and whether [DONE] came."""
    body = {**CHAT, "model": model, "stream": True, "max_tokens": 96, "ignore_eos": True}
    chunks: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return {"chunks": chunks, "done": True}
            chunks.append(json.loads(line[len("data: ") :]))
            started.set()
    return {"chunks": chunks, "done": False}


def test_sigterm_drains_streams_refuses_new_requests_and_exits_0(fleet: Fleet) -> None:
    started = [threading.Event(), threading.Event()]
    with ThreadPoolExecutor(2) as pool:
        futures = [
            pool.submit(stream, fleet.base_url, model, event)
            for model, event in zip(("smollm2", "smol-b"), started, strict=True)
        ]
        for event in started:
            assert event.wait(60)
        fleet.popen.send_signal(signal.SIGTERM)
        # The gateway's drain mode: new requests get 503 while the streams finish.
        status = None
        deadline = time.monotonic() + 10
        while status != 503 and time.monotonic() < deadline:
            status = chat(fleet.base_url, "smollm2", max_tokens=1).status_code
            time.sleep(0.05)
        assert status == 503
        results = [f.result(timeout=120) for f in futures]
    for result in results:
        assert result["done"]
        assert result["chunks"][-1]["choices"][0]["finish_reason"] == "length"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in result["chunks"])
        assert text
    assert fleet.popen.wait(90) == 0, fleet.log_text()[-4000:]
    assert children(fleet.popen.pid) == set()


def test_a_worker_that_cannot_start_is_given_up_on(tmp_path: Path) -> None:
    config = {
        "gateway": {"port": free_port()},
        "supervisor": {
            "base_port": free_block(1),
            "restart_backoff_s": 0.1,
            "max_startup_failures": 2,
            "drain_grace_s": 5,
        },
        "models": [{"alias": "ghost", "model": str(tmp_path / "missing.gguf")}],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "supervisor.log"
    popen = start_supervisor(path, log)
    try:
        code = popen.wait(120)
    finally:
        stop_supervisor(popen)
    text = log.read_text(errors="replace")
    assert code == 1, text
    assert "ghost-0 exited with exit code 1 2 times in a row before it was ready" in text
    assert "the last output of ghost-0:" in text
    assert "missing.gguf" in text.split("the last output of ghost-0:", 1)[1]


@contextlib.contextmanager
def _one_stream(
    tmp_path: Path, max_tokens: int
) -> Iterator[tuple[subprocess.Popen[bytes], Iterator[str], Path]]:
    """A supervisor of one SmolLM2 worker, and a chat stream from it that has begun: yields the
    supervisor, the stream's remaining lines and the supervisor's log; stops it at the end."""
    port = free_port()
    config = {
        "gateway": {"port": port},
        "supervisor": {"base_port": free_block(1), "drain_grace_s": 60},
        "models": [{"alias": "smollm2", "n_ctx": 2048, "parallel": 1, "n_threads": 1}],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp_path / "supervisor.log"
    popen = start_supervisor(path, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base_url}/health", timeout=180)
        body = {**CHAT, "model": "smollm2", "stream": True, "max_tokens": max_tokens}
        body["ignore_eos"] = True
        with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            yield popen, lines, log
    finally:
        stop_supervisor(popen)


def test_a_second_signal_kills_the_stragglers_and_exits_1(tmp_path: Path) -> None:
    with _one_stream(tmp_path, max_tokens=1800) as (popen, _, log):
        popen.send_signal(signal.SIGTERM)  # the worker drains: the stream goes on
        time.sleep(1.0)
        assert popen.poll() is None
        popen.send_signal(signal.SIGTERM)  # again: no more waiting
        code = popen.wait(30)
    text = log.read_text(errors="replace")
    assert code == 1, text
    assert "SIGTERM again: killing every child now" in text
    assert "smollm2-0 is still running: SIGKILL" in text


def test_one_stop_delivered_twice_at_once_still_drains(tmp_path: Path) -> None:
    """`timeout make run` (or a kill of make's process group) hands the supervisor SIGTERM by two
    routes within moments: that is one request to stop, not a second that forces."""
    with _one_stream(tmp_path, max_tokens=64) as (popen, lines, log):
        popen.send_signal(signal.SIGTERM)
        # Apart enough to be delivered twice (a pending signal is not queued twice).
        time.sleep(0.05)
        popen.send_signal(signal.SIGTERM)
        # The running stream drains to its end.
        assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
        code = popen.wait(60)
    text = log.read_text(errors="replace")
    assert code == 0, text
    assert "SIGTERM again at once: the same request to stop, still draining" in text
    assert "killing every child now" not in text and "SIGKILL" not in text
