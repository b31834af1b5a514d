"""Start real llamagrid processes for tests: a worker on the real model, and the gateway."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A running child process and the address it serves."""

    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        """host:port."""
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait()

    def log_text(self) -> str:
        """What the process printed so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def _spawn(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=full_env
    )


def spawn_worker(
    tmp: Path, *args: str, env: dict[str, str] | None = None, wait_port: bool = True
) -> Proc:
    """A worker on port 0 (the default SmolLM2 unless args say otherwise); waits for its port."""
    port_file = tmp / f"worker-{time.monotonic_ns()}.port"
    log = port_file.with_suffix(".log")
    popen = _spawn(
        [
            "-m",
            "llamagrid.worker",
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--n-threads",
            "2",
            "--log-level",
            "info",
            *args,
        ],
        log,
        env,
    )
    proc = Proc(popen, 0, log)
    deadline = time.monotonic() + 60
    while wait_port and proc.port == 0:
        if popen.poll() is not None:
            raise RuntimeError(f"worker exited with {popen.returncode}:\n{proc.log_text()}")
        if port_file.exists() and port_file.read_text().strip():
            proc.port = int(port_file.read_text())
        elif time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{proc.log_text()}")
        time.sleep(0.02)
    return proc


def spawn_gateway(tmp: Path, *workers: str, extra: Sequence[str] = ()) -> Proc:
    """A gateway in front of the given workers (``extra``: more flags); waits until it answers
    HTTP."""
    port = free_port()
    log = tmp / f"gateway-{port}.log"
    args = ["-m", "llamagrid.gateway", "--host", "127.0.0.1", "--port", str(port), *extra]
    for w in workers:
        args += ["--worker", w]
    popen = _spawn(args, log)
    proc = Proc(popen, port, log)
    deadline = time.monotonic() + 60
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"gateway exited with {popen.returncode}:\n{proc.log_text()}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        if time.monotonic() > deadline:
            raise RuntimeError(f"gateway did not start:\n{proc.log_text()}")
        time.sleep(0.05)


def wait_http_ok(url: str, timeout: float = 120.0) -> None:
    """Poll url until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout} s")


@contextlib.contextmanager
def running(proc: Proc) -> Iterator[Proc]:
    """Terminate the process on exit."""
    try:
        yield proc
    finally:
        proc.terminate()


def wait_serving(worker: str | Proc, timeout: float = 120.0) -> None:
    """Poll a worker's grpc.health.v1 Check until it reports SERVING; given the Proc, fail at
    once (with its output) if the process has exited."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = worker if isinstance(worker, str) else worker.target
    deadline = time.monotonic() + timeout
    # Reconnect quickly: with grpc's default backoff (1 s growing to 120 s) a worker that is
    # restarting would be seen SERVING seconds after it is, later than the gateway sees it.
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 200)]
    with grpc.insecure_channel(target, options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if isinstance(worker, Proc) and worker.popen.poll() is not None:
                code = worker.popen.returncode
                raise RuntimeError(f"worker {target} exited ({code}):\n{worker.log_text()}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.05)
    raise TimeoutError(f"worker {target} did not become SERVING within {timeout} s")
