"""The worker's typed settings: environment (LLAMAGRID_WORKER_*), CLI flags and defaults in one."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llamagrid.worker.engine.dimensions import EmbeddingDimensions
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.lora import parse_scaled
from llamagrid.worker.registration import check_advertise_address, check_gateway_url

#: The request limits' defaults live with RequestLimits; the settings only expose them.
_LIMITS = RequestLimits()


class WorkerSettings(BaseSettings):
    """Everything a worker process needs to load one model and serve it."""

    model_config = SettingsConfigDict(
        env_prefix="LLAMAGRID_WORKER_",
        extra="ignore",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="llamagrid worker",
    )

    # Where the model comes from.
    model: str = Field(
        default="",
        validation_alias=AliasChoices("model", "m"),
        description="Path of a GGUF file. Empty means --hf-repo/--hf-file, or the default model.",
    )
    hf_repo: str = Field(default="", description="Hugging Face repository to fetch the GGUF from.")
    hf_file: str = Field(default="", description="File name (or glob) inside --hf-repo.")
    hf_revision: str = Field(default="main", description="Branch, tag or commit of --hf-repo.")
    hf_mmproj_file: str = Field(
        default="",
        description="The model's vision projector: a file name (or glob) inside --hf-repo, "
        "fetched like the model (instead of a --mmproj path).",
    )
    alias: str = Field(
        default="", description="Name clients use for the model; default: file stem."
    )
    chat_template: str = Field(
        default="", description="Jinja chat template overriding the GGUF's, inline or a file path."
    )
    special_tokens_in_content: bool = Field(
        default=False,
        description="UNSAFE: parse special-token text written in chat messages (such as "
        "'<|im_start|>' in a message's content) as special tokens, as before: any client can "
        "then forge turns and roles. Off: message text is plain text, and only the chat "
        "template writes special tokens.",
    )
    reasoning_format: Literal["none", "split"] = Field(
        default="split",
        description="How a reasoning model's thinking is returned when a request does not say: "
        "'split' takes it out of the text (gRPC GenerateChunk.reasoning, HTTP "
        "reasoning_content) when the chat template has a thinking format (<think>, gpt-oss "
        "channels); 'none' leaves it in the text.",
    )
    tool_call_format: Literal[
        "auto", "hermes", "llama3", "mistral", "deepseek", "gpt-oss", "generic"
    ] = Field(
        default="auto",
        description="The markup the model writes tool calls in; 'auto' detects it from the chat "
        "template, and falls back to 'generic' (a JSON object the worker's grammar asks for).",
    )
    special_tokens_in_prompt: bool = Field(
        default=False,
        description="UNSAFE: parse special-token text in raw prompts (completions) as special "
        "tokens. Off: a raw prompt is plain text; clients that need special tokens send "
        "token ids.",
    )

    # Fleet config (the file `llamagrid serve --config` reads; also mounted on Kubernetes).
    config: str = Field(
        default="",
        description="Fleet config file (YAML or JSON): the model entry named by --config-model "
        "supplies this worker's defaults; flags and environment variables still win.",
    )
    config_model: str = Field(
        default="", description="Alias of the --config model entry to serve; empty: the only one."
    )

    # Network.
    host: str = Field(default="127.0.0.1", description="Address the gRPC server binds.")
    port: int = Field(default=50051, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    port_file: str = Field(
        default="", description="Write the bound port to this file once serving (for port 0)."
    )
    max_sessions: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description="Most sessions (SessionService) this worker holds; opening one more is "
        "refused with RESOURCE_EXHAUSTED, reason SESSION_LIMIT.",
    )
    session_ttl_s: int = Field(
        default=600,
        ge=1,
        description="Seconds of disuse after which a session expires, when its opener gave no TTL.",
    )
    max_session_ttl_s: int = Field(
        default=86400, ge=1, description="The longest TTL a session may ask for, in seconds."
    )
    max_session_images: int = Field(
        default=32,
        ge=0,
        le=1024,
        description="Most images one session's transcript holds (with --mmproj): each turn "
        "reads them again from their bytes, in case the session's KV cache is gone.",
    )
    session_image_mib: int = Field(
        default=1024,
        ge=0,
        le=1 << 24,
        description="Memory (MiB) for the bytes of every session's images together (with "
        "--mmproj); a turn that would pass it is refused with RESOURCE_EXHAUSTED, reason "
        "SESSION_LIMIT.",
    )
    host_cache_mib: int = Field(
        default=1024,
        ge=0,
        le=1 << 24,
        description="Host memory (MiB) for KV cells saved from evicted sequences (sessions and "
        "cached prompt prefixes), restored instead of prefilled again; 0 turns the tier off.",
    )
    max_relay_calls: int = Field(
        default=1024,
        ge=1,
        le=65536,
        description="Most Generate calls one Relay stream (a gateway's multiplexed stream) may "
        "run at once; more are refused with FAILED_PRECONDITION.",
    )
    slot_save_path: str = Field(
        default="",
        description="Directory of slot files (llama-server's --slot-save-path): SaveSlot and "
        "RestoreSlot (HTTP POST /slots/{id}?action=save|restore) write and read plain file "
        "names there, mode 0600; created if missing. Empty (the default): slot actions are off.",
    )

    max_concurrent_streams: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="Most calls (HTTP/2 streams) one client connection may have open at once; "
        "a client's further calls wait until one ends.",
    )
    health_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Also serve grpc.health.v1, and only it, in plaintext on this port (for "
        "Kubernetes gRPC probes, which speak neither TLS nor tokens); 0: no such port.",
    )

    # Transport security (README, "TLS and mTLS").
    tls_cert: str = Field(
        default="",
        description="Server certificate chain (PEM file); with --tls-key the worker serves TLS "
        "only.",
    )
    tls_key: str = Field(default="", description="Private key (PEM file) of --tls-cert.")
    tls_client_ca: str = Field(
        default="",
        description="CA certificates (PEM file): every client must present a certificate they "
        "signed (mTLS). Needs --tls-cert and --tls-key.",
    )
    token_file: str = Field(
        default="",
        description="File holding the token every call but health checks must carry as "
        "'authorization: Bearer <token>' metadata (stripped; empty is an error). Or set "
        "LLAMAGRID_WORKER_TOKEN; there is no flag for the token itself.",
    )

    # llama.cpp model options.
    n_gpu_layers: int = Field(default=0, description="Layers to offload to the GPU; -1 means all.")
    main_gpu: int = Field(default=0, ge=0, description="GPU that holds the model (split none).")
    split_mode: Literal["none", "layer", "row"] = Field(
        default="layer", description="How to split the model across several GPUs."
    )
    tensor_split: list[float] = Field(
        default_factory=list, description="Fraction of the model per GPU, e.g. 3,1."
    )
    use_mmap: bool = Field(default=True, description="Map the model file instead of reading it.")
    use_mlock: bool = Field(default=False, description="Lock the model in RAM (no swapping).")
    mmproj: str = Field(
        default="",
        description="Vision projector GGUF for the model (llama-server's --mmproj; "
        "llama-cpp-python's clip_model_path): the model then reads images. Its embedding width "
        "must be the model's, or the worker refuses to start.",
    )
    lora: list[str] = Field(
        default_factory=list,
        description="LoRA adapter GGUF to load at start, at scale 1 (repeatable, as "
        "llama-server's --lora). Adapter ids follow the order of --lora, then --lora-scaled.",
    )
    lora_scaled: list[str] = Field(
        default_factory=list,
        description="LoRA adapter to load at start with its scale, as PATH:SCALE or, as "
        "llama-server's flag, PATH SCALE (repeatable).",
    )

    # llama.cpp context options.
    n_ctx: int = Field(
        default=8192, ge=0, description="Total KV context in tokens, shared by the slots; 0: train."
    )
    parallel: int = Field(
        default=4, ge=1, le=256, description="Slots: sequences decoded together in one batch."
    )
    n_batch: int = Field(default=512, ge=1, description="Most tokens sent to one llama_decode.")
    n_ubatch: int = Field(default=512, ge=1, description="Physical micro-batch size.")
    n_threads: int = Field(default=0, ge=0, description="Threads for generation; 0: all cores.")
    n_threads_batch: int = Field(
        default=0, ge=0, description="Threads for prompt processing; 0: same as n_threads."
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Flash attention ('auto': llama.cpp decides). On the CPU, 'off' costs speed "
        "but makes greedy output independent of how a prompt was batched or cached.",
    )
    kv_unified: bool = Field(
        default=False,
        description="One KV buffer for all slots: concurrent requests then share a common "
        "prefix's cells, but a greedy output may depend on what else is in the batch. Off: "
        "one buffer per slot, prefix reuse within a slot.",
    )
    pooling: Literal["model", "mean", "cls", "last"] = Field(
        default="model",
        description="Embedding pooling; 'model' uses the GGUF's, or mean if it has none.",
    )
    embedding_dimensions: str = Field(
        default="",
        description="Widths an embeddings request's 'dimensions' may truncate vectors to, joined "
        "with ',' (e.g. 64,128,256), or 'any' (1 to the model's width). Set it only for a model "
        "trained for truncation (Matryoshka embeddings); empty (the default): 'dimensions' is "
        "refused.",
    )

    # Serving.
    max_queue: int = Field(default=64, ge=0, description="Requests that may wait for a slot.")
    queue_timeout_s: float = Field(
        default=120.0,
        ge=0,
        description="Longest wait for a slot before RESOURCE_EXHAUSTED (429); 0: no limit.",
    )
    drain_grace_s: float = Field(
        default=30.0, ge=0, description="On SIGTERM, how long in-flight streams may finish."
    )
    name: str = Field(
        default="",
        description="Name this worker reports (gRPC trailers, metrics labels); default HOST:PORT.",
    )

    # Self-registration with gateways (worker/registration.py).
    register_with: list[str] = Field(
        default_factory=list,
        description="Gateway base URL (http:// or https://) to register with once SERVING, "
        "heartbeat and deregister from on drain, as LMDeploy's --proxy-url (repeatable). "
        "Needs the gateway's admin key: --register-key-file or LLAMAGRID_REGISTER_KEY.",
    )
    register_key_file: str = Field(
        default="",
        description="File holding the gateway's admin key for --register-with (else the "
        "LLAMAGRID_REGISTER_KEY environment variable; there is no flag for the key itself).",
    )
    advertise_address: str = Field(
        default="",
        description="gRPC address (HOST:PORT) the gateways dial this worker at; default the "
        "address it listens on (the machine's hostname for a wildcard --host).",
    )
    register_interval_s: float = Field(
        default=5.0,
        ge=0.1,
        le=300,
        description="Seconds between two heartbeats (registrations) to each --register-with "
        "gateway; the gateway ejects the worker after --node-missed-heartbeats of them.",
    )

    # Request limits: what one request may make the worker do (see engine/limits.py).
    max_grammar_bytes: int = Field(
        default=_LIMITS.max_grammar_bytes,
        ge=1,
        description="Longest GBNF grammar, in UTF-8 bytes: a request's grammar, or the one its "
        "JSON schema turns into.",
    )
    max_grammar_depth: int = Field(
        default=_LIMITS.max_grammar_depth,
        ge=1,
        le=4000,
        description="Deepest nesting of parentheses in a GBNF rule (llama.cpp's parser recurses "
        "once per level, about 450 bytes of stack each). A schema's maxLength or maxItems of n "
        "nests n levels.",
    )
    max_schema_bytes: int = Field(
        default=_LIMITS.max_schema_bytes,
        ge=1,
        description="Longest JSON schema (response_format), in UTF-8 bytes.",
    )
    max_schema_depth: int = Field(
        default=_LIMITS.max_schema_depth,
        ge=1,
        le=1000,
        description="Deepest nesting of objects and arrays in a schema.",
    )
    max_schema_count: int = Field(
        default=_LIMITS.max_schema_count,
        ge=0,
        le=1000,
        description="Largest minLength, maxLength, minItems or maxItems in a JSON schema, and "
        "largest {m,n} count in its patterns (each optional item nests one level; llama.cpp "
        "refuses much beyond 900).",
    )
    max_schema_properties: int = Field(
        default=_LIMITS.max_schema_properties,
        ge=0,
        description="Most properties in one object of a JSON schema (the converter's work "
        "grows with the square of the optional ones).",
    )
    max_stop_strings: int = Field(
        default=_LIMITS.max_stop_strings, ge=0, description="Most stop strings per request."
    )
    max_messages: int = Field(
        default=_LIMITS.max_messages,
        ge=1,
        description="Most messages in one conversation, checked before the template is rendered.",
    )
    max_prompt_bytes: int = Field(
        default=_LIMITS.max_prompt_bytes,
        ge=1024,
        description="Most UTF-8 bytes of text in one request (a prompt, all messages' contents, "
        "a Tokenize text, an Embed request's inputs), checked before anything is tokenized.",
    )
    max_embed_inputs: int = Field(
        default=_LIMITS.max_embed_inputs, ge=1, description="Most inputs in one Embed request."
    )
    max_embed_queue: int = Field(
        default=8192,
        ge=1,
        description="Most embedding inputs waiting at once; beyond, Embed is RESOURCE_EXHAUSTED "
        "with a retry delay.",
    )
    max_token_ids: int = Field(
        default=_LIMITS.max_token_ids,
        ge=1,
        description="Most token ids in one request (a token prompt, Detokenize, Embed inputs).",
    )
    max_prompt_logprobs_tokens: int = Field(
        default=_LIMITS.max_prompt_logprobs_tokens,
        ge=1,
        description="Longest prompt, in tokens, whose log-probabilities a request may ask for "
        "(prompt_logprobs, echo with logprobs): each costs a softmax over the vocabulary on "
        "the engine thread.",
    )
    max_images: int = Field(
        default=_LIMITS.max_images,
        ge=0,
        le=1024,
        description="Most images in one request (with --mmproj).",
    )
    max_image_bytes: int = Field(
        default=_LIMITS.max_image_bytes,
        ge=1,
        le=64 * 1024 * 1024,
        description="Largest encoded image in bytes (with --mmproj). A gRPC message holds at "
        "most 64 MiB, all images together.",
    )
    max_image_pixels: int = Field(
        default=_LIMITS.max_image_pixels,
        ge=1,
        le=1 << 28,
        description="Most pixels (width times height) an image may have, read from its header "
        "before it is decoded (with --mmproj).",
    )
    max_stop_bytes: int = Field(
        default=_LIMITS.max_stop_bytes, ge=1, description="Longest stop string, in UTF-8 bytes."
    )
    grammar_timeout_s: float = Field(
        default=_LIMITS.grammar_timeout_s,
        gt=0,
        description="Longest time a grammar or JSON schema may take to compile (off the engine "
        "thread); a slower one is refused with INVALID_ARGUMENT.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port of the Prometheus /metrics HTTP endpoint; 0: no endpoint.",
    )
    log_level: str = Field(default="info", description="Python logging level.")

    @field_validator("lora_scaled")
    @classmethod
    def _check_lora_scaled(cls, value: list[str]) -> list[str]:
        """Each entry is PATH:SCALE with a finite scale."""
        for entry in value:
            parse_scaled(entry)  # raises ValueError for a malformed entry
        return value

    @field_validator("register_with")
    @classmethod
    def _check_register_with(cls, value: list[str]) -> list[str]:
        """Each gateway is an http(s) URL, without a trailing '/'; no duplicates."""
        return list(dict.fromkeys(check_gateway_url(url) for url in value))

    @field_validator("advertise_address")
    @classmethod
    def _check_advertise_address(cls, value: str) -> str:
        """Empty (the listening address) or HOST:PORT."""
        return check_advertise_address(value) if value else value

    @field_validator("embedding_dimensions", mode="before")
    @classmethod
    def _check_embedding_dimensions(cls, value: object) -> object:
        """'any', widths joined with ',', or (from a config file) a list of widths."""
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            EmbeddingDimensions.parse(value)  # raises ValueError for a malformed value
            return value.strip()
        return value

    @model_validator(mode="after")
    def _check_transport(self) -> WorkerSettings:
        """TLS files come as a certificate and its key; a client CA needs them; ports differ."""
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca (mTLS) needs --tls-cert and --tls-key")
        if self.health_port and self.health_port == self.port:
            raise ValueError("--health-port must differ from --port")
        return self
