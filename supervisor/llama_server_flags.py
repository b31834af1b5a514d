"""llama.cpp's `llama-server` command line, read as `llamagrid serve` flags.

``translate`` rewrites an argv that may mix llama-server's flags (long and short forms) with
`llamagrid serve`'s own into serve's flags alone, so that a script which starts
``llama-server -m model.gguf -c 8192 -np 4 --port 8080`` starts llamagrid when only the binary
name changes. Every llama-server flag this table knows is one of:

- **mapped** onto the serve flag with the same meaning (``-c`` is the total context shared by
  the ``-np`` slots in both: it becomes ``--n-ctx`` as it is);
- **accepted**, because llamagrid always does what it asks (``--jinja``, ``-cb``, ``--metrics``);
- **ignored with a warning**, when it only tunes speed or logging (``--mlock``, ``-tb``);
- **refused** with the reason, when llamagrid cannot honour it and it would change the output,
  the memory use or the API (``--temp``, ``-ctk``, ``-nocb``).

Tokens that are not llama-server flags pass through untouched (serve's own flags, and their
values), and serve's parser judges them. README: "llama-server's command line".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llamagrid.fleet.llama_cpp_config import CHAT_TEMPLATES
from llamagrid.supervisor.settings import ServeSettings

#: llama-server's built-in chat template names that llamagrid has a Jinja equivalent for.
TEMPLATE_NAMES = {"chatml": "chatml", "llama3": "llama-3", "gemma": "gemma"}
#: llama-server's --pooling values, as the worker's --pooling.
POOLING = {"mean": "mean", "cls": "cls", "last": "last"}


class CompatFlagError(ValueError):
    """Flags that cannot be honoured: every problem, each naming its flag."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Translation:
    """The serve flags, the warnings to log, and the problems found (all at once)."""

    argv: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: Serve flags (``--n-ctx``) the translation set, for a dialect's defaults.
    given: set[str] = field(default_factory=set)


#: Turns a flag's values into serve flags; raises ValueError with the reason.
Convert = Callable[[list[str]], list[str]]


@dataclass(frozen=True)
class Rule:
    """One llama-server flag: how many values it takes and what becomes of it."""

    kind: str  # "map", "accept", "warn" or "refuse"
    arity: int = 1  # values taken; -1: one optional value (on/off/auto)
    convert: Convert | None = None
    why: str = ""


def _int(value: str, low: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected an integer (got {value[:40]!r})") from None
    if low is not None and number < low:
        raise ValueError(f"expected an integer of at least {low} (got {number})")
    return number


def _to(flag: str, low: int | None = None) -> Convert:
    """A flag whose one value passes to serve's ``flag`` (checked as an integer if ``low``)."""

    def convert(values: list[str]) -> list[str]:
        value = str(_int(values[0], low)) if low is not None else values[0]
        return [flag, value]

    return convert


def _threads(values: list[str]) -> list[str]:
    number = _int(values[0], -1)
    return ["--n-threads", str(max(number, 0))]  # -1: every core, llamagrid's 0


def _gpu_layers(values: list[str]) -> list[str]:
    if values[0] == "all":
        return ["--n-gpu-layers", "-1"]
    if values[0] == "auto":
        raise ValueError("'auto' (fit to free memory) is not supported: give a count, or 'all'")
    number = _int(values[0])
    return ["--n-gpu-layers", str(-1 if number < 0 else number)]


def _parallel(values: list[str]) -> list[str]:
    number = _int(values[0], -1)
    if number == 0:
        raise ValueError("expected at least 1 slot, or -1 (automatic)")
    if number == -1:  # automatic: llamagrid's default
        number = ServeSettings.model_fields["parallel"].get_default()
    return ["--parallel", str(number)]


def _host(values: list[str]) -> list[str]:
    if values[0].endswith(".sock"):
        raise ValueError("UNIX sockets are not supported: give an address to listen on")
    return ["--host", values[0]]


def _alias(values: list[str]) -> list[str]:
    if "," in values[0]:
        raise ValueError("one alias per model: several (joined with ',') are not supported")
    return ["--alias", values[0]]


def _pooling(values: list[str]) -> list[str]:
    if values[0] not in POOLING:
        raise ValueError(
            f"{values[0][:40]!r} is not supported (mapped: {', '.join(POOLING)}); llamagrid "
            "always pools embeddings, and has no reranking"
        )
    return ["--pooling", POOLING[values[0]]]


def _predict(values: list[str]) -> list[str]:
    number = _int(values[0], -2)
    if number >= 0:
        raise ValueError(
            "a server-wide default of max tokens is not supported: clients send max_tokens "
            "(or n_predict) per request; -1 and -2 (until the slot's context is full, "
            "llamagrid's default) are accepted"
        )
    return []


def _chat_template(values: list[str]) -> list[str]:
    value = values[0]
    if value in TEMPLATE_NAMES:
        return ["--chat-template", CHAT_TEMPLATES[TEMPLATE_NAMES[value]]]
    if "{{" in value or "{%" in value:
        return ["--chat-template", value]  # an inline Jinja template
    raise ValueError(
        f"{value[:40]!r} is not a built-in template llamagrid can map (mapped: "
        f"{', '.join(TEMPLATE_NAMES)}); give a Jinja template inline or with "
        "--chat-template-file, or leave it out for the GGUF's own"
    )


def _chat_template_file(values: list[str]) -> list[str]:
    if not Path(values[0]).is_file():
        raise ValueError(f"{values[0][:200]!r} is not a file")
    return ["--chat-template", str(Path(values[0]).resolve())]


def _flash_attn(values: list[str]) -> list[str]:
    value = values[0] if values else "on"
    if value not in ("on", "off", "auto"):
        raise ValueError(f"expected on, off or auto (got {value[:40]!r})")
    return ["--flash-attn", value]


def _cache_ram(values: list[str]) -> list[str]:
    number = _int(values[0], -1)
    if number == -1:
        raise ValueError("an unbounded host cache is not supported: give a size in MiB")
    return ["--host-cache-mib", str(number)]


def _hf_repo(values: list[str]) -> list[str]:
    repo, _, quant = values[0].partition(":")
    if not repo:
        raise ValueError("expected a Hugging Face repository, such as user/model[:quant]")
    return ["--hf-repo", repo] + (["--hf-file", f"*{quant}*.gguf"] if quant else [])


def _lora_scaled(values: list[str]) -> list[str]:
    try:
        scale = float(values[1])
    except ValueError:
        raise ValueError(f"expected a scale (got {values[1][:40]!r})") from None
    if not math.isfinite(scale):
        raise ValueError("expected a finite scale")
    return ["--lora-scaled", f"{values[0]}:{scale}"]


def _map(convert: Convert, arity: int = 1) -> Rule:
    return Rule("map", arity, convert)


def _warn(why: str, arity: int = 1) -> Rule:
    return Rule("warn", arity, why=why)


def _refuse(why: str, arity: int = 1) -> Rule:
    return Rule("refuse", arity, why=why)


def _accept(why: str, arity: int = 0) -> Rule:
    return Rule("accept", arity, why=why)


_SAMPLING = "server-wide sampling defaults are not supported: clients send it per request"
_ROPE = "RoPE/YaRN overrides are not supported: the GGUF's own values are used"
_GPUS = "set split_mode, tensor_split or main_gpu in a fleet config (--config), per model"
_SPEED = "it only tunes speed"
_LOGS = "it only changes logging: use --log-level"


def _table() -> dict[str, Rule]:
    """Every llama-server flag llamagrid knows, by each of its names."""
    rules: dict[tuple[str, ...], Rule] = {
        ("-m", "--model"): _map(_to("--model")),
        ("-c", "--ctx-size"): _map(_to("--n-ctx", 0)),
        ("-np", "--parallel"): _map(_parallel),
        ("-t", "--threads"): _map(_threads),
        ("-ngl", "--gpu-layers", "--n-gpu-layers"): _map(_gpu_layers),
        ("--host",): _map(_host),
        ("--port",): _map(_to("--port", 0)),
        ("--api-key",): _map(_to("--api-key")),
        ("--api-key-file",): _map(_to("--api-key-file")),
        ("-a", "--alias"): _map(_alias),
        ("--pooling",): _map(_pooling),
        ("-n", "--predict", "--n-predict"): _map(_predict),
        ("--chat-template",): _map(_chat_template),
        ("--chat-template-file",): _map(_chat_template_file),
        ("-fa", "--flash-attn"): _map(_flash_attn, -1),
        ("-b", "--batch-size"): _map(_to("--n-batch", 1)),
        ("-ub", "--ubatch-size"): _map(_to("--n-ubatch", 1)),
        ("--cache-ram", "-cram"): _map(_cache_ram),
        ("-hf", "-hfr", "--hf-repo"): _map(_hf_repo),
        ("-hff", "--hf-file"): _map(_to("--hf-file")),
        # Accepted: llamagrid always does what they ask.
        ("--jinja",): _accept("llamagrid always renders chat templates with Jinja"),
        ("-cb", "--cont-batching"): _accept("llamagrid always batches continuously"),
        ("--metrics",): _accept("the gateway always serves /metrics"),
        ("--slots",): _accept("the gateway serves /slots unless --no-slots"),
        ("--embedding", "--embeddings"): _accept(
            "every model serves embeddings; llamagrid does not turn completions off"
        ),
        # Refused: they would change the output, the memory use or the API.
        ("--no-slots",): _map(lambda _: ["--no-slots-endpoint"], 0),
        ("--slot-save-path",): _map(_to("--slot-save-path")),
        ("--lora",): _map(_to("--lora")),
        ("--lora-scaled",): _map(_lora_scaled, 2),
        ("--lora-init-without-apply",): _refuse(
            "load each adapter at scale 0 with --lora-scaled FILE 0 instead", 0
        ),
        ("--no-jinja",): _refuse("llamagrid always renders chat templates with Jinja", 0),
        ("-nocb", "--no-cont-batching"): _refuse("llamagrid always batches continuously", 0),
        ("-hft", "--hf-token"): _refuse("set HF_TOKEN in the environment (argv shows in ps)"),
        ("-mu", "--model-url"): _refuse("give a path, or --hf-repo and --hf-file"),
        ("-s", "--seed"): _refuse("no server-wide seed: clients send seed per request"),
        ("-sm", "--split-mode", "-ts", "--tensor-split", "-mg", "--main-gpu"): _refuse(_GPUS),
        ("-dev", "--device"): _refuse("pin GPUs with replicas in a fleet config (--config)"),
        ("-ctk", "--cache-type-k", "-ctv", "--cache-type-v"): _refuse(
            "KV cache quantization is not supported"
        ),
        ("-nkvo", "--no-kv-offload"): _refuse("the KV cache sits with the offloaded layers", 0),
        ("--override-kv",): _refuse("GGUF metadata overrides are not supported"),
        ("--control-vector",): _refuse("control vectors are not supported"),
        ("--control-vector-scaled", "--control-vector-layer-range"): _refuse(
            "control vectors are not supported", 2
        ),
        ("-mm", "--mmproj"): _map(_to("--mmproj")),
        ("--no-mmproj",): _accept("a projector is loaded only when --mmproj names one"),
        ("-mmu", "--mmproj-url"): _refuse("download the projector, and give its path to --mmproj"),
        ("--no-mmproj-offload",): _warn(_SPEED, 0),
        ("-md", "--model-draft"): _refuse("speculative decoding is not supported"),
        ("-spf", "--system-prompt-file"): _refuse("clients send their system prompt"),
        ("--keep",): _refuse("context shifting is not supported: a full context ends a request"),
        ("--path",): _refuse("the gateway serves no static files or web UI"),
        ("--ssl-key-file", "--ssl-cert-file"): _refuse(
            "set tls_cert and tls_key in a fleet config's gateway section (--config)"
        ),
        ("--spm-infill",): _refuse("infill follows the model's FIM tokens", 0),
        ("-gan", "--grp-attn-n", "-gaw", "--grp-attn-w"): _refuse("self-extend is not supported"),
        # Tuning and logging only: ignored, with a warning.
        ("-tb", "--threads-batch"): _warn(_SPEED),
        ("--threads-http",): _warn(_SPEED),
        ("-to", "--timeout"): _warn("the gateway's --request-timeout-s bounds a request"),
        ("--mlock", "--no-mmap", "--check-tensors", "--no-warmup"): _warn(_SPEED, 0),
        ("--numa", "-dt", "--defrag-thold", "-sps", "--slot-prompt-similarity"): _warn(_SPEED),
        ("-C", "--cpu-mask", "-Cr", "--cpu-range", "--cpu-strict", "--prio", "--poll"): _warn(
            _SPEED
        ),
        ("-Cb", "--cpu-mask-batch", "-Crb", "--cpu-range-batch"): _warn(_SPEED),
        ("--cpu-strict-batch", "--prio-batch", "--poll-batch"): _warn(_SPEED),
        ("-v", "--verbose", "--log-disable", "--log-enable", "--log-new", "--log-append"): _warn(
            _LOGS, 0
        ),
        ("--verbosity", "-lv", "--log-verbosity", "--log-file", "-ld", "--logdir"): _warn(_LOGS),
        ("--log-test", "--no-webui", "-dkvc", "--dump-kv-cache"): _warn(
            "it changes nothing a client sees", 0
        ),
    }
    sampling = (
        "--temp --top-k --top-p --min-p --tfs --typical --repeat-last-n --repeat-penalty "
        "--presence-penalty --frequency-penalty --dynatemp-range --dynatemp-exp --mirostat "
        "--mirostat-lr --mirostat-ent -l --logit-bias --samplers --sampling-seq --grammar "
        "--grammar-file -j --json-schema"
    )
    rules[tuple(sampling.split())] = _refuse(_SAMPLING)
    rules[("--ignore-eos", "--penalize-nl")] = _refuse(_SAMPLING, 0)
    rope = "--rope-scaling --rope-scale --rope-freq-base --rope-freq-scale --yarn-orig-ctx "
    rope += "--yarn-ext-factor --yarn-attn-factor --yarn-beta-slow --yarn-beta-fast"
    rules[tuple(rope.split())] = _refuse(_ROPE)
    return {name: rule for names, rule in rules.items() for name in names}


RULES = _table()
#: serve's flags that take a value: the token after one is passed through, never translated.
SERVE_VALUE_FLAGS = frozenset(
    "--" + name.replace("_", "-")
    for name, info in ServeSettings.model_fields.items()
    if info.annotation is not bool
)


def translate(argv: list[str]) -> Translation:
    """Serve flags for ``argv``; problems are collected in ``Translation.problems``."""
    out, i = Translation(), 0
    while i < len(argv):
        token = argv[i]
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        rule = RULES.get(name)
        if rule is None:
            out.argv.append(token)
            if token in SERVE_VALUE_FLAGS and i + 1 < len(argv):
                out.argv.append(argv[i + 1])
                i += 1
            i += 1
            continue
        values, i = _values(argv, i, rule, inline if eq else None)
        if values is None:
            count = "no value" if rule.arity == 0 else f"{max(rule.arity, 1)} value(s)"
            out.problems.append(f"{name}: expects {count}")
            continue
        _apply(name, rule, values, out)
    return out


def _values(
    argv: list[str], i: int, rule: Rule, inline: str | None
) -> tuple[list[str] | None, int]:
    """The values of the flag at ``i`` and the index after them (None: too few)."""
    if inline is not None:  # --flag=value: for a flag of one (optional) value only
        return ([inline] if rule.arity in (1, -1) else None), i + 1
    if rule.arity == -1:  # an optional value: taken only when it is one of the choices
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        return ([nxt], i + 2) if nxt in ("on", "off", "auto") else ([], i + 1)
    values = argv[i + 1 : i + 1 + rule.arity]
    if len(values) < rule.arity:
        return None, len(argv)
    return values, i + 1 + rule.arity


def _apply(name: str, rule: Rule, values: list[str], out: Translation) -> None:
    if rule.kind == "refuse":
        out.problems.append(f"{name}: not supported by llamagrid: {rule.why}")
    elif rule.kind == "warn":
        out.warnings.append(f"{name} is ignored: {rule.why}")
    elif rule.kind == "map" and rule.convert is not None:
        try:
            args = rule.convert(values)
        except ValueError as exc:
            out.problems.append(f"{name}: {exc}")
            return
        out.argv += args
        out.given.update(a for a in args if a.startswith("--"))
