"""Machine-readable error details that travel with llamagrid gRPC status codes.

A worker that rejects a request attaches a ``google.rpc.ErrorInfo`` whose ``reason`` names the
cause (one of the ``REASON_*`` constants) and, for RESOURCE_EXHAUSTED, a ``google.rpc.RetryInfo``.
Clients read them back with :func:`parse_details`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: The trailer that carries a status's details (a serialized google.rpc.Status).
DETAILS_TRAILER = "grpc-status-details-bin"

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status code with this number (UNKNOWN for a number gRPC does not define)."""
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


#: The ErrorInfo domain of every llamagrid error.
ERROR_DOMAIN = "llamagrid.dev"

#: The prompt plus the requested completion does not fit the context.
REASON_CONTEXT_LENGTH_EXCEEDED = "CONTEXT_LENGTH_EXCEEDED"
#: The request names a model this worker does not serve.
REASON_MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
#: A field has a value out of range or of the wrong form.
REASON_INVALID_VALUE = "INVALID_VALUE"
#: The request asks for something this worker cannot do (e.g. an unsupported capability).
REASON_UNSUPPORTED = "UNSUPPORTED_PARAMETER"
#: The worker's queue is full.
REASON_QUEUE_FULL = "QUEUE_FULL"
#: The request waited in the worker's queue longer than its queue timeout.
REASON_QUEUE_TIMEOUT = "QUEUE_TIMEOUT"
#: The worker is shutting down or still loading.
REASON_NOT_READY = "NOT_READY"
#: The session does not exist on this worker (never opened, closed, or reaped long ago).
REASON_SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
#: The session was not used for its TTL and was deleted.
REASON_SESSION_EXPIRED = "SESSION_EXPIRED"
#: A turn is already running on the session.
REASON_SESSION_BUSY = "SESSION_BUSY"
#: The session does not have the number of turns the request expected.
REASON_SESSION_LENGTH_MISMATCH = "SESSION_LENGTH_MISMATCH"
#: The worker already holds its maximum number of sessions.
REASON_SESSION_LIMIT = "SESSION_LIMIT"
#: The session's turn was cancelled through CancelTurn.
REASON_TURN_CANCELLED = "TURN_CANCELLED"
#: The slot runs a request: save, restore and erase need an idle slot (ABORTED).
REASON_SLOT_BUSY = "SLOT_BUSY"
#: The worker has no --slot-save-path: slot files are off (FAILED_PRECONDITION).
REASON_SLOT_FILES_OFF = "SLOT_FILES_OFF"


@dataclass(frozen=True)
class ErrorDetails:
    """What a llamagrid error status says beyond its code and message."""

    reason: str = ""
    param: str = ""
    retry_after_s: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def build_status(
    code: grpc.StatusCode,
    message: str,
    reason: str = "",
    param: str = "",
    retry_after_s: float | None = None,
) -> grpc.Status:
    """A rich status carrying ErrorInfo (and RetryInfo when retry_after_s is given)."""
    details: list[any_pb2.Any] = []
    if reason:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
        if param:
            info.metadata["param"] = param
        packed = any_pb2.Any()
        packed.Pack(info)
        details.append(packed)
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after_s * 1000))
        packed = any_pb2.Any()
        packed.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(packed)
    proto = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(proto)


def parse_details(trailing_metadata: object) -> ErrorDetails:
    """Read ErrorInfo/RetryInfo from a call's trailing metadata (empty details if none)."""
    raw = _status_bytes(trailing_metadata)
    if raw is None:
        return ErrorDetails()
    proto = status_pb2.Status.FromString(raw)
    reason, param, retry = "", "", None
    metadata: dict[str, str] = {}
    for detail in proto.details:
        info = error_details_pb2.ErrorInfo()
        retry_info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            reason = info.reason
            metadata = dict(info.metadata)
            param = metadata.get("param", "")
        elif detail.Is(retry_info.DESCRIPTOR) and detail.Unpack(retry_info):
            retry = retry_info.retry_delay.ToMilliseconds() / 1000.0
    return ErrorDetails(reason=reason, param=param, retry_after_s=retry, metadata=metadata)


def _status_bytes(trailing_metadata: object) -> bytes | None:
    if not trailing_metadata:
        return None
    for key, value in trailing_metadata:  # type: ignore[attr-defined]
        if key == DETAILS_TRAILER:
            return bytes(value)
    return None
