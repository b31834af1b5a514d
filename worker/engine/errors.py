"""Errors the engine raises: a reason, the offending parameter and an optional retry delay.

Transport-free on purpose. The gRPC layer maps each Reason onto a status code
(llamagrid.worker.rpc.status), as the gateway maps gRPC statuses onto HTTP (gateway/errors.py).
"""

from __future__ import annotations

import enum


class Reason(enum.Enum):
    """Why the engine refused or could not finish a request. Values are the wire's reason names."""

    #: A field has a value out of range or of the wrong form.
    INVALID_VALUE = "INVALID_VALUE"
    #: The prompt (plus what must be generated) does not fit the context.
    CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"
    #: The request asks for something this model or worker cannot do.
    UNSUPPORTED = "UNSUPPORTED_PARAMETER"
    #: The request names a model this worker does not serve.
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    #: Every queue place is taken: retry after a delay.
    QUEUE_FULL = "QUEUE_FULL"
    #: The request waited in the queue longer than the queue timeout.
    QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
    #: The model is still loading, or the worker is shutting down.
    NOT_READY = "NOT_READY"
    #: llama.cpp failed on work that should have succeeded.
    INTERNAL = "INTERNAL"
    #: The session does not exist (never opened, closed, or reaped long ago).
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    #: The session was not used for its TTL and was deleted.
    SESSION_EXPIRED = "SESSION_EXPIRED"
    #: A turn is already running on the session.
    SESSION_BUSY = "SESSION_BUSY"
    #: The session does not have the number of turns the request expected.
    SESSION_LENGTH_MISMATCH = "SESSION_LENGTH_MISMATCH"
    #: The worker already holds its maximum number of sessions.
    SESSION_LIMIT = "SESSION_LIMIT"
    #: The session's turn was cancelled through CancelTurn.
    TURN_CANCELLED = "TURN_CANCELLED"
    #: The slot runs a request; saving, restoring or erasing it needs it idle.
    SLOT_BUSY = "SLOT_BUSY"
    #: Slot files are off: the worker has no --slot-save-path.
    SLOT_FILES_OFF = "SLOT_FILES_OFF"


class EngineError(Exception):
    """A request the engine refuses or cannot finish."""

    def __init__(
        self,
        reason: Reason,
        message: str,
        param: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


def invalid(message: str, param: str = "", reason: Reason = Reason.INVALID_VALUE) -> EngineError:
    """A request field the engine cannot accept."""
    return EngineError(reason, message, param)


def unsupported(message: str, param: str) -> EngineError:
    """A field whose value this worker cannot honour."""
    return EngineError(Reason.UNSUPPORTED, message, param)


def context_exceeded(message: str, param: str = "messages") -> EngineError:
    """The request cannot fit the per-sequence context."""
    return EngineError(Reason.CONTEXT_LENGTH_EXCEEDED, message, param)


def not_ready(message: str) -> EngineError:
    """The engine is loading or stopping: another worker may serve the request."""
    return EngineError(Reason.NOT_READY, message)


def internal(message: str) -> EngineError:
    """llama.cpp failed; the request is lost, the worker carries on."""
    return EngineError(Reason.INTERNAL, message)
