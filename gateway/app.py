"""The gateway's FastAPI application: routes, who may call them (auth.py) and OpenAI errors."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.admission import Admission
from llamagrid.gateway.auth import ApiKeyCheck, api_keys, dependencies, install_docs
from llamagrid.gateway.console.router import install_console
from llamagrid.gateway.cors import install_cors
from llamagrid.gateway.discovery import DnsDiscovery
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import OpenAIError, from_rpc_error, validation_failure
from llamagrid.gateway.images.loader import ImageLoader
from llamagrid.gateway.images.policy import ImagePolicy
from llamagrid.gateway.interactive import InteractiveSessions
from llamagrid.gateway.interactive import router as interactive_router
from llamagrid.gateway.lifecycle import Drain
from llamagrid.gateway.llamacpp.errors import error_response as llama_error
from llamagrid.gateway.llamacpp.infill import router as infill_router
from llamagrid.gateway.llamacpp.router import router as llamacpp_router
from llamagrid.gateway.llamacpp.schemas import LlamaErrorResponse
from llamagrid.gateway.llamacpp_python.router import router as llamacpp_python_router
from llamagrid.gateway.lora.router import router as lora_router
from llamagrid.gateway.metrics import GatewayMetrics
from llamagrid.gateway.middleware import GatewayMiddleware
from llamagrid.gateway.nodes.router import install_nodes
from llamagrid.gateway.openai.router import router as openai_router
from llamagrid.gateway.pool import PoolOptions, WorkerPool
from llamagrid.gateway.responses.router import router as responses_router
from llamagrid.gateway.session_directory import (
    SessionDirectory,
)
from llamagrid.gateway.session_store import create_store
from llamagrid.gateway.sessions import router as sessions_router
from llamagrid.gateway.settings import Access, GatewaySettings
from llamagrid.gateway.slots.router import router as slots_router
from llamagrid.gateway.sse import error_response
from llamagrid.gateway.warmup import warm_up
from llamagrid.gateway.worker_tls import worker_security
from llamagrid.grpc_options import channel_options
from llamagrid.security import ChannelSecurity

logger = logging.getLogger(__name__)


def pool_options(settings: GatewaySettings) -> PoolOptions:
    """The pool's options from the gateway's settings."""
    return PoolOptions(
        retry_s=settings.health_retry_s,
        load_interval_s=settings.load_interval_s,
        policy=settings.policy,
        model_policies=dict(settings.model_policies),
        affinity_bound=settings.affinity_bound,
        breaker_threshold=settings.breaker_threshold,
        breaker_cooldown_s=settings.breaker_cooldown_s,
    )


def image_policy(settings: GatewaySettings) -> ImagePolicy:
    """Where images may come from, and how large they may be, from the gateway's settings."""
    return ImagePolicy(
        max_images=settings.max_images,
        max_bytes=settings.max_image_bytes,
        fetch_hosts=tuple(settings.image_fetch_allow_hosts),
        fetch_max_bytes=settings.image_fetch_max_bytes,
        fetch_timeout_s=settings.image_fetch_timeout_s,
        fetch_ca_file=settings.image_fetch_ca_file,
        file_dir=settings.image_file_dir,
    )


def create_pool(settings: GatewaySettings, security: ChannelSecurity | None = None) -> WorkerPool:
    """The pool for the settings' static workers (DNS names are added by the app). Workers are
    dialled with ``security`` (default: from the settings and the environment,
    gateway/worker_tls.py)."""
    if security is None:
        security = worker_security(settings, os.environ)
    options = channel_options(
        keepalive_time_ms=int(settings.worker_keepalive_s * 1000),
        keepalive_timeout_ms=int(settings.worker_keepalive_timeout_s * 1000),
    )

    def client(address: str) -> AsyncInferenceClient:
        return AsyncInferenceClient(address, options, security=security)

    return WorkerPool(settings.workers, pool_options(settings), client_factory=client)


def create_app(settings: GatewaySettings, pool: WorkerPool) -> FastAPI:
    """The gateway application; it starts the pool and DNS discovery on startup and stops them
    on shutdown. Raises ApiKeyError for a key file that cannot be used."""
    keys = api_keys(settings)
    check = ApiKeyCheck(keys) if keys else None
    discovery = DnsDiscovery(pool, settings.worker_dns, settings.dns_interval_s)
    store = create_store(
        settings.session_store, settings.max_session_records, settings.max_session_image_bytes
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        warm_up()
        await pool.start()
        discovery.start()
        if nodes is not None:
            nodes.start()
        try:
            yield
        finally:
            if nodes is not None:
                await nodes.stop()
            await discovery.stop()
            await pool.close()
            await store.close()

    # No docs routes of FastAPI's own: install_docs adds them, under --docs-access.
    app = FastAPI(
        title="llamagrid gateway",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    metrics = GatewayMetrics(pool)
    drain = Drain(settings.drain_grace_s)
    app.state.metrics, app.state.drain = metrics, drain
    app.state.sse_keepalive_s = settings.sse_keepalive_s  # read by gateway.sse
    app.state.strict_model_names = settings.strict_model_names  # read by gateway.model_names
    app.state.slots_endpoint = settings.slots_endpoint  # read by gateway.slots
    app.state.sessions = SessionDirectory(store, pool)
    app.state.images = ImageLoader(image_policy(settings))  # read by the image-taking routes
    app.state.dispatcher = Dispatcher(
        pool,
        settings.request_timeout_s,
        metrics,
        max_retries=settings.max_retries,
        retry_backoff_s=settings.retry_backoff_s,
        prefix_chars=settings.affinity_prefix_chars,
        relay=settings.relay,
    )
    app.include_router(openai_router, dependencies=dependencies(check))
    app.include_router(sessions_router, dependencies=dependencies(check))
    app.include_router(responses_router, dependencies=dependencies(check))
    app.include_router(interactive_router, dependencies=dependencies(check))
    app.include_router(llamacpp_router, dependencies=dependencies(check))
    app.include_router(llamacpp_python_router, dependencies=dependencies(check))
    app.include_router(infill_router, dependencies=dependencies(check))
    app.include_router(lora_router, dependencies=dependencies(check))
    app.include_router(slots_router, dependencies=dependencies(check))
    nodes = install_nodes(app, settings, pool, keys)  # the node API, behind the admin key
    app.state.interactive = InteractiveSessions(keyed=check is not None)
    app.add_middleware(
        Admission,
        check=check,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s,
    )
    activity = install_console(app, dependencies(check)) if settings.console else None
    app.add_middleware(GatewayMiddleware, drain=drain, metrics=metrics, activity=activity)
    install_cors(app, settings.cors_origin)  # last: the outermost middleware
    _install_health_and_metrics(app, pool, metrics, check, settings.metrics_access)
    install_docs(app, check, settings.docs_access)
    _install_error_handlers(app)
    return app


def _install_health_and_metrics(
    app: FastAPI,
    pool: WorkerPool,
    metrics: GatewayMetrics,
    check: ApiKeyCheck | None,
    metrics_access: Access,
) -> None:
    """/health and /livez (always open, for probes) and /metrics (under ``metrics_access``)."""

    unready: dict[int | str, dict[str, Any]] = {
        503: {"model": LlamaErrorResponse, "description": "No worker is serving (yet)."}
    }

    served = False  # whether a worker has served since the gateway started

    @app.get("/v1/health", tags=["health"], include_in_schema=False)
    @app.get("/health", tags=["health"], responses=unready)
    async def health() -> Any:
        """Readiness: 200 while some worker is serving (503 when none is, or while draining).

        The 503 body is llama-server's: ``{"error": {"code": 503, "message": "Loading model",
        "type": "unavailable_error"}}`` ("Loading model" until a worker first serves)."""
        nonlocal served
        if pool.any_healthy():
            served = True
            return {"status": "ok"}
        message = "No worker is serving." if served else "Loading model"
        return llama_error(OpenAIError(503, message))

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """Liveness: 200 while the process runs, whatever the workers do."""
        return {"status": "ok"}

    if metrics_access == "off":
        return

    @app.get(
        "/metrics",
        tags=["metrics"],
        include_in_schema=False,
        dependencies=dependencies(check, metrics_access),
    )
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition of the gateway's metrics."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _with_route(request: Request, error: OpenAIError) -> JSONResponse:
    """The error response, with the X-Llamagrid-* headers when a worker had been chosen."""
    routed = getattr(request.state, "routed", None)
    if isinstance(routed, Routed):
        error.headers.update(routed.headers())
    return error_response(error)


def _install_error_handlers(app: FastAPI) -> None:
    async def openai_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        return _with_route(request, exc)

    async def rpc_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return _with_route(request, from_rpc_error(exc))

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(validation_failure(exc.errors()))

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
        error = OpenAIError(exc.status_code, str(exc.detail), error_type, code=code)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled error", exc_info=exc)
        return error_response(OpenAIError(500, "Internal server error.", "server_error"))

    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(grpc.aio.AioRpcError, rpc_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
