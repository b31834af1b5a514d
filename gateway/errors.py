"""Errors in OpenAI's shape: from gRPC status codes (one table) and from request validation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import grpc

from llamagrid.errors import ErrorDetails, parse_details

#: HTTP status and OpenAI error type for each gRPC status code; any other code is a 500.
STATUS_TABLE: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    # Workers never see the HTTP client's key: a worker's UNAUTHENTICATED means the gateway's
    # own worker token or certificate is missing or wrong (a fixed message, code below).
    grpc.StatusCode.UNAUTHENTICATED: (502, "server_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    # A session's turn running already, or not at the expected turn: a conflict.
    grpc.StatusCode.ABORTED: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "request_cancelled"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "service_unavailable_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
}
#: What every code missing from STATUS_TABLE becomes.
DEFAULT_STATUS: tuple[int, str] = (500, "server_error")
#: What a worker's UNAUTHENTICATED becomes (the worker's own message is not passed on).
WORKER_UNAUTHENTICATED = (
    "A worker refused the gateway's credentials: the gateway's worker token (or client "
    "certificate) is missing or wrong."
)
#: The Retry-After (seconds) of a 429 whose status carries no RetryInfo.
DEFAULT_RETRY_AFTER_S = 1


class OpenAIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response (also the data of an in-stream error event)."""
        error = {"message": self.message, "type": self.type, "param": self.param}
        return {"error": {**error, "code": self.code}}

    def __repr__(self) -> str:
        return f"OpenAIError({self.status_code}, {self.message!r}, code={self.code!r})"


#: The error code of every 413, as the app's HTTPException handler derives it from the phrase.
TOO_LARGE_CODE = HTTPStatus.REQUEST_ENTITY_TOO_LARGE.phrase.lower().replace(" ", "_")
#: What gRPC says when a message is over its size limit (either side); no ErrorInfo comes with it.
_TOO_LARGE = "larger than max"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    """A 400 invalid_request_error."""
    return OpenAIError(400, message, "invalid_request_error", param=param, code=code)


def unsupported(param: str, message: str | None = None) -> OpenAIError:
    """A 400 for a parameter the gateway cannot honour."""
    text = message or f"The parameter '{param}' is not supported by this server."
    return invalid_request(text, param=param, code="unsupported_parameter")


def model_not_found(model: str) -> OpenAIError:
    """A 404 for a model no worker serves."""
    message = f"The model '{model}' does not exist."
    return OpenAIError(404, message, "invalid_request_error", param="model", code="model_not_found")


def from_status(code: grpc.StatusCode, message: str, details: ErrorDetails) -> OpenAIError:
    """The OpenAI error for a gRPC status with its ErrorInfo/RetryInfo details."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not details.reason and _TOO_LARGE in message:
        # gRPC's own refusal of a message over its size limit: a retry would fail the same way.
        return OpenAIError(413, message, "invalid_request_error", code=TOO_LARGE_CODE)
    status, error_type = STATUS_TABLE.get(code, DEFAULT_STATUS)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return OpenAIError(
            status, WORKER_UNAUTHENTICATED, error_type, code="worker_unauthenticated"
        )
    headers: dict[str, str] = {}
    if details.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(details.retry_after_s)))
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        headers["Retry-After"] = str(DEFAULT_RETRY_AFTER_S)
    return OpenAIError(
        status,
        message or code.name.lower(),
        error_type,
        param=details.param or None,
        code=details.reason.lower() or None,
        headers=headers,
    )


def from_rpc_error(error: grpc.aio.AioRpcError) -> OpenAIError:
    """The OpenAI error for a failed gRPC call."""
    details = parse_details(error.trailing_metadata())
    return from_status(error.code(), error.details() or "", details)


def validation_failure(errors: Sequence[Any]) -> OpenAIError:
    """A 400 that names every invalid field; ``param`` is the first invalid field."""
    if errors and errors[0].get("type") == "json_invalid":
        reason = errors[0].get("ctx", {}).get("error", "")
        return invalid_request(f"The request body is not valid JSON: {reason}".rstrip(": "))
    locs = [tuple(error["loc"][1:]) for error in errors]  # drop "body" / "query" / "path"
    problems = dict.fromkeys(
        f"{_path(loc) or 'body'}: {e['msg']}" for loc, e in zip(locs, errors, strict=True)
    )
    # The failures of one union field (one per member type) share the field's path.
    first = _common_prefix([loc for loc in locs if loc[:1] == locs[0][:1]]) if locs else ()
    return invalid_request(f"Invalid request: {'; '.join(problems)}", _path(first) or None)


def _common_prefix(locs: Sequence[tuple[str | int, ...]]) -> tuple[str | int, ...]:
    prefix = locs[0]
    for loc in locs[1:]:
        size = 0
        while size < min(len(prefix), len(loc)) and prefix[size] == loc[size]:
            size += 1
        prefix = prefix[:size]
    return prefix


def _path(loc: Sequence[str | int]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content'."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path
