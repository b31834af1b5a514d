"""A circuit breaker per worker: eject after repeated server-side failures, probe, restore.

Only failures that say the worker (or the way to it) is broken count: transport errors, which
gRPC reports as UNAVAILABLE, and INTERNAL. A client's bad request, a full queue or an expired
deadline says nothing about the worker and never counts. An ejected worker comes back when its
health says SERVING: either the health watch reports it, or a probe after the cool-down reads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from llamagrid.gateway.pool import Worker

logger = logging.getLogger(__name__)

#: The status codes that count against a worker.
COUNTED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
#: The longest wait between two probes of an ejected worker.
MAX_PROBE_DELAY_S = 60.0
#: Seconds allowed for one probe's health answer.
PROBE_TIMEOUT_S = 5.0


class Breaker:
    """Counts consecutive counted failures per worker and ejects at the threshold."""

    def __init__(self, threshold: int, cooldown_s: float, health_service: str) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.health_service = health_service
        #: Called with the worker each time one is ejected (metrics).
        self.on_eject: Callable[[Worker], None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        """The probes running now."""
        return list(self._probes.values())

    def succeeded(self, worker: Worker) -> None:
        """A call on the worker got an answer from it: start counting again."""
        worker.failures = 0

    def failed(self, worker: Worker, code: grpc.StatusCode) -> bool:
        """Count a failed call; returns whether the worker was ejected by it."""
        if code not in COUNTED:
            return False
        worker.failures += 1
        if worker.ejected or worker.failures < self.threshold:
            return False
        worker.ejected = True
        logger.warning(
            "worker %s ejected after %d failures (last: %s)", worker.address, worker.failures, code
        )
        if self.on_eject is not None:
            self.on_eject(worker)
        if worker.address not in self._probes:
            self._probes[worker.address] = asyncio.create_task(
                self._probe(worker), name=f"probe {worker.address}"
            )
        return True

    def restore(self, worker: Worker) -> None:
        """The worker's health says SERVING: back in rotation."""
        if worker.ejected:
            logger.info("worker %s is back in rotation", worker.address)
        worker.ejected = False
        worker.failures = 0
        probe = self._probes.pop(worker.address, None)
        if probe is not None and probe is not asyncio.current_task():
            probe.cancel()

    async def _probe(self, worker: Worker) -> None:
        """Read the ejected worker's health after the cool-down, backing off while it is bad."""
        delay = self.cooldown_s
        while worker.ejected and not worker.retired:
            await asyncio.sleep(delay)
            if await self._serving(worker):
                self.restore(worker)
                return
            delay = min(delay * 2, MAX_PROBE_DELAY_S)
        self._probes.pop(worker.address, None)

    async def _serving(self, worker: Worker) -> bool:
        """The first status the worker's health watch reports (False on any failure)."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.TimeoutError):
            return await asyncio.wait_for(self._first_status(worker), PROBE_TIMEOUT_S)
        return False

    async def _first_status(self, worker: Worker) -> bool:
        async for serving in worker.client.watch_health(self.health_service):
            return serving
        return False
