"""The gateway's entry point: parse flags onto GatewaySettings, build the pool, run uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from pydantic_settings import CliApp

from gateway.app import create_app
from gateway.pool import WorkerPool
from gateway.settings import GatewaySettings


def main(argv: list[str] | None = None) -> None:
    """Run the gateway; ``argv`` defaults to the process's arguments."""
    settings = CliApp.run(GatewaySettings, cli_args=argv)
    level = "DEBUG" if settings.log_level == "trace" else settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.workers:
        logging.getLogger(__name__).warning("no --worker given: every request will get a 503")
    pool = WorkerPool(
        settings.workers,
        retry_s=settings.health_retry_s,
        load_interval_s=settings.load_interval_s,
    )
    app = create_app(settings, pool)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)
