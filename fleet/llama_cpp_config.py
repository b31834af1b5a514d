"""llama-cpp-python's server config file (``python -m llama_cpp.server --config_file``), read
as a fleet config.

The format (llama_cpp/server/settings.py, 0.3.x): ServerSettings keys at the top level and a
``models`` list of ModelSettings. Each model becomes one unpinned replica served the way
llama-cpp-python serves it: one request at a time (``parallel: 1``) with ``n_ctx`` tokens
(default 2048), behind a gateway on its ``host``/``port`` (default localhost:8000). A key at its
llama-cpp-python default is accepted silently; any other value that llamagrid cannot honour is a
warning when it only changes speed or logging, and an error when it would change the output,
the memory use or the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from llamagrid.fleet.problems import Loc, Problems
from llamagrid.worker.settings import WorkerSettings

SPLIT_MODES = {0: "none", 1: "layer", 2: "row"}  # llama.cpp's enum llama_split_mode
DEFAULT_N_CTX = 2048  # llama-cpp-python's default, per request
DEFAULT_HOST, DEFAULT_PORT = "localhost", 8000


@dataclass(frozen=True)
class Rule:
    """How one llama-cpp-python key is handled: copied, converted, ignored or refused."""

    kind: Literal["copy", "convert", "warn", "refuse"]
    default: Any = None
    why: str = ""


_SAME = Rule("copy")
_CONVERT = Rule("convert")
_ROPE = "RoPE/YaRN overrides are not supported: the GGUF's own values are used"
_HF_TOKENIZER = "Hugging Face tokenizers are not supported: the GGUF's tokenizer is used"

#: ModelSettings keys (llama-cpp-python 0.3.36).
MODEL_KEYS: dict[str, Rule] = {
    "model": _CONVERT,
    "model_alias": _CONVERT,
    "n_gpu_layers": _SAME,
    "split_mode": _CONVERT,
    "main_gpu": _SAME,
    "tensor_split": _CONVERT,
    "vocab_only": Rule("refuse", False, "a vocabulary-only model cannot be served"),
    "use_mmap": _SAME,
    "use_mlock": _SAME,
    "kv_overrides": Rule("refuse", None, "GGUF metadata overrides are not supported"),
    "rpc_servers": Rule("refuse", None, "llama.cpp RPC offloading is not supported"),
    "seed": Rule("warn", 0xFFFFFFFF, "no server-wide seed: clients send `seed` per request"),
    "n_ctx": _CONVERT,
    "n_batch": _SAME,
    "n_ubatch": _SAME,
    "n_threads": _CONVERT,
    "n_threads_batch": _CONVERT,
    "rope_scaling_type": Rule("refuse", -1, _ROPE),
    "rope_freq_base": Rule("refuse", 0.0, _ROPE),
    "rope_freq_scale": Rule("refuse", 0.0, _ROPE),
    "yarn_ext_factor": Rule("refuse", -1.0, _ROPE),
    "yarn_attn_factor": Rule("refuse", 1.0, _ROPE),
    "yarn_beta_fast": Rule("refuse", 32.0, _ROPE),
    "yarn_beta_slow": Rule("refuse", 1.0, _ROPE),
    "yarn_orig_ctx": Rule("refuse", 0, _ROPE),
    "mul_mat_q": Rule("warn", True, "not a llama.cpp option any more"),
    "logits_all": Rule("warn", True, "logits are kept per request when logprobs are asked"),
    "embedding": Rule("warn", False, "llamagrid always serves /v1/embeddings"),
    "offload_kqv": Rule("refuse", True, "the KV cache always sits with the offloaded layers"),
    "flash_attn": _CONVERT,
    "last_n_tokens_size": Rule("warn", 64, "clients send `repeat_last_n` per request"),
    "lora_base": Rule("refuse", None, "LoRA adapters are not supported"),
    "lora_path": Rule("refuse", None, "LoRA adapters are not supported: merge it into the GGUF"),
    "numa": Rule("warn", False, "NUMA placement is not configurable"),
    "chat_format": _CONVERT,
    "chat_template_kwargs": Rule("refuse", None, "chat template arguments are not supported"),
    "clip_model_path": _CONVERT,
    "cache": Rule("warn", False, "llamagrid reuses cached prompt prefixes in its KV cache"),
    "cache_type": Rule("warn", "ram", "llamagrid reuses cached prompt prefixes in its KV cache"),
    "cache_size": Rule("warn", 2 << 30, "llamagrid reuses cached prompt prefixes in its KV cache"),
    "hf_tokenizer_config_path": Rule("refuse", None, _HF_TOKENIZER),
    "hf_pretrained_model_name_or_path": Rule("refuse", None, _HF_TOKENIZER),
    "hf_model_repo_id": _CONVERT,
    "draft_model": Rule("warn", None, "speculative decoding is not supported (same output)"),
    "draft_model_num_pred_tokens": Rule("warn", 10, "speculative decoding is not supported"),
    "type_k": Rule("refuse", None, "KV cache quantization is not supported"),
    "type_v": Rule("refuse", None, "KV cache quantization is not supported"),
    "verbose": Rule("warn", True, "set log_level instead"),
}
#: ServerSettings keys (the top level of the file besides ``models``).
SERVER_KEYS: dict[str, Rule] = {
    "host": _SAME,
    "port": _SAME,
    "api_key": _CONVERT,
    "ssl_keyfile": Rule("refuse", None, "the gateway serves plain HTTP: terminate TLS in front"),
    "ssl_certfile": Rule("refuse", None, "the gateway serves plain HTTP: terminate TLS in front"),
    "interrupt_requests": Rule("warn", True, "requests run concurrently; none is interrupted"),
    "disable_ping_events": Rule("warn", False, "the gateway sends no SSE ping events"),
    "root_path": Rule("warn", "", "the gateway serves at /; a proxy may strip the prefix"),
}

#: chat_format -> an equivalent Jinja chat template (ours). Other formats are refused.
CHAT_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{% for m in messages %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama-3": (
        "{{ bos_token }}{% for m in messages %}"
        "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] }}"
        "{{ '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Like llama-cpp-python, Gemma and Mistral drop system messages.
    "gemma": (
        "{{ bos_token }}{% for m in messages if m['role'] != 'system' %}"
        "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + m['content'] + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "mistral-instruct": (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    # llama-cpp-python's Llava15ChatHandler, as its trim_blocks environment renders it: no
    # newlines; its default system message when none is given; a user turn with images shows
    # them first, then its text; a turn of text alone is followed by an empty "USER: " (its
    # template also takes a string for a list of parts). The worker puts the media marker where
    # each image was (llama-cpp-python puts the image's URL, then the marker in its place).
    "llava-1-5": (
        "{% set marker = '<__media__>' %}"
        "{% set systems = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{% if not systems or not systems[0]['content'] %}"
        "{{ 'A chat between a curious human and an artificial intelligence assistant. The "
        "assistant gives helpful, detailed, and polite answers to the human\\'s questions.' }}"
        "{% endif %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ m['content'] }}"
        "{% elif m['role'] == 'user' and marker in m['content'] %}"
        "{{ 'USER: ' + marker * m['content'].count(marker) + m['content'].replace(marker, '') }}"
        "{% elif m['role'] == 'user' %}{{ 'USER: ' + m['content'] + 'USER: ' }}"
        "{% elif m['role'] == 'assistant' and m['content'] is not none %}"
        "{{ 'ASSISTANT: ' + m['content'] }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
    ),
}
#: llama-cpp-python's other multimodal chat formats: each has a chat handler of its own, which
#: llamagrid has no template for.
VISION_CHAT_FORMATS = (
    "llava-1-6",
    "obsidian",
    "moondream",
    "nanollava",
    "llama-3-vision-alpha",
    "minicpm-v-2.6",
    "qwen2.5-vl",
)

#: Model-entry keys only llamagrid's format has, and only llama-cpp-python's has.
FLEET_ONLY = {"alias", "policy", "replicas"} | (WorkerSettings.model_fields.keys() - MODEL_KEYS)
LLAMA_ONLY = MODEL_KEYS.keys() - WorkerSettings.model_fields.keys()


def detect(raw: Any, problems: Problems) -> bool:
    """Whether a parsed document is a llama-cpp-python config (a mix of both is an error).

    Marks of llama-cpp-python: server keys at the top level, entries with keys only it has
    (model_alias, chat_format, ...), or entries without ``alias``. Marks of llamagrid: a
    gateway/supervisor section, or entry keys only it has (alias, replicas, parallel, ...).
    """
    if not isinstance(raw, dict):
        return False
    llama = [str(k) for k in raw if k in SERVER_KEYS]
    fleet = [str(k) for k in raw if k in ("gateway", "supervisor")]
    models = raw.get("models")
    entries = [e for e in models if isinstance(e, dict)] if isinstance(models, list) else []
    for i, entry in enumerate(entries):
        llama += [f"models[{i}].{k}" for k in entry if k in LLAMA_ONLY]
        fleet += [f"models[{i}].{k}" for k in entry if k in FLEET_ONLY]
    if llama and fleet:
        problems.error(
            [],
            f"mixes llama-cpp-python server keys ({', '.join(llama[:3])}) with llamagrid "
            f"fleet keys ({', '.join(fleet[:3])}): use one format",
        )
        return False
    return bool(llama) or (not fleet and bool(entries))


def convert(raw: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """The llamagrid fleet config equivalent to a llama-cpp-python config."""
    errors_before = len(problems.errors)
    gateway: dict[str, Any] = {"host": DEFAULT_HOST, "port": DEFAULT_PORT}
    for key, value in raw.items():
        if key == "models":
            continue
        rule = SERVER_KEYS.get(key)
        if rule is None:
            problems.unknown_key([], str(key), [*SERVER_KEYS, "models"], "llama-cpp-python key")
        elif rule.kind == "copy" or (key == "api_key" and value is not None):
            gateway[key] = value
        elif rule.kind != "convert":
            _not_honoured([key], value, rule, problems)
    models = raw.get("models")
    out: list[Any] = []
    if not isinstance(models, list) or not models:
        problems.error(["models"], f"expected a non-empty list of models (got {models!r})")
    else:
        out = [_model(m, ["models", i], problems) for i, m in enumerate(models)]
    if len(problems.errors) > errors_before:
        problems.errors.insert(
            errors_before,
            "(read as a llama-cpp-python server config: no gateway/supervisor section and no "
            "llamagrid model keys such as alias or replicas)",
        )
    return {"gateway": gateway, "models": out}


def _not_honoured(loc: Loc, value: Any, rule: Rule, problems: Problems) -> None:
    """A key llamagrid cannot honour: fine at its default, else a warning or an error."""
    if value == rule.default or (rule.default is None and value in ("", [], {})):
        return
    if rule.kind == "warn":
        problems.warn(loc, f"{value!r} is ignored: {rule.why}")
    else:
        problems.error(loc, f"{value!r} cannot be honoured: {rule.why}; remove the key")


def _model(entry: Any, loc: list[str | int], problems: Problems) -> Any:
    """One ModelSettings entry as a llamagrid model entry with one replica."""
    if not isinstance(entry, dict):
        problems.error(loc, f"expected a mapping with at least `model` (got {entry!r})")
        return entry
    out: dict[str, Any] = {"replicas": 1, "parallel": 1, "n_ctx": DEFAULT_N_CTX}
    for key, value in entry.items():
        rule = MODEL_KEYS.get(key)
        if rule is None:
            problems.unknown_key(loc, str(key), MODEL_KEYS, "llama-cpp-python key")
        elif rule.kind == "copy":
            out[key] = value
        elif rule.kind == "convert":
            _convert_key(key, value, [*loc, key], out, problems)
        else:
            _not_honoured([*loc, key], value, rule, problems)
    model = entry.get("model")
    if not isinstance(model, str) or not model:
        problems.error([*loc, "model"], "required: the GGUF path (or file name in the HF repo)")
        return out
    if entry.get("hf_model_repo_id"):
        out["hf_repo"], out["hf_file"] = entry["hf_model_repo_id"], model
    else:
        out["model"] = model
    out["alias"] = entry.get("model_alias") or model  # llama-cpp-python's default alias
    if entry.get("chat_format") == "llava-1-5" and not entry.get("clip_model_path"):
        problems.error(
            [*loc, "chat_format"], "'llava-1-5' needs clip_model_path (the vision projector)"
        )
    problems.warn(
        loc,
        f"served as llama-cpp-python serves it, one request at a time (parallel 1, n_ctx "
        f"{out['n_ctx']}); for concurrent requests, write a llamagrid config with parallel > 1",
    )
    return out


def _convert_key(key: str, value: Any, loc: Loc, out: dict[str, Any], problems: Problems) -> None:
    """The keys whose value or name differs between the two formats."""
    if key in ("model", "model_alias", "hf_model_repo_id") or value is None:
        return
    if key == "split_mode":
        if value in SPLIT_MODES and not isinstance(value, bool):
            out["split_mode"] = SPLIT_MODES[value]
        else:
            problems.error(loc, f"{value!r} is not a llama.cpp split mode (0 none, 1 layer, 2 row)")
    elif key == "flash_attn":
        if isinstance(value, bool):
            out["flash_attn"] = "on" if value else "off"
        else:
            problems.error(loc, f"expected true or false (got {value!r})")
    elif key in ("n_threads", "n_threads_batch"):
        out[key] = 0 if value == -1 else value  # -1: every core; llamagrid's 0 is automatic
    elif key == "clip_model_path":
        if isinstance(value, str):
            out["mmproj"] = value  # the worker's --mmproj
        else:
            problems.error(loc, f"expected the projector's path (got {value!r})")
    elif key == "chat_format" and value in VISION_CHAT_FORMATS:
        problems.error(
            loc,
            f"{value!r} has no llamagrid equivalent: of the multimodal formats only 'llava-1-5' "
            "is mapped; or leave chat_format out (keeping clip_model_path) to use the GGUF's "
            "own template",
        )
    elif key == "chat_format":
        if value in CHAT_TEMPLATES:
            out["chat_template"] = CHAT_TEMPLATES[value]
        else:
            problems.error(
                loc,
                f"{value!r} has no llamagrid equivalent (mapped: {', '.join(CHAT_TEMPLATES)}); "
                "remove it to use the GGUF's own template, or set chat_template in a llamagrid "
                "fleet config",
            )
    else:  # n_ctx, tensor_split
        out[key] = value
