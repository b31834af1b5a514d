"""What `llamagrid serve` runs: every process's argv and environment, computed up front.

The plan is pure data (``--print-plan`` prints it): one worker per replica, in model order, and
the gateway pointed at all of them. Rules (README, "Fleet config"):

- Replica i of the fleet listens on ``base_port + i`` (and ``metrics_base_port + i``), and is
  named ``<alias>-<index within its model>``.
- Every worker gets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (GPU indices mean what ``nvidia-smi``
  shows). A pinned replica gets ``CUDA_VISIBLE_DEVICES`` = its GPUs; an unpinned one of a model
  with ``n_gpu_layers: 0`` gets ``CUDA_VISIBLE_DEVICES=""`` (a CUDA build sees no GPU and takes
  no GPU memory); an unpinned one that offloads layers inherits the supervisor's GPUs.
- Threads, for models that leave ``n_threads`` at 0: a GPU replica (n_gpu_layers != 0) gets
  ``GPU_REPLICA_THREADS``; CPU replicas share the cores left after explicit n_threads and GPU
  replicas, evenly, at least one each.
- Keys and binds (supervisor/access.py): the gateway's keys go into its environment, never its
  argv; a plan that would expose the gateway or the workers is refused (ExposureError).
- Worker TLS and token (supervisor/access.py): paths reach the workers and the gateway through
  their environment; the supervisor probes TLS workers with ``ProcessSpec.tls``.
- Gateway HTTPS (the fleet file's gateway.tls_cert and tls_key): the gateway reads the paths
  from the file itself; the plan marks it ``https`` so that its URL and probes use HTTPS.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from llamagrid.fleet.config import FleetConfig, ModelEntry
from llamagrid.fleet.problems import FleetConfigError
from llamagrid.supervisor.access import GATEWAY_KEY_ENV, DialTls, gateway_access, worker_link
from llamagrid.supervisor.settings import ServeSettings

#: Threads of a GPU replica that leaves n_threads at 0: the CPU side of a mostly offloaded model.
GPU_REPLICA_THREADS = 2
#: Environment every child gets: its log lines reach the supervisor as they are written.
BASE_ENV = {"PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class ProcessSpec:
    """One child process: how to start it and where it answers once ready."""

    name: str
    role: Literal["worker", "gateway"]
    argv: tuple[str, ...]
    env: dict[str, str]  # set on top of the supervisor's environment
    address: str  # HOST:PORT the supervisor dials to see it ready
    drain_grace_s: float
    model: str = ""
    gpus: tuple[str, ...] = ()
    #: How the supervisor dials a TLS worker to probe it (None: plaintext).
    tls: DialTls | None = None
    #: Whether the process (the gateway) serves HTTPS: its readiness probe speaks it.
    https: bool = False


@dataclass(frozen=True)
class RestartPolicy:
    """Backoff and give-up rules for crashed children."""

    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_run_s: float = 60.0
    max_startup_failures: int = 5


@dataclass(frozen=True)
class Plan:
    """Every process of one `llamagrid serve`, and how to supervise them."""

    processes: tuple[ProcessSpec, ...]
    gateway_url: str
    models: tuple[str, ...]
    restart: RestartPolicy
    warnings: tuple[str, ...] = ()
    config: str = ""
    format: str = ""
    cores: int = 0  # what the thread split was computed from

    def to_json(self) -> dict[str, Any]:
        """The plan as printed by ``--print-plan`` (keys masked, wherever they are)."""
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        for proc in out["processes"]:
            argv = proc["argv"]
            proc["argv"] = [
                "***" if i and argv[i - 1] == "--api-key" else a for i, a in enumerate(argv)
            ]
            if GATEWAY_KEY_ENV in proc["env"]:
                proc["env"][GATEWAY_KEY_ENV] = "***"
        return out


def dial_host(host: str) -> str:
    """The address to dial a server bound to ``host`` (a wildcard means this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def thread_shares(models: tuple[ModelEntry, ...], cores: int) -> tuple[dict[str, int], list[str]]:
    """``--n-threads`` per alias for models that leave n_threads at 0, plus warnings."""
    auto = [m for m in models if m.settings.n_threads == 0]
    gpu = [m for m in auto if m.settings.n_gpu_layers != 0]
    cpu = [m for m in auto if m.settings.n_gpu_layers == 0]
    shares = {m.alias: min(GPU_REPLICA_THREADS, cores) for m in gpu}
    explicit = sum(m.settings.n_threads * len(m.replicas) for m in models)
    left = cores - explicit - sum(shares[m.alias] * len(m.replicas) for m in gpu)
    n_cpu = sum(len(m.replicas) for m in cpu)
    warnings = []
    if n_cpu and left < n_cpu:
        warnings.append(
            f"{n_cpu} CPU replica(s) leave n_threads at 0 but only {max(left, 0)} of {cores} "
            "cores are left: each gets 1 thread (the cores are oversubscribed)"
        )
    shares.update({m.alias: max(1, left // n_cpu) for m in cpu})
    return shares, warnings


def fleet_plan(
    config: FleetConfig,
    serve: ServeSettings,
    cores: int,
    python: str = sys.executable,
    environ: Mapping[str, str] | None = None,
) -> Plan:
    """The processes for a fleet config; explicit serve flags override the file. ``environ``:
    serve's environment (default: this process's), for LLAMAGRID_WORKER_TOKEN."""
    sv, explicit = config.supervisor, serve.model_fields_set
    host = serve.host if "host" in explicit else config.gateway.host
    port = serve.port if "port" in explicit else config.gateway.port
    _check_ports(config, port, sum(len(m.replicas) for m in config.models))
    shares, warnings = thread_shares(config.models, cores)
    path = str(config.source.resolve())
    tail = ("--log-level", serve.log_level) if "log_level" in explicit else ()
    link = worker_link(
        sv.worker_tls, sv.worker_token_file, os.environ if environ is None else environ
    )
    workers: list[ProcessSpec] = []
    for entry in config.models:
        for index in range(len(entry.replicas)):
            spec = _worker(config, entry, index, len(workers), shares.get(entry.alias))
            env = {**spec.env, **link.worker_env}
            workers.append(replace(spec, argv=(python, *spec.argv, *tail), env=env, tls=link.dial))
    args = ["--config", path, "--host", host, "--port", str(port)]
    args += [a for w in workers for a in ("--worker", w.address)]
    if "console" in explicit:
        args.append("--console" if serve.console else "--no-console")
    grace = config.gateway.drain_grace_s
    if "drain_grace_s" not in config.gateway.model_fields_set:
        grace = sv.drain_grace_s
        args += ["--drain-grace-s", str(grace)]
    access = gateway_access(
        serve, host, sv.worker_host, config.gateway, sv.allow_insecure_bind, link
    )
    gateway = ProcessSpec(
        name="gateway",
        role="gateway",
        argv=(python, "-m", "llamagrid.gateway", *args, *access.args, *tail),
        env={**BASE_ENV, **access.env, **link.gateway_env},
        address=f"{dial_host(host)}:{port}",
        drain_grace_s=grace,
        https=bool(config.gateway.tls_cert),
    )
    initial = serve.restart_backoff_s if "restart_backoff_s" in explicit else sv.restart_backoff_s
    restart = RestartPolicy(initial, sv.max_backoff_s, sv.healthy_run_s, sv.max_startup_failures)
    return Plan(
        processes=(*workers, gateway),
        gateway_url=f"{'https' if gateway.https else 'http'}://{gateway.address}",
        models=tuple(m.alias for m in config.models),
        restart=restart,
        warnings=(*config.warnings, *warnings),
        config=path,
        format=config.format,
        cores=cores,
    )


def _worker(
    config: FleetConfig, entry: ModelEntry, index: int, i: int, threads: int | None
) -> ProcessSpec:
    """Replica ``index`` of ``entry``, the ``i``-th of the fleet (argv without the python)."""
    sv, settings = config.supervisor, entry.settings
    name, port = f"{entry.alias}-{index}", sv.base_port + i
    args = ["-m", "llamagrid.worker", "--config", str(config.source.resolve())]
    args += ["--config-model", entry.alias, "--host", sv.worker_host, "--port", str(port)]
    args += ["--name", name]
    if sv.metrics_base_port:
        args += ["--metrics-port", str(sv.metrics_base_port + i)]
    if threads is not None:
        args += ["--n-threads", str(threads)]
    grace = settings.drain_grace_s
    if "drain_grace_s" not in settings.model_fields_set:
        grace = sv.drain_grace_s
        args += ["--drain-grace-s", str(grace)]
    env = {**BASE_ENV, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    gpus = tuple(str(g) for g in entry.replicas[index].gpus)
    if gpus or settings.n_gpu_layers == 0:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return ProcessSpec(
        name=name,
        role="worker",
        argv=tuple(args),
        env=env,
        address=f"{dial_host(sv.worker_host)}:{port}",
        drain_grace_s=grace,
        model=entry.alias,
        gpus=gpus,
    )


def _check_ports(config: FleetConfig, gateway_port: int, replicas: int) -> None:
    """Every port in range and used once (the gateway, workers and /metrics all listen here)."""
    sv = config.supervisor
    problems: list[str] = []
    if gateway_port == 0:
        problems.append("gateway.port: `llamagrid serve` needs a fixed port, not 0")
    ranges = {"supervisor.base_port": sv.base_port}
    if sv.metrics_base_port:
        ranges["supervisor.metrics_base_port"] = sv.metrics_base_port
    for name, base in ranges.items():
        if base + replicas - 1 > 65535:
            problems.append(f"{name}: {replicas} replicas from {base} go past port 65535")
        if base <= gateway_port < base + replicas:
            problems.append(
                f"{name}: replica ports {base}-{base + replicas - 1} include the "
                f"gateway's port {gateway_port}"
            )
    if len(ranges) == 2 and abs(sv.base_port - sv.metrics_base_port) < replicas:
        problems.append("supervisor.metrics_base_port: the /metrics ports overlap the gRPC ports")
    if problems:
        raise FleetConfigError(str(config.source), problems)


def single_model_plan(
    serve: ServeSettings, python: str = sys.executable, environ: Mapping[str, str] | None = None
) -> Plan:
    """Without --config: one worker (the serve flags) and the gateway; the environment as is
    (a LLAMAGRID_WORKER_TOKEN in it reaches both; worker TLS needs a fleet config)."""
    link = worker_link(None, "", os.environ if environ is None else environ)
    access = gateway_access(serve, serve.host, serve.worker_host, link=link)
    worker = ProcessSpec(
        name="worker",
        role="worker",
        argv=(python, "-m", "llamagrid.worker", *serve.worker_args()),
        env=dict(BASE_ENV),
        address=f"{dial_host(serve.worker_host)}:{serve.worker_port}",
        drain_grace_s=30.0,
        model=serve.alias or "smollm2",
    )
    gateway = ProcessSpec(
        name="gateway",
        role="gateway",
        argv=(python, "-m", "llamagrid.gateway", *serve.gateway_args(), *access.args),
        env={**BASE_ENV, **access.env},
        address=f"{dial_host(serve.host)}:{serve.port}",
        drain_grace_s=30.0,
    )
    return Plan(
        processes=(worker, gateway),
        gateway_url=f"http://{gateway.address}",
        models=(worker.model,),
        restart=RestartPolicy(initial_s=serve.restart_backoff_s),
    )
