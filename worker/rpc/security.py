"""Who may call the worker: TLS, mTLS and the per-call token (README, "TLS and mTLS").

- **TLS** (``--tls-cert``, ``--tls-key``): the port speaks TLS only; a plaintext client fails
  its handshake (UNAVAILABLE on its side) before any call.
- **mTLS** (``--tls-client-ca``): a client must present a certificate signed by one of those
  CAs; without one, or with another CA's, the handshake fails.
- **Token** (``LLAMAGRID_WORKER_TOKEN`` or ``--token-file``): every call must carry the
  metadata ``authorization: Bearer <token>``, compared in constant time, or it ends with
  UNAUTHENTICATED before its request is parsed. That covers InferenceService and reflection.
  grpc.health.v1 needs no token (supervisors and load balancers probe it), but it is behind TLS
  and mTLS like everything on the port. ``--health-port`` serves health alone, in plaintext, for
  Kubernetes probes.

The files are checked when the worker starts; a problem stops it with a message that never
repeats the token.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import grpc
from grpc_health.v1 import health_pb2

from llamagrid.security import (
    AUTHORIZATION,
    SecurityError,
    check_ca,
    check_key_pair,
    load_token,
    read_pem,
)
from llamagrid.worker.settings import WorkerSettings

#: The service that needs no token.
HEALTH_SERVICE: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:  # generic in grpc-stubs only
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

__all__ = [
    "HEALTH_SERVICE",
    "SecurityError",
    "ServerSecurity",
    "TokenCheck",
    "exposure_warning",
    "server_credentials",
    "server_security",
    "worker_token",
]


def server_credentials(settings: WorkerSettings) -> grpc.ServerCredentials | None:
    """TLS credentials from --tls-cert/--tls-key (and --tls-client-ca); None: plaintext."""
    if not settings.tls_cert:
        return None
    check_key_pair(settings.tls_cert, settings.tls_key)
    pair = (read_pem(settings.tls_key, "private key"), read_pem(settings.tls_cert, "certificate"))
    if not settings.tls_client_ca:
        return grpc.ssl_server_credentials([pair])
    check_ca(settings.tls_client_ca, "client CA file")
    client_ca = read_pem(settings.tls_client_ca, "client CA file")
    return grpc.ssl_server_credentials(
        [pair], root_certificates=client_ca, require_client_auth=True
    )


def worker_token(settings: WorkerSettings, environ: Mapping[str, str]) -> str | None:
    """The token calls must carry (--token-file or LLAMAGRID_WORKER_TOKEN); None: no token."""
    return load_token(settings.token_file, environ)


class TokenCheck(_Interceptor):
    """Ends every call but health checks with UNAUTHENTICATED unless it carries the token."""

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    def problem(self, metadata: Any) -> str | None:
        """Why the call's metadata does not authenticate it; None when it does."""
        values = [value for key, value in metadata or () if key == AUTHORIZATION]
        if not values:
            return "this worker needs the metadata 'authorization: Bearer <token>'"
        if len(values) > 1:
            return "the call carries several 'authorization' metadata entries"
        value = values[0]
        raw = value if isinstance(value, bytes) else str(value).encode(errors="replace")
        scheme, _, token = raw.partition(b" ")
        # Compare even when the scheme is wrong, so that the time taken says nothing.
        matches = hmac.compare_digest(token, self._expected)
        if scheme.lower() != b"bearer" or not matches:
            return "the worker token is not valid"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Pass health checks and authenticated calls on; refuse the others."""
        handler = await continuation(details)
        service = details.method.lstrip("/").partition("/")[0]
        if handler is None or service == HEALTH_SERVICE:
            return handler
        problem = self.problem(details.invocation_metadata)
        return handler if problem is None else _refusal(handler, problem)


def _refusal(handler: Handler, message: str) -> Handler:
    """A handler of the same kind that ends the call with UNAUTHENTICATED. Requests are not
    deserialized: a refused call costs no parsing."""

    async def refuse(context: grpc.aio.ServicerContext[Any, Any]) -> NoReturn:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        raise AssertionError("abort returned")  # pragma: no cover

    async def unary(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse(context)

    async def stream(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await refuse(context)
        yield  # pragma: no cover (an async generator, as streaming handlers are)

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary)
    return grpc.stream_stream_rpc_method_handler(stream)


@dataclass(frozen=True, repr=False)
class ServerSecurity:
    """What the worker's port requires: TLS credentials (None: plaintext) and a token."""

    credentials: grpc.ServerCredentials | None = None
    token: str | None = None
    mtls: bool = False

    def describe(self) -> str:
        """For the log: what a client needs (never the token itself)."""
        parts = ["mTLS" if self.mtls else "TLS" if self.credentials else "plaintext"]
        if self.token:
            parts.append("token required")
        return ", ".join(parts)


def server_security(settings: WorkerSettings, environ: Mapping[str, str]) -> ServerSecurity:
    """The port's security from the settings and the environment; SecurityError if unusable."""
    return ServerSecurity(
        server_credentials(settings), worker_token(settings, environ), bool(settings.tls_client_ca)
    )


def exposure_warning(host: str, security: ServerSecurity) -> str | None:
    """A warning for a worker that anyone who reaches a non-loopback address may call."""
    if security.mtls or security.token:
        return None
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (
        f"listening on {host or 'every address'} without client certificates or a token: "
        "anyone who can reach this port may use the model (see --tls-client-ca, --token-file)"
    )
