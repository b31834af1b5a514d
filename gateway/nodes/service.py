"""The node registry: workers added through the node API or registered by themselves.

Its nodes are one discovery source of the pool (``pool.sync("nodes", ...)``), beside the static
``--worker`` list, ``--worker-dns`` names and the supervisor's list:

- **Added** nodes (``POST /nodes/add``) stay until ``POST /nodes/remove``.
- **Registered** nodes (``POST /nodes/register``, sent again every ``heartbeat_s`` by a worker
  started with ``--register-with``) hold a lease of ``missed_heartbeats`` intervals; one that
  lets its lease run out is ejected, and its next registration brings it back.
- **Removing** a node retires it in the pool: no new request goes to it, the ones in flight
  finish, and its channel is closed once they have.

A node that is both added and registered stays until it is removed. The registry holds at most
``max_nodes`` nodes; each client address may make ``rate_per_s`` node API calls per second (a
token bucket of twice that, at least 2), so a runaway worker cannot keep the gateway busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.nodes.schemas import NodeStatus
from llamagrid.gateway.pool import WorkerPool

logger = logging.getLogger(__name__)

#: The pool source the registry's nodes are listed under.
SOURCE = "nodes"
#: Seconds between two looks for nodes whose lease has run out.
EJECT_TICK_S = 0.1
#: Client addresses whose call rate is tracked at most (the oldest are forgotten first).
MAX_TRACKED_CLIENTS = 1024


@dataclass
class Node:
    """One node of the registry."""

    address: str
    added: bool = False
    #: Registered: the declared models and heartbeat, and when the lease runs out (monotonic).
    models: tuple[str, ...] = ()
    heartbeat_s: float | None = None
    last_heartbeat: float | None = None
    lease_until: float | None = None


class RateLimit:
    """A token bucket per client address."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate = rate_per_s
        self.burst = max(2.0, 2 * rate_per_s)
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, when)

    def take(self, client: str) -> None:
        """Count a call from ``client``; 429 when it has none left."""
        now = time.monotonic()
        tokens, then = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        if len(self._buckets) >= MAX_TRACKED_CLIENTS:
            self._buckets.pop(next(iter(self._buckets)))
        if tokens < 1:
            self._buckets[client] = (tokens, now)
            wait = max(1, int((1 - tokens) / self.rate + 0.999))
            raise OpenAIError(
                429,
                f"Too many node API calls from this address (the gateway's --node-rate-per-s, "
                f"{self.rate:g}); retry shortly.",
                "rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        self._buckets[client] = (tokens - 1, now)


class NodeRegistry:
    """The nodes of the node API, kept in sync with the pool."""

    def __init__(
        self, pool: WorkerPool, max_nodes: int, missed_heartbeats: int, rate_per_s: float
    ) -> None:
        self.pool = pool
        self.max_nodes = max_nodes
        self.missed_heartbeats = missed_heartbeats
        self.rate = RateLimit(rate_per_s)
        self._nodes: dict[str, Node] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start ejecting nodes whose lease runs out."""
        if self._task is None:
            self._task = asyncio.create_task(self._eject_expired(), name="node leases")

    async def stop(self) -> None:
        """Stop ejecting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def add(self, address: str) -> bool:
        """Put ``address`` in rotation until removed; False if it was added already."""
        node = self._node(address)
        fresh = not node.added
        node.added = True
        self._sync()
        if fresh:
            logger.info("node %s added", address)
        return fresh

    def register(self, address: str, models: list[str], heartbeat_s: float) -> tuple[bool, float]:
        """Register or renew ``address``: (whether it is new, the lease in seconds)."""
        node = self._node(address)
        fresh = node.lease_until is None
        now = time.monotonic()
        lease = heartbeat_s * self.missed_heartbeats
        node.models, node.heartbeat_s = tuple(dict.fromkeys(models)), heartbeat_s
        node.last_heartbeat, node.lease_until = now, now + lease
        if fresh:
            self._sync()
            logger.info("node %s registered (heartbeat every %g s)", address, heartbeat_s)
        return fresh, lease

    def remove(self, address: str) -> None:
        """Drain ``address``: no new requests, the running ones finish. 404 if unknown."""
        if self._nodes.pop(address, None) is None:
            known = self.pool.get(address) is not None
            raise OpenAIError(
                404,
                f"No node {address} was added or registered through the node API"
                + (" (it comes from the gateway's own worker list)." if known else "."),
                param="url",
                code="node_not_found",
            )
        self._sync()
        logger.info("node %s removed: draining", address)

    def status(self) -> dict[str, NodeStatus]:
        """Every node: the pool's workers (whatever their source) and the registry's."""
        now = time.monotonic()
        statuses = {
            worker.address: self._status(worker.address, now) for worker in self.pool.workers
        }
        for address in self._nodes.keys() - statuses.keys():
            statuses[address] = self._status(address, now)
        return dict(sorted(statuses.items()))

    def _status(self, address: str, now: float) -> NodeStatus:
        node = self._nodes.get(address)
        worker = self.pool.get(address)
        load = worker.load if worker is not None else None
        registered = node is not None and node.lease_until is not None
        served = sorted(worker.models) if worker is not None and worker.models else []
        return NodeStatus(
            models=served or list(node.models if node is not None else ()),
            unfinished=worker.requests if worker is not None else 0,
            latency=[],
            speed=None,
            source="fleet" if node is None else "added" if node.added else "registered",
            healthy=worker is not None and worker.healthy,
            available=worker is not None and worker.available,
            ejected=worker is not None and worker.ejected,
            in_flight=worker.in_flight if worker is not None else 0,
            slots=worker.slots if worker is not None else 0,
            active_requests=load.active_requests if load is not None else None,
            queued_requests=load.queued_requests if load is not None else None,
            sessions=worker.sessions if worker is not None else 0,
            heartbeat_s=node.heartbeat_s if registered and node else None,
            last_heartbeat_s=_since(node.last_heartbeat, now) if registered and node else None,
            lease_s=_until(node.lease_until, now) if registered and node else None,
        )

    def _node(self, address: str) -> Node:
        node = self._nodes.get(address)
        if node is None:
            if len(self._nodes) >= self.max_nodes:
                raise OpenAIError(
                    409,
                    f"The gateway holds {self.max_nodes} nodes, its --max-nodes; remove one first.",
                    param="url",
                    code="too_many_nodes",
                )
            node = self._nodes[address] = Node(address)
        return node

    def _sync(self) -> None:
        self.pool.sync(SOURCE, self._nodes)

    async def _eject_expired(self) -> None:
        while True:
            await asyncio.sleep(EJECT_TICK_S)
            now = time.monotonic()
            expired = [
                node
                for node in self._nodes.values()
                if node.lease_until is not None and node.lease_until < now
            ]
            for node in expired:
                logger.warning(
                    "node %s missed %d heartbeats: ejecting it",
                    node.address,
                    self.missed_heartbeats,
                )
                node.lease_until = node.last_heartbeat = node.heartbeat_s = None
                if not node.added:
                    del self._nodes[node.address]
            if expired:
                self._sync()


def _since(when: float | None, now: float) -> float | None:
    return None if when is None else round(now - when, 3)


def _until(when: float | None, now: float) -> float | None:
    return None if when is None else round(max(0.0, when - now), 3)
