"""The results: one table (text and Markdown), the prefix-cache lines, the ratios, JSON files."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import routing
from bench.config import TARGETS, Config
from bench.load import Point
from bench.prefix import PrefixResult
from bench.tables import Ratio, div, markdown_grid, num, ratio_lines, text_grid, tok_s_cell

OURS = "llamagrid-http"
#: A point during which other processes used more of the CPU than this (%) is flagged.
BUSY_PCT = 5.0
HEADERS = (
    "target",
    "clients",
    "tok/s",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "ITL p50 ms",
    "peak RSS MiB",
    "tok/req",
    "gateway CPU µs/tok",
)


@dataclass
class Results:
    """Everything one run measured."""

    started_utc: str
    config: dict[str, Any]
    machine: dict[str, Any]
    points: list[Point] = field(default_factory=list)
    prefix: list[PrefixResult] = field(default_factory=list)
    routing: list[routing.RoutingResult] = field(default_factory=list)
    #: Per target: "ok", or why it was skipped or failed.
    status: dict[str, str] = field(default_factory=dict)
    commands: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)


def machine() -> dict[str, Any]:
    """CPU model, cores and RAM of this machine."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0))
    return {"cpu": cpu, "cores": cores, "ram_gib": ram_gib, "os": platform.platform()}


def config_dict(cfg: Config) -> dict[str, Any]:
    """The run's settings, JSON-ready."""
    d = asdict(cfg)
    d["model"] = str(cfg.model)
    d["out_dir"] = str(cfg.out_dir)
    d["requests"] = {str(k): v for k, v in cfg.requests.items()}
    d["n_ctx"] = cfg.n_ctx
    return d


def _rss(p: Point) -> str:
    parts = {k: v for k, v in p.peak_rss_mib.items() if v is not None}
    if not parts:
        return "-"
    total = sum(parts.values())
    if len(parts) == 1:
        return f"{total:.0f}"
    return f"{total:.0f} (" + " + ".join(f"{k} {v:.0f}" for k, v in parts.items()) + ")"


def rows(points: list[Point]) -> list[list[str]]:
    """The table's cells, one row per target and concurrency."""
    out = []
    for p in points:
        tok_s = tok_s_cell(p.tok_s, p.errors, p.foreign_cpu_pct, BUSY_PCT)
        out.append(
            [
                p.target,
                str(p.concurrency),
                tok_s,
                num(p.ttft_p50_ms),
                num(p.ttft_p95_ms),
                num(p.itl_p50_ms, 2),
                _rss(p),
                num(p.tokens_per_request),
                num(p.gateway_cpu_us_per_token, 0),
            ]
        )
    return out


def text_table(points: list[Point]) -> str:
    """Aligned plain-text table."""
    return text_grid(HEADERS, rows(points))


def markdown_table(points: list[Point]) -> str:
    """GitHub Markdown table."""
    return markdown_grid(HEADERS, rows(points))


def _point(points: list[Point], target: str, c: int) -> Point | None:
    return next((p for p in points if p.target == target and p.concurrency == c), None)


def ratios(points: list[Point]) -> list[Ratio]:
    """Our numbers against each peer's, with the targets of design.md section 5."""

    def tok(target: str, c: int) -> float | None:
        p = _point(points, target, c)
        return p.tok_s if p and p.completion_tokens else None

    def ttft(target: str, c: int) -> float | None:
        p = _point(points, target, c)
        return p.ttft_p50_ms if p else None

    http1, grpc1 = tok(OURS, 1), tok("llamagrid-grpc", 1)
    overhead = None if http1 is None or not grpc1 else 1 - http1 / grpc1
    http8 = _point(points, OURS, 8)
    return [
        Ratio(
            "1 client: tok/s ours / llama-server", div(http1, tok("llama-server", 1)), ">=", 0.95
        ),
        Ratio(
            "8 clients: tok/s ours / llama-server",
            div(tok(OURS, 8), tok("llama-server", 8)),
            ">=",
            1.0,
        ),
        Ratio(
            "8 clients: tok/s ours / llama-cpp-python server",
            div(tok(OURS, 8), tok("llama-cpp-python-server", 8)),
            ">=",
            2.0,
        ),
        Ratio(
            "8 clients: TTFT p50 ours / llama-server",
            div(ttft(OURS, 8), ttft("llama-server", 8)),
            "<=",
            1.5,
        ),
        Ratio("1 client: gateway cost, 1 - tok/s HTTP / gRPC", overhead, "<=", 0.03),
        Ratio(
            "8 clients: tok/s HTTP / gRPC", div(tok(OURS, 8), tok("llamagrid-grpc", 8)), ">=", 0.95
        ),
        Ratio(
            "8 clients: gateway CPU per streamed token, µs",
            http8.gateway_cpu_us_per_token if http8 else None,
            "<=",
            50.0,
        ),
        Ratio("1 client: tok/s ours / in-process llama-cpp-python", div(http1, tok("inproc", 1))),
    ]


def busy_lines(points: list[Point]) -> list[str]:
    """A warning for the points that shared the machine with other work (marked '!')."""
    busy = [p for p in points if p.foreign_cpu_pct > BUSY_PCT]
    if not busy:
        return []
    which = ", ".join(f"{p.target}@{p.concurrency} {p.foreign_cpu_pct:.0f}%" for p in busy)
    return [f"! other processes used more than {BUSY_PCT:.0f}% of the CPU during: {which}"]


def prefix_lines(prefix: list[PrefixResult]) -> list[str]:
    """One line per prefix-cache target."""
    out = []
    for p in prefix:
        verdict = "n/a" if p.ratio is None else ("PASS" if p.ratio <= 0.25 else "FAIL")
        out.append(
            f"prefix cache {p.target}: prompt {p.prompt_tokens} tokens, TTFT first "
            f"{num(p.first_ttft_ms)} ms, second {num(p.second_ttft_ms)} ms "
            f"(cached {p.second_cached_tokens}), ratio {num(p.ratio, 3)} (target <= 0.25) "
            f"{verdict}" + (f"; errors: {p.errors}" if p.errors else "")
        )
    return out


LEGEND = (
    "tok/s: completion tokens of all requests / wall time of the point. TTFT: request sent to "
    "first content. ITL: gap between consecutive content events of one stream. Peak RSS: "
    "VmHWM during the point (inproc: the benchmark process itself). Gateway CPU: user + system "
    "time of the gateway process during the point (/proc/PID/stat, 10 ms ticks) / completion "
    "tokens streamed. inproc and "
    "llama-cpp-python-server hold one context of ctx_per_slot tokens; the others "
    "slots x ctx_per_slot. A '!' marks a point during which other processes used the CPU."
)


def _serving_section(results: Results, rs: list[Ratio]) -> list[str]:
    c = results.config
    return [
        f"Model: `{Path(c['model']).name}`; {c['threads']} threads; every server started "
        f"fresh with {c['slots']} slots of {c['ctx_per_slot']} tokens; temperature 0, "
        f"max_tokens {c['max_tokens']}; requests per client by concurrency: {c['requests']}.",
        "",
        markdown_table(results.points),
        "",
        LEGEND,
        "",
        *[f"- {line}" for line in busy_lines(results.points) + prefix_lines(results.prefix)],
        "",
        *[f"- {line}" for line in ratio_lines(rs)],
        "",
    ]


def _routing_section(results: Results, rs: list[Ratio], setup: str) -> list[str]:
    return [
        "## Fleet routing",
        "",
        setup,
        "",
        routing.markdown_table(results.routing, BUSY_PCT),
        "",
        routing.LEGEND,
        "",
        *[f"- {line}" for line in routing.detail_lines(results.routing)],
        "",
        *[f"- {line}" for line in ratio_lines(rs)],
        "",
    ]


def markdown_document(
    results: Results, rs: list[Ratio], routing_rs: list[Ratio], routing_setup: str
) -> str:
    """latest.md: the machine, each section's table, lines and ratios, the targets' status."""
    m = results.machine
    lines = [
        f"# llamagrid benchmark, {results.started_utc}"
        + (" (quick smoke run)" if results.config["quick"] else ""),
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM ({m['os']}).",
        "",
    ]
    if results.points or results.prefix:
        lines += _serving_section(results, rs)
    if results.routing:
        lines += _routing_section(results, routing_rs, routing_setup)
    lines += ["Targets:", ""]
    for target, status in results.status.items():
        notes = "; ".join(results.notes.get(target, []))
        lines.append(f"- `{target}`: {status}" + (f" ({notes})" if notes else ""))
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write(results: Results, cfg: Config) -> list[Path]:
    """<stamp>.json, latest.json, latest.md for a full run of every target; a quick run or one
    of some targets only: <stamp>-quick.* or <stamp>-<targets>.* (latest.* keep the full run)."""
    rs, routing_rs = ratios(results.points), routing.ratios(results.routing)
    out_dir = cfg.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(results)
    data["ratios"] = [{**asdict(r), "verdict": r.verdict} for r in rs + routing_rs]
    text = json.dumps(data, indent=2) + "\n"
    stamp = results.started_utc.replace(":", "").replace("-", "")
    md = markdown_document(results, rs, routing_rs, routing.setup_line(cfg))
    if cfg.quick or set(cfg.targets) != set(TARGETS):
        suffix = "quick" if cfg.quick else "-".join(cfg.targets)
        files = {f"{stamp}-{suffix}.json": text, f"{stamp}-{suffix}.md": md}
    else:
        files = {f"{stamp}.json": text, "latest.json": text, "latest.md": md}
    for name, content in files.items():
        _write(out_dir / name, content)
    return [out_dir / name for name in files]
