"""`llamagrid serve` on real processes and the default model: keys stay off every child's command
line, an open bind is refused before anything starts, and no child outlives a SIGKILLed
supervisor (the next `llamagrid serve` starts on the same ports).

The tests of the shared supervisor run in file order: the last one kills it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.fleet import children, cmdline, environ, stop_supervisor
from tests.procs import ROOT, free_port, wait_http_ok

FLAG_KEY, FILE_KEY, ENV_KEY = "sk-flag-key-1", "sk-file-key-2", "sk-env-key-3"
#: How long children may take to drain and exit once their supervisor is gone (idle: ~1 s).
EXIT_BOUND_S = 30.0
#: Small and quick: one slot, one thread.
WORKER_FLAGS = ("--n-ctx", "1024", "--parallel", "1", "--n-threads", "1")


@dataclass
class Serve:
    """A running `llamagrid serve` without a config: one worker and the gateway."""

    popen: subprocess.Popen[bytes]
    port: int
    worker_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_serve(
    tmp: Path, *args: str, env: dict[str, str] | None = None, ports: tuple[int, int] | None = None
) -> Serve:
    port, worker_port = ports or (free_port(), free_port())
    log = tmp / f"serve-{port}.log"
    argv = [sys.executable, "-m", "llamagrid", "serve", "--port", str(port)]
    argv += ["--worker-port", str(worker_port), *WORKER_FLAGS, *args]
    popen = subprocess.Popen(
        argv,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    return Serve(popen, port, worker_port, log)


def gone(pid: int) -> bool:
    """Whether the process has exited (a zombie holds no port: it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def port_free(port: int) -> bool:
    """Whether a new server could listen on 127.0.0.1:port (as the next serve would)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """Serve with a key flag, a key file, and a key in LLAMAGRID_SERVE_API_KEY that the flag
    overrides (but that is in the supervisor's environment)."""
    tmp = tmp_path_factory.mktemp("serve")
    keys = tmp / "api-keys"
    keys.write_text(f"# the file's key\n{FILE_KEY}\n")
    keys.chmod(0o600)
    serve = start_serve(
        tmp,
        "--api-key",
        FLAG_KEY,
        "--api-key-file",
        str(keys),
        env={"LLAMAGRID_SERVE_API_KEY": ENV_KEY},
    )
    try:
        wait_http_ok(f"{serve.url}/health", timeout=180)
        yield serve
    finally:
        stop_supervisor(serve.popen)


def test_no_key_is_on_the_command_line_of_any_child(served: Serve) -> None:
    pids = children(served.popen.pid)
    assert len(pids) == 2, served.log_text()[-3000:]
    roles = {}
    for pid in pids:
        args = cmdline(pid)
        roles["gateway" if "llamagrid.gateway" in args else "worker"] = pid
        text = "\0".join(args)
        for key in (FLAG_KEY, FILE_KEY, ENV_KEY):
            assert key not in text, (args, key)
        assert "--api-key" not in args
    assert set(roles) == {"gateway", "worker"}
    worker_env, gateway_env = environ(roles["worker"]), environ(roles["gateway"])
    assert not [v for v in worker_env.values() if any(k in v for k in (FLAG_KEY, ENV_KEY))]
    assert gateway_env["LLAMAGRID_GATEWAY_API_KEY"] == FLAG_KEY
    for env in (worker_env, gateway_env):
        assert not [name for name in env if name.startswith("LLAMAGRID_SERVE_")]
        assert env["LLAMAGRID_PARENT_PID"] == str(served.popen.pid)


def test_the_gateway_takes_the_keys_serve_was_given(served: Serve) -> None:
    for key in (FLAG_KEY, FILE_KEY):
        reply = httpx.get(f"{served.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200, reply.text
    for headers in ({}, {"Authorization": f"Bearer {ENV_KEY}"}):  # the flag overrode it
        assert httpx.get(f"{served.url}/v1/models", headers=headers).status_code == 401
    assert httpx.get(f"{served.url}/metrics").status_code == 401
    assert httpx.get(f"{served.url}/livez").status_code == 200


def test_a_sigkilled_supervisor_leaves_no_child_and_no_port_behind(
    served: Serve, tmp_path: Path
) -> None:
    pids = children(served.popen.pid)
    assert len(pids) == 2
    assert not port_free(served.port) and not port_free(served.worker_port)
    served.popen.send_signal(signal.SIGKILL)
    served.popen.wait(10)
    deadline = time.monotonic() + EXIT_BOUND_S
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(pid, cmdline(pid)) for pid in pids if not gone(pid)]
    for pid, _ in left:  # do not leak them into the other tests
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"children outlived the supervisor by {EXIT_BOUND_S} s: {left}"
    assert port_free(served.port) and port_free(served.worker_port)
    # And the next `llamagrid serve` starts on the same ports.
    again = start_serve(tmp_path, ports=(served.port, served.worker_port))
    try:
        wait_http_ok(f"{again.url}/health", timeout=180)
    finally:
        stop_supervisor(again.popen)
    assert again.popen.returncode == 0, again.log_text()[-3000:]


def test_serve_refuses_an_open_gateway_before_starting_anything(tmp_path: Path) -> None:
    serve = start_serve(tmp_path, "--host", "0.0.0.0")
    try:
        code = serve.popen.wait(60)
    finally:
        stop_supervisor(serve.popen)
    text = serve.log_text()
    assert code == 1, text
    assert "llamagrid serve: refusing to serve the gateway on 0.0.0.0 without an API key" in text
    assert "started" not in text  # no child was spawned
