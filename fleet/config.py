"""The fleet config: one YAML/JSON file for `llamagrid serve`, the workers and the gateway.

Shape (README, "Fleet config"): a ``gateway`` section (GatewaySettings fields), a ``supervisor``
section (read only by `llamagrid serve`) and a ``models`` list whose entries are an ``alias``, an
optional ``policy``, ``replicas`` (a count or a list of GPU groups) and any WorkerSettings field,
flat. Every section is validated by the settings class of the process that uses it (without
reading the environment), and every problem is reported at once with its location. A
llama-cpp-python server config file is accepted too (fleet/llama_cpp_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llamagrid.fleet import llama_cpp_config
from llamagrid.fleet.documents import read_document
from llamagrid.fleet.problems import FleetConfigError, Problems
from llamagrid.fleet.replicas import Replica, check_gpu_sharing, check_placement, parse_replicas
from llamagrid.gateway.settings import GatewaySettings, PolicyName
from llamagrid.worker.settings import WorkerSettings

__all__ = [
    "FleetConfig",
    "FleetConfigError",
    "ModelEntry",
    "Replica",
    "SupervisorSection",
    "WorkerTlsSection",
    "load_fleet_config",
    "parse_fleet_config",
]

TOP_KEYS = ("gateway", "supervisor", "models")
#: Model entry keys that are not WorkerSettings fields.
ENTRY_KEYS = ("alias", "policy", "replicas")
#: WorkerSettings fields `llamagrid serve` sets per replica: refused in a model entry, and why.
SUPERVISOR_OWNED = {
    "host": "set by `llamagrid serve` from supervisor.worker_host",
    "port": "set by `llamagrid serve`: the i-th replica listens on supervisor.base_port + i",
    "metrics_port": "set by `llamagrid serve` from supervisor.metrics_base_port",
    "name": "set by `llamagrid serve`: each replica is named <alias>-<index>",
    "port_file": "not a fleet setting (a worker flag for scripts and tests)",
    "config": "not a fleet setting: this file is the config",
    "config_model": "not a fleet setting: each model entry is one config model",
    "health_port": "not a fleet setting (a plaintext health port for Kubernetes probes)",
    "tls_cert": "set by `llamagrid serve` from supervisor.worker_tls",
    "tls_key": "set by `llamagrid serve` from supervisor.worker_tls",
    "tls_client_ca": "set by `llamagrid serve` from supervisor.worker_tls",
    "token_file": "set by `llamagrid serve` from supervisor.worker_token_file",
}
#: GatewaySettings fields refused in the gateway section, and why.
GATEWAY_REFUSED = {
    "config": "not a fleet setting: this file is the config",
    "model_policies": "set `policy` on each model entry instead",
    **dict.fromkeys(
        (
            "worker_tls",
            "worker_ca",
            "worker_client_cert",
            "worker_client_key",
            "worker_tls_server_name",
        ),
        "set by `llamagrid serve` from supervisor.worker_tls",
    ),
    "worker_token_file": "set by `llamagrid serve` from supervisor.worker_token_file",
}


class _FileOnly(BaseSettings):
    """A settings class whose only source is the values given (never the environment)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values in the file."""
        return (init_settings,)


class _WorkerEntry(_FileOnly, WorkerSettings):
    """A model entry's flat worker settings: WorkerSettings' own fields and rules."""

    model_config = SettingsConfigDict(extra="forbid")


class _GatewaySection(_FileOnly, GatewaySettings):
    """The gateway section: GatewaySettings' own fields and rules."""

    model_config = SettingsConfigDict(extra="forbid")


class WorkerTlsSection(BaseModel):
    """TLS between the gateway (and the supervisor's probes) and every worker of the fleet.

    `llamagrid serve` hands these paths to the workers and the gateway through their
    environment, never their command lines (README, "TLS and mTLS").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cert: str = Field(min_length=1, description="The workers' certificate chain (PEM file).")
    key: str = Field(min_length=1, description="The private key of `cert` (PEM file).")
    ca: str = Field(
        "",
        description="CA certificates (PEM file) that verify the workers' certificate, for the "
        "gateway and the supervisor; empty: the system's roots.",
    )
    client_ca: str = Field(
        "",
        description="Workers require a client certificate signed by these CAs (mTLS); then "
        "`client_cert` and `client_key` are the gateway's and the supervisor's.",
    )
    client_cert: str = Field("", description="Client certificate chain (PEM file), for mTLS.")
    client_key: str = Field("", description="The private key of `client_cert` (PEM file).")
    server_name: str = Field(
        "",
        description="Name to verify in the workers' certificate instead of worker_host.",
    )

    @model_validator(mode="after")
    def _mtls_together(self) -> WorkerTlsSection:
        if not (bool(self.client_ca) == bool(self.client_cert) == bool(self.client_key)):
            raise ValueError("client_ca, client_cert and client_key go together (mTLS)")
        return self


class SupervisorSection(BaseModel):
    """How `llamagrid serve` places, restarts and stops its processes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    worker_host: str = Field("127.0.0.1", description="Address every worker binds.")
    base_port: int = Field(
        50051, ge=1, le=65535, description="The i-th replica of the fleet listens on base + i."
    )
    metrics_base_port: int = Field(
        0, ge=0, le=65535, description="Replica i's /metrics port is base + i; 0: no /metrics."
    )
    restart_backoff_s: float = Field(1.0, gt=0, description="First delay before a restart.")
    max_backoff_s: float = Field(30.0, gt=0, description="Longest delay before a restart.")
    drain_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long the processes may drain before SIGKILL."
    )
    healthy_run_s: float = Field(
        60.0, gt=0, description="A run this long (after becoming ready) resets the backoff."
    )
    max_startup_failures: int = Field(
        5, ge=1, description="Give up (exit 1) when a process fails this often before ready."
    )
    allow_insecure_bind: bool = Field(
        False,
        description="Let workers listen on a non-loopback worker_host without client "
        "certificates (worker_tls.client_ca) or a token; refused otherwise.",
    )
    worker_tls: WorkerTlsSection | None = Field(
        None, description="TLS (and mTLS) between the gateway and the workers; none: plaintext."
    )
    worker_token_file: str = Field(
        "",
        description="File holding the token every worker requires on its calls (the gateway "
        "sends it); or LLAMAGRID_WORKER_TOKEN in serve's environment.",
    )

    @model_validator(mode="after")
    def _backoff_order(self) -> SupervisorSection:
        if self.max_backoff_s < self.restart_backoff_s:
            raise ValueError("max_backoff_s must be at least restart_backoff_s")
        return self


@dataclass(frozen=True)
class ModelEntry:
    """One model of the fleet: its alias, routing policy, replicas and worker settings."""

    alias: str
    policy: PolicyName | None
    replicas: tuple[Replica, ...]
    settings: WorkerSettings

    def worker_settings(self) -> dict[str, Any]:
        """The WorkerSettings fields this entry sets (alias included), for a worker's defaults."""
        values = self.settings.model_dump(include=self.settings.model_fields_set)
        return {**values, "alias": self.alias}


@dataclass(frozen=True)
class FleetConfig:
    """A validated fleet config."""

    source: Path
    format: Literal["llamagrid", "llama-cpp-python"]
    gateway: GatewaySettings
    supervisor: SupervisorSection
    models: tuple[ModelEntry, ...]
    warnings: tuple[str, ...] = ()

    def gateway_settings(self) -> dict[str, Any]:
        """The gateway section's fields (only those set) plus ``model_policies`` from the models."""
        gw = self.gateway
        values = gw.model_dump(include=gw.model_fields_set)
        if "api_key" in values:  # plain strings, as a GatewaySettings input
            values["api_key"] = [key.get_secret_value() for key in gw.api_key]
        policies = {m.alias: m.policy for m in self.models if m.policy}
        if policies:
            values["model_policies"] = policies
        return values

    def model(self, alias: str | None) -> ModelEntry:
        """The entry named ``alias``; None: the only entry (an error when there are several)."""
        aliases = [m.alias for m in self.models]
        if alias is None:
            if len(self.models) == 1:
                return self.models[0]
            raise FleetConfigError(
                str(self.source),
                [f"models: several ({', '.join(aliases)}); pick one (--config-model)"],
            )
        for entry in self.models:
            if entry.alias == alias:
                return entry
        raise FleetConfigError(
            str(self.source), [f"models: no model '{alias}' (aliases: {', '.join(aliases)})"]
        )


def load_fleet_config(path: str | Path) -> FleetConfig:
    """Read, convert (llama-cpp-python format) and validate a fleet config file."""
    return parse_fleet_config(read_document(Path(path)), Path(path))


def parse_fleet_config(raw: Any, source: Path) -> FleetConfig:
    """Validate a parsed document; FleetConfigError lists every problem at once."""
    problems = Problems()
    fmt: Literal["llamagrid", "llama-cpp-python"] = "llamagrid"
    if llama_cpp_config.detect(raw, problems):
        fmt = "llama-cpp-python"
        raw = llama_cpp_config.convert(raw, problems)
    problems.raise_if_any(str(source))
    if not isinstance(raw, dict):
        problems.error([], "expected a mapping with a models list (and gateway, supervisor)")
        problems.raise_if_any(str(source))
    for key in raw:
        if key not in TOP_KEYS:
            problems.unknown_key([], str(key), TOP_KEYS, "section")
    gateway = _section(_GatewaySection, raw.get("gateway"), "gateway", GATEWAY_REFUSED, problems)
    supervisor = _section(SupervisorSection, raw.get("supervisor"), "supervisor", {}, problems)
    models = _models(raw.get("models"), problems)
    problems.raise_if_any(str(source))
    assert isinstance(gateway, GatewaySettings) and isinstance(supervisor, SupervisorSection)
    return FleetConfig(source, fmt, gateway, supervisor, tuple(models), tuple(problems.warnings))


def _section(
    cls: type[BaseModel], value: Any, name: str, refused: dict[str, str], problems: Problems
) -> BaseModel | None:
    """Validate one section (absent or empty: every default)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        problems.error([name], f"expected a mapping (got {value!r})")
        return None
    for key in refused.keys() & value.keys():
        problems.error([name, key], refused[key])
    values = {k: v for k, v in value.items() if k not in refused}
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        problems.pydantic([name], exc, cls.model_fields.keys() - refused.keys())
        return None


def _models(value: Any, problems: Problems) -> list[ModelEntry]:
    """Every entry of the models list, then the checks across entries."""
    if not isinstance(value, list) or not value:
        what = "missing" if value is None else f"got {value!r}"
        problems.error(["models"], f"expected a non-empty list of model entries ({what})")
        return []
    entries: dict[int, ModelEntry] = {}
    first: dict[str, int] = {}
    for i, item in enumerate(value):
        entry = _entry(item, ["models", i], problems)
        if entry is not None:
            entries[i] = entry
        alias = item.get("alias") if isinstance(item, dict) else None
        if isinstance(alias, str) and alias in first:
            problems.error(
                ["models", i, "alias"], f"'{alias}' is already the alias of models[{first[alias]}]"
            )
        elif isinstance(alias, str):
            first[alias] = i
    check_gpu_sharing([(e.alias, e.replicas) for e in entries.values()], problems)
    return list(entries.values())


class _EntryHead(BaseModel):
    """The keys of a model entry that are not worker settings."""

    model_config = ConfigDict(extra="ignore")

    alias: str = Field(description="The model name clients send.")
    policy: PolicyName | None = Field(None, description="Load-balancing policy of this model.")

    @field_validator("alias")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("an alias is a non-empty name without spaces")
        return value


def _entry(item: Any, loc: list[str | int], problems: Problems) -> ModelEntry | None:
    """One model entry: head keys, replicas, refused keys, then the flat worker settings."""
    if not isinstance(item, dict):
        problems.error(loc, f"expected a mapping with at least an alias (got {item!r})")
        return None
    known = (set(ENTRY_KEYS) | WorkerSettings.model_fields.keys()) - SUPERVISOR_OWNED.keys()
    errors_before = len(problems.errors)
    head: _EntryHead | None = None
    try:
        head = _EntryHead.model_validate(item)
    except ValidationError as exc:
        problems.pydantic(loc, exc, known)
    replicas = parse_replicas(item.get("replicas"), [*loc, "replicas"], problems)
    for key in SUPERVISOR_OWNED.keys() & item.keys():
        problems.error([*loc, key], SUPERVISOR_OWNED[key])
    flat = {k: v for k, v in item.items() if k not in (*ENTRY_KEYS, *SUPERVISOR_OWNED)}
    settings: WorkerSettings | None = None
    try:
        settings = _WorkerEntry.model_validate(flat)
    except ValidationError as exc:
        problems.pydantic(loc, exc, known)
    if head is None or settings is None or len(problems.errors) > errors_before:
        return None
    check_placement(settings, replicas, loc, problems)
    return ModelEntry(head.alias, head.policy, replicas, settings)
