"""One supervised child process: spawn, forward its output, watch it get ready, restart it.

Restarts back off exponentially (``initial_s``, doubling, capped at ``max_s``); the delay goes
back to ``initial_s`` after a run that became ready and lasted ``healthy_run_s``. A child that
exits ``max_startup_failures`` times in a row without ever becoming ready (a worker reporting
SERVING, the gateway answering HTTP) is given up on: its last output lines are logged and the
supervisor stops everything and exits 1, so a bad config or a missing model does not loop.

Children are spawned from the event loop, on the main thread, with the supervisor's pid in
their environment: each asks the kernel to be sent SIGTERM when that thread (hence the
supervisor) dies, SIGKILL included (fleet/parent_death.py), so none is left holding its port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagrid.security import ChannelSecurity, aio_channel
from llamagrid.supervisor.access import child_environment
from llamagrid.supervisor.plan import ProcessSpec, RestartPolicy

log = logging.getLogger("llamagrid.serve")

#: How many of a child's last output lines are kept, to show when it is given up on.
TAIL_LINES = 40
#: The longest output line forwarded as is; the rest is cut (a child may echo client text).
MAX_LINE_CHARS = 4096
#: C0 controls (but tab) and DEL, written as \xNN.
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F)}
#: Seconds between two readiness probes.
PROBE_INTERVAL_S = 0.5


def printable(line: bytes, limit: int = MAX_LINE_CHARS) -> str:
    """A child's output line as it may reach a terminal or a log: valid UTF-8, control
    characters (ANSI escapes, carriage returns, ...) escaped, cut at ``limit`` characters."""
    text = line.decode(errors="replace").rstrip("\n")
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text.translate(_CONTROL_ESCAPES)


def describe_exit(code: int) -> str:
    """``exit code 1`` or ``signal SIGKILL``."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def probe_security(spec: ProcessSpec) -> ChannelSecurity:
    """How to dial the process to probe it: TLS (and a client certificate) as the plan says."""
    tls = spec.tls
    if tls is None:
        return ChannelSecurity()
    return ChannelSecurity.create(
        tls=True,
        root_ca=tls.ca or None,
        client_cert=tls.cert or None,
        client_key=tls.key or None,
        server_name=tls.server_name or None,
    )


async def probe_ready(spec: ProcessSpec, security: ChannelSecurity | None = None) -> bool:
    """One readiness probe: a worker's grpc.health.v1 says SERVING, the gateway answers HTTP.
    ``security``: how to dial a worker (default: plaintext)."""
    if spec.role == "gateway":
        scheme = "https" if spec.https else "http"
        try:
            # Unverified: the probe only asks whether the child answers, and sends nothing
            # secret; the certificate may name the public host, not the address dialled.
            async with httpx.AsyncClient(timeout=2.0, verify=False) as client:
                await client.get(f"{scheme}://{spec.address}/livez")
        except httpx.HTTPError:
            return False
        return True
    async with aio_channel(spec.address, [], security) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Child:
    """A process kept running until stop(), restarted with backoff when it exits."""

    def __init__(
        self, spec: ProcessSpec, policy: RestartPolicy, give_up: Callable[[Child], None]
    ) -> None:
        self.spec = spec
        self.policy = policy
        self.give_up = give_up
        self.proc: asyncio.subprocess.Process | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.restarts = 0
        self.ready = False  # in the current run
        self._probe_security = probe_security(spec)
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether a process is alive right now."""
        return self.proc is not None and self.proc.returncode is None

    async def run(self) -> None:
        """Start the process and restart it whenever it exits, until stop()."""
        delay, failures = self.policy.initial_s, 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code = await self._run_once()
            except OSError as exc:  # e.g. out of file descriptors: a failed start like any other
                log.error("cannot start %s: %s", self.spec.name, exc)
                code, self.ready = 127, False
            if self._stopping.is_set():
                return
            ran = time.monotonic() - started
            failures = 0 if self.ready else failures + 1
            if self.ready and ran >= self.policy.healthy_run_s:
                delay = self.policy.initial_s
            if failures >= self.policy.max_startup_failures:
                log.error(
                    "%s exited with %s %d times in a row before it was ready; giving up",
                    self.spec.name,
                    describe_exit(code),
                    failures,
                )
                self.give_up(self)
                return
            self.restarts += 1
            log.warning(
                "%s exited with %s after %.1f s; restarting it in %.1f s (restart %d)",
                self.spec.name,
                describe_exit(code),
                ran,
                delay,
                self.restarts,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, self.policy.max_s)

    async def _run_once(self) -> int:
        """One run: spawn, forward output, watch readiness; the exit code."""
        self.ready = False
        self.tail.clear()  # show the last run's output when giving up
        self.proc = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            env=child_environment(self.spec.role, self.spec.env, os.environ, os.getpid()),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            limit=1 << 20,
        )
        log.info("started %s (pid %d)", self.spec.name, self.proc.pid)
        if self._stopping.is_set():  # stop() came while it was being spawned
            self.proc.send_signal(signal.SIGTERM)
        pump = asyncio.create_task(self._forward_output(self.proc))
        watch = asyncio.create_task(self._watch_ready())
        code = await self.proc.wait()
        watch.cancel()
        await pump
        return code

    async def _forward_output(self, proc: asyncio.subprocess.Process) -> None:
        """Copy each output line to the supervisor's stderr, prefixed with the child's name."""
        assert proc.stdout is not None
        prefix = f"{self.spec.name} | ".encode()
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over the limit: take what is buffered
                line = await proc.stdout.read(1 << 20)
            if not line:
                return
            text = printable(line)
            self.tail.append(text)
            with contextlib.suppress(OSError):  # a closed stderr must not stop the child
                sys.stderr.buffer.write(prefix + text.encode() + b"\n")
                sys.stderr.buffer.flush()

    async def _watch_ready(self) -> None:
        """Probe until the child is ready, then log it once."""
        while not await probe_ready(self.spec, self._probe_security):
            await asyncio.sleep(PROBE_INTERVAL_S)
        self.ready = True
        log.info("%s is ready on %s", self.spec.name, self.spec.address)

    def terminate(self) -> None:
        """Stop restarting, and send SIGTERM if the process runs."""
        self._stopping.set()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the process if it still runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def wait(self) -> None:
        """Until the current process (if any) has exited."""
        if self.proc is not None:
            await self.proc.wait()
