"""Who can reach what `llamagrid serve` starts, checked before anything starts.

- **Keys.** Serve's keys (--api-key, LLAMAGRID_SERVE_API_KEY) reach the gateway through its
  environment, as LLAMAGRID_GATEWAY_API_KEY, never through its command line: every user can
  read /proc/<pid>/cmdline, only the same user (and root) /proc/<pid>/environ. A key file is
  passed by path (--api-key-file), after it has been read here once, so that a bad file fails
  now rather than after a series of restarts.
- **Binds.** The gateway may listen on a non-loopback address only with a key (serve's, or the
  fleet file's gateway.api_key / api_key_file) or --allow-insecure-bind (serve's, or
  gateway.allow_insecure_bind). A non-loopback worker host needs workers that authenticate
  their callers (supervisor.worker_tls.client_ca, or a worker token), or serve's
  --allow-insecure-bind or supervisor.allow_insecure_bind.
- **Worker TLS and token** (supervisor.worker_tls, supervisor.worker_token_file): every file is
  checked here first. Workers get their certificate, key and client CA as LLAMAGRID_WORKER_TLS_*
  variables and the token file as LLAMAGRID_WORKER_TOKEN_FILE; the gateway gets the CA, its
  client certificate and key, the server name and the token file as LLAMAGRID_GATEWAY_WORKER_*
  variables; paths only, never on a command line. A token in serve's own environment
  (LLAMAGRID_WORKER_TOKEN) reaches both as it is. The supervisor probes workers' health with
  the gateway's TLS settings (health needs no token).
- **Gateway HTTPS** (the fleet file's gateway.tls_cert and tls_key): the pair is checked here
  too; the gateway reads the paths from the file, so they are on no command line either.
- **Environment.** Each child gets the supervisor's environment less serve's own settings
  (LLAMAGRID_SERVE_*, keys among them), plus what the plan sets, plus LLAMAGRID_PARENT_PID
  (fleet/parent_death.py: it exits when the supervisor dies). A worker never gets the
  gateway's key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llamagrid.fleet.config import WorkerTlsSection
from llamagrid.fleet.parent_death import PARENT_PID_ENV
from llamagrid.gateway.keys import ApiKeyError, gateway_bind_problem, is_loopback, read_key_file
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.security import TOKEN_ENV, SecurityError, check_ca, check_key_pair, load_token
from llamagrid.supervisor.settings import ServeSettings
from llamagrid.worker.settings import WorkerSettings

#: The gateway's keys, in its environment (GatewaySettings.api_key, env prefix included).
GATEWAY_KEY_ENV = "LLAMAGRID_GATEWAY_API_KEY"
#: Serve's own settings: not passed on to the children.
SERVE_ENV_PREFIX = str(ServeSettings.model_config.get("env_prefix") or "LLAMAGRID_SERVE_")


class ExposureError(ValueError):
    """A plan that would expose a process, or a key file that cannot be used."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def env_name(settings: type[WorkerSettings] | type[GatewaySettings], name: str) -> str:
    """The environment variable a process's settings read for a field."""
    assert name in settings.model_fields, name
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


@dataclass(frozen=True)
class DialTls:
    """How the supervisor dials TLS workers to probe them (paths; empty: not used)."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""


@dataclass(frozen=True)
class WorkerLink:
    """What the plan adds for TLS and the token between the gateway and the workers."""

    worker_env: dict[str, str] = field(default_factory=dict)
    gateway_env: dict[str, str] = field(default_factory=dict)
    #: None: workers serve plaintext.
    dial: DialTls | None = None
    #: Whether workers refuse callers without a client certificate or the token.
    authenticated: bool = False
    problems: tuple[str, ...] = ()


def worker_link(
    tls: WorkerTlsSection | None, token_file: str, environ: Mapping[str, str]
) -> WorkerLink:
    """The environment of each role for worker TLS and the token, every file checked (the
    problems are reported with the plan's others)."""
    problems: list[str] = []
    try:
        token = load_token(token_file, environ)
    except SecurityError as error:
        problems.append(f"worker token: {error}")
        token = None
    worker_env: dict[str, str] = {}
    gateway_env: dict[str, str] = {}
    if token_file:
        path = str(Path(token_file).resolve())
        worker_env[env_name(WorkerSettings, "token_file")] = path
        gateway_env[env_name(GatewaySettings, "worker_token_file")] = path
    if tls is None:
        return WorkerLink(worker_env, gateway_env, None, token is not None, tuple(problems))
    paths = {
        name: str(Path(value).resolve()) if value else ""
        for name, value in tls.model_dump(exclude={"server_name"}).items()
    }
    checks = [(check_key_pair, paths["cert"], paths["key"])]
    if paths["client_cert"]:
        checks.append((check_key_pair, paths["client_cert"], paths["client_key"]))
    for check, *files in checks:
        try:
            check(*files)
        except SecurityError as error:
            problems.append(f"supervisor.worker_tls: {error}")
    for name in ("ca", "client_ca"):
        if paths[name]:
            try:
                check_ca(paths[name], f"{name} file")
            except SecurityError as error:
                problems.append(f"supervisor.worker_tls: {error}")
    worker_env |= {
        env_name(WorkerSettings, "tls_cert"): paths["cert"],
        env_name(WorkerSettings, "tls_key"): paths["key"],
    }
    gateway_env[env_name(GatewaySettings, "worker_tls")] = "true"
    for setting, value in (
        ("worker_ca", paths["ca"]),
        ("worker_client_cert", paths["client_cert"]),
        ("worker_client_key", paths["client_key"]),
        ("worker_tls_server_name", tls.server_name),
    ):
        if value:
            gateway_env[env_name(GatewaySettings, setting)] = value
    if paths["client_ca"]:
        worker_env[env_name(WorkerSettings, "tls_client_ca")] = paths["client_ca"]
    dial = DialTls(paths["ca"], paths["client_cert"], paths["client_key"], tls.server_name)
    authenticated = bool(paths["client_ca"]) or token is not None
    return WorkerLink(worker_env, gateway_env, dial, authenticated, tuple(problems))


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
    link: WorkerLink | None = None,
) -> GatewayAccess:
    """The gateway's key environment and flags; ExposureError for an unsafe plan.

    ``section``: a fleet file's gateway section (the gateway reads it itself);
    ``allow_workers``: the fleet file's supervisor.allow_insecure_bind; ``link``: worker TLS and
    the token (its problems are reported here too).
    """
    link = link or WorkerLink()
    problems: list[str] = list(link.problems)
    keys = [key.get_secret_value() for key in serve.api_key]
    files = [serve.api_key_file, section.api_key_file if section else ""]
    for path in filter(None, files):
        try:
            read_key_file(path)
        except ApiKeyError as error:
            problems.append(str(error))
    if section and section.tls_cert:  # the gateway's HTTPS: checked now, not after restarts
        try:
            check_key_pair(section.tls_cert, section.tls_key)
        except SecurityError as error:
            problems.append(f"gateway.tls_cert/tls_key: {error}")
    protected = bool(keys or any(files) or (section and section.api_key))
    allowed = serve.allow_insecure_bind or bool(section and section.allow_insecure_bind)
    problem = gateway_bind_problem(host, protected, allowed)
    if problem:
        problems.append(problem)
    allowed_workers = serve.allow_insecure_bind or allow_workers or link.authenticated
    if not (allowed_workers or is_loopback(worker_host)):
        problems.append(
            f"refusing to let workers listen on {worker_host or 'every address'} without "
            "authentication: anyone who can reach them could use the models. Keep the worker "
            "host on 127.0.0.1, require client certificates (supervisor.worker_tls.client_ca) "
            f"or a token (supervisor.worker_token_file, {TOKEN_ENV}), or pass "
            "--allow-insecure-bind (or set supervisor.allow_insecure_bind) if that is what "
            "you mean"
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
