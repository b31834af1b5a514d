"""Who can reach what `llamagrid serve` starts, checked before anything starts.

- **Keys.** Serve's keys (--api-key, LLAMAGRID_SERVE_API_KEY) reach the gateway through its
  environment, as LLAMAGRID_GATEWAY_API_KEY, never through its command line: every user can
  read /proc/<pid>/cmdline, only the same user (and root) /proc/<pid>/environ. A key file is
  passed by path (--api-key-file), after it has been read here once, so that a bad file fails
  now rather than after a series of restarts.
- **Binds.** The gateway may listen on a non-loopback address only with a key (serve's, or the
  fleet file's gateway.api_key / api_key_file) or --allow-insecure-bind (serve's, or
  gateway.allow_insecure_bind). Workers have no authentication: a non-loopback worker host
  needs serve's --allow-insecure-bind or supervisor.allow_insecure_bind.
- **Environment.** Each child gets the supervisor's environment less serve's own settings
  (LLAMAGRID_SERVE_*, keys among them), plus what the plan sets, plus LLAMAGRID_PARENT_PID
  (fleet/parent_death.py: it exits when the supervisor dies). A worker never gets the
  gateway's key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from llamagrid.fleet.parent_death import PARENT_PID_ENV
from llamagrid.gateway.keys import ApiKeyError, gateway_bind_problem, is_loopback, read_key_file
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.supervisor.settings import ServeSettings

#: The gateway's keys, in its environment (GatewaySettings.api_key, env prefix included).
GATEWAY_KEY_ENV = "LLAMAGRID_GATEWAY_API_KEY"
#: Serve's own settings: not passed on to the children.
SERVE_ENV_PREFIX = str(ServeSettings.model_config.get("env_prefix") or "LLAMAGRID_SERVE_")


class ExposureError(ValueError):
    """A plan that would expose a process, or a key file that cannot be used."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class GatewayAccess:
    """What the plan adds to the gateway's process for its keys."""

    env: dict[str, str]
    args: tuple[str, ...]


def gateway_access(
    serve: ServeSettings,
    host: str,
    worker_host: str,
    section: GatewaySettings | None = None,
    allow_workers: bool = False,
) -> GatewayAccess:
    """The gateway's key environment and flags; ExposureError for an unsafe plan.

    ``section``: a fleet file's gateway section (the gateway reads it itself);
    ``allow_workers``: the fleet file's supervisor.allow_insecure_bind.
    """
    problems: list[str] = []
    keys = [key.get_secret_value() for key in serve.api_key]
    files = [serve.api_key_file, section.api_key_file if section else ""]
    for path in filter(None, files):
        try:
            read_key_file(path)
        except ApiKeyError as error:
            problems.append(str(error))
    protected = bool(keys or any(files) or (section and section.api_key))
    allowed = serve.allow_insecure_bind or bool(section and section.allow_insecure_bind)
    problem = gateway_bind_problem(host, protected, allowed)
    if problem:
        problems.append(problem)
    if not (serve.allow_insecure_bind or allow_workers or is_loopback(worker_host)):
        problems.append(
            f"refusing to let workers listen on {worker_host or 'every address'}: they have "
            "no authentication, so anyone who can reach them could use the models. Keep the "
            "worker host on 127.0.0.1, or pass --allow-insecure-bind (or set "
            "supervisor.allow_insecure_bind) if that is what you mean"
        )
    if problems:
        raise ExposureError(problems)
    args: list[str] = []
    if serve.api_key_file:
        args += ["--api-key-file", str(Path(serve.api_key_file).resolve())]
    if serve.allow_insecure_bind:
        args.append("--allow-insecure-bind")
    return GatewayAccess({GATEWAY_KEY_ENV: ",".join(keys)} if keys else {}, tuple(args))


def child_environment(
    role: str, planned: Mapping[str, str], parent: Mapping[str, str], parent_pid: int
) -> dict[str, str]:
    """The environment a child starts with (see the module docstring)."""
    env = {k: v for k, v in parent.items() if not k.startswith(SERVE_ENV_PREFIX)}
    if role != "gateway":
        env.pop(GATEWAY_KEY_ENV, None)
    env.update(planned)
    env[PARENT_PID_ENV] = str(parent_pid)
    return env
