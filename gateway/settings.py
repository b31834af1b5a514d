"""The gateway's one settings object, read from LLAMAGRID_GATEWAY_* variables and CLI flags."""

from __future__ import annotations

import json
import os
import re
import ssl
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llamagrid.gateway.images.addresses import parse_ip
from llamagrid.gateway.keys import check_keys, split_keys

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
#: The load-balancing policies (gateway/policies/), by name.
PolicyName = Literal["round_robin", "least_load", "prefix_affinity", "session_affinity"]
#: Who may read /metrics or the API docs: whoever has an API key (everyone while none is set),
#: everyone, or no one (the routes are gone).
Access = Literal["key", "open", "off"]
#: A host name of --image-fetch-allow-hosts, maybe with a leading '*.' (names under it).
_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
#: What a browser sends as Origin: a scheme, a host (a name, IPv4 or [IPv6]) and maybe a port.
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


class GatewaySettings(BaseSettings):
    """How the gateway listens, which workers it routes to and how long it waits for them."""

    model_config = SettingsConfigDict(
        env_prefix="LLAMAGRID_GATEWAY_",
        cli_kebab_case=True,
        cli_shortcuts={"workers": "worker"},
        cli_prog_name="llamagrid-gateway",
        cli_implicit_flags=True,
        extra="ignore",
        hide_input_in_errors=True,  # an error about a key must not print it
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the HTTP server listens on.")
    workers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="gRPC addresses (HOST:PORT) of the workers; repeat the flag or join with ','.",
    )
    worker_dns: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="NAME:PORT whose DNS addresses are all workers (a Kubernetes headless "
        "Service), re-resolved every --dns-interval-s; repeat the flag or join with ','.",
    )
    dns_interval_s: float = Field(
        10.0, gt=0, description="Seconds between two resolutions of each --worker-dns name."
    )
    config: str = Field(
        "",
        description="Fleet config file (YAML or JSON): its gateway section and per-model policies "
        "supply defaults; flags and environment variables still win.",
    )
    policy: PolicyName = Field(
        "prefix_affinity", description="Default load-balancing policy for every model."
    )
    model_policies: dict[str, PolicyName] = Field(
        default_factory=dict,
        description="Policy per model alias, overriding --policy; JSON, e.g. "
        '\'{"smollm2": "round_robin"}\'.',
    )
    affinity_bound: float = Field(
        1.25,
        ge=1.0,
        description="prefix_affinity: a worker may hold this many times the average load "
        "before a prefix spills over to the next worker on the ring.",
    )
    affinity_prefix_chars: int = Field(
        1024, ge=1, description="prefix_affinity: leading prompt characters that form the key."
    )
    max_retries: int = Field(
        2,
        ge=0,
        description="Retries on another worker for a call that failed before its response "
        "started (transport failure, UNAVAILABLE, full queue).",
    )
    retry_backoff_s: float = Field(
        0.05, ge=0, description="First pause before a retry; doubles, with jitter."
    )
    relay: bool = Field(
        True,
        description="Run Generate calls over one multiplexed Relay stream per worker, which "
        "carries a whole engine step of tokens per message (--no-relay: one gRPC call per "
        "request).",
    )
    session_store: str = Field(
        "memory",
        description="Where the gateway keeps each session's transcript, so that a session "
        "survives the loss of its worker: 'memory' (this gateway alone) or a redis:// URL "
        "(shared by every gateway using it).",
    )
    max_session_records: int = Field(
        100_000,
        ge=1,
        description="Sessions the memory store keeps at most (the least recently written go "
        "first).",
    )
    max_session_image_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Bytes of session images (the images of their transcripts) the memory store "
        "keeps at most (the least recently written sessions go first).",
    )
    breaker_threshold: int = Field(
        3,
        ge=1,
        description="Consecutive transport/UNAVAILABLE/INTERNAL failures that eject a worker.",
    )
    breaker_cooldown_s: float = Field(
        5.0, gt=0, description="Seconds before an ejected worker's health is probed again."
    )
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API key that requests to /v1 must carry as 'Authorization: Bearer <key>'; "
        "repeat the flag or join with ',' for several. A flag shows in `ps`: prefer "
        "LLAMAGRID_GATEWAY_API_KEY or --api-key-file. An empty key is an error.",
    )
    api_key_file: str = Field(
        "",
        description="File of API keys, one per line ('#' comments and blank lines skipped), "
        "accepted besides --api-key. Read at startup.",
    )
    admin_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Admin key of the node API (/nodes/...), sent as 'Authorization: Bearer "
        "<key>'; separate from --api-key (a key may not be both). Prefer "
        "LLAMAGRID_GATEWAY_ADMIN_KEY or --admin-key-file. None: the node API is off (404).",
    )
    admin_key_file: str = Field(
        "",
        description="File of admin keys, one per line, accepted besides --admin-key.",
    )
    max_nodes: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Nodes the node API may add or register at most; one more is a 409.",
    )
    node_missed_heartbeats: int = Field(
        3,
        ge=1,
        le=100,
        description="A registered worker that sends no heartbeat for this many of its "
        "intervals is ejected (its next registration brings it back).",
    )
    node_rate_per_s: float = Field(
        20.0,
        gt=0,
        le=10_000,
        description="Node API calls per second one client address may make (bursts of twice "
        "that); more get a 429.",
    )
    metrics_access: Access = Field(
        "key",
        description="/metrics: 'key' needs an API key when one is set, 'open' never does, "
        "'off' removes the route.",
    )
    docs_access: Access = Field(
        "key",
        description="/docs, /redoc and /openapi.json: 'key', 'open' or 'off', as --metrics-access.",
    )
    allow_insecure_bind: bool = Field(
        False,
        description="Listen on a non-loopback --host without an API key (refused otherwise).",
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of each gRPC call to a worker, in seconds."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; a larger one is a 413, answered "
        "before the body is read (after the API key is checked).",
    )
    # Slow clients (gateway/connections.py): no client holds a connection for as long as it likes.
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a client has to send a request line and its headers, counted from "
        "the connection (or, on a kept-alive one, from the request's first byte); then the "
        "connection is closed, with a 408 if part of a request had arrived.",
    )
    body_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a client has to send a whole request body once its headers are "
        "in; then a 408 and the connection is closed.",
    )
    send_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Seconds a client may go without taking any of a response the gateway is "
        "waiting to send; then the connection is dropped (and its stream cancelled).",
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="Seconds an idle connection is kept open after a response."
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="Open client connections at most; a connection beyond it gets a 503 and is "
        "closed at once, before its request is read.",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Largest request line plus headers, in bytes; a larger one is a 400.",
    )
    # HTTPS (gateway/connections.py, main.py): the certificate clients see.
    tls_cert: str = Field(
        "",
        description="Serve HTTPS with this certificate chain (PEM file; with --tls-key); "
        "empty: plain HTTP.",
    )
    tls_key: str = Field("", description="Private key (unencrypted PEM file) of --tls-cert.")
    health_retry_s: float = Field(
        1.0, gt=0, description="Seconds to wait before re-opening a broken health watch."
    )
    load_interval_s: float = Field(
        1.0, gt=0, description="Seconds between two GetLoad reads of each worker's load."
    )
    worker_keepalive_s: float = Field(
        30.0,
        gt=0,
        description="Seconds between keepalive pings to each worker; a worker whose link is "
        "lost is noticed within this plus --worker-keepalive-timeout-s.",
    )
    worker_keepalive_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a keepalive ping's answer."
    )
    worker_tls: bool = Field(
        False,
        description="Dial workers over TLS (implied by --worker-ca and --worker-client-cert); "
        "without --worker-ca their certificates are checked against the system's roots.",
    )
    worker_ca: str = Field(
        "", description="CA certificates (PEM file) that verify the workers' certificates."
    )
    worker_client_cert: str = Field(
        "",
        description="Client certificate chain (PEM file) shown to workers that require one "
        "(mTLS); with --worker-client-key.",
    )
    worker_client_key: str = Field(
        "", description="Private key (PEM file) of --worker-client-cert."
    )
    worker_tls_server_name: str = Field(
        "",
        description="Name to verify in the workers' certificates instead of the dialled host "
        "(workers found by --worker-dns are dialled by IP address).",
    )
    worker_token_file: str = Field(
        "",
        description="File holding the token sent to workers as 'authorization: Bearer <token>' "
        "on every call. Or set LLAMAGRID_WORKER_TOKEN; there is no flag for the token itself.",
    )
    drain_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish (new get 503)."
    )
    slots_endpoint: bool = Field(
        True,
        description="Serve GET /slots, llama-server's view of every slot (as its --slots, on by "
        "default); --no-slots-endpoint answers it with a 501, as llama-server's --no-slots. "
        "Slot actions (POST /slots/{id}) depend on the workers' --slot-save-path instead.",
    )
    strict_model_names: bool = Field(
        False,
        description="A request's 'model' must name a served model. Off (the default): while the "
        "gateway serves a single model, any name reaches it, as in llama-server and "
        "llama-cpp-python's server (with several models an unknown name is always a 404).",
    )
    sse_keepalive_s: float = Field(
        15.0,
        ge=0,
        le=3600,
        description="While a streamed request waits for a worker's queue or for its prompt to be "
        "prefilled, send an SSE comment line (': keep-alive') after every this many seconds "
        "without an event, so that proxies do not close the idle connection; 0 turns it off.",
    )
    console: bool = Field(
        True,
        description="Serve the console (a chat playground and a live view of the fleet) at / "
        "and its fleet endpoint GET /v1/console/fleet (behind the API key); --no-console "
        "removes them (404).",
    )
    cors_origin: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origin (scheme://host[:port]) whose browser pages may call the API "
        "(CORS); repeat the flag or join with ','. '*' allows every origin and must be given "
        "explicitly. None (the default): no CORS headers.",
    )
    # Images (gateway/images/): inline ones always; fetched or read ones only where allowed.
    max_images: int = Field(
        8, ge=1, le=1024, description="Images one request may carry at most (a 400 beyond)."
    )
    max_image_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="Bytes one encoded image may have at most, however it comes (a 413 beyond).",
    )
    image_fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts whose http(s) image URLs the gateway may fetch ('*.example.com' for "
        "the names under a domain); repeat the flag or join with ','. None (the default): no "
        "URL is fetched. Loopback, link-local, private, multicast and reserved addresses are "
        "never fetched, whatever this says.",
    )
    image_fetch_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Bytes one fetched image may have at most."
    )
    image_fetch_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Seconds one image fetch may take, DNS included."
    )
    image_fetch_ca_file: str = Field(
        "",
        description="PEM file of the certificate authorities that an https image host's "
        "certificate must chain to, instead of the public ones (certifi's): for image hosts "
        "behind a private CA.",
    )
    image_file_dir: str = Field(
        "",
        description="Directory whose files file:// image URLs may name (symbolic links that "
        "leave it are refused); empty (the default): file:// URLs are refused.",
    )
    log_level: LogLevel = Field("info", description="Log level of the gateway and uvicorn.")

    @field_validator("workers", "worker_dns", mode="before")
    @classmethod
    def _split_workers(cls, value: object) -> object:
        """Accept a JSON list, a comma-joined string, or a list of (comma-joined) strings."""
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else [value]
        if isinstance(value, list):
            return [part.strip() for item in value for part in str(item).split(",") if part.strip()]
        return value

    @field_validator("cors_origin", "image_fetch_allow_hosts", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """A JSON list, a comma-joined string, or a list of (comma-joined) strings."""
        return cls._split_workers(value)

    @field_validator("cors_origin")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        """Each origin is '*' or scheme://host[:port], with no path; no duplicates."""
        for origin in value:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"CORS origin {origin[:100]!r} is not '*' or scheme://host[:port] (no path, "
                    "no trailing '/')"
                )
        return list(dict.fromkeys(value))

    @field_validator("image_fetch_allow_hosts")
    @classmethod
    def _check_fetch_hosts(cls, value: list[str]) -> list[str]:
        """Each entry a host name, '*.' and a domain, or an IP address; no scheme, port or path."""
        for host in value:
            if parse_ip(host) is None and not _HOST_NAME.fullmatch(host):
                raise ValueError(
                    f"image fetch host {host[:100]!r} is not a host name, *.domain or IP address"
                )
        return list(dict.fromkeys(value))

    @field_validator("image_fetch_ca_file")
    @classmethod
    def _check_ca_file(cls, value: str) -> str:
        """A PEM file of certificates that loads, when set."""
        if value:
            try:
                ssl.create_default_context(cafile=value)
            except (OSError, ssl.SSLError) as error:
                raise ValueError(
                    f"--image-fetch-ca-file {value[:200]!r} is not a PEM file of certificates: "
                    f"{error}"
                ) from None
        return value

    @field_validator("image_file_dir")
    @classmethod
    def _check_file_dir(cls, value: str) -> str:
        """An existing directory, when set."""
        if value and not os.path.isdir(value):
            raise ValueError(f"--image-file-dir {value[:200]!r} is not a directory")
        return value

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """None, one key, keys joined with ',' or a JSON list; every key checked."""
        value = split_keys(value)
        return check_keys(value) if isinstance(value, list) else value

    @field_validator("workers", "worker_dns")
    @classmethod
    def _check_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"worker address {address!r} is not HOST:PORT")
        return value

    @model_validator(mode="after")
    def _check_worker_tls(self) -> GatewaySettings:
        """A client certificate comes with its key, and TLS settings need TLS."""
        if bool(self.worker_client_cert) != bool(self.worker_client_key):
            raise ValueError("--worker-client-cert and --worker-client-key go together")
        if self.worker_tls_server_name and not self.dials_tls:
            raise ValueError("--worker-tls-server-name needs TLS (--worker-ca or --worker-tls)")
        return self

    @property
    def dials_tls(self) -> bool:
        """Whether workers are dialled over TLS."""
        return self.worker_tls or bool(self.worker_ca or self.worker_client_cert)

    @model_validator(mode="after")
    def _check_https(self) -> GatewaySettings:
        """HTTPS needs both the certificate and its key."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together (HTTPS needs both)")
        return self
