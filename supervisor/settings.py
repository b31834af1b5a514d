"""`llamagrid serve` settings (LLAMAGRID_SERVE_* or flags)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llamagrid.gateway.keys import check_keys, split_keys

#: Flags that describe the one model of `llamagrid serve` without --config; with --config the
#: file describes the models, and these are refused.
SINGLE_MODEL_FIELDS = (
    "worker_host",
    "worker_port",
    "model",
    "hf_repo",
    "hf_file",
    "hf_mmproj_file",
    "alias",
    "n_ctx",
    "parallel",
    "n_threads",
    "n_gpu_layers",
    "chat_template",
    "pooling",
    "flash_attn",
    "n_batch",
    "n_ubatch",
    "host_cache_mib",
    "lora",
    "lora_scaled",
    "slot_save_path",
    "slots_endpoint",
    "mmproj",
)
#: Of those, the worker flags passed on only when set (the worker's own defaults otherwise).
OPTIONAL_WORKER_FIELDS = (
    "chat_template",
    "pooling",
    "flash_attn",
    "n_batch",
    "n_ubatch",
    "host_cache_mib",
    "slot_save_path",
    "mmproj",
)


class ServeSettings(BaseSettings):
    """One worker on one model plus the gateway in front of it, or a whole fleet (--config)."""

    model_config = SettingsConfigDict(
        env_prefix="LLAMAGRID_SERVE_",
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="llamagrid serve",
        hide_input_in_errors=True,  # an error about a key must not print it
    )

    config: str = Field(
        default="",
        description="Fleet config file (YAML or JSON; a llama-cpp-python server config works "
        "too): run every replica of every model, and the gateway, from it. --host, --port, "
        "--api-key, --api-key-file, --log-level and --restart-backoff-s still override it.",
    )
    print_plan: bool = Field(
        default=False,
        description="Print the processes to run (argv, environment) as JSON, and exit.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP gateway binds; a non-loopback one needs an API key or "
        "--allow-insecure-bind.",
    )
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP gateway port.")
    worker_host: str = Field(
        default="127.0.0.1",
        description="Address the worker binds; a non-loopback one needs a worker token "
        "(LLAMAGRID_WORKER_TOKEN, which reaches the worker and the gateway) or "
        "--allow-insecure-bind.",
    )
    worker_port: int = Field(default=50051, ge=1, le=65535, description="The worker's gRPC port.")
    model: str = Field(default="", description="GGUF path; empty means the default SmolLM2.")
    hf_repo: str = Field(default="", description="Hugging Face repository of the GGUF.")
    hf_file: str = Field(default="", description="File name (or glob) inside --hf-repo.")
    hf_mmproj_file: str = Field(
        default="", description="The vision projector's file name (or glob) inside --hf-repo."
    )
    alias: str = Field(default="", description="Model name for clients (default smollm2).")
    n_ctx: int = Field(default=8192, ge=0, description="Worker KV context, shared by slots.")
    parallel: int = Field(default=4, ge=1, description="Worker slots.")
    n_threads: int = Field(default=0, ge=0, description="Worker threads; 0: all cores.")
    n_gpu_layers: int = Field(default=0, description="Layers offloaded to the GPU; -1: all.")
    chat_template: str = Field(
        default="", description="Jinja chat template for the worker, inline or a file path."
    )
    pooling: Literal["model", "mean", "cls", "last"] = Field(
        default="model", description="The worker's embedding pooling ('model': the GGUF's)."
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        default="auto", description="The worker's flash attention."
    )
    n_batch: int = Field(default=512, ge=1, description="Most tokens in one llama_decode.")
    n_ubatch: int = Field(default=512, ge=1, description="Physical micro-batch size.")
    host_cache_mib: int = Field(
        default=1024,
        ge=0,
        le=1 << 24,
        description="Host memory (MiB) for KV cells saved from evicted sequences; 0: off.",
    )
    slot_save_path: str = Field(
        default="", description="The worker's directory of slot files; empty: slot actions off."
    )
    slots_endpoint: bool = Field(
        default=True, description="The gateway serves GET /slots (--no-slots-endpoint: a 501)."
    )
    console: bool = Field(
        default=True,
        description="The gateway serves its console at / (--no-console: off; with --config it "
        "overrides the file's gateway section).",
    )
    lora: list[str] = Field(
        default_factory=list, description="LoRA adapter GGUF the worker loads at scale 1."
    )
    mmproj: str = Field(
        default="", description="Vision projector GGUF for the model: the worker reads images."
    )
    lora_scaled: list[str] = Field(
        default_factory=list, description="LoRA adapter the worker loads, as PATH:SCALE."
    )
    api_key: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API key the gateway requires ('Authorization: Bearer <key>'); repeat or "
        "join with ',' for several. It reaches the gateway through its environment, never its "
        "command line; prefer LLAMAGRID_SERVE_API_KEY or --api-key-file to this flag, which "
        "`ps` shows. An empty key is an error.",
    )
    api_key_file: str = Field(
        default="",
        description="File of API keys for the gateway, one per line ('#' comments and blank "
        "lines skipped); checked before anything starts.",
    )
    allow_insecure_bind: bool = Field(
        default=False,
        description="Let the gateway listen on a non-loopback --host without an API key, and "
        "workers on a non-loopback address (refused otherwise).",
    )
    restart_backoff_s: float = Field(
        default=1.0, gt=0, description="First delay before restarting a crashed process."
    )
    startup_timeout_s: float = Field(
        default=300.0, gt=0, description="How long to wait for the first model load."
    )
    log_level: str = Field(default="info", description="Log level of every process.")

    def worker_args(self) -> list[str]:
        """Flags for the worker process (without --config)."""
        args = [
            "--host",
            self.worker_host,
            "--port",
            str(self.worker_port),
            "--n-ctx",
            str(self.n_ctx),
            "--parallel",
            str(self.parallel),
            "--n-threads",
            str(self.n_threads),
            "--n-gpu-layers",
            str(self.n_gpu_layers),
            "--log-level",
            self.log_level,
        ]
        for flag, value in (
            ("--model", self.model),
            ("--hf-repo", self.hf_repo),
            ("--hf-file", self.hf_file),
            ("--hf-mmproj-file", self.hf_mmproj_file),
            ("--alias", self.alias),
        ):
            if value:
                args += [flag, value]
        for name in OPTIONAL_WORKER_FIELDS:
            if name in self.model_fields_set:
                args += ["--" + name.replace("_", "-"), str(getattr(self, name))]
        for path in self.lora:
            args += ["--lora", path]
        for scaled in self.lora_scaled:
            args += ["--lora-scaled", scaled]
        return args

    def gateway_args(self) -> list[str]:
        """Flags for the gateway process (without --config; never a key: see plan.py)."""
        slots = [] if self.slots_endpoint else ["--no-slots-endpoint"]
        console = [] if self.console else ["--no-console"]
        return [
            *slots,
            *console,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--worker",
            f"{self.worker_host}:{self.worker_port}",
            "--log-level",
            self.log_level,
        ]

    @field_validator("api_key", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """None, one key, keys joined with ',' or a JSON list; every key checked."""
        value = split_keys(value)
        return check_keys(value) if isinstance(value, list) else value
