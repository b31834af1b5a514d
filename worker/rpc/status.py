"""The one table from engine reasons to gRPC status codes (as gateway/errors.py maps gRPC to HTTP).

Each status carries a google.rpc.ErrorInfo naming the reason and the offending parameter, and a
RetryInfo when the engine gave a retry delay, so every client can tell causes apart.
"""

from __future__ import annotations

import grpc

from llamagrid import errors as wire
from llamagrid.worker.engine.errors import EngineError, Reason

#: The gRPC code of each reason.
CODES: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_VALUE: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.CONTEXT_LENGTH_EXCEEDED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.UNSUPPORTED: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.MODEL_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.QUEUE_TIMEOUT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.NOT_READY: grpc.StatusCode.UNAVAILABLE,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
    Reason.SESSION_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.SESSION_EXPIRED: grpc.StatusCode.NOT_FOUND,
    Reason.SESSION_BUSY: grpc.StatusCode.ABORTED,
    Reason.SESSION_LENGTH_MISMATCH: grpc.StatusCode.ABORTED,
    Reason.SESSION_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TURN_CANCELLED: grpc.StatusCode.CANCELLED,
    Reason.SLOT_BUSY: grpc.StatusCode.ABORTED,
    Reason.SLOT_FILES_OFF: grpc.StatusCode.FAILED_PRECONDITION,
}

#: Reasons whose ErrorInfo travels on the wire (INTERNAL says nothing a client can act on).
_WIRE_REASONS = {
    Reason.INVALID_VALUE: wire.REASON_INVALID_VALUE,
    Reason.CONTEXT_LENGTH_EXCEEDED: wire.REASON_CONTEXT_LENGTH_EXCEEDED,
    Reason.UNSUPPORTED: wire.REASON_UNSUPPORTED,
    Reason.MODEL_NOT_FOUND: wire.REASON_MODEL_NOT_FOUND,
    Reason.QUEUE_FULL: wire.REASON_QUEUE_FULL,
    Reason.QUEUE_TIMEOUT: wire.REASON_QUEUE_TIMEOUT,
    Reason.NOT_READY: wire.REASON_NOT_READY,
    Reason.SESSION_NOT_FOUND: wire.REASON_SESSION_NOT_FOUND,
    Reason.SESSION_EXPIRED: wire.REASON_SESSION_EXPIRED,
    Reason.SESSION_BUSY: wire.REASON_SESSION_BUSY,
    Reason.SESSION_LENGTH_MISMATCH: wire.REASON_SESSION_LENGTH_MISMATCH,
    Reason.SESSION_LIMIT: wire.REASON_SESSION_LIMIT,
    Reason.TURN_CANCELLED: wire.REASON_TURN_CANCELLED,
    Reason.SLOT_BUSY: wire.REASON_SLOT_BUSY,
    Reason.SLOT_FILES_OFF: wire.REASON_SLOT_FILES_OFF,
}


def to_status(error: EngineError) -> grpc.Status:
    """The rich gRPC status for an engine error."""
    return wire.build_status(
        CODES[error.reason],
        error.message,
        _WIRE_REASONS.get(error.reason, ""),
        error.param,
        error.retry_after_s,
    )
