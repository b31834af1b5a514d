"""Errors the engine raises, each carrying the gRPC status a client should see."""

from __future__ import annotations

import grpc
from llamagrid import errors as codes


class EngineError(Exception):
    """A request the engine refuses or cannot finish, with its gRPC status and ErrorInfo reason."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        param: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.param = param
        self.retry_after_s = retry_after_s

    def to_status(self) -> grpc.Status:
        """The rich gRPC status for this error."""
        return codes.build_status(
            self.code, self.message, self.reason, self.param, self.retry_after_s
        )


def invalid(message: str, param: str = "", reason: str = codes.REASON_INVALID_VALUE) -> EngineError:
    """An INVALID_ARGUMENT error about one request field."""
    return EngineError(grpc.StatusCode.INVALID_ARGUMENT, message, reason, param)


def context_exceeded(message: str, param: str = "messages") -> EngineError:
    """The request cannot fit the per-sequence context."""
    return invalid(message, param, codes.REASON_CONTEXT_LENGTH_EXCEEDED)
