"""`llamagrid serve`: run the workers and the gateway as child processes and keep them running.

Without --config: one worker on the serve flags' model, and the gateway. With --config: one
worker per replica of every model of the fleet config (pinned to its GPUs), and the gateway in
front of all of them (supervisor/plan.py says how). On SIGTERM/SIGINT every child gets SIGTERM at
once and may drain; stragglers get SIGKILL after the longest drain grace plus a margin. The exit
status is 0 when every child exited on its own, 1 when one had to be killed or was given up on.
llama-server's flags and LLAMA_ARG_* variables are read too, and llama-cpp-python's flags and
variables when serve is started as its server is (compat_argv; llama_server_flags.py,
llama_server_env.py, llama_cpp_python_flags.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import ValidationError
from pydantic_settings import CliApp

from llamagrid.fleet.config import load_fleet_config
from llamagrid.fleet.problems import FleetConfigError
from llamagrid.supervisor import llama_cpp_python_flags, llama_server_env, llama_server_flags
from llamagrid.supervisor.access import ExposureError
from llamagrid.supervisor.children import Child, describe_exit
from llamagrid.supervisor.llama_server_flags import Translation
from llamagrid.supervisor.plan import Plan, fleet_plan, single_model_plan
from llamagrid.supervisor.settings import SINGLE_MODEL_FIELDS, ServeSettings

log = logging.getLogger("llamagrid.serve")

#: Whose command line `main` reads (src/llamagrid/cli.py: one subcommand each).
Dialect = Literal["serve", "llama-server", "llama-cpp-python"]

#: Added to the longest drain grace before stragglers get SIGKILL.
SHUTDOWN_MARGIN_S = 10.0
#: A signal repeated within this many seconds is the same request to stop, passed on twice
#: (e.g. by `make` and to the process group by `timeout`), not a second one that forces.
REPEAT_WINDOW_S = 0.5


async def wait_healthy(url: str, timeout_s: float) -> bool:
    """Poll the gateway's /health until it answers 200 (over HTTPS, without checking the
    certificate: as for the readiness probes, nothing secret is sent)."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0, verify=False) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return True
            await asyncio.sleep(0.2)
    return False


async def announce(plan: Plan, timeout_s: float) -> None:
    """Say where to point clients once the gateway is healthy."""
    if await wait_healthy(f"{plan.gateway_url}/health", timeout_s):
        print(
            f"llamagrid is ready: point an OpenAI client at {plan.gateway_url}/v1 "
            f"(models: {', '.join(plan.models)})",
            flush=True,
        )
    else:
        log.error("the gateway was not healthy within %.0f s", timeout_s)


async def shutdown(children: list[Child], timeout_s: float, force: asyncio.Event) -> bool:
    """SIGTERM every child at once; SIGKILL those still running after timeout_s (or on force).

    Returns whether every child exited by itself.
    """
    for child in children:
        child.terminate()
    waiting = asyncio.ensure_future(asyncio.gather(*(c.wait() for c in children)))
    forced = asyncio.ensure_future(force.wait())
    either: list[asyncio.Future[Any]] = [waiting, forced]
    done, _ = await asyncio.wait(either, timeout=timeout_s, return_when="FIRST_COMPLETED")
    forced.cancel()
    if waiting in done:
        return True
    stragglers = [c for c in children if c.running]
    for child in stragglers:
        log.error("%s is still running: SIGKILL", child.spec.name)
        child.kill()
    await waiting
    return not stragglers


async def supervise(plan: Plan, startup_timeout_s: float) -> int:
    """Run the plan until SIGTERM/SIGINT (or a child is given up on); the exit status."""
    stop, force = asyncio.Event(), asyncio.Event()
    given_up: list[Child] = []

    def give_up(child: Child) -> None:
        given_up.append(child)
        lines = "\n".join(f"    {line}" for line in child.tail) or "    (no output)"
        log.error("the last output of %s:\n%s", child.spec.name, lines)
        stop.set()

    children = [Child(spec, plan.restart, give_up) for spec in plan.processes]
    loop = asyncio.get_running_loop()

    stopping_since: list[float] = []

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("%s: stopping every child", sig.name)
            stopping_since.append(loop.time())
            stop.set()
        elif stopping_since and loop.time() - stopping_since[0] < REPEAT_WINDOW_S:
            log.info("%s again at once: the same request to stop, still draining", sig.name)
        else:
            log.warning("%s again: killing every child now", sig.name)
            force.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    tasks = [asyncio.create_task(c.run()) for c in children]
    ready = asyncio.create_task(announce(plan, startup_timeout_s))
    await stop.wait()
    ready.cancel()
    grace = max(spec.drain_grace_s for spec in plan.processes) + SHUTDOWN_MARGIN_S
    clean = await shutdown(children, grace, force)
    await asyncio.gather(*tasks, return_exceptions=True)
    for child in children:
        if child.proc is not None and child.proc.returncode is not None:
            log.info("%s stopped (%s)", child.spec.name, describe_exit(child.proc.returncode))
    if given_up:
        names = ", ".join(c.spec.name for c in given_up)
        log.error("gave up on %s: it never became ready (its last output is above)", names)
    return 0 if clean and not given_up else 1


def build_plan(settings: ServeSettings) -> Plan:
    """The plan for these settings (FleetConfigError: a bad config file or bad flags;
    ExposureError: a bind that would expose a process, or a bad key file)."""
    if not settings.config:
        return single_model_plan(settings)
    clash = sorted(settings.model_fields_set & set(SINGLE_MODEL_FIELDS))
    if clash:
        flags = ", ".join("--" + name.replace("_", "-") for name in clash)
        raise FleetConfigError(
            settings.config, [f"{flags}: single-model flags; with --config, set them in the file"]
        )
    config = load_fleet_config(settings.config)
    return fleet_plan(config, settings, cores=len(os.sched_getaffinity(0)))


def parse(argv: list[str]) -> ServeSettings:
    """The settings from flags and LLAMAGRID_SERVE_*; exits with one line per bad setting (the
    value is never shown: it may be a key)."""
    try:
        return CliApp.run(ServeSettings, cli_args=argv)
    except ValidationError as error:
        lines = [
            f"  --{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            for e in error.errors()
        ]
        sys.exit("llamagrid serve: invalid settings:\n" + "\n".join(lines))


def compat_argv(argv: list[str], dialect: Dialect, environ: Mapping[str, str]) -> Translation:
    """Serve's flags for an argv in ``dialect``.

    `llamagrid llama-cpp-python` reads llama-cpp-python's flags and environment variables.
    `llamagrid serve` does too when it is started the way llama-cpp-python's server is: with one
    of its underscore flags (``--n_ctx``), or with ``MODEL`` or ``CONFIG_FILE`` (the variables
    that server cannot start without) set and no flags of its own; it then keeps that server's
    defaults. Otherwise `llamagrid serve` and `llamagrid llama-server` read llama-server's flags
    and ``LLAMA_ARG_*`` variables besides serve's own, and `llamagrid llama-server` keeps
    llama-server's default of one slot."""
    if dialect == "llama-cpp-python" or (
        dialect == "serve" and llama_cpp_python_flags.looks_like(argv, environ)
    ):
        return llama_cpp_python_flags.translate(argv, environ)
    warnings: list[str] = []
    problems: list[str] = []
    from_env = llama_server_env.env_flags(environ, argv, warnings, problems)
    out = llama_server_flags.translate([*from_env, *argv])
    out.warnings[:0], out.problems[:0] = warnings, problems
    if dialect == "llama-server" and not ({"--parallel", "--config"} & {*out.argv, *out.given}):
        out.argv += ["--parallel", "1"]
    return out


def main(argv: list[str] | None = None, dialect: Dialect = "serve") -> None:
    """Run until interrupted; exit with supervise()'s status."""
    translation = compat_argv(sys.argv[1:] if argv is None else argv, dialect, os.environ)
    if translation.problems:
        lines = "\n".join(f"  {problem}" for problem in translation.problems)
        sys.exit(f"llamagrid {dialect}: flags llamagrid cannot honour:\n{lines}")
    settings = parse(translation.argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s serve: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per readiness probe
    for warning in translation.warnings:
        log.warning("%s", warning)
    try:
        plan = build_plan(settings)
    except FleetConfigError as exc:
        sys.exit(f"llamagrid serve: {exc}")
    except ExposureError as exc:
        sys.exit("\n".join(f"llamagrid serve: {problem}" for problem in exc.problems))
    if settings.print_plan:
        print(json.dumps(plan.to_json(), indent=2))
        return
    for warning in plan.warnings:
        log.warning("config: %s", warning)
    sys.exit(asyncio.run(supervise(plan, settings.startup_timeout_s)))
