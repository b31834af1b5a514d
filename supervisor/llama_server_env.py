"""llama-server's environment variables (``LLAMA_ARG_*``), read as its flags.

llama-server takes many of its settings from the environment too (a Docker Compose file sets
``LLAMA_ARG_MODEL``, ``LLAMA_ARG_CTX_SIZE``, ``LLAMA_ARG_N_PARALLEL``...), and a flag on the command
line wins over its variable. ``env_flags`` turns the variables into the llama-server flags they
stand for, leaving out those whose flag (in any of its spellings) is on the command line; the
flags then go through llama_server_flags.translate like typed ones, so a variable is mapped,
accepted, warned about or refused exactly as its flag is. A ``LLAMA_ARG_*`` variable this table
does not know is reported as ignored. README: "llama-server's command line".
"""

from __future__ import annotations

from collections.abc import Mapping

from llamagrid.supervisor.llama_server_flags import RULES

#: Each variable and the flag it stands for. A flag of no value (``--metrics``) is given when the
#: variable is true and left out when it is false.
VARIABLES = {
    "LLAMA_ARG_MODEL": "--model",
    "LLAMA_ARG_MODEL_URL": "--model-url",
    "LLAMA_ARG_HF_REPO": "--hf-repo",
    "LLAMA_ARG_HF_FILE": "--hf-file",
    "LLAMA_ARG_ALIAS": "--alias",
    "LLAMA_ARG_CTX_SIZE": "--ctx-size",
    "LLAMA_ARG_N_PARALLEL": "--parallel",
    "LLAMA_ARG_N_PREDICT": "--n-predict",
    "LLAMA_ARG_THREADS": "--threads",
    "LLAMA_ARG_THREADS_HTTP": "--threads-http",
    "LLAMA_ARG_BATCH": "--batch-size",
    "LLAMA_ARG_UBATCH": "--ubatch-size",
    "LLAMA_ARG_N_GPU_LAYERS": "--n-gpu-layers",
    "LLAMA_ARG_FLASH_ATTN": "--flash-attn",
    "LLAMA_ARG_DEFRAG_THOLD": "--defrag-thold",
    "LLAMA_ARG_CONT_BATCHING": "--cont-batching",
    "LLAMA_ARG_NO_CONT_BATCHING": "--no-cont-batching",
    "LLAMA_ARG_HOST": "--host",
    "LLAMA_ARG_PORT": "--port",
    "LLAMA_API_KEY": "--api-key",
    "LLAMA_ARG_EMBEDDINGS": "--embedding",
    "LLAMA_ARG_POOLING": "--pooling",
    "LLAMA_ARG_ENDPOINT_METRICS": "--metrics",
    "LLAMA_ARG_ENDPOINT_SLOTS": "--slots",
    "LLAMA_ARG_NO_ENDPOINT_SLOTS": "--no-slots",
    "LLAMA_ARG_SLOT_SAVE_PATH": "--slot-save-path",
    "LLAMA_ARG_JINJA": "--jinja",
    "LLAMA_ARG_CHAT_TEMPLATE": "--chat-template",
    "LLAMA_ARG_CHAT_TEMPLATE_FILE": "--chat-template-file",
    "LLAMA_ARG_CACHE_RAM": "--cache-ram",
    "LLAMA_ARG_MMPROJ": "--mmproj",
}
#: How llama.cpp reads a boolean variable.
TRUE = frozenset(("1", "true", "on", "enabled", "yes"))
FALSE = frozenset(("0", "false", "off", "disabled", "no"))


def env_flags(
    environ: Mapping[str, str], argv: list[str], warnings: list[str], problems: list[str]
) -> list[str]:
    """The llama-server flags that ``environ``'s variables stand for, minus those on ``argv``.

    Variables this table does not know go to ``warnings``; a boolean variable that is neither
    true nor false goes to ``problems``. The result goes before ``argv``."""
    names = (token.partition("=")[0] for token in argv)
    typed = {id(RULES[name]) for name in names if name in RULES}
    flags: list[str] = []
    for name in sorted(environ):
        if not name.startswith("LLAMA_ARG_") and name != "LLAMA_API_KEY":
            continue
        flag = VARIABLES.get(name)
        if flag is None:
            warnings.append(f"{name} is ignored: llamagrid does not read it")
            continue
        rule = RULES[flag]
        if id(rule) in typed:
            continue  # the command line wins
        value = environ[name]
        if rule.arity == 0:
            word = value.strip().lower()
            if word in TRUE:
                flags.append(flag)
            elif word not in FALSE:
                problems.append(f"{name}: expected true or false (got {value[:40]!r})")
        elif rule.arity == -1:
            flags += _switch(name, flag, value.strip().lower(), problems)
        else:
            flags += [flag, value]
    return flags


def _switch(name: str, flag: str, word: str, problems: list[str]) -> list[str]:
    """A flag of one optional on/off/auto value, from its variable (on/off/auto or a boolean)."""
    if word in ("on", "off", "auto"):
        return [flag, word]
    if word in TRUE:
        return [flag, "on"]
    if word in FALSE:
        return [flag, "off"]
    problems.append(f"{name}: expected on, off, auto, true or false (got {word[:40]!r})")
    return []
