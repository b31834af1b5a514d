"""Finding workers by DNS: a name with many addresses, re-resolved for ever.

This is the Kubernetes headless-Service case: ``llamagrid-worker.ns.svc.cluster.local`` resolves
to one address per ready worker pod, and the set changes as pods come, go and restart. Each
resolution replaces the name's workers in the pool; a failed one keeps the previous set, so a
DNS hiccup never empties the pool.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence

from llamagrid.gateway.pool import WorkerPool

logger = logging.getLogger(__name__)


def split_target(target: str) -> tuple[str, int]:
    """``NAME:PORT`` (or ``[v6]:PORT``) as host and port."""
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{target!r} is not NAME:PORT")
    return host.strip("[]"), int(port)


def join_address(host: str, port: int) -> str:
    """A gRPC target for one resolved address (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(target: str) -> list[str]:
    """Every TCP address ``NAME:PORT`` resolves to, sorted."""
    host, port = split_target(target)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({join_address(str(info[4][0]), port) for info in infos})


class DnsDiscovery:
    """Re-resolves each ``NAME:PORT`` every interval and syncs the pool with the answer."""

    def __init__(self, pool: WorkerPool, targets: Sequence[str], interval_s: float) -> None:
        self.pool = pool
        self.targets = list(targets)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Resolve now and then every interval, in the background."""
        if self.targets and self._task is None:
            self._task = asyncio.create_task(self._run(), name="dns discovery")

    async def stop(self) -> None:
        """Stop resolving."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> None:
        """Resolve every name once and update the pool."""
        for target in self.targets:
            try:
                addresses = await resolve(target)
            except OSError as error:
                logger.warning("cannot resolve %s (keeping its last workers): %s", target, error)
                continue
            self.pool.sync(f"dns {target}", addresses)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)
