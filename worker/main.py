"""`llamagrid worker` / `python -m llamagrid.worker`: parse settings, resolve the model, serve."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic_settings import CliApp

from llamagrid.fleet.parent_death import exit_with_parent
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.model_source import ModelNotFound, resolve
from llamagrid.worker.rpc.server import EngineDied, serve
from llamagrid.worker.settings import WorkerSettings


def parse(argv: list[str] | None) -> tuple[WorkerSettings, tuple[str, ...]]:
    """Settings from defaults, the --config model entry, LLAMAGRID_WORKER_* and flags.

    Flags and environment variables win over the config file, which wins over the defaults.
    Returns the settings and the config file's warnings. A bad config file exits with its
    FleetConfigError message.
    """
    args = sys.argv[1:] if argv is None else argv
    settings = CliApp.run(WorkerSettings, cli_args=args)
    if not settings.config:
        return settings, ()
    from llamagrid.fleet.config import FleetConfigError, load_fleet_config

    try:
        config = load_fleet_config(settings.config)
        entry = config.model(settings.config_model or None)
    except FleetConfigError as exc:
        sys.exit(f"llamagrid worker: {exc}")
    explicit = settings.model_dump(include=settings.model_fields_set)
    merged = WorkerSettings.model_validate({**entry.worker_settings(), **explicit})
    return merged, config.warnings


def main(argv: list[str] | None = None) -> None:
    """Run a worker until it is told to stop (or, started by `llamagrid serve`, until the
    supervisor dies: fleet/parent_death.py)."""
    exit_with_parent()
    settings, warnings = parse(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s",
    )
    for warning in warnings:
        logging.getLogger(__name__).warning("config %s: %s", settings.config, warning)
    try:
        source = resolve(
            settings.model, settings.hf_repo, settings.hf_file, settings.hf_revision, settings.alias
        )
    except ModelNotFound as exc:
        sys.exit(f"llamagrid worker: {exc}")
    try:
        asyncio.run(serve(settings, LlamaEngine(settings, source)))
    except EngineDied as exc:  # exit non-zero, so that a supervisor restarts the worker
        sys.exit(f"llamagrid worker: {exc}")
