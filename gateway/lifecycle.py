"""Draining on SIGTERM: refuse new requests with 503, let the running ones finish, exit 0.

uvicorn's own shutdown stops listening at once (new clients get connection refused) and then
re-raises the signal, so the process dies of it. A load balancer or an operator needs the
opposite: an answer that says "not here" while in-flight streams complete, and a clean exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from types import FrameType

import uvicorn

logger = logging.getLogger(__name__)

#: How often the drain checks whether the last request has finished.
POLL_S = 0.05


class Drain:
    """Whether the gateway is draining, and how many requests are still being answered."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self.active = 0

    async def wait_idle(self) -> bool:
        """Wait until no request is running or the grace period is over; True if idle."""
        deadline = time.monotonic() + self.grace_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(POLL_S)
        return self.active == 0


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM/SIGINT starting a drain; a second signal exits at once."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self.drain = drain
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start draining (not recorded as a captured signal: the process then exits 0)."""
        if self.drain.draining:
            logger.warning("second %s: exiting without waiting", signal.Signals(sig).name)
            self.should_exit = True
            return
        self.drain.draining = True
        logger.info(
            "%s: draining; new requests get 503 for up to %.0f s",
            signal.Signals(sig).name,
            self.drain.grace_s,
        )
        asyncio.get_running_loop().call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.create_task(self._finish_drain(), name="drain")

    async def _finish_drain(self) -> None:
        if not await self.drain.wait_idle():
            logger.warning("grace period over with %d request(s) running", self.drain.active)
        self.should_exit = True
