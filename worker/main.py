"""`llamagrid worker` / `python -m llamagrid.worker`: parse settings, resolve the model, serve."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from pydantic import ValidationError
from pydantic_settings import CliApp

from llamagrid.fleet.parent_death import exit_with_parent
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.model_source import ModelNotFound, resolve, resolve_projector
from llamagrid.worker.registration import Registrar, RegistrationError, read_key
from llamagrid.worker.rpc.security import SecurityError, exposure_warning, server_security
from llamagrid.worker.rpc.server import EngineDied, serve
from llamagrid.worker.settings import WorkerSettings


def parse(argv: list[str] | None) -> tuple[WorkerSettings, tuple[str, ...]]:
    """Settings from defaults, the --config model entry, LLAMAGRID_WORKER_* and flags.

    Flags and environment variables win over the config file, which wins over the defaults.
    Returns the settings and the config file's warnings. A bad config file exits with its
    FleetConfigError message, invalid settings with one line per problem.
    """
    args = lora_flags(sys.argv[1:] if argv is None else argv)
    try:
        settings = CliApp.run(WorkerSettings, cli_args=args)
    except ValidationError as error:
        sys.exit(settings_error(error))
    if not settings.config:
        return settings, ()
    from llamagrid.fleet.config import FleetConfigError, load_fleet_config

    try:
        config = load_fleet_config(settings.config)
        entry = config.model(settings.config_model or None)
    except FleetConfigError as exc:
        sys.exit(f"llamagrid worker: {exc}")
    explicit = settings.model_dump(include=settings.model_fields_set)
    try:
        merged = WorkerSettings.model_validate({**entry.worker_settings(), **explicit})
    except ValidationError as error:
        sys.exit(settings_error(error))
    return merged, config.warnings


def lora_flags(args: list[str]) -> list[str]:
    """llama-server's two-value ``--lora-scaled PATH SCALE`` as one ``PATH:SCALE`` value; with
    both flags given, ``--lora PATH`` as ``--lora-scaled PATH:1``, so that the adapter ids keep
    the command line's order, as in llama-server."""
    both = "--lora" in args and any(a.split("=")[0] == "--lora-scaled" for a in args)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--lora-scaled" and i + 2 < len(args) and _is_number(args[i + 2]):
            out += [arg, f"{args[i + 1]}:{args[i + 2]}"]
            i += 3
        elif arg == "--lora" and both and i + 1 < len(args):
            out += ["--lora-scaled", f"{args[i + 1]}:1"]
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def settings_error(error: ValidationError) -> str:
    """One line per problem, ``--flag-name: message`` (the values given are not repeated)."""
    lines = []
    for err in error.errors():
        name = ".".join(str(part) for part in err["loc"]).replace("_", "-")
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  --{name}: {message}" if name else f"  {message}")
    return "llamagrid worker: invalid settings:\n" + "\n".join(lines)


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
    try:  # the TLS files and the token, before the model is looked for
        security = server_security(settings, os.environ)
    except SecurityError as exc:
        sys.exit(f"llamagrid worker: {exc}")
    registrar: Registrar | None = None
    if settings.register_with:  # the admin key, before the model is looked for
        try:
            key = read_key(settings.register_key_file, os.environ)
        except RegistrationError as exc:
            sys.exit(f"llamagrid worker: {exc}")
        registrar = Registrar(settings.register_with, key, settings.register_interval_s)
    exposed = exposure_warning(settings.host, security)
    if exposed:
        logging.getLogger(__name__).warning("%s", exposed)
    try:
        source = resolve(
            settings.model, settings.hf_repo, settings.hf_file, settings.hf_revision, settings.alias
        )
        mmproj = resolve_projector(
            settings.mmproj, settings.hf_repo, settings.hf_mmproj_file, settings.hf_revision
        )
        settings = settings.model_copy(update={"mmproj": mmproj})
    except ModelNotFound as exc:
        sys.exit(f"llamagrid worker: {exc}")
    try:
        asyncio.run(serve(settings, LlamaEngine(settings, source), security, registrar))
    except EngineDied as exc:  # exit non-zero, so that a supervisor restarts the worker
        sys.exit(f"llamagrid worker: {exc}")
