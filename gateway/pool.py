"""The gateway's view of its workers: health, load, models served, and the choice of one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import grpc

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.breaker import Breaker
from llamagrid.gateway.errors import OpenAIError, model_not_found
from llamagrid.gateway.policies import Choice, Policy, RouteRequest, create_policy
from llamagrid.gateway.policies.prefix_affinity import DEFAULT_BOUND
from llamagrid.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)

#: The grpc.health.v1 service name watched on every worker: the whole server.
HEALTH_SERVICE = ""
#: Seconds allowed for the ListModels call made when a worker turns healthy.
LIST_MODELS_TIMEOUT_S = 10.0
#: Seconds allowed for one GetLoad call.
GET_LOAD_TIMEOUT_S = 5.0

ClientFactory = Callable[[str], AsyncInferenceClient]


@dataclass(eq=False)
class Worker:
    """One worker as the gateway sees it."""

    address: str
    client: AsyncInferenceClient
    healthy: bool = False
    in_flight: int = 0
    started: int = 0
    models: dict[str, pb.ModelInfo] = field(default_factory=dict)
    #: The worker's latest GetLoad report (None before the first, or when it has none).
    load: pb.GetLoadResponse | None = None
    #: This gateway's calls in flight on the worker when ``load`` arrived.
    in_flight_at_load: int = 0
    #: Taken out of rotation by the circuit breaker until its health says SERVING again.
    ejected: bool = False
    #: No longer listed by discovery: it takes no new calls and is closed once idle.
    retired: bool = False
    #: Breaker-counted failures (transport, UNAVAILABLE, INTERNAL) since the last success.
    failures: int = 0
    #: Sessions this gateway opened on the worker since its last load report.
    sessions_opened: int = 0

    @property
    def requests(self) -> int:
        """Running and queued requests: the calls this gateway has in flight on the worker, plus
        the others its latest report counted (other gateways' calls). The report is up to one
        load interval old: calls of this gateway that started or ended since are counted as
        they are now, not as they were then."""
        if self.load is None:
            return self.in_flight
        reported = self.load.active_requests + self.load.queued_requests
        return self.in_flight + max(0, reported - self.in_flight_at_load)

    def report(self, load: pb.GetLoadResponse | None) -> None:
        """Take the worker's latest load report."""
        self.load = load
        self.in_flight_at_load = self.in_flight
        self.sessions_opened = 0

    @property
    def sessions(self) -> int:
        """Sessions the worker holds: its report's, plus those opened here since."""
        return (self.load.sessions if self.load is not None else 0) + self.sessions_opened

    @property
    def slots(self) -> int:
        """Requests the worker runs at once: its load report's, else its models' (0: unknown)."""
        if self.load is not None and self.load.slots:
            return self.load.slots
        return max((info.slots for info in self.models.values()), default=0)

    @property
    def pressure(self) -> float:
        """Requests per slot (per request when the slots are unknown)."""
        slots = self.slots
        return self.requests / slots if slots else float(self.requests)

    @property
    def available(self) -> bool:
        """Whether new calls may go to this worker."""
        return self.healthy and not self.ejected and not self.retired


@dataclass
class PoolOptions:
    """How the pool watches workers and which policy each model uses."""

    retry_s: float = 1.0
    load_interval_s: float = 1.0
    policy: str = "prefix_affinity"
    model_policies: dict[str, str] = field(default_factory=dict)
    affinity_bound: float = DEFAULT_BOUND
    breaker_threshold: int = 3
    breaker_cooldown_s: float = 5.0


def _sessions_per_slot(worker: Worker) -> tuple[float, float, str]:
    """Where a new session should go: fewest sessions per slot, then least loaded."""
    return (worker.sessions / max(1, worker.slots), worker.pressure, worker.address)


class WorkerPool:
    """Keeps a client, a health watch and the model list of every worker, and picks workers.

    Workers come and go through ``sync`` (a static list, the supervisor's list, or a DNS name
    re-resolved by ``gateway.discovery``); each model routes with its own policy instance.
    """

    def __init__(
        self,
        addresses: Sequence[str] = (),
        options: PoolOptions | None = None,
        *,
        client_factory: ClientFactory = AsyncInferenceClient,
    ) -> None:
        self.options = options or PoolOptions()
        self._initial = list(dict.fromkeys(addresses))
        self._client_factory = client_factory
        self._workers: dict[str, Worker] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._sources: dict[str, set[str]] = {}
        self._first_seen: dict[str, int] = {}
        self._policies: dict[str, Policy] = {}
        self.breaker = Breaker(
            self.options.breaker_threshold, self.options.breaker_cooldown_s, HEALTH_SERVICE
        )
        self._started = False

    def get(self, address: str) -> Worker | None:
        """The worker at ``address``, if it is in the pool."""
        return self._workers.get(address)

    @property
    def workers(self) -> list[Worker]:
        """Every worker currently known, in the order they were added."""
        return list(self._workers.values())

    async def start(self) -> None:
        """Add the addresses given to the constructor (idempotent)."""
        if not self._started:
            self._started = True
            self.sync("static", self._initial)

    async def close(self) -> None:
        """Stop every watch and close every channel."""
        tasks = [task for group in self._tasks.values() for task in group]
        tasks += self.breaker.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(worker.client.close() for worker in self._workers.values()))
        self._tasks.clear()
        self._workers.clear()

    def sync(self, source: str, addresses: Iterable[str]) -> None:
        """Make ``source``'s workers exactly ``addresses``: add new ones, retire vanished ones."""
        wanted = set(addresses)
        self._sources[source] = wanted
        listed = set().union(*self._sources.values())
        for address in sorted(wanted - self._workers.keys()):
            self._add(address)
        for address in list(self._workers):
            if address not in listed:
                self._retire(self._workers[address])

    def _add(self, address: str) -> None:
        worker = Worker(address, self._client_factory(address))
        self._workers[address] = worker
        self._tasks[address] = [
            asyncio.create_task(self._watch(worker), name=f"watch {address}"),
            asyncio.create_task(self._poll_load(worker), name=f"load {address}"),
        ]
        logger.info("worker %s added", address)

    def _retire(self, worker: Worker) -> None:
        logger.info("worker %s is no longer listed; retiring it", worker.address)
        worker.retired = True
        del self._workers[worker.address]
        for task in self._tasks.pop(worker.address, []):
            task.cancel()
        self._tasks[f"close {worker.address}"] = [
            asyncio.create_task(self._close_when_idle(worker), name=f"close {worker.address}")
        ]

    async def _close_when_idle(self, worker: Worker) -> None:
        while worker.in_flight:
            await asyncio.sleep(0.5)
        await worker.client.close()

    def any_healthy(self) -> bool:
        """Whether at least one worker is serving."""
        return any(worker.available for worker in self._workers.values())

    def models(self) -> dict[str, tuple[pb.ModelInfo, int]]:
        """Each model served by an available worker, with the time the gateway first saw it."""
        served: dict[str, tuple[pb.ModelInfo, int]] = {}
        for worker in self._workers.values():
            if worker.available:
                for alias, info in worker.models.items():
                    served.setdefault(alias, (info, self._first_seen[alias]))
        return dict(sorted(served.items()))

    def policy(self, model: str) -> Policy:
        """The model's policy instance (created on first use)."""
        if model not in self._policies:
            name = self.options.model_policies.get(model, self.options.policy)
            self._policies[model] = create_policy(name, bound=self.options.affinity_bound)
        return self._policies[model]

    def select(self, request: RouteRequest, exclude: Sequence[Worker] = ()) -> Choice[Worker]:
        """A worker for the request: 404 if no worker serves the model, 503 if none can.

        A request on a server-side session goes to the session's home worker, whatever the
        model's policy; a request that opens one goes where sessions per slot are fewest.
        """
        if request.home is not None:
            return self._home(request.home, exclude)
        known = [worker for worker in self._workers.values() if request.model in worker.models]
        if not known:
            if not self.any_healthy():
                raise OpenAIError(503, "No worker is available.", "service_unavailable_error")
            raise model_not_found(request.model)
        candidates = [w for w in known if w.available and w not in exclude]
        if not candidates:
            message = f"No worker serving '{request.model}' is available."
            raise OpenAIError(503, message, "service_unavailable_error")
        if request.new_session:
            return Choice(min(candidates, key=_sessions_per_slot), "session:new")
        return self.policy(request.model).select(candidates, request)

    def _home(self, address: str, exclude: Sequence[Worker]) -> Choice[Worker]:
        worker = self._workers.get(address)
        if worker is None or worker.retired:
            raise OpenAIError(
                404,
                "The worker that held this session is no longer in the fleet, and no session "
                "store holds its transcript: the session is lost.",
                param="session_id",
                code="session_lost",
            )
        if not worker.available or worker in exclude:
            raise OpenAIError(
                503,
                "The worker holding this session is not available; retry shortly.",
                "service_unavailable_error",
                code="session_worker_unavailable",
                headers={"Retry-After": "1"},
            )
        return Choice(worker, "session:home")

    @contextlib.asynccontextmanager
    async def lease(self, worker: Worker) -> AsyncIterator[Worker]:
        """Count a call in flight on ``worker`` while the block runs."""
        worker.in_flight += 1
        worker.started += 1
        try:
            yield worker
        finally:
            worker.in_flight -= 1

    async def _watch(self, worker: Worker) -> None:
        """Follow the worker's health for ever, re-opening the watch whenever it breaks."""
        while True:
            try:
                async for serving in worker.client.watch_health(HEALTH_SERVICE):
                    if serving and not worker.healthy:
                        await self._refresh_models(worker)
                    if serving != worker.healthy:
                        logger.info("worker %s is %s", worker.address, _state(serving))
                    worker.healthy = serving
                    if serving:
                        self.breaker.restore(worker)
                logger.warning("health watch of %s ended", worker.address)
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAUTHENTICATED:  # our worker token
                    logger.warning("worker %s refused the gateway's worker token", worker.address)
                else:
                    logger.debug("health watch of %s failed: %s", worker.address, error.code())
            except Exception:
                logger.exception("health watch of %s failed", worker.address)
            if worker.healthy:
                logger.info("worker %s is %s", worker.address, _state(False))
            worker.healthy = False
            await asyncio.sleep(self.options.retry_s)

    async def _poll_load(self, worker: Worker) -> None:
        """Read the worker's GetLoad report every interval while it is healthy."""
        while True:
            await asyncio.sleep(self.options.load_interval_s)
            if not worker.healthy:
                worker.report(None)
                continue
            try:
                worker.report(await worker.client.get_load(timeout=GET_LOAD_TIMEOUT_S))
            except grpc.aio.AioRpcError as error:
                worker.report(None)
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    logger.info("worker %s reports no load; using in-flight counts", worker.address)
                    return

    async def _refresh_models(self, worker: Worker) -> None:
        response = await worker.client.list_models(timeout=LIST_MODELS_TIMEOUT_S)
        worker.models = {info.alias: info for info in response.models}
        now = int(time.time())
        for alias in worker.models:
            self._first_seen.setdefault(alias, now)
        logger.info("worker %s serves %s", worker.address, sorted(worker.models))


def _state(serving: bool) -> str:
    return "serving" if serving else "not serving"
