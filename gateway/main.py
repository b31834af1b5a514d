"""The gateway's entry point: settings (flags, environment, fleet config), pool, uvicorn.

Before anything listens, the gateway refuses what would expose it by mistake: a key that is
empty or malformed, a key file it cannot use, or a non-loopback --host without any key (unless
--allow-insecure-bind); and an HTTPS certificate and key it cannot use. Started by `llamagrid
serve`, it exits when the supervisor dies.
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import CliApp

from llamagrid.fleet.parent_death import exit_with_parent
from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.auth import api_keys
from llamagrid.gateway.connections import guarded_protocol, raise_fd_limit
from llamagrid.gateway.keys import (
    ApiKeyError,
    gateway_bind_problem,
    is_loopback,
    is_world_readable,
)
from llamagrid.gateway.lifecycle import DrainingServer
from llamagrid.gateway.nodes.auth import admin_keys
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.gateway.worker_tls import SecurityError, worker_security
from llamagrid.security import check_key_pair

#: Seconds uvicorn waits for connections once the drain has finished (they are idle by then).
SHUTDOWN_TIMEOUT_S = 5

log = logging.getLogger(__name__)


def settings_error(error: ValidationError) -> str:
    """One line per problem, ``--flag-name: message`` (inputs are never shown: keys)."""
    lines = []
    for err in error.errors():
        name = ".".join(str(part) for part in err["loc"])
        lines.append(f"  --{name.replace('_', '-')}: {err['msg']}" if name else f"  {err['msg']}")
    return "llamagrid gateway: invalid settings:\n" + "\n".join(lines)


def load_settings(argv: list[str] | None) -> GatewaySettings:
    """Flags and LLAMAGRID_GATEWAY_* variables, over the fleet config's gateway section."""
    try:
        settings = CliApp.run(GatewaySettings, cli_args=argv)
    except ValidationError as error:
        sys.exit(settings_error(error))
    if not settings.config:
        return settings
    from llamagrid.fleet.config import FleetConfigError, load_fleet_config

    try:
        values = load_fleet_config(settings.config).gateway_settings()
    except (FleetConfigError, OSError) as error:
        sys.exit(f"llamagrid gateway: {settings.config}: {error}")
    explicit = settings.model_dump(include=settings.model_fields_set)
    for name in ("api_key", "admin_key"):
        if name in explicit:
            explicit[name] = [key.get_secret_value() for key in getattr(settings, name)]
    policies = {**values.get("model_policies", {}), **explicit.get("model_policies", {})}
    return GatewaySettings(**{**values, **explicit, "model_policies": policies})


def check_exposure(settings: GatewaySettings, argv: list[str]) -> None:
    """Exit on an unusable key file or an open non-loopback bind; say who may call."""
    try:
        keys = api_keys(settings)
        admins = admin_keys(settings, keys)
    except ApiKeyError as error:
        sys.exit(f"llamagrid gateway: {error}")
    problem = gateway_bind_problem(settings.host, bool(keys), settings.allow_insecure_bind)
    if problem:
        sys.exit(f"llamagrid gateway: {problem}")
    if any(arg == "--api-key" or arg.startswith("--api-key=") for arg in argv):
        log.warning(
            "an API key was given on the command line, where `ps` shows it to every user: "
            "prefer LLAMAGRID_GATEWAY_API_KEY or --api-key-file"
        )
    path = settings.api_key_file
    if path and is_world_readable(path):
        log.warning("the API key file %s is readable by every user: chmod 600 it", path)
    path = settings.admin_key_file
    if path and is_world_readable(path):
        log.warning("the admin key file %s is readable by every user: chmod 600 it", path)
    if any(arg == "--admin-key" or arg.startswith("--admin-key=") for arg in argv):
        log.warning("an admin key was given on the command line, where `ps` shows it")
    log.info("node API (/nodes): %s", "on, behind the admin key" if admins else "off")
    if keys:
        log.info(
            "%d API key(s); /metrics: %s, docs: %s",
            len(keys),
            settings.metrics_access,
            settings.docs_access,
        )
    elif is_loopback(settings.host):
        log.info("no API key: any process on this machine may call the gateway")
    else:
        log.warning("no API key on %s (--allow-insecure-bind): anyone may call", settings.host)


def check_serving(settings: GatewaySettings) -> None:
    """Exit on an HTTPS certificate and key that cannot be used; make room for the connections."""
    if settings.tls_cert:
        try:
            check_key_pair(settings.tls_cert, settings.tls_key)
        except SecurityError as error:
            sys.exit(f"llamagrid gateway: --tls-cert/--tls-key: {error}")
        log.info("serving HTTPS with %s", settings.tls_cert)
    problem = raise_fd_limit(settings.max_connections)
    if problem:
        log.warning("%s", problem)


def server_config(app: FastAPI, settings: GatewaySettings) -> uvicorn.Config:
    """uvicorn's configuration: where to listen, HTTPS, and the limits on slow clients
    (gateway/connections.py; the body's deadline is the app's)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
        http=guarded_protocol(
            settings.header_timeout_s, settings.send_timeout_s, settings.max_connections
        ),
        ws="none",  # no WebSocket routes: an upgrade request is served as plain HTTP
        timeout_keep_alive=settings.keep_alive_timeout_s,
        h11_max_incomplete_event_size=settings.max_header_bytes,
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
    )


def main(argv: list[str] | None = None) -> None:
    """Run the gateway; ``argv`` defaults to the process's arguments."""
    exit_with_parent()
    args = sys.argv[1:] if argv is None else argv
    settings = load_settings(args)
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_exposure(settings, args)
    check_serving(settings)
    node_api = bool(settings.admin_key or settings.admin_key_file)
    if not settings.workers and not settings.worker_dns and not node_api:
        log.warning("no --worker given: every request will get a 503")
    try:
        security = worker_security(settings, os.environ)
    except SecurityError as error:
        sys.exit(f"llamagrid gateway: {error}")
    if security.tls or security.token:
        log.info("dialling workers with %s", security)
    app = create_app(settings, create_pool(settings, security))
    DrainingServer(server_config(app, settings), app.state.drain).run()
