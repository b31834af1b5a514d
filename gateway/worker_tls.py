"""How the gateway dials its workers: TLS, mTLS and the per-call token (README, "TLS and mTLS").

The settings name files (``--worker-ca``, ``--worker-client-cert``/``--worker-client-key``,
``--worker-token-file``); the token may instead come from ``LLAMAGRID_WORKER_TOKEN``. Every file
is read and checked once, at startup, and one ChannelSecurity serves every worker's channel.
"""

from __future__ import annotations

from collections.abc import Mapping

from llamagrid.gateway.settings import GatewaySettings
from llamagrid.security import (
    ChannelSecurity,
    SecurityError,
    check_ca,
    check_key_pair,
    load_token,
)

__all__ = ["SecurityError", "worker_security"]


def worker_security(settings: GatewaySettings, environ: Mapping[str, str]) -> ChannelSecurity:
    """The channel security for every worker; SecurityError for a file or token that cannot be
    used (the message never repeats the token)."""
    if settings.worker_client_cert:
        check_key_pair(settings.worker_client_cert, settings.worker_client_key)
    if settings.worker_ca:
        check_ca(settings.worker_ca, "worker CA file")
    return ChannelSecurity.create(
        tls=settings.dials_tls,
        root_ca=settings.worker_ca or None,
        client_cert=settings.worker_client_cert or None,
        client_key=settings.worker_client_key or None,
        server_name=settings.worker_tls_server_name or None,
        token=load_token(settings.worker_token_file, environ),
    )
