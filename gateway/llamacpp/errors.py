"""Errors on llama-server's routes, in llama-server's shape.

llama-server answers ``{"error": {"code": <HTTP status>, "message": ..., "type": ...}}``. The
gateway's errors (OpenAIError, a worker's gRPC status, a body that fails validation) become that
shape here, keeping what OpenAI's shape adds under the same object: ``param`` (the field at
fault) and ``reason`` (OpenAI's string code, such as ``unsupported_parameter``).
``LlamaRoute`` answers every error its route raises this way (and reads every body as JSON, as
llama-server does); streams use ``error_body``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llamagrid.gateway.errors import (
    OpenAIError,
    from_rpc_error,
    invalid_request,
    validation_failure,
)

#: llama-server's error type for a 503 (its README's "Loading model" answer).
UNAVAILABLE_TYPE = "unavailable_error"


def error_body(error: OpenAIError) -> dict[str, Any]:
    """The JSON of an error in llama-server's shape."""
    kind = UNAVAILABLE_TYPE if error.status_code == 503 else error.type
    body: dict[str, Any] = {"code": error.status_code, "message": error.message, "type": kind}
    if error.param is not None:
        body["param"] = error.param
    if error.code is not None:
        body["reason"] = error.code
    return {"error": body}


def error_response(error: OpenAIError) -> JSONResponse:
    """The plain HTTP response for an error, in llama-server's shape."""
    return JSONResponse(error_body(error), status_code=error.status_code, headers=error.headers)


def as_openai_error(exc: Exception) -> OpenAIError | None:
    """The gateway's error for an exception a route may raise; None for anything else."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, grpc.aio.AioRpcError):
        return from_rpc_error(exc)
    if isinstance(exc, RequestValidationError):
        return validation_failure(exc.errors())
    if isinstance(exc, UnicodeEncodeError):  # JSON's lone UTF-16 surrogates: no proto holds them
        return invalid_request("The request holds text that is not valid Unicode.")
    return None


def read_body_as_json(request: Request) -> None:
    """llama-server reads every body as JSON, whatever its Content-Type (its README's fetch
    example sends text/plain, and some clients send none): so do these routes, which FastAPI
    would otherwise read as bytes."""
    kind = request.headers.get("content-type", "")
    if request.method != "POST" or "json" in kind.split(";")[0]:
        return
    headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
    request.scope["headers"] = [*headers, (b"content-type", b"application/json")]
    request.__dict__.pop("_headers", None)  # Starlette caches the headers it parsed


class LlamaRoute(APIRoute):
    """A route whose errors are answered in llama-server's shape (the app's handlers answer
    in OpenAI's)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            read_body_as_json(request)
            try:
                return await handler(request)
            except Exception as exc:
                error = as_openai_error(exc)
                if error is None:
                    raise
                routed = getattr(request.state, "routed", None)
                headers = getattr(routed, "headers", None)
                if callable(headers):
                    error.headers.update(headers())
                return error_response(error)

        return handle
