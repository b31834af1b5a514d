"""How a llamagrid client secures its channel to a worker: TLS, mTLS and the per-call token.

- **TLS.** The channel verifies the worker's certificate against ``root_ca`` (PEM), or against
  the system's roots when none is given. ``server_name`` overrides the name checked in the
  certificate, for a worker dialled by IP address (a Kubernetes pod) whose certificate names a
  DNS name.
- **mTLS.** ``client_cert`` and ``client_key`` (PEM, both or neither) are presented to a worker
  that requires client certificates (``--tls-client-ca``).
- **Token.** A worker started with a token (``LLAMAGRID_WORKER_TOKEN`` or ``--token-file``)
  refuses every call without the metadata ``authorization: Bearer <token>``, except the
  grpc.health.v1 ones. With ``token`` set, the channel adds that metadata to every call,
  through client interceptors, so any stub built on the channel sends it too, over TLS or not.
  A token is an RFC 6750 bearer token: letters, digits and ``-._~+/``, optionally ending in
  ``=``, at most :data:`MAX_TOKEN_CHARS` characters.

PEM material is given as bytes (the PEM itself) or as a path (``str`` or ``os.PathLike``).
Errors are :class:`SecurityError`, whose message never repeats a token or a key.
"""

from __future__ import annotations

import collections
import os
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

#: The environment variable that holds the worker token (read by the worker and the gateway).
TOKEN_ENV = "LLAMAGRID_WORKER_TOKEN"
#: The metadata key that carries the token.
AUTHORIZATION = "authorization"
#: The longest token accepted (gRPC's default limit on all metadata of a call is 8 KiB).
MAX_TOKEN_CHARS = 4096
#: RFC 6750 section 2.1, b64token.
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")

#: PEM bytes, or the path of a PEM file.
PemSource = bytes | str | os.PathLike[str]
ChannelOptions = Sequence[tuple[str, Any]]


class SecurityError(ValueError):
    """TLS material or a token that cannot be used; the message never repeats a secret."""


def token_problem(token: str) -> str | None:
    """Why ``token`` cannot be used as a worker token (without repeating it); None if it can."""
    if not token:
        return "the worker token is empty (an empty token never turns authentication off)"
    if len(token) > MAX_TOKEN_CHARS:
        return f"the worker token is longer than {MAX_TOKEN_CHARS} characters"
    if not _TOKEN_PATTERN.fullmatch(token):
        return (
            "the worker token must be letters, digits and -._~+/ only, optionally ending "
            "in = (an RFC 6750 bearer token)"
        )
    return None


def check_token(token: str) -> str:
    """The token, or SecurityError."""
    problem = token_problem(token)
    if problem:
        raise SecurityError(problem)
    return token


def read_token_file(path: str | os.PathLike[str]) -> str:
    """A token file's content, stripped of surrounding whitespace; SecurityError if unusable."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise SecurityError(f"cannot read the worker token file {path}: {_reason(error)}") from None
    problem = token_problem(text.strip())
    if problem:
        raise SecurityError(f"{path}: {problem}")
    return text.strip()


def load_token(token_file: str, environ: Mapping[str, str]) -> str | None:
    """The worker token from ``token_file`` or from ``LLAMAGRID_WORKER_TOKEN``; None if neither.

    Both at once is an error (which one would win is a guess), and so is an empty variable.
    """
    if TOKEN_ENV in environ:
        if token_file:
            raise SecurityError(f"both {TOKEN_ENV} and a token file are set: use one")
        return check_token(environ[TOKEN_ENV].strip())
    return read_token_file(token_file) if token_file else None


def read_pem(source: PemSource, what: str) -> bytes:
    """PEM bytes as given, or read from a path; SecurityError when there is no PEM block."""
    if isinstance(source, bytes):
        data, where = source, what
    else:
        where = f"{what} {os.fspath(source)}"
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise SecurityError(f"cannot read the {where}: {_reason(error)}") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"the {where} holds no PEM data")
    return data


def check_key_pair(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> None:
    """SecurityError unless the files are a PEM certificate chain and its unencrypted key."""
    read_pem(cert, "certificate")
    read_pem(key, "private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:  # the password callback makes an encrypted key fail instead of prompting
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, OSError, _EncryptedKey) as error:
        raise SecurityError(
            f"the certificate {os.fspath(cert)} and key {os.fspath(key)} cannot be used "
            f"together (an unencrypted PEM key that matches the certificate is needed): "
            f"{_reason(error)}"
        ) from None


def check_ca(path: str | os.PathLike[str], what: str = "CA file") -> None:
    """SecurityError unless the file holds at least one PEM certificate."""
    read_pem(path, what)
    try:
        ssl.create_default_context(cafile=os.fspath(path))
    except (ssl.SSLError, OSError) as error:
        raise SecurityError(f"the {what} {os.fspath(path)}: {_reason(error)}") from None


@dataclass(frozen=True, repr=False)
class ChannelSecurity:
    """TLS and token settings for a client channel (build it with :meth:`create`)."""

    tls: bool = False
    root_ca: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    server_name: str = ""
    token: str | None = None

    @classmethod
    def create(
        cls,
        *,
        tls: bool | None = None,
        root_ca: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        token: str | None = None,
    ) -> ChannelSecurity:
        """Check and load the settings. TLS is on when ``tls`` is true, or (``tls`` None) when
        any of ``root_ca``, ``client_cert`` or ``client_key`` is given."""
        if (client_cert is None) != (client_key is None):
            raise SecurityError("a client certificate and its key go together: give both")
        material = root_ca is not None or client_cert is not None
        if tls is None:
            tls = material
        if not tls and (material or server_name):
            raise SecurityError("root_ca, client_cert, client_key and server_name need TLS")
        return cls(
            tls=tls,
            root_ca=None if root_ca is None else read_pem(root_ca, "root CA"),
            client_cert=None if client_cert is None else read_pem(client_cert, "certificate"),
            client_key=None if client_key is None else read_pem(client_key, "private key"),
            server_name=server_name or "",
            token=None if token is None else check_token(token),
        )

    def __repr__(self) -> str:  # never the key or the token
        return (
            f"ChannelSecurity(tls={self.tls}, root_ca={self.root_ca is not None}, "
            f"client_cert={self.client_cert is not None}, server_name={self.server_name!r}, "
            f"token={self.token is not None})"
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel credentials (None: plaintext)."""
        if not self.tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_ca,
            private_key=self.client_key,
            certificate_chain=self.client_cert,
        )

    def options(self, options: ChannelOptions) -> list[tuple[str, Any]]:
        """``options`` plus the TLS name override, when there is one."""
        extra = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return [*options, *extra]

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata added to every call."""
        return ((AUTHORIZATION, f"Bearer {self.token}"),) if self.token else ()


def aio_channel(
    target: str, options: ChannelOptions, security: ChannelSecurity | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``target``, secured as ``security`` says (None: plaintext)."""
    security = security or ChannelSecurity()
    extra = security.metadata()
    interceptors: list[Any] = [cls(extra) for cls in _AIO_INTERCEPTORS] if extra else []
    credentials = security.credentials()
    opts = security.options(options)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors or None)
    return grpc.aio.secure_channel(
        target, credentials, options=opts, interceptors=interceptors or None
    )


def sync_channel(
    target: str, options: ChannelOptions, security: ChannelSecurity | None = None
) -> tuple[grpc.Channel, grpc.Channel]:
    """A blocking channel to ``target``, and the same channel with the token's interceptor (the
    first one is the one to watch for readiness and to close)."""
    security = security or ChannelSecurity()
    credentials = security.credentials()
    opts = security.options(options)
    if credentials is None:
        channel = grpc.insecure_channel(target, options=opts)
    else:
        channel = grpc.secure_channel(target, credentials, options=opts)
    extra = security.metadata()
    return channel, grpc.intercept_channel(channel, _SyncMetadata(extra)) if extra else channel


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    """The call details with ``extra`` after the call's own metadata."""
    metadata = tuple(details.metadata or ()) + extra
    if isinstance(details, grpc.aio.ClientCallDetails):
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata(*metadata),
            details.credentials,
            details.wait_for_ready,
        )
    return _SyncCallDetails(
        details.method,
        details.timeout,
        metadata,
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


if TYPE_CHECKING:  # generic in grpc-stubs only
    _AioUU = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioUS = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _AioSU = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _AioSS = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _SyncUU = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _SyncUS = grpc.UnaryStreamClientInterceptor[Any, Any]
    _SyncSU = grpc.StreamUnaryClientInterceptor[Any, Any]
    _SyncSS = grpc.StreamStreamClientInterceptor[Any, Any]
else:
    _AioUU = grpc.aio.UnaryUnaryClientInterceptor
    _AioUS = grpc.aio.UnaryStreamClientInterceptor
    _AioSU = grpc.aio.StreamUnaryClientInterceptor
    _AioSS = grpc.aio.StreamStreamClientInterceptor
    _SyncUU = grpc.UnaryUnaryClientInterceptor
    _SyncUS = grpc.UnaryStreamClientInterceptor
    _SyncSU = grpc.StreamUnaryClientInterceptor
    _SyncSS = grpc.StreamStreamClientInterceptor


class _AioMetadata:
    """Adds fixed metadata to every call of an asyncio channel."""

    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self._extra = extra

    async def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(_with_metadata(details, self._extra), request)


# grpc.aio files each interceptor under the first call kind it implements: one class per kind.
class _AioUnaryUnary(_AioMetadata, _AioUU):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._call(continuation, client_call_details, request)


class _AioUnaryStream(_AioMetadata, _AioUS):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await self._call(continuation, client_call_details, request)


class _AioStreamUnary(_AioMetadata, _AioSU):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


class _AioStreamStream(_AioMetadata, _AioSS):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._call(continuation, client_call_details, request_iterator)


_AIO_INTERCEPTORS = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)


class _SyncCallDetails(
    collections.namedtuple(
        "_SyncCallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    """grpc.ClientCallDetails for a call whose metadata an interceptor changed."""


class _SyncMetadata(_SyncUU, _SyncUS, _SyncSU, _SyncSS):
    """Adds fixed metadata to every call of a blocking channel."""

    def __init__(self, extra: tuple[tuple[str, str], ...]) -> None:
        self._extra = extra

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_with_metadata(client_call_details, self._extra), request_iterator)


class _EncryptedKey(Exception):
    """The private key is encrypted (raised by the password callback)."""


def _no_password() -> bytes:
    raise _EncryptedKey("the private key is encrypted")


def _reason(error: BaseException) -> str:
    """An exception's message, without the file name OSError repeats."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__
