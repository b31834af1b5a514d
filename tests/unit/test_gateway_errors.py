"""The one table from gRPC status to HTTP status and OpenAI error."""

from __future__ import annotations

import grpc
import pytest

from llamagrid.errors import (
    REASON_CONTEXT_LENGTH_EXCEEDED,
    REASON_MODEL_NOT_FOUND,
    ErrorDetails,
    build_status,
)
from llamagrid.gateway.errors import (
    STATUS_TABLE,
    TOO_LARGE_CODE,
    OpenAIError,
    from_rpc_error,
    from_status,
    validation_failure,
)


@pytest.mark.parametrize(
    ("code", "status", "error_type"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400, "invalid_request_error"),
        (grpc.StatusCode.FAILED_PRECONDITION, 400, "invalid_request_error"),
        (grpc.StatusCode.PERMISSION_DENIED, 403, "permission_error"),
        (grpc.StatusCode.NOT_FOUND, 404, "invalid_request_error"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
        (grpc.StatusCode.CANCELLED, 499, "request_cancelled"),
        (grpc.StatusCode.UNIMPLEMENTED, 501, "not_implemented_error"),
        (grpc.StatusCode.UNAVAILABLE, 503, "service_unavailable_error"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "timeout_error"),
        (grpc.StatusCode.INTERNAL, 500, "server_error"),
        (grpc.StatusCode.UNKNOWN, 500, "server_error"),
        (grpc.StatusCode.DATA_LOSS, 500, "server_error"),
        (grpc.StatusCode.ABORTED, 409, "invalid_request_error"),
    ],
)
def test_status_table(code: grpc.StatusCode, status: int, error_type: str) -> None:
    error = from_status(code, "why", ErrorDetails())
    assert (error.status_code, error.type, error.message) == (status, error_type, "why")
    assert error.code is None and error.param is None


def test_a_workers_unauthenticated_is_the_gateways_fault_not_the_clients() -> None:
    """The HTTP client's key is not what the worker checked: not a 401, and the worker's
    message is not passed on."""
    error = from_status(grpc.StatusCode.UNAUTHENTICATED, "worker says why", ErrorDetails())
    assert (error.status_code, error.type, error.code) == (
        502,
        "server_error",
        "worker_unauthenticated",
    )
    assert "worker says why" not in error.message and "worker token" in error.message


def test_the_table_has_one_row_per_code() -> None:
    assert len(STATUS_TABLE) == 11
    assert grpc.StatusCode.OK not in STATUS_TABLE


def test_reason_becomes_the_code_and_metadata_param_the_param() -> None:
    details = ErrorDetails(reason=REASON_CONTEXT_LENGTH_EXCEEDED, param="messages")
    error = from_status(grpc.StatusCode.INVALID_ARGUMENT, "too long", details)
    assert error.code == "context_length_exceeded" and error.param == "messages"
    assert error.body() == {
        "error": {
            "message": "too long",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }


def test_model_not_found_reason() -> None:
    error = from_status(grpc.StatusCode.NOT_FOUND, "x", ErrorDetails(REASON_MODEL_NOT_FOUND))
    assert (error.status_code, error.code) == (404, "model_not_found")


@pytest.mark.parametrize(("delay", "header"), [(None, "1"), (0.2, "1"), (2.0, "2"), (2.01, "3")])
def test_retry_after_is_rounded_up(delay: float | None, header: str) -> None:
    details = ErrorDetails(retry_after_s=delay)
    error = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", details)
    assert error.headers == {"Retry-After": header}


def test_retry_info_on_other_codes_is_passed_on() -> None:
    error = from_status(grpc.StatusCode.UNAVAILABLE, "loading", ErrorDetails(retry_after_s=5))
    assert error.headers == {"Retry-After": "5"}
    assert from_status(grpc.StatusCode.UNAVAILABLE, "x", ErrorDetails()).headers == {}


def test_empty_message_falls_back_to_the_code_name() -> None:
    assert from_status(grpc.StatusCode.INTERNAL, "", ErrorDetails()).message == "internal"


def test_from_rpc_error_reads_the_rich_status() -> None:
    status = build_status(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", "QUEUE_FULL", "", retry_after_s=4
    )
    rpc_error = grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )
    error = from_rpc_error(rpc_error)
    assert (error.status_code, error.code, error.message) == (429, "queue_full", "queue full")
    assert error.headers == {"Retry-After": "4"}


def test_openai_error_is_an_exception() -> None:
    error = OpenAIError(418, "teapot", "x", param="p", code="c")
    assert isinstance(error, Exception) and str(error) == "teapot"


def test_validation_failure_names_the_field() -> None:
    error = validation_failure(
        [
            {"loc": ("body", "stop", "str"), "msg": "Input should be a valid string"},
            {"loc": ("body", "stop", "list[str]"), "msg": "Input should be a valid list"},
            {"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'"},
        ]
    )
    assert error.status_code == 400 and error.param == "stop"
    assert "messages[0].role: Input should be 'user'" in error.message
    malformed = validation_failure(
        [
            {
                "type": "json_invalid",
                "loc": ("body", 3),
                "msg": "JSON decode error",
                "ctx": {"error": "Expecting value"},
            }
        ]
    )
    assert malformed.param is None and "not valid JSON: Expecting value" in malformed.message


def test_a_message_over_grpcs_size_limit_is_a_413_without_retry_after() -> None:
    message = "Sent message larger than max (70000000 vs. 67108864)"
    error = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message, ErrorDetails())
    assert (error.status_code, error.code, error.type) == (
        413,
        TOO_LARGE_CODE,
        "invalid_request_error",
    )
    assert "Retry-After" not in error.headers


def test_a_full_queue_stays_a_429_with_retry_after() -> None:
    details = ErrorDetails(reason="QUEUE_FULL", retry_after_s=1.0)
    error = from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", details)
    assert (error.status_code, error.headers["Retry-After"]) == (429, "1")
