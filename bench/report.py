"""The results: one table (text and Markdown), the prefix-cache lines, the ratios, JSON files."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.load import Point
from bench.prefix import PrefixResult

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
)


@dataclass
class Ratio:
    """One of our numbers divided by a peer's, against its target."""

    label: str
    value: float | None
    op: str = ""
    #: None for a ratio that is only informative.
    target: float | None = None

    @property
    def verdict(self) -> str:
        """PASS, FAIL, info, or n/a (a side is missing)."""
        if self.value is None:
            return "n/a"
        if self.target is None:
            return "info"
        ok = self.value >= self.target if self.op == ">=" else self.value <= self.target
        return "PASS" if ok else "FAIL"


@dataclass
class Results:
    """Everything one run measured."""

    started_utc: str
    config: dict[str, Any]
    machine: dict[str, Any]
    points: list[Point] = field(default_factory=list)
    prefix: list[PrefixResult] = field(default_factory=list)
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


def _num(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


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
        tok_s = _num(p.tok_s) + (f" ({p.errors} errors)" if p.errors else "")
        tok_s += " !" if p.foreign_cpu_pct > BUSY_PCT else ""
        out.append(
            [
                p.target,
                str(p.concurrency),
                tok_s,
                _num(p.ttft_p50_ms),
                _num(p.ttft_p95_ms),
                _num(p.itl_p50_ms, 2),
                _rss(p),
                _num(p.tokens_per_request),
            ]
        )
    return out


def text_table(points: list[Point]) -> str:
    """Aligned plain-text table."""
    cells = [list(HEADERS), *rows(points)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(HEADERS))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(points: list[Point]) -> str:
    """GitHub Markdown table."""
    head = "| " + " | ".join(HEADERS) + " |"
    align = "|" + "|".join([":---"] + ["---:"] * (len(HEADERS) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in rows(points)]
    return "\n".join([head, align, *body])


def _point(points: list[Point], target: str, c: int) -> Point | None:
    return next((p for p in points if p.target == target and p.concurrency == c), None)


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


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
    return [
        Ratio(
            "1 client: tok/s ours / llama-server", _div(http1, tok("llama-server", 1)), ">=", 0.95
        ),
        Ratio(
            "8 clients: tok/s ours / llama-server",
            _div(tok(OURS, 8), tok("llama-server", 8)),
            ">=",
            1.0,
        ),
        Ratio(
            "8 clients: tok/s ours / llama-cpp-python server",
            _div(tok(OURS, 8), tok("llama-cpp-python-server", 8)),
            ">=",
            2.0,
        ),
        Ratio(
            "8 clients: TTFT p50 ours / llama-server",
            _div(ttft(OURS, 8), ttft("llama-server", 8)),
            "<=",
            1.5,
        ),
        Ratio("1 client: gateway cost, 1 - tok/s HTTP / gRPC", overhead, "<=", 0.03),
        Ratio("1 client: tok/s ours / in-process llama-cpp-python", _div(http1, tok("inproc", 1))),
    ]


def busy_lines(points: list[Point]) -> list[str]:
    """A warning for the points that shared the machine with other work (marked '!')."""
    busy = [p for p in points if p.foreign_cpu_pct > BUSY_PCT]
    if not busy:
        return []
    which = ", ".join(f"{p.target}@{p.concurrency} {p.foreign_cpu_pct:.0f}%" for p in busy)
    return [f"! other processes used more than {BUSY_PCT:.0f}% of the CPU during: {which}"]


def ratio_lines(rs: list[Ratio]) -> list[str]:
    """One line per ratio."""
    return [
        f"{r.label}: {_num(r.value, 3)}"
        + ("" if r.target is None else f" (target {r.op} {r.target})")
        + f" {r.verdict}"
        for r in rs
    ]


def prefix_lines(prefix: list[PrefixResult]) -> list[str]:
    """One line per prefix-cache target."""
    out = []
    for p in prefix:
        verdict = "n/a" if p.ratio is None else ("PASS" if p.ratio <= 0.25 else "FAIL")
        out.append(
            f"prefix cache {p.target}: prompt {p.prompt_tokens} tokens, TTFT first "
            f"{_num(p.first_ttft_ms)} ms, second {_num(p.second_ttft_ms)} ms "
            f"(cached {p.second_cached_tokens}), ratio {_num(p.ratio, 3)} (target <= 0.25) "
            f"{verdict}" + (f"; errors: {p.errors}" if p.errors else "")
        )
    return out


LEGEND = (
    "tok/s: completion tokens of all requests / wall time of the point. TTFT: request sent to "
    "first content. ITL: gap between consecutive content events of one stream. Peak RSS: "
    "VmHWM during the point (inproc: the benchmark process itself). inproc and "
    "llama-cpp-python-server hold one context of ctx_per_slot tokens; the others "
    "slots x ctx_per_slot. A '!' marks a point during which other processes used the CPU."
)


def markdown_document(results: Results, rs: list[Ratio]) -> str:
    """latest.md: the table, the prefix-cache lines, the ratios and the machine."""
    m, c = results.machine, results.config
    lines = [
        f"# llamagrid benchmark, {results.started_utc}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM ({m['os']}).",
        f"Model: `{Path(c['model']).name}`; {c['threads']} threads; every server started "
        f"fresh with {c['slots']} slots of {c['ctx_per_slot']} tokens; temperature 0, "
        f"max_tokens {c['max_tokens']}; requests per client by concurrency: {c['requests']}"
        + (" (quick smoke run)" if c["quick"] else "")
        + ".",
        "",
        markdown_table(results.points),
        "",
        LEGEND,
        "",
        *[f"- {line}" for line in busy_lines(results.points) + prefix_lines(results.prefix)],
        "",
        *[f"- {line}" for line in ratio_lines(rs)],
        "",
        "Targets:",
        "",
    ]
    for target, status in results.status.items():
        notes = "; ".join(results.notes.get(target, []))
        lines.append(f"- `{target}`: {status}" + (f" ({notes})" if notes else ""))
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write(results: Results, rs: list[Ratio], out_dir: Path, quick: bool) -> list[Path]:
    """<stamp>.json, latest.json, latest.md; a quick run: <stamp>-quick.json and .md only."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(results)
    data["ratios"] = [{**asdict(r), "verdict": r.verdict} for r in rs]
    text = json.dumps(data, indent=2) + "\n"
    stamp = results.started_utc.replace(":", "").replace("-", "")
    md = markdown_document(results, rs)
    if quick:
        files = {f"{stamp}-quick.json": text, f"{stamp}-quick.md": md}
    else:
        files = {f"{stamp}.json": text, "latest.json": text, "latest.md": md}
    for name, content in files.items():
        _write(out_dir / name, content)
    return [out_dir / name for name in files]
