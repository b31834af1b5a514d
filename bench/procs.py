"""Child processes of the benchmark: start, wait until ready, read peak memory, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.config import ROOT


@dataclass
class Child:
    """One server process the benchmark started (the leader of its own process group)."""

    label: str
    popen: subprocess.Popen[bytes]
    log: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether it is still running."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        """The end of what it printed."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(label: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Child:
    """Start argv in its own session, output to a log file under log_dir."""
    log = log_dir / f"{label}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Child(label, popen, log, argv)


def stop(child: Child, timeout: float = 15.0) -> None:
    """SIGTERM its process group, then SIGKILL what is left after timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not child.alive():
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            continue
    # Reap whatever else was in the group (the group id is the leader's pid).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)


def poll(
    what: str, child: Child | None, timeout: float, ready: Callable[[], bool], every: float = 0.1
) -> None:
    """Call ready every `every` s until it is true; raise if child exits or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        if child is not None and not child.alive():
            raise RuntimeError(
                f"{child.label} exited with {child.popen.returncode} before {what}:\n"
                f"{child.log_tail()}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            tail = child.log_tail() if child else ""
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s\n{tail}")
        time.sleep(every)


def wait_http_ok(url: str, child: Child, timeout: float = 180.0) -> None:
    """Poll url until it answers 200."""

    def ok() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=2).status_code == 200
        return False

    poll(f"{url} answered 200", child, timeout, ok)


def wait_port_file(path: Path, child: Child, timeout: float = 120.0) -> int:
    """Wait for a worker to write its bound port to path."""

    def written() -> bool:
        return path.exists() and path.read_text().strip().isdigit()

    poll(f"{child.label} wrote {path.name}", child, timeout, written, every=0.02)
    return int(path.read_text().strip())


def wait_grpc_serving(target: str, child: Child, timeout: float = 180.0) -> None:
    """Poll a worker's grpc.health.v1 Check until it reports SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            return False

        poll(f"{target} SERVING", child, timeout, serving, every=0.05)


# ---------------------------------------------------------------------------------------------
# Peak memory, from /proc/PID/status VmHWM (summed over the process and its descendants)


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    kids = _children_of()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def reset_peak(pid: int) -> bool:
    """Reset VmHWM of pid and its descendants to their current RSS; False if not allowed."""
    done = True
    for p in process_tree(pid):
        try:
            Path(f"/proc/{p}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def peak_rss_mib(pid: int) -> float | None:
    """Sum of VmHWM over pid and its descendants, in MiB; None when unreadable."""
    total_kib = 0
    found = False
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
                    found = True
    return total_kib / 1024 if found else None


# ---------------------------------------------------------------------------------------------
# CPU used by other processes: a busy machine makes every number of a point meaningless

_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat; idle and iowait excluded)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already counted in user/nice.
    return (sum(ticks[:8]) - idle) / _TICK


def tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by each pid and its descendants."""
    total = 0
    for root in pids:
        for p in process_tree(root):
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{p}/stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                total += int(fields[11]) + int(fields[12])
    return total / _TICK


class ForeignCpu:
    """Measures the share of the machine's CPU that processes outside `pids` used meanwhile."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._start = time.monotonic()
        self._busy = machine_busy_s()
        self._ours = tree_cpu_s(pids)

    def percent(self) -> float:
        """Foreign busy CPU since start, in % of all cores' time."""
        wall = time.monotonic() - self._start
        foreign = (machine_busy_s() - self._busy) - (tree_cpu_s(self.pids) - self._ours)
        cores = len(os.sched_getaffinity(0))
        return max(0.0, 100 * foreign / (wall * cores)) if wall > 0 else 0.0
