"""The gateway's FastAPI application: routes, API key check and OpenAI-shaped errors."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from gateway.dispatch import Dispatcher
from gateway.errors import OpenAIError, from_rpc_error, validation_failure
from gateway.openai.router import router as openai_router
from gateway.pool import WorkerPool
from gateway.settings import GatewaySettings
from gateway.sse import error_response

logger = logging.getLogger(__name__)


def create_app(settings: GatewaySettings, pool: WorkerPool) -> FastAPI:
    """The gateway application; it starts the pool on startup and closes it on shutdown."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="llamagrid gateway", lifespan=lifespan)
    app.state.dispatcher = Dispatcher(pool, settings.request_timeout_s)
    app.include_router(openai_router, dependencies=_auth(settings))

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        if not pool.any_healthy():
            raise OpenAIError(503, "No worker is serving.", "service_unavailable_error")
        return {"status": "ok"}

    _install_error_handlers(app)
    return app


def _auth(settings: GatewaySettings) -> list[DependsParam]:
    """The dependency that checks 'Authorization: Bearer <api_key>', when a key is set."""
    if settings.api_key is None:
        return []
    return [Depends(ApiKeyCheck(settings.api_key.get_secret_value()))]


class ApiKeyCheck:
    """A dependency that refuses (401) requests without the right bearer token."""

    def __init__(self, api_key: str) -> None:
        self._expected = api_key.encode()
        self._bearer = HTTPBearer(auto_error=False)

    async def __call__(self, request: Request) -> None:
        credentials = await self._bearer(request)
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, self._expected):
            message = "Missing or invalid API key: send 'Authorization: Bearer <key>'."
            raise OpenAIError(401, message, "authentication_error", code="invalid_api_key")


def _install_error_handlers(app: FastAPI) -> None:
    async def openai_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpenAIError)
        return error_response(exc)

    async def rpc_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, grpc.aio.AioRpcError)
        return error_response(from_rpc_error(exc))

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
