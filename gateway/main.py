"""The gateway's entry point: settings (flags, environment, fleet config), pool, uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic_settings import CliApp

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.lifecycle import DrainingServer
from llamagrid.gateway.settings import GatewaySettings

#: Seconds uvicorn waits for connections once the drain has finished (they are idle by then).
SHUTDOWN_TIMEOUT_S = 5


def load_settings(argv: list[str] | None) -> GatewaySettings:
    """Flags and LLAMAGRID_GATEWAY_* variables, over the fleet config's gateway section."""
    settings = CliApp.run(GatewaySettings, cli_args=argv)
    if not settings.config:
        return settings
    from llamagrid.fleet.config import FleetConfigError, load_fleet_config

    try:
        values = load_fleet_config(settings.config).gateway_settings()
    except (FleetConfigError, OSError) as error:
        sys.exit(f"llamagrid gateway: {settings.config}: {error}")
    explicit = settings.model_dump(include=settings.model_fields_set)
    policies = {**values.get("model_policies", {}), **explicit.get("model_policies", {})}
    return GatewaySettings(**{**values, **explicit, "model_policies": policies})


def main(argv: list[str] | None = None) -> None:
    """Run the gateway; ``argv`` defaults to the process's arguments."""
    settings = load_settings(argv)
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.workers and not settings.worker_dns:
        logging.getLogger(__name__).warning("no --worker given: every request will get a 503")
    app = create_app(settings, create_pool(settings))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=SHUTDOWN_TIMEOUT_S,
    )
    DrainingServer(config, app.state.drain).run()
