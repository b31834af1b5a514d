"""The worker's gRPC server: our service plus grpc.health.v1 and reflection, and its life cycle.

Every InferenceService call, whatever its outcome, ends with the trailing metadata
``llamagrid-worker: <name>`` (--name, else host:port) and is counted for /metrics by status code;
both happen in one interceptor, CallObserver.

The port serves TLS or mTLS when the settings say so, refuses calls without the token when one
is set (worker/rpc/security.py), and bounds the calls open at once on one connection
(--max-concurrent-streams). --health-port adds a plaintext server with grpc.health.v1 alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from llamagrid.grpc_options import server_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.engine.llama_engine import Engine, LlamaEngine
from llamagrid.worker.metrics import RequestCounts, WorkerMetrics
from llamagrid.worker.native.devices import OffloadError
from llamagrid.worker.registration import Registrar, advertised_address
from llamagrid.worker.rpc.security import ServerSecurity, TokenCheck, server_security
from llamagrid.worker.rpc.servicer import InferenceService
from llamagrid.worker.rpc.sessions import SessionService
from llamagrid.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
SESSION_SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["SessionService"].full_name
#: The trailing metadata key naming the worker that served a call.
WORKER_TRAILER = "llamagrid-worker"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def worker_name(settings: WorkerSettings, port: int) -> str:
    """--name, else host:port with the bound port (the machine's hostname for a wildcard host)."""
    if settings.name:
        return settings.name
    host = socket.gethostname() if settings.host in _WILDCARD_HOSTS else settings.host
    return f"{host}:{port}"


class CallObserver(_Interceptor):
    """Adds the worker's name to every InferenceService and SessionService call's trailers and
    counts outcomes."""

    def __init__(self, counts: RequestCounts) -> None:
        self.counts = counts
        #: Set once the port is bound.
        self.name = ""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wrap our service's unary and server-streaming handlers; pass others through."""
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").partition("/")
        if handler is None or service not in (SERVICE_NAME, SESSION_SERVICE_NAME):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler

    def _begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        context.set_trailing_metadata(((WORKER_TRAILER, self.name),))

    def _end(self, method: str, context: grpc.aio.ServicerContext[Any, Any], failed: bool) -> None:
        code = context.code()
        if code is None:  # not aborted: success, or an unexpected exception (UNKNOWN)
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        self.counts.add(method, code)

    def _unary(self, behavior: Any, method: str) -> Any:
        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            self._begin(context)
            try:
                reply = await behavior(request, context)
            except asyncio.CancelledError:
                self.counts.add(method, grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self._end(method, context, failed=True)
                raise
            self._end(method, context, failed=False)
            return reply

        return call

    def _stream(self, behavior: Any, method: str) -> Any:
        async def call(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            self._begin(context)
            try:
                async with contextlib.aclosing(behavior(request, context)) as replies:
                    async for reply in replies:
                        yield reply
            except (asyncio.CancelledError, GeneratorExit):
                self.counts.add(method, grpc.StatusCode.CANCELLED)
                raise
            except BaseException:
                self._end(method, context, failed=True)
                raise
            self._end(method, context, failed=False)

        return call


class WorkerServer:
    """A grpc.aio server around an engine, with health reporting."""

    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        alias: str,
        security: ServerSecurity | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        counts = RequestCounts()
        self.calls = CallObserver(counts)
        #: TLS, mTLS and the token (worker/rpc/security.py); by default from the settings.
        self.security = security or server_security(settings, os.environ)
        interceptors: list[_Interceptor] = [self.calls]
        if self.security.token:  # inside CallObserver, which counts the refusals
            interceptors.append(TokenCheck(self.security.token))
        options = [
            *server_options(),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
        ]
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        self.health = HealthServicer()
        #: Health is reported for the whole server (""), the service and the model's alias.
        self.health_names = ("", SERVICE_NAME, alias)
        service = InferenceService(
            engine, max_relay_calls=settings.max_relay_calls, count_call=counts.add
        )
        pb_grpc.add_InferenceServiceServicer_to_server(service, self.server)
        pb_grpc.add_SessionServiceServicer_to_server(SessionService(engine), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                SESSION_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        address = f"{settings.host}:{settings.port}"
        credentials = self.security.credentials
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        #: --health-port: grpc.health.v1 alone, in plaintext (Kubernetes probes).
        self.health_server: grpc.aio.Server | None = None
        if settings.health_port:
            self.health_server = grpc.aio.server(options=options)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_server.add_insecure_port(f"{settings.host}:{settings.health_port}")
        self.name = self.calls.name = worker_name(settings, self.port)
        self.metrics = WorkerMetrics(
            engine.metrics_snapshot, {"name": self.name, "model": alias}, counts
        )

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
        if self.health_server is not None:
            await self.health_server.start()
        host, port = self.settings.host, self.settings.metrics_port
        if port:
            try:
                self.metrics.serve(host, port)
            except OSError as exc:
                await self.stop(grace=None)
                message = f"llamagrid worker: cannot serve /metrics on {host}:{port}: {exc}"
                raise SystemExit(message) from None
            log.info("metrics on http://%s:%d/metrics", host, port)
        if self.settings.port_file:
            Path(self.settings.port_file).write_text(str(self.port))
        log.info(
            "worker listening on %s:%d (%s)",
            self.settings.host,
            self.port,
            self.security.describe(),
        )
        if self.settings.health_port:
            log.info(
                "health only, plaintext, on %s:%d", self.settings.host, self.settings.health_port
            )

    async def drain_and_stop(self) -> None:
        """NOT_SERVING, let in-flight requests finish within the grace period, then stop."""
        await self.set_serving(False)
        grace = self.settings.drain_grace_s
        await self.engine.drain(grace)
        await self.stop(grace=1.0)
        self.metrics.close()

    async def stop(self, grace: float | None) -> None:
        """Stop the server, then the health-only one (probes read NOT_SERVING until then)."""
        await self.server.stop(grace=grace)
        if self.health_server is not None:
            await self.health_server.stop(grace=None)


def create_server(
    settings: WorkerSettings,
    engine: Engine,
    alias: str,
    security: ServerSecurity | None = None,
) -> WorkerServer:
    """The server for an engine; nothing listens until start()."""
    return WorkerServer(settings, engine, alias, security)


class EngineDied(RuntimeError):
    """The engine thread died while serving: the worker reported NOT_SERVING and stopped."""


async def serve(
    settings: WorkerSettings,
    engine: LlamaEngine,
    security: ServerSecurity | None = None,
    registrar: Registrar | None = None,
) -> None:
    """Run until SIGTERM/SIGINT: listen, load the model, report health, then drain. With a
    ``registrar``, register with its gateways once SERVING and deregister before draining."""
    server = create_server(settings, engine, engine.source.alias, security)
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
        if (error := loading.exception()) is not None:
            await server.stop(grace=None)
            server.metrics.close()
            if not isinstance(error, OffloadError):
                raise error
            raise SystemExit(f"llamagrid worker: {error}")
        await server.set_serving(True)
        log.info("model '%s' is SERVING on port %d", engine.source.alias, server.port)
        if registrar is not None:
            address = advertised_address(settings.advertise_address, settings.host, server.port)
            registrar.start(address, [engine.source.alias])
        engine_ended = asyncio.create_task(engine.wait_stopped())
        await asyncio.wait({stopping, engine_ended}, return_when=asyncio.FIRST_COMPLETED)
        if registrar is not None:  # before draining: the gateways send no new requests
            await registrar.stop()
        if engine.failure is not None:  # nothing can serve: say so, and let a supervisor restart
            await server.set_serving(False)
            await server.stop(grace=1.0)
            server.metrics.close()
            raise EngineDied(f"the engine thread died: {engine.failure!r}") from engine.failure
    log.info("shutting down: draining for up to %.0f s", settings.drain_grace_s)
    await server.drain_and_stop()
