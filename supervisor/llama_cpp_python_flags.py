"""llama-cpp-python's server command line (``python -m llama_cpp.server``), read as
`llamagrid serve` flags.

Its flags are the names of its settings with underscores (``--n_ctx 4096``, each with one value),
and every setting can also come from an environment variable of the same name in capitals
(``MODEL``, ``HOST``, ``PORT``, ``API_KEY``, ``N_CTX``...); a flag wins over the variable. The
settings are judged by the same rules as its config file (fleet/llama_cpp_config.py): copied,
converted, ignored with a warning when they only change speed or logging, and refused otherwise.
``--config_file`` runs its config file as a fleet config. Its defaults are kept: one request at a
time (parallel 1), a context of 2048 tokens, and the gateway on localhost:8000.

Flags in serve's own spelling (``--log-level``, ``--print-plan``) pass through; any other
underscore flag is an error that names it. README: "llama-cpp-python's server".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from llamagrid.fleet import llama_cpp_config
from llamagrid.fleet.problems import Problems
from llamagrid.supervisor.llama_server_flags import SERVE_VALUE_FLAGS, Translation
from llamagrid.worker.settings import WorkerSettings

#: Settings whose value is a string as given (not parsed as YAML: "1e3" stays a file name).
STRING_KEYS = frozenset(
    ("model", "model_alias", "host", "api_key", "chat_format", "hf_model_repo_id", "config_file")
)
KNOWN = frozenset((*llama_cpp_config.MODEL_KEYS, *llama_cpp_config.SERVER_KEYS, "config_file"))
#: A converted model entry's keys, as serve flags; other keys need a config file.
SERVE_KEYS = {
    "model": "--model",
    "hf_repo": "--hf-repo",
    "hf_file": "--hf-file",
    "alias": "--alias",
    "n_ctx": "--n-ctx",
    "parallel": "--parallel",
    "n_threads": "--n-threads",
    "n_gpu_layers": "--n-gpu-layers",
    "chat_template": "--chat-template",
    "flash_attn": "--flash-attn",
    "n_batch": "--n-batch",
    "n_ubatch": "--n-ubatch",
    "mmproj": "--mmproj",
}
#: The longest value read from a flag or a variable (a path, a key or a template).
MAX_VALUE_CHARS = 65536


def looks_like(argv: list[str], environ: Mapping[str, str]) -> bool:
    """Whether `llamagrid serve` is started as llama-cpp-python's server is: with one of its
    underscore flags, or with no flags but ``MODEL`` or ``CONFIG_FILE`` set."""
    flags = (token.partition("=")[0] for token in argv if token.startswith("--"))
    if any("_" in flag and flag[2:] in KNOWN for flag in flags):
        return True
    return not argv and bool(environ.get("MODEL") or environ.get("CONFIG_FILE"))


def translate(argv: list[str], environ: Mapping[str, str]) -> Translation:
    """Serve flags for llama-cpp-python's flags and environment variables."""
    out = Translation()
    given = _read(argv, environ, out)
    if out.problems:
        return out
    if "config_file" in given:
        _config_file(given, out)
    else:
        _single_model(given, out)
    return out


def _read(argv: list[str], environ: Mapping[str, str], out: Translation) -> dict[str, Any]:
    """The settings from the environment, then the flags; serve's own flags pass to out.argv."""
    raw: dict[str, str] = {k: environ[k.upper()] for k in sorted(KNOWN) if k.upper() in environ}
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=")
        key = name[2:] if name.startswith("--") else ""
        if key in KNOWN:
            if eq:
                raw[key], i = inline, i + 1
            elif i + 1 < len(argv):
                raw[key], i = argv[i + 1], i + 2
            else:
                out.problems.append(f"{name}: expects a value")
                i += 1
            continue
        if "_" in key or not key:
            out.problems.append(f"{token[:60]}: not a llama-cpp-python server flag")
        else:
            out.argv.append(token)
            if token in SERVE_VALUE_FLAGS and i + 1 < len(argv):
                out.argv.append(argv[i + 1])
                i += 1
        i += 1
    for key, value in raw.items():
        if len(value) > MAX_VALUE_CHARS:
            out.problems.append(f"--{key}: longer than {MAX_VALUE_CHARS} characters")
    return {key: _parse(key, value) for key, value in raw.items()}


def _parse(key: str, value: str) -> Any:
    """A value as llama-cpp-python would type it: numbers, booleans and None from their text."""
    if key in STRING_KEYS:
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str) and parsed.lower() in ("none", "null"):
        return None
    return parsed if isinstance(parsed, str | int | float | bool | list) else value


def _config_file(given: dict[str, Any], out: Translation) -> None:
    """``--config_file``: the file is the fleet config; host, port and api_key override it."""
    out.argv += ["--config", str(given.pop("config_file"))]
    for key in ("host", "port", "api_key"):
        if given.get(key) is not None:
            out.argv += ["--" + key.replace("_", "-"), str(given.pop(key))]
    for key in sorted(given):
        out.problems.append(f"--{key}: with --config_file, set it in the file")


def _single_model(given: dict[str, Any], out: Translation) -> None:
    """One model from the flags, converted by the config file's rules."""
    server = {k: v for k, v in given.items() if k in llama_cpp_config.SERVER_KEYS}
    model = {k: v for k, v in given.items() if k in llama_cpp_config.MODEL_KEYS}
    if not model.get("model"):
        out.problems.append("--model (or MODEL): required, the GGUF path")
        return
    problems = Problems()
    converted = llama_cpp_config.convert({**server, "models": [model]}, problems)
    out.problems += [_as_flag(p) for p in problems.errors if not p.startswith("(read as")]
    out.warnings += [_as_flag(w) for w in problems.warnings if "served as" not in w]
    if out.problems:
        return
    for key, value in converted["gateway"].items():
        if value is not None:
            out.argv += ["--" + key.replace("_", "-"), str(value)]
    entry = converted["models"][0]
    for key, value in entry.items():
        if key == "replicas":
            continue
        if key in SERVE_KEYS:
            out.argv += [SERVE_KEYS[key], str(value)]
        else:
            field = WorkerSettings.model_fields.get(key)
            if field is None or value != field.get_default(call_default_factory=True):
                out.problems.append(f"--{key}: set it in a --config_file (no serve flag)")


def _as_flag(message: str) -> str:
    """``models[0].n_ctx: ...`` -> ``--n_ctx: ...``; ``host: ...`` -> ``--host: ...``."""
    return "--" + message.removeprefix("models[0].")
