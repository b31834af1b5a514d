"""Multi-turn conversations: llamagrid sessions against resending the history (issue 12).

`python -m bench.multiturn` runs one workload on fresh servers, side by side:

- ``sessions``: llamagrid's gateway, each conversation a session, each turn only its new
  message (``/v1/sessions/{id}/chat/completions``);
- ``stateless``: the same gateway and worker, each turn resending the whole history
  (``/v1/chat/completions``), served by the prefix cache while a slot still holds it;
- ``llama-server``: llama.cpp's server resending the history, with ``cache_prompt`` and its
  host-RAM prompt cache (skipped, and said so, when it cannot be built here).

The workload: ``--conversations`` conversations of ``--turns`` turns each, run by ``--clients``
concurrent clients, each client taking its conversations turn by turn in round-robin so that
there are always more conversations than slots. Every user message is ~``--message-words``
words, every answer ``--answer-tokens`` tokens (greedy, ignore_eos): the history grows to about
``turns * (message + answer)`` tokens. Reported: TTFT p50 per turn, prompt tokens computed per
turn (llamagrid: ``prompt_tokens - cached_tokens``; llama-server: ``timings.prompt_n``), total
tok/s and the servers' peak RSS, and the targets:

- turn-10 TTFT at most 1.3x turn-2's (sessions);
- a swap-in (the host tier restoring a session) costs at most 10% of a prefill of the same
  tokens: the worker's prefill time of a restored turn against a stateless turn that prefilled
  the same history (same conversation, same turn);
- sessions' TTFT p50 at most 0.8x llama-server's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from bench import procs
from bench.config import RESULTS, default_model
from bench.targets import Server, TargetSkipped, llama_server_binary, start_worker

WORDS = [
    "river",
    "stone",
    "cloud",
    "lantern",
    "orchard",
    "harbor",
    "meadow",
    "copper",
    "violin",
    "garden",
    "falcon",
    "pepper",
    "window",
    "marble",
    "canyon",
    "thistle",
    "ember",
    "quartz",
    "willow",
    "saddle",
    "beacon",
    "tundra",
    "velvet",
]


@dataclass
class Turn:
    """One turn as a client saw it."""

    conversation: int
    turn: int
    ttft_s: float
    completion_tokens: int
    prompt_tokens: int
    #: Prompt tokens the server computed for this turn.
    computed_tokens: int
    #: Prompt tokens restored from the host tier (llamagrid sessions).
    restored_tokens: int = 0


@dataclass
class Result:
    target: str
    turns: list[Turn] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss_mib: dict[str, float | None] = field(default_factory=dict)
    skipped: str = ""
    #: Sessions only: what a swap-in costs (swap_in_cost).
    swap_in: dict[str, float] = field(default_factory=dict)


def message(conversation: int, turn: int, words: int) -> str:
    """A user message unique to its conversation and turn."""
    picked = [WORDS[(conversation * 7 + turn * 3 + i) % len(WORDS)] for i in range(words)]
    return f"Conversation {conversation}, turn {turn}: " + " ".join(picked) + ". Reply briefly."


async def stream_turn(
    http: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[float, str, dict[str, Any]]:
    """Stream one chat turn: TTFT, the answer and the last event carrying usage or timings."""
    started = time.perf_counter()
    ttft, text, last = 0.0, "", {}
    async with http.stream("POST", url, json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {reply.status_code}: {(await reply.aread())[:300]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    ttft = ttft or time.perf_counter() - started
                    text += content
            if event.get("usage") or event.get("timings"):
                last = event
    return ttft, text, last


async def run_workload(target: str, base_url: str, model: str, args: argparse.Namespace) -> Result:
    """Every conversation, turn by turn; returns what each turn cost."""
    result = Result(target)
    # A new connection per turn, for every target alike: llama-server closes a keep-alive
    # connection idle for 5 s, and a turn sent on one it has just closed fails.
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=900, limits=limits) as http:
        session_ids: list[str] = []
        if target == "sessions":
            for _ in range(args.conversations):
                opened = await http.post("/v1/sessions", json={"model": model})
                opened.raise_for_status()
                session_ids.append(opened.json()["id"])
        histories: list[list[dict[str, str]]] = [[] for _ in range(args.conversations)]
        mine = [list(range(c, args.conversations, args.clients)) for c in range(args.clients)]

        async def client(conversations: list[int]) -> None:
            for turn in range(1, args.turns + 1):
                for c in conversations:
                    user = {"role": "user", "content": message(c, turn, args.message_words)}
                    body: dict[str, Any] = {
                        "model": model,
                        "max_tokens": args.answer_tokens,
                        "temperature": 0.0,
                        "ignore_eos": True,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                    }
                    if target == "sessions":
                        url = f"/v1/sessions/{session_ids[c]}/chat/completions"
                        body["messages"] = [user]
                    else:
                        url = "/v1/chat/completions"
                        body["messages"] = [*histories[c], user]
                        if target == "llama-server":
                            body["cache_prompt"] = True
                    ttft, text, last = await stream_turn(http, url, body)
                    histories[c] += [user, {"role": "assistant", "content": text}]
                    result.turns.append(measure(c, turn, ttft, last))

        started = time.perf_counter()
        await asyncio.gather(*(client(m) for m in mine))
        result.wall_s = time.perf_counter() - started
    return result


def measure(conversation: int, turn: int, ttft: float, last: dict[str, Any]) -> Turn:
    usage = last.get("usage") or {}
    timings = last.get("timings") or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    computed = int(timings["prompt_n"]) if "prompt_n" in timings else prompt - cached
    return Turn(
        conversation,
        turn,
        ttft,
        int(usage.get("completion_tokens") or 0),
        prompt,
        computed,
    )


def start_llamagrid(log_dir: Path, args: argparse.Namespace) -> Server:
    server = Server("llamagrid", "http", "")
    extra = ("--host-cache-mib", str(args.host_cache_mib), "--max-sessions", "4096")
    server.workers.append(
        start_worker(
            server,
            log_dir,
            args.model,
            threads=args.threads,
            slots=args.slots,
            n_ctx=args.slots * args.ctx_per_slot,
            extra=extra,
        )
    )
    target = server.workers[0]
    port = procs.free_port()
    argv = [sys.executable, "-m", "llamagrid.gateway", "--worker", target, "--port", str(port)]
    server.children.append(procs.launch("gateway", argv, log_dir))
    server.address = f"http://127.0.0.1:{port}"
    procs.wait_http_ok(f"{server.address}/health", server.children[-1])
    server.model = httpx.get(f"{server.address}/v1/models").json()["data"][0]["id"]
    return server


def start_llama_server(log_dir: Path, args: argparse.Namespace) -> Server:
    binary = llama_server_binary()
    server = Server("llama-server", "http", "")
    port = procs.free_port()
    argv = [binary, "-m", str(args.model), "-t", str(args.threads), "-tb", str(args.threads)]
    argv += ["-np", str(args.slots), "-c", str(args.slots * args.ctx_per_slot), "--no-webui"]
    argv += ["--cache-ram", str(args.host_cache_mib), "--host", "127.0.0.1", "--port", str(port)]
    server.children.append(procs.launch("server", argv, log_dir))
    server.address = f"http://127.0.0.1:{port}"
    procs.wait_http_ok(f"{server.address}/health", server.children[-1])
    server.model = httpx.get(f"{server.address}/v1/models").json()["data"][0]["id"]
    return server


def run_target(target: str, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = (start_llama_server if target == "llama-server" else start_llamagrid)(
                Path(tmp), args
            )
        except TargetSkipped as skipped:
            return Result(target, skipped=str(skipped))
        try:
            for child in server.children:
                procs.reset_peak(child.pid)
            result = asyncio.run(run_workload(target, server.address, server.model, args))
            result.peak_rss_mib = {c.label: procs.peak_rss_mib(c.pid) for c in server.children}
            if target == "sessions":
                result.swap_in = swap_in_cost(server.workers[0], args.swap_tokens, args.slots)
            return result
        finally:
            for child in reversed(server.children):
                procs.stop(child)


def swap_in_cost(worker: str, tokens: int, slots: int) -> dict[str, float]:
    """The worker's prefill time for a session turn whose history (``tokens`` long) came back
    from the host tier, against a fresh prefill of as many tokens; and the worker's totals."""
    import grpc

    from llamagrid.v1 import inference_pb2 as pb
    from llamagrid.v1 import inference_pb2_grpc as pb_grpc

    def text(seed: int) -> str:
        return " ".join(WORDS[(seed * 5 + i) % len(WORDS)] for i in range(tokens))

    with grpc.insecure_channel(worker) as channel:
        sessions = pb_grpc.SessionServiceStub(channel)
        inference = pb_grpc.InferenceServiceStub(channel)
        one = pb.SamplingParams(max_tokens=1, temperature=0.0)

        def final(request: pb.GenerateRequest) -> pb.GenerateFinal:
            *_, last = inference.Generate(request, timeout=600)
            return last.final

        opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=30).session.session_id
        ref = pb.SessionRef(session_id=opened)
        final(pb.GenerateRequest(prompt=text(1), sampling=one, session=ref))
        # Every slot busy at once with other prompts: the session's sequence is taken (anonymous
        # prefixes go first, so sequential requests would never reach it) and saved.
        busy = pb.SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
        others = [
            pb.GenerateRequest(prompt=f"{n} " + text(n)[:200], sampling=busy)
            for n in range(2, 2 + slots)
        ]
        with ThreadPoolExecutor(slots) as pool:
            list(pool.map(final, others))
        restored = final(pb.GenerateRequest(prompt=" ok", sampling=one, session=ref))
        fresh = final(pb.GenerateRequest(prompt=text(99), sampling=one))
        load = inference.GetLoad(pb.GetLoadRequest(), timeout=30)
    return {
        "restored_tokens": restored.usage.restored_tokens,
        "restored_prefill_ms": round(restored.usage.prefill_ms, 2),
        "fresh_prefill_tokens": fresh.usage.prefilled_tokens,
        "fresh_prefill_ms": round(fresh.usage.prefill_ms, 2),
        "host_cache_restores": load.host_cache_restores,
        "session_tokens_reprefilled": load.session_tokens_reprefilled,
    }


def p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(results: list[Result], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"targets": {}, "checks": []}
    for r in results:
        if r.skipped:
            out["targets"][r.target] = {"skipped": r.skipped}
            continue
        by_turn = {t: [x for x in r.turns if x.turn == t] for t in range(1, args.turns + 1)}
        tokens = sum(x.completion_tokens for x in r.turns)
        out["targets"][r.target] = {
            "ttft_p50_ms_by_turn": {
                t: round((p50([x.ttft_s for x in xs]) or 0) * 1000, 1) for t, xs in by_turn.items()
            },
            "computed_prompt_tokens_by_turn": {
                t: round(statistics.mean(x.computed_tokens for x in xs), 1)
                for t, xs in by_turn.items()
            },
            "prompt_tokens_by_turn": {
                t: round(statistics.mean(x.prompt_tokens for x in xs), 1)
                for t, xs in by_turn.items()
            },
            "ttft_p50_ms": round((p50([x.ttft_s for x in r.turns]) or 0) * 1000, 1),
            "tok_s": round(tokens / r.wall_s, 1) if r.wall_s else None,
            "peak_rss_mib": r.peak_rss_mib,
        }
        if r.swap_in:
            out["targets"][r.target]["swap_in"] = r.swap_in
    sessions = out["targets"].get("sessions", {})
    if "ttft_p50_ms_by_turn" in sessions:
        by_turn = sessions["ttft_p50_ms_by_turn"]
        ratio = by_turn[args.turns] / by_turn[2] if by_turn.get(2) else None
        out["checks"].append(
            check(f"sessions: turn-{args.turns} TTFT / turn-2 TTFT", ratio, "<=", 1.3)
        )
    swap = sessions.get("swap_in", {})
    if swap.get("restored_tokens") and swap.get("fresh_prefill_ms"):
        ratio = swap["restored_prefill_ms"] / swap["fresh_prefill_ms"]
        out["checks"].append(check("swap-in / prefill of the same tokens", ratio, "<=", 0.1))
    server = out["targets"].get("llama-server", {})
    if "ttft_p50_ms" in sessions and "ttft_p50_ms" in server:
        ratio = sessions["ttft_p50_ms"] / server["ttft_p50_ms"]
        out["checks"].append(check("TTFT p50 sessions / llama-server", ratio, "<=", 0.8))
    return out


def check(name: str, value: float | None, op: str, target: float) -> dict[str, Any]:
    ok = value is not None and (value <= target if op == "<=" else value >= target)
    verdict = "n/a" if value is None else ("PASS" if ok else "FAIL")
    return {
        "name": name,
        "value": None if value is None else round(value, 3),
        "target": f"{op} {target}",
        "verdict": verdict,
    }


def table(out: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "| target | "
        + " | ".join(f"turn {t}" for t in range(1, args.turns + 1))
        + " | TTFT p50 ms | tok/s | peak RSS MiB |",
        "|:---|" + "---:|" * (args.turns + 3),
    ]
    for name, t in out["targets"].items():
        if "skipped" in t:
            lines.append(f"| {name} | skipped: {t['skipped']} |")
            continue
        cells = [
            f"{t['ttft_p50_ms_by_turn'][k]:.0f} ms / {t['computed_prompt_tokens_by_turn'][k]:.0f}"
            for k in range(1, args.turns + 1)
        ]
        rss = sum(v for v in t["peak_rss_mib"].values() if v)
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {t['ttft_p50_ms']} | {t['tok_s']} | {rss:.0f} |"
        )
    lines.append("")
    lines.append("Each turn cell: TTFT p50 / prompt tokens computed (mean over conversations).")
    for c in out["checks"]:
        lines.append(f"- {c['name']}: {c['value']} (target {c['target']}) {c['verdict']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.multiturn", description=__doc__)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--targets", default="sessions,stateless,llama-server")
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--message-words", type=int, default=100)
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-per-slot", type=int, default=3072)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--host-cache-mib", type=int, default=4096)
    parser.add_argument(
        "--swap-tokens", type=int, default=1500, help="history length of the swap-in check"
    )
    parser.add_argument("--quick", action="store_true", help="8 conversations of 4 turns")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.model = args.model or default_model()
    if args.quick:
        args.conversations, args.turns, args.message_words = 12, 4, 40
        args.answer_tokens, args.swap_tokens = 16, 600
    results = []
    for target in args.targets.split(","):
        if target not in ("sessions", "stateless", "llama-server"):
            parser.error(f"unknown target {target!r}")
        result = run_target(target, args)
        took = f"skipped: {result.skipped}" if result.skipped else f"{result.wall_s:.1f} s"
        print(f"{target}: {took}", flush=True)
        results.append(result)
    out = summary(results, args)
    out["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"{stamp}-multiturn.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    text = table(out, args)
    path.with_suffix(".md").write_text(text + "\n")
    print(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
