"""The gateway's view of its workers: health, load and models served, and the choice of one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from llamagrid.client import AsyncInferenceClient
from llamagrid.v1 import inference_pb2 as pb

from gateway.errors import OpenAIError, model_not_found

logger = logging.getLogger(__name__)

#: The grpc.health.v1 service name watched on every worker: the whole server.
HEALTH_SERVICE = ""
#: Seconds allowed for the ListModels call made when a worker turns healthy.
LIST_MODELS_TIMEOUT_S = 10.0
#: Seconds allowed for one GetLoad call.
GET_LOAD_TIMEOUT_S = 5.0


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

    @property
    def pressure(self) -> float:
        """Requests per slot: the worker's own count of running and queued requests (which
        includes other clients'), or the calls this gateway has in flight on it if higher."""
        if self.load is None or not self.load.slots:
            return float(self.in_flight)
        reported = self.load.active_requests + self.load.queued_requests
        return max(self.in_flight, reported) / self.load.slots


def least_loaded(candidates: Sequence[Worker]) -> Worker:
    """The candidate with the least pressure; ties go to the one given fewer calls."""
    return min(candidates, key=lambda worker: (worker.pressure, worker.started))


class WorkerPool:
    """Keeps a client, a health watch and the model list of every worker, and picks workers."""

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        retry_s: float = 1.0,
        load_interval_s: float = 1.0,
        client_factory: Callable[[str], AsyncInferenceClient] = AsyncInferenceClient,
    ) -> None:
        self._addresses = list(dict.fromkeys(addresses))
        self._retry_s = retry_s
        self._load_interval_s = load_interval_s
        self._client_factory = client_factory
        self._workers: list[Worker] = []
        self._watches: list[asyncio.Task[None]] = []
        self._first_seen: dict[str, int] = {}

    @property
    def workers(self) -> list[Worker]:
        """Every worker, in the order given."""
        return list(self._workers)

    async def start(self) -> None:
        """Open a channel to every worker and start watching its health (idempotent)."""
        if self._workers:
            return
        for address in self._addresses:
            worker = Worker(address, self._client_factory(address))
            self._workers.append(worker)
            self._watches.append(asyncio.create_task(self._watch(worker), name=f"watch {address}"))
            self._watches.append(
                asyncio.create_task(self._poll_load(worker), name=f"load {address}")
            )

    async def close(self) -> None:
        """Stop the health watches and close every channel."""
        for task in self._watches:
            task.cancel()
        await asyncio.gather(*self._watches, return_exceptions=True)
        await asyncio.gather(*(worker.client.close() for worker in self._workers))
        self._watches.clear()
        self._workers.clear()

    def any_healthy(self) -> bool:
        """Whether at least one worker is serving."""
        return any(worker.healthy for worker in self._workers)

    def models(self) -> dict[str, tuple[pb.ModelInfo, int]]:
        """Each model served by a healthy worker, with the time the gateway first saw it."""
        served: dict[str, tuple[pb.ModelInfo, int]] = {}
        for worker in self._workers:
            if worker.healthy:
                for alias, info in worker.models.items():
                    served.setdefault(alias, (info, self._first_seen[alias]))
        return dict(sorted(served.items()))

    def pick(self, model: str) -> Worker:
        """A healthy worker serving ``model``: 404 if none serves it, 503 if none is healthy."""
        if not self.any_healthy():
            raise OpenAIError(503, "No worker is available.", "service_unavailable_error")
        known = [worker for worker in self._workers if model in worker.models]
        if not known:
            raise model_not_found(model)
        candidates = [worker for worker in known if worker.healthy]
        if not candidates:
            message = f"No worker serving '{model}' is available."
            raise OpenAIError(503, message, "service_unavailable_error")
        return least_loaded(candidates)

    @contextlib.asynccontextmanager
    async def lease(self, model: str) -> AsyncIterator[Worker]:
        """Pick a worker for ``model`` and count a call in flight on it while the block runs."""
        worker = self.pick(model)
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
                logger.warning("health watch of %s ended", worker.address)
            except grpc.aio.AioRpcError as error:
                logger.debug("health watch of %s failed: %s", worker.address, error.code())
            except Exception:
                logger.exception("health watch of %s failed", worker.address)
            if worker.healthy:
                logger.info("worker %s is %s", worker.address, _state(False))
            worker.healthy = False
            await asyncio.sleep(self._retry_s)

    async def _poll_load(self, worker: Worker) -> None:
        """Read the worker's GetLoad report every interval while it is healthy."""
        while True:
            await asyncio.sleep(self._load_interval_s)
            if not worker.healthy:
                worker.load = None
                continue
            try:
                worker.load = await worker.client.get_load(timeout=GET_LOAD_TIMEOUT_S)
            except grpc.aio.AioRpcError as error:
                worker.load = None
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
