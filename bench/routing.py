"""The fleet routing section: one multi-tenant load through a gateway under each policy.

Several tenants each send their own long system prompt followed by a short question. A policy
that keeps a tenant on one worker lets that worker reuse the prompt's KV cells (cached_tokens
in the streamed usage); one that spreads requests evenly makes every worker prefill every
tenant's prompt, and its slots evict each other's prefixes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench import procs
from bench.config import Config, RoutingConfig
from bench.load import Messages, Stream, open_sender, percentile, safe_send
from bench.tables import Ratio, div, markdown_grid, num, text_grid, tok_s_cell
from bench.targets import Server

_TENANTS = (
    ("Acme Tools", "power drills and saws"),
    ("Blue Harbor Bank", "savings accounts and loans"),
    ("Cedar Health", "clinic appointments"),
    ("Delta Freight", "parcel shipping"),
    ("Echo Games", "online game subscriptions"),
    ("Fjord Energy", "home electricity plans"),
    ("Granite Telecom", "mobile phone contracts"),
    ("Harbor Books", "e-books and audiobooks"),
    ("Iris Travel", "flight and hotel bookings"),
    ("Juniper Foods", "grocery deliveries"),
    ("Kestrel Cloud", "virtual servers"),
    ("Lumen Insurance", "car and home insurance"),
)
_TOPICS = ("refunds", "delivery", "passwords", "invoices", "warranties", "accessibility")
_QUESTIONS = (
    "How do I reset my password?",
    "Can I return an item I already opened?",
    "Why was I charged twice this month?",
    "How long does a refund take?",
    "Can I change the address on my order?",
    "Where do I find my latest invoice?",
    "Is there a discount for students?",
    "How do I close my account?",
)
HEADERS = (
    "policy",
    "requests",
    "cached / prompt tokens",
    "cached ratio",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "tok/s",
    "requests per worker",
)
LEGEND = (
    "cached ratio: sum of usage.prompt_tokens_details.cached_tokens / sum of prompt_tokens. "
    "tok/s: completion tokens of all requests / wall time of the policy's run. Requests per "
    "worker: from the X-Llamagrid-Worker header."
)


def _raw_system_prompt(tenant: int) -> str:
    company, product = _TENANTS[tenant % len(_TENANTS)]
    round_ = tenant // len(_TENANTS)  # only past 12 tenants
    lines = [
        f"{company} customer support{f' (region {round_ + 1})' if round_ else ''}: you answer "
        f"questions about {product}. Follow every rule below."
    ]
    for i in range(120):
        topic = _TOPICS[(i + tenant) % len(_TOPICS)]
        lines.append(
            f"Rule {i + 1}: when asked about {topic}, reply in two polite sentences and cite "
            f"section {i + 3}.{tenant + 1} of the {company} handbook on {product}."
        )
    return "\n".join(lines)


def system_prompts(cfg: Config) -> list[str]:
    """One system prompt per tenant, cut to cfg.routing.system_tokens of the model's tokens."""
    from bench.prefix import truncate_to_tokens

    r = cfg.routing
    raw = [_raw_system_prompt(t) for t in range(r.tenants)]
    return truncate_to_tokens(cfg.model, raw, r.system_tokens)


def schedule(r: RoutingConfig) -> list[int]:
    """The tenant of each request, in sending order: seeded, so every policy gets the same."""
    return random.Random(r.seed).choices(range(r.tenants), k=r.requests)


def messages(prompts: list[str], tenants: list[int], i: int) -> Messages:
    """Request i: its tenant's system prompt and a question no other request asks."""
    question = f"{_QUESTIONS[i % len(_QUESTIONS)]} (ticket {1000 + i})"
    return [("system", prompts[tenants[i]]), ("user", question)]


@dataclass
class RoutingResult:
    """One policy's run of the whole schedule."""

    policy: str
    requests: int
    wall_s: float
    prompt_tokens: int
    cached_tokens: int
    cached_ratio: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    completion_tokens: int
    tok_s: float
    errors: int
    first_error: str | None
    #: Requests each worker served ("worker-0", ...: the workers in start order).
    per_worker: dict[str, int] = field(default_factory=dict)
    #: The tenants each worker served, with the number of requests of each.
    tenants_per_worker: dict[str, dict[int, int]] = field(default_factory=dict)
    #: X-Llamagrid-Route reasons and how often the gateway gave them.
    routes: dict[str, int] = field(default_factory=dict)
    #: Peak RSS (VmHWM) during the run, by process label.
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)
    #: CPU used by processes other than the benchmark and its servers, in % of the machine.
    foreign_cpu_pct: float = 0.0
    #: Each request in sending order: tenant, worker, route, sent_s (from the run's start),
    #: ttft_ms, prompt_tokens, cached_tokens, completion_tokens, error.
    log: list[dict[str, Any]] = field(default_factory=list)


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def _log(
    labels: dict[str, str], tenants: list[int], streams: list[Stream], start: float
) -> list[dict[str, Any]]:
    return [
        {
            "tenant": t,
            "worker": labels.get(s.worker or "", s.worker),
            "route": s.route,
            "sent_s": round(s.start - start, 3),
            "ttft_ms": None if (ttft := s.ttft) is None else round(ttft * 1000, 1),
            "prompt_tokens": s.prompt_tokens,
            "cached_tokens": s.cached_tokens,
            "completion_tokens": s.tokens,
            "error": s.error,
        }
        for t, s in zip(tenants, streams, strict=True)
    ]


def summarise(
    policy: str,
    server: Server,
    tenants: list[int],
    streams: list[Stream],
    start: float,
    wall: float,
    foreign_cpu_pct: float,
) -> RoutingResult:
    """Aggregate one policy's streams; workers are named by their start order."""
    labels = {address: f"worker-{i}" for i, address in enumerate(server.workers)}
    ok = [(t, s) for t, s in zip(tenants, streams, strict=True) if s.error is None]
    errors = [s.error for s in streams if s.error is not None]
    prompt = sum(s.prompt_tokens or 0 for _, s in ok)
    cached = sum(s.cached_tokens or 0 for _, s in ok)
    completion = sum(s.tokens for _, s in ok)
    by_worker: dict[str, Counter[int]] = {label: Counter() for label in labels.values()}
    for tenant, s in ok:
        label = labels.get(s.worker or "", s.worker or "unknown")
        by_worker.setdefault(label, Counter())[tenant] += 1
    ttfts = [t for _, s in ok if (t := s.ttft) is not None]
    return RoutingResult(
        policy=policy,
        requests=len(streams),
        wall_s=wall,
        prompt_tokens=prompt,
        cached_tokens=cached,
        cached_ratio=div(cached, prompt),
        ttft_p50_ms=_ms(percentile(ttfts, 50)),
        ttft_p95_ms=_ms(percentile(ttfts, 95)),
        completion_tokens=completion,
        tok_s=completion / wall if wall > 0 else 0.0,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        per_worker={label: sum(c.values()) for label, c in by_worker.items()},
        tenants_per_worker={label: dict(sorted(c.items())) for label, c in by_worker.items()},
        routes=dict(Counter(s.route or "none" for _, s in ok)),
        peak_rss_mib={c.label: procs.peak_rss_mib(c.pid) for c in server.children},
        foreign_cpu_pct=foreign_cpu_pct,
        log=_log(labels, tenants, streams, start),
    )


async def _warm_workers(server: Server) -> None:
    """One short request straight to each worker (gRPC), outside the tenants' prompts."""
    from bench.load import grpc_chat
    from llamagrid.client import AsyncInferenceClient

    for address in server.workers:
        async with AsyncInferenceClient(address) as client:
            s = await grpc_chat(client, [("user", "Say hello.")], 8)
        if not s.arrivals:
            raise RuntimeError(f"warm-up request to worker {address} returned no content")


async def run_policy(server: Server, cfg: Config, prompts: list[str], policy: str) -> RoutingResult:
    """Every client takes the next request of the shared schedule until none is left."""
    r = cfg.routing
    tenants = schedule(r)
    await _warm_workers(server)
    streams: list[Stream] = [Stream(start=0.0, error="not sent")] * len(tenants)
    order = iter(range(len(tenants)))

    async with open_sender(server, r.clients) as send:

        async def client() -> None:
            for i in order:  # one iterator for all clients: request i is the i-th sent
                streams[i] = await safe_send(send, messages(prompts, tenants, i), r.max_tokens)

        for child in server.children:
            procs.reset_peak(child.pid)
        foreign = procs.ForeignCpu([os.getpid()])
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(r.clients)))
        wall = time.perf_counter() - start
        busy = foreign.percent()
    return summarise(policy, server, tenants, streams, start, wall, busy)


# ---------------------------------------------------------------------------------------------
# Report


def _per_worker(r: RoutingResult) -> str:
    return " / ".join(f"{label} {n}" for label, n in r.per_worker.items()) or "-"


def rows(results: list[RoutingResult], busy_pct: float) -> list[list[str]]:
    """The routing table's cells, one row per policy; '!' marks a busy machine."""
    out = []
    for r in results:
        tok_s = tok_s_cell(r.tok_s, r.errors, r.foreign_cpu_pct, busy_pct)
        out.append(
            [
                r.policy,
                str(r.requests),
                f"{r.cached_tokens} / {r.prompt_tokens}",
                num(r.cached_ratio, 3),
                num(r.ttft_p50_ms),
                num(r.ttft_p95_ms),
                tok_s,
                _per_worker(r),
            ]
        )
    return out


def text_table(results: list[RoutingResult], busy_pct: float) -> str:
    """Aligned plain-text routing table."""
    return text_grid(HEADERS, rows(results, busy_pct))


def markdown_table(results: list[RoutingResult], busy_pct: float) -> str:
    """GitHub Markdown routing table."""
    return markdown_grid(HEADERS, rows(results, busy_pct))


def detail_lines(results: list[RoutingResult]) -> list[str]:
    """Per policy: which tenants each worker served, the route reasons, foreign CPU."""
    out = []
    for r in results:
        tenants = "; ".join(
            f"{label}: " + ", ".join(f"t{t}x{n}" for t, n in counts.items())
            for label, counts in r.tenants_per_worker.items()
        )
        routes = ", ".join(f"{k} {v}" for k, v in sorted(r.routes.items()))
        out.append(
            f"routing {r.policy}: tenants (tenant x requests) {tenants}; routes {routes}; "
            f"other processes used {r.foreign_cpu_pct:.0f}% of the CPU"
            + (f"; first error: {r.first_error}" if r.first_error else "")
        )
    return out


def ratios(results: list[RoutingResult]) -> list[Ratio]:
    """prefix_affinity against round_robin: cache reuse up, throughput kept."""
    by_policy = {r.policy: r for r in results if r.completion_tokens}
    pa, rr = by_policy.get("prefix_affinity"), by_policy.get("round_robin")
    return [
        Ratio(
            "routing: cached-token ratio prefix_affinity / round_robin",
            div(pa.cached_ratio if pa else None, rr.cached_ratio if rr else None),
            ">=",
            2.0,
        ),
        Ratio(
            "routing: tok/s prefix_affinity / round_robin",
            div(pa.tok_s if pa else None, rr.tok_s if rr else None),
            ">=",
            0.95,
        ),
        Ratio(
            "routing: TTFT p50 prefix_affinity / round_robin",
            div(pa.ttft_p50_ms if pa else None, rr.ttft_p50_ms if rr else None),
        ),
    ]


def setup_line(cfg: Config) -> str:
    """The routing section's fixed settings, in one sentence."""
    r = cfg.routing
    unified = ", --kv-unified" if r.kv_unified else ""
    return (
        f"Routing: {r.workers} workers (each {r.threads} thread, {r.slots} slots of "
        f"{r.ctx_per_slot} tokens{unified}) behind one gateway, all started fresh per policy; "
        f"{r.tenants} tenants with system prompts of {r.system_tokens} tokens, each request a "
        f"distinct short question; {r.requests} requests per policy in one seeded order "
        f"(seed {r.seed}) from {r.clients} streaming clients, temperature 0, ignore_eos, "
        f"max_tokens {r.max_tokens}."
    )
