"""The worker's gRPC server: our service plus grpc.health.v1 and reflection, and its life cycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from llamagrid.grpc_options import server_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

from worker.engine import Engine, LlamaEngine
from worker.service import InferenceService
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


class WorkerServer:
    """A grpc.aio server around an engine, with health reporting."""

    def __init__(self, settings: WorkerSettings, engine: Engine, alias: str) -> None:
        self.settings = settings
        self.engine = engine
        self.server = grpc.aio.server(options=server_options())
        self.health = HealthServicer()
        #: Health is reported for the whole server (""), the service and the model's alias.
        self.health_names = ("", SERVICE_NAME, alias)
        pb_grpc.add_InferenceServiceServicer_to_server(InferenceService(engine), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.port}")

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING under every health name."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self.health_names:
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listen (NOT_SERVING until the engine is ready)."""
        await self.set_serving(False)
        await self.server.start()
        if self.settings.port_file:
            Path(self.settings.port_file).write_text(str(self.port))
        log.info("worker listening on %s:%d", self.settings.host, self.port)

    async def drain_and_stop(self) -> None:
        """NOT_SERVING, let in-flight requests finish within the grace period, then stop."""
        await self.set_serving(False)
        grace = self.settings.drain_grace_s
        await self.engine.drain(grace)
        await self.server.stop(grace=1.0)


def create_server(settings: WorkerSettings, engine: Engine, alias: str) -> WorkerServer:
    """The server for an engine; nothing listens until start()."""
    return WorkerServer(settings, engine, alias)


async def serve(settings: WorkerSettings, engine: LlamaEngine) -> None:
    """Run until SIGTERM/SIGINT: listen, load the model, report health, then drain."""
    server = create_server(settings, engine, engine.source.alias)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    engine.start()
    loading = asyncio.create_task(engine.wait_loaded())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done():
        loading.result()  # raises when the model failed to load
        await server.set_serving(True)
        log.info("model '%s' is SERVING on port %d", engine.source.alias, server.port)
        await stopping
    log.info("shutting down: draining for up to %.0f s", settings.drain_grace_s)
    await server.drain_and_stop()
