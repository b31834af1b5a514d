"""`llamagrid worker` / `python -m worker`: parse settings, resolve the model, serve."""

from __future__ import annotations

import asyncio
import logging
import sys

from pydantic_settings import CliApp

from worker.engine import LlamaEngine
from worker.model_source import ModelNotFound, resolve
from worker.server import serve
from worker.settings import WorkerSettings


def parse(argv: list[str] | None) -> WorkerSettings:
    """Settings from defaults, LLAMAGRID_WORKER_* variables and CLI flags (flags win)."""
    args = sys.argv[1:] if argv is None else argv
    return CliApp.run(WorkerSettings, cli_args=args)


def main(argv: list[str] | None = None) -> None:
    """Run a worker until it is told to stop."""
    settings = parse(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s worker %(name)s: %(message)s",
    )
    try:
        source = resolve(
            settings.model, settings.hf_repo, settings.hf_file, settings.hf_revision, settings.alias
        )
    except ModelNotFound as exc:
        sys.exit(f"llamagrid worker: {exc}")
    asyncio.run(serve(settings, LlamaEngine(settings, source)))
