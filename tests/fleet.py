"""A supervised fleet for tests: `llamagrid serve --config` on real processes, and /proc helpers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.procs import ROOT, wait_http_ok, wait_serving


def free_block(n: int) -> int:
    """The first of n consecutive TCP ports that were free a moment ago."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no block of free ports")


def children(pid: int) -> set[int]:
    """The child processes of pid, from /proc (every thread's children file)."""
    pids: set[int] = set()
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids |= {int(p) for p in path.read_text().split()}
    return pids


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


@dataclass
class Fleet:
    """A running supervisor, its plan and its gateway."""

    popen: subprocess.Popen[bytes]
    config: dict[str, Any]
    plan: dict[str, Any]
    base_url: str
    log: Path

    def worker(self, name: str) -> dict[str, Any]:
        return next(p for p in self.plan["processes"] if p["name"] == name)

    def pid_of(self, name: str) -> int:
        """The pid of the child running the named process of the plan."""
        argv = self.worker(name)["argv"]
        for pid in children(self.popen.pid):
            with contextlib.suppress(OSError):
                if cmdline(pid) == argv:
                    return pid
        raise LookupError(f"no child runs {name}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_supervisor(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "llamagrid", "serve", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def stop_supervisor(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL the supervisor and any child it left behind."""
    kids = children(popen.pid)
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(90)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    for pid in kids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_listed(base_url: str, aliases: set[str], timeout: float = 60) -> None:
    """Until the gateway's /v1/models lists every alias (its health watch has seen them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            listed = httpx.get(f"{base_url}/v1/models", timeout=5).json()
            if {m["id"] for m in listed["data"]} >= aliases:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the gateway did not list {aliases} within {timeout} s")


@contextlib.contextmanager
def supervised(config: dict[str, Any], tmp: Path) -> Iterator[Fleet]:
    """The supervisor on ``config``, once its gateway, workers and models are all ready;
    stopped (and every child killed) on exit. The gateway's port is ``config.gateway.port``."""
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    printed = subprocess.run(
        [sys.executable, "-m", "llamagrid", "serve", "--config", str(path), "--print-plan"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    )
    plan = json.loads(printed.stdout)
    log = tmp / "supervisor.log"
    popen = start_supervisor(path, log)
    base_url = f"http://127.0.0.1:{config['gateway']['port']}"
    fleet = Fleet(popen, config, plan, base_url, log)
    try:
        wait_http_ok(f"{fleet.base_url}/health", timeout=180)
        for process in plan["processes"][:-1]:
            wait_serving(process["address"], timeout=180)
        wait_listed(fleet.base_url, {model["alias"] for model in config["models"]})
        yield fleet
    finally:
        stop_supervisor(popen)
