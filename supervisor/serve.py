"""`llamagrid serve`: run a worker and the gateway as child processes, restart them if they die."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

import httpx
from pydantic_settings import CliApp

from supervisor.settings import ServeSettings

log = logging.getLogger("llamagrid.serve")

#: A process that ran this long before dying is restarted after the initial backoff again.
HEALTHY_RUN_S = 60.0
MAX_BACKOFF_S = 30.0


class Child:
    """One supervised process, restarted with exponential backoff when it exits."""

    def __init__(self, name: str, module: str, args: list[str], backoff_s: float) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", module, *args]
        self.backoff_s = backoff_s
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False

    async def run(self) -> None:
        """Keep the process running until stop()."""
        delay = self.backoff_s
        while not self.stopping:
            started = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(*self.argv)
            code = await self.proc.wait()
            if self.stopping:
                return
            if time.monotonic() - started > HEALTHY_RUN_S:
                delay = self.backoff_s
            log.warning("%s exited with %s; restarting in %.1f s", self.name, code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM, then SIGKILL after timeout_s."""
        self.stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_healthy(url: str, timeout_s: float) -> bool:
    """Poll the gateway's /health until it answers 200."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


async def supervise(settings: ServeSettings) -> None:
    """Start both processes, announce the endpoint, and stop both on SIGTERM/SIGINT."""
    children = [
        Child("worker", "worker", settings.worker_args(), settings.restart_backoff_s),
        Child("gateway", "gateway", settings.gateway_args(), settings.restart_backoff_s),
    ]
    tasks = [asyncio.create_task(c.run()) for c in children]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    base = f"http://{settings.host}:{settings.port}"
    healthy = asyncio.create_task(wait_healthy(f"{base}/health", settings.startup_timeout_s))
    await asyncio.wait(
        {healthy, asyncio.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if healthy.done() and healthy.result():
        alias = settings.alias or "smollm2"
        print(
            f"llamagrid is ready: point an OpenAI client at {base}/v1 (model '{alias}')", flush=True
        )
    elif healthy.done():
        log.error("the gateway did not become healthy within %.0f s", settings.startup_timeout_s)
    await stop.wait()
    await asyncio.gather(*(c.stop(timeout_s=40.0) for c in reversed(children)))
    for task in tasks:
        task.cancel()


def main(argv: list[str] | None = None) -> None:
    """Run until interrupted."""
    settings = CliApp.run(ServeSettings, cli_args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s serve: %(message)s"
    )
    asyncio.run(supervise(settings))
