"""LMDeploy's proxy model on real processes: workers that register themselves with a gateway
that has no --worker, heartbeats, deregistration on drain, ejection of a killed worker, and the
node API driven by a plain HTTP client."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.procs import (
    ROOT,
    Proc,
    free_port,
    running,
    spawn_gateway,
    spawn_worker,
    wait_http_ok,
    wait_serving,
)
from tests.serving import ONE_THREAD

ADMIN_KEY = "node-admin-key"
USER_KEY = "sk-node-user"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"Authorization": f"Bearer {USER_KEY}"}
REGISTER_ENV = {"LLAMAGRID_REGISTER_KEY": ADMIN_KEY}


def key_flags(tmp: Path) -> list[str]:
    """Gateway flags: an admin key file and a user key file."""
    admin, user = tmp / "admin-keys", tmp / "user-keys"
    admin.write_text(ADMIN_KEY + "\n")
    user.write_text(USER_KEY + "\n")
    admin.chmod(0o600)
    user.chmod(0o600)
    return ["--admin-key-file", str(admin), "--api-key-file", str(user)]


def status(base_url: str) -> dict[str, Any]:
    reply = httpx.get(f"{base_url}/nodes/status", headers=ADMIN, timeout=10)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)  # a poll interval (the default --node-rate-per-s is 20)


def serving_node(base_url: str, address: str) -> bool:
    node = status(base_url).get(address)
    return node is not None and node["healthy"] and bool(node["models"])


def chat(base_url: str, model: str) -> dict[str, Any]:
    """A short greedy chat completion through the gateway, as a plain HTTP client."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    reply = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=USER, timeout=120)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


@contextlib.contextmanager
def gateway_on(tmp: Path, port: int, extra: list[str]) -> Iterator[Proc]:
    """A gateway on ``port`` (which a worker may already be trying to register with)."""
    log = tmp / f"gateway-{port}.log"
    args = ["-m", "llamagrid.gateway", "--host", "127.0.0.1", "--port", str(port), *extra]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )
    proc = Proc(popen, port, log)
    with running(proc):
        wait_http_ok(f"http://127.0.0.1:{port}/livez", timeout=60)
        yield proc


def test_a_worker_registers_itself_serves_and_deregisters_when_drained(tmp_path: Path) -> None:
    with running(spawn_gateway(tmp_path, extra=key_flags(tmp_path))) as gateway:
        base_url = f"http://127.0.0.1:{gateway.port}"
        flags = ("--register-with", base_url, "--register-interval-s", "60", *ONE_THREAD)
        with running(spawn_worker(tmp_path, *flags, env=REGISTER_ENV)) as worker:
            wait_for(lambda: serving_node(base_url, worker.target), "the worker registered")
            node = status(base_url)[worker.target]
            assert node["source"] == "registered" and node["heartbeat_s"] == 60
            assert node["available"] and node["unfinished"] == 0 and node["slots"] > 0
            answer = chat(base_url, node["models"][0])
            assert answer["choices"][0]["message"]["content"]
            assert worker.terminate() == 0
        # Its lease would have lasted 3 minutes: it is gone because it deregistered.
        assert status(base_url) == {}
        assert "deregistered from" in worker.log_text()


def test_a_worker_waits_for_its_gateway_and_is_ejected_once_killed(tmp_path: Path) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    flags = ("--register-with", base_url, "--register-interval-s", "0.3", *ONE_THREAD)
    with running(spawn_worker(tmp_path, *flags, env=REGISTER_ENV)) as worker:
        wait_serving(worker)  # registering with a gateway that is not there yet
        with gateway_on(tmp_path, port, key_flags(tmp_path)) as gateway:
            wait_for(lambda: serving_node(base_url, worker.target), "the worker registered")
            assert chat(base_url, status(base_url)[worker.target]["models"][0])["choices"]
            worker.popen.kill()
            worker.popen.wait()
            wait_for(lambda: status(base_url) == {}, "the killed worker was ejected", 30)
            assert "missed 3 heartbeats" in gateway.log_text()


def test_an_lmdeploy_style_client_adds_lists_uses_and_removes_a_node(tmp_path: Path) -> None:
    with (
        running(spawn_worker(tmp_path, *ONE_THREAD)) as worker,
        running(spawn_gateway(tmp_path, extra=key_flags(tmp_path))) as gateway,
    ):
        base_url = f"http://127.0.0.1:{gateway.port}"
        wait_serving(worker)
        with httpx.Client(base_url=base_url, timeout=30) as http:
            assert http.get("/nodes/status").status_code == 401
            assert http.get("/nodes/status", headers=USER).status_code == 403
            refused = http.post("/nodes/add", json={"url": worker.target}, headers=USER)
            assert refused.status_code == 403
            added = http.post("/nodes/add", json={"url": worker.target}, headers=ADMIN)
            assert added.json() == {"url": worker.target, "state": "added"}
            wait_for(lambda: serving_node(base_url, worker.target), "the added node serves")
            node = status(base_url)[worker.target]
            assert node["source"] == "added" and node["lease_s"] is None
            model = node["models"][0]
            answer = chat(base_url, model)
            assert answer["choices"][0]["message"]["content"]
            removed = http.post("/nodes/remove", params={"node_url": worker.target}, headers=ADMIN)
            assert removed.json() == {"url": worker.target, "state": "removed"}
            assert status(base_url) == {}
            body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
            after = http.post("/v1/chat/completions", json=body, headers=USER)
            assert after.status_code == 503
