"""`python -m bench`: run every target, print the table and ratios, write bench/results/."""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
import traceback
from datetime import datetime, timezone
from types import FrameType

from bench import routing
from bench.config import PREFIX_TARGETS, Config, parse_args
from bench.load import Point, run_inproc, run_point, warm_up
from bench.prefix import PrefixResult, build_prefixes, run_prefix
from bench.report import (
    BUSY_PCT,
    LEGEND,
    Results,
    busy_lines,
    config_dict,
    machine,
    markdown_table,
    prefix_lines,
    ratios,
    text_table,
    write,
)
from bench.tables import ratio_lines
from bench.targets import TargetSkipped, fleet, serving


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM/SIGHUP into KeyboardInterrupt so every `finally` stops its servers.
    raise KeyboardInterrupt(f"signal {signum}")


def _say(text: str) -> None:
    print(text, flush=True)


def _progress(p: Point) -> None:
    err = f", {p.errors} errors (first: {p.first_error})" if p.errors else ""
    if p.foreign_cpu_pct > BUSY_PCT:
        err += f", WARNING: other processes used {p.foreign_cpu_pct:.0f}% of the CPU"
    cpu = ", ".join(
        f"{label} {us:.0f}" for label, us in p.cpu_us_per_token.items() if us is not None
    )
    _say(
        f"  [{p.target}] {p.concurrency} clients: {p.tok_s:.1f} tok/s, "
        f"TTFT p50 {p.ttft_p50_ms or 0:.0f} ms, {p.tokens_per_request:.1f} tok/req, "
        f"{p.tokens_per_request / (p.events_per_request or 1):.2f} tok/event, "
        f"CPU µs/tok: {cpu or '-'}, {p.wall_s:.1f} s{err}"
    )


async def _measure_server(name: str, cfg: Config, prefixes: list[str], results: Results) -> None:
    with serving(name, cfg) as server:
        results.commands[name] = server.commands()
        results.notes[name] = server.notes
        _say(f"  [{name}] ready: {server.address}")
        await warm_up(server, cfg)
        if name in PREFIX_TARGETS and prefixes:
            try:
                results.prefix.append(await run_prefix(server, cfg, prefixes))
                _say("  " + prefix_lines(results.prefix[-1:])[0])
            except Exception as e:
                results.prefix.append(
                    PrefixResult(name, 0, None, None, None, None, None, [repr(e)])
                )
                _say(f"  [{name}] prefix-cache point failed: {e!r}")
        for c in cfg.concurrency:
            point = await run_point(server, cfg, c)
            results.points.append(point)
            _progress(point)


def _measure_routing(cfg: Config, results: Results) -> None:
    """Each policy in turn on a fresh fleet, with the same prompts in the same order."""
    prompts = routing.system_prompts(cfg)
    results.notes["routing"] = [
        "tokens: usage.completion_tokens (ignore_eos: true); cached_tokens from the streamed "
        "usage (stream_options.include_usage)"
    ]
    for policy in cfg.routing.policies:
        with fleet(cfg, policy) as server:
            results.commands[f"routing-{policy}"] = server.commands()
            _say(f"  [routing {policy}] ready: {server.address} -> {', '.join(server.workers)}")
            r = asyncio.run(routing.run_policy(server, cfg, prompts, policy))
        results.routing.append(r)
        err = f", {r.errors} errors (first: {r.first_error})" if r.errors else ""
        _say(
            f"  [routing {policy}] {r.requests} requests: cached ratio "
            f"{r.cached_ratio or 0:.3f}, TTFT p50 {r.ttft_p50_ms or 0:.0f} ms, "
            f"{r.tok_s:.1f} tok/s, per worker {r.per_worker}, other processes "
            f"{r.foreign_cpu_pct:.0f}% CPU, {r.wall_s:.1f} s{err}"
        )


def _measure(name: str, cfg: Config, prefixes: list[str], results: Results) -> None:
    _say(f"== {name}")
    t0 = time.monotonic()
    try:
        if name == "inproc":
            if 1 not in cfg.concurrency:
                raise TargetSkipped("runs at 1 client only, and 1 is not in --concurrency")
            results.notes[name] = [
                "tokens: max_tokens when finish_reason is 'length', min_tokens guard"
            ]
            for point in run_inproc(cfg):
                results.points.append(point)
                _progress(point)
        elif name == "routing":
            _measure_routing(cfg, results)
        else:
            asyncio.run(_measure_server(name, cfg, prefixes, results))
        results.status[name] = "ok"
    except TargetSkipped as e:
        results.status[name] = f"skipped: {e}"
        _say(f"  [{name}] SKIPPED: {e}")
    except Exception as e:
        results.status[name] = f"failed: {type(e).__name__}: {e}"[:2000]
        _say(f"  [{name}] FAILED:\n{traceback.format_exc()}")
    _say(f"  [{name}] {time.monotonic() - t0:.0f} s")


def _report_serving(results: Results) -> None:
    _say("\n" + text_table(results.points))
    _say(textwrap.fill(LEGEND, 100))
    for line in busy_lines(results.points):
        _say(line)
    _say("")
    for line in prefix_lines(results.prefix):
        _say(line)
    _say("")
    for line in ratio_lines(ratios(results.points)):
        _say(line)


def _report_routing(results: Results, cfg: Config) -> None:
    _say("\n" + textwrap.fill(routing.setup_line(cfg), 100) + "\n")
    _say(routing.text_table(results.routing, BUSY_PCT))
    _say(textwrap.fill(routing.LEGEND, 100))
    for line in routing.detail_lines(results.routing):
        _say(line)
    _say("")
    for line in ratio_lines(routing.ratios(results.routing)):
        _say(line)


def _report(results: Results, cfg: Config) -> None:
    if results.points or results.prefix:
        _report_serving(results)
    if results.routing:
        _report_routing(results, cfg)
    for target, status in results.status.items():
        if status != "ok":
            _say(f"{target}: {status}")
    if results.points:
        _say("\nMarkdown:\n\n" + markdown_table(results.points) + "\n")
    if results.routing:
        _say("\nMarkdown (routing):\n\n" + routing.markdown_table(results.routing, BUSY_PCT))
    for path in write(results, cfg):
        _say(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Measure every target in turn, then report."""
    cfg = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    results = Results(started, config_dict(cfg), machine())
    m = results.machine
    _say(f"llamagrid bench {started}: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB")
    _say(f"model {cfg.model}, {cfg.threads} threads, {cfg.slots} slots x {cfg.ctx_per_slot} ctx")
    prefixes: list[str] = []
    if set(PREFIX_TARGETS) & set(cfg.targets):
        prefixes = build_prefixes(cfg.model, cfg.prefix_tokens, cfg.prefix_trials)
    try:
        for name in cfg.targets:
            _measure(name, cfg, prefixes, results)
    except KeyboardInterrupt as e:
        _say(
            f"interrupted ({str(e) or 'Ctrl-C'}): every server started was stopped; nothing written"
        )
        return 130
    _report(results, cfg)
    return 0 if all(s == "ok" or s.startswith("skipped") for s in results.status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
