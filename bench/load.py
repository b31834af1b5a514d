"""Clients and measurement: streamed chat requests over HTTP/SSE, gRPC or in-process."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import procs
from bench.config import Config, prompt
from bench.targets import Server

Messages = list[tuple[str, str]]
Send = Callable[[Messages, int], Awaitable["Stream"]]


@dataclass
class Stream:
    """The timeline of one streamed request."""

    start: float
    #: Arrival time of each event that carried content (text or token ids).
    arrivals: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None
    #: The gateway's X-Llamagrid-Worker and X-Llamagrid-Route response headers, if any.
    worker: str | None = None
    route: str | None = None

    @property
    def ttft(self) -> float | None:
        """Seconds from sending the request to the first content."""
        return self.arrivals[0] - self.start if self.arrivals else None


@dataclass
class Point:
    """One target at one concurrency."""

    target: str
    concurrency: int
    requests: int
    wall_s: float
    completion_tokens: int
    tok_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    tokens_per_request: float
    #: Content events (SSE chunks or gRPC messages) per request: tokens/events > 1 means
    #: the server sent several tokens in one event (ITL is measured between events).
    events_per_request: float
    errors: int
    first_error: str | None
    #: Peak RSS (VmHWM) during the point, by process label ("worker", "gateway", "server", ...).
    peak_rss_mib: dict[str, float | None]
    #: CPU used by processes other than the benchmark and its servers, in % of the machine.
    foreign_cpu_pct: float = 0.0
    #: CPU time (user + system, from /proc/PID/stat) each server process used during the point,
    #: per completion token streamed, in microseconds, by process label ("worker", "gateway",
    #: ...), and "client": the benchmark's own process, which runs the clients.
    cpu_us_per_token: dict[str, float | None] = field(default_factory=dict)

    @property
    def gateway_cpu_us_per_token(self) -> float | None:
        """The gateway's CPU per streamed token (None for targets without a gateway)."""
        return self.cpu_us_per_token.get("gateway")


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000


def summarise(
    server: str,
    concurrency: int,
    streams: list[Stream],
    wall: float,
    rss: dict[str, float | None],
    foreign_cpu_pct: float = 0.0,
    cpu_s: dict[str, float] | None = None,
) -> Point:
    """Aggregate the streams of one point."""
    ok = [s for s in streams if s.error is None]
    errors = [s.error for s in streams if s.error is not None]
    tokens = sum(s.tokens for s in ok)
    ttfts = [t for s in ok if (t := s.ttft) is not None]
    gaps = [b - a for s in ok for a, b in zip(s.arrivals, s.arrivals[1:], strict=False)]
    return Point(
        target=server,
        concurrency=concurrency,
        requests=len(streams),
        wall_s=wall,
        completion_tokens=tokens,
        tok_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_ms=_ms(percentile(ttfts, 50)),
        ttft_p95_ms=_ms(percentile(ttfts, 95)),
        itl_p50_ms=_ms(percentile(gaps, 50)),
        tokens_per_request=tokens / len(ok) if ok else 0.0,
        events_per_request=sum(len(s.arrivals) for s in ok) / len(ok) if ok else 0.0,
        errors=len(errors),
        first_error=errors[0] if errors else None,
        peak_rss_mib=rss,
        foreign_cpu_pct=foreign_cpu_pct,
        cpu_us_per_token={
            label: None if used is None or not tokens else used * 1e6 / tokens
            for label, used in (cpu_s or {}).items()
        },
    )


# ---------------------------------------------------------------------------------------------
# HTTP (OpenAI chat completions, SSE parsed here)


def _read_event(event: dict[str, Any], s: Stream, now: float) -> str | None:
    """Record one SSE event; returns its finish_reason, if any."""
    usage = event.get("usage")
    if usage:
        s.tokens = int(usage.get("completion_tokens") or 0)
        s.prompt_tokens = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        if details.get("cached_tokens") is not None:
            s.cached_tokens = int(details["cached_tokens"])
    timings = event.get("timings")  # llama-server
    if timings and timings.get("cache_n") is not None:
        s.cached_tokens = int(timings["cache_n"])
    finish = None
    for choice in event.get("choices") or []:
        if (choice.get("delta") or {}).get("content"):
            s.arrivals.append(now)
        finish = choice.get("finish_reason") or finish
    return finish


async def http_chat(
    client: httpx.AsyncClient, server: Server, messages: Messages, max_tokens: int
) -> Stream:
    """One streamed chat completion; tokens from usage, else counted (see Server.notes)."""
    body = {
        "model": server.model,
        "messages": [{"role": r, "content": c} for r, c in messages],
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        **server.extra_body,
    }
    s = Stream(start=time.perf_counter())
    finish: str | None = None
    url = f"{server.address}/v1/chat/completions"
    async with client.stream("POST", url, json=body) as reply:
        s.worker = reply.headers.get("x-llamagrid-worker")
        s.route = reply.headers.get("x-llamagrid-route")
        if reply.status_code != 200:
            s.error = f"HTTP {reply.status_code}: {(await reply.aread())[:300]!r}"
            return s
        async for line in reply.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            finish = _read_event(json.loads(data), s, time.perf_counter()) or finish
    if s.tokens == 0:
        s.tokens = max_tokens if finish == "length" else len(s.arrivals)
    return s


# ---------------------------------------------------------------------------------------------
# gRPC (llamagrid.v1 straight to the worker)


async def grpc_chat(client: Any, messages: Messages, max_tokens: int) -> Stream:
    """One Generate call on an AsyncInferenceClient; tokens counted from chunk.token_ids."""
    from llamagrid.v1 import inference_pb2 as pb

    request = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role=r, content=c) for r, c in messages]),
        sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
    )
    s = Stream(start=time.perf_counter())
    async for message in client.generate(request):
        now = time.perf_counter()
        if message.HasField("chunk"):
            n = len(message.chunk.token_ids)
            if n or message.chunk.text:
                s.arrivals.append(now)
            s.tokens += n
        elif message.HasField("final"):
            s.prompt_tokens = message.final.usage.prompt_tokens
            s.cached_tokens = message.final.usage.cached_tokens
    return s


@asynccontextmanager
async def open_sender(server: Server, concurrency: int) -> AsyncIterator[Send]:
    """A function that sends one chat request to server, good for `concurrency` at once."""
    if server.protocol == "grpc":
        from llamagrid.client import AsyncInferenceClient

        async with AsyncInferenceClient(server.address) as grpc_client:

            async def send_grpc(messages: Messages, max_tokens: int) -> Stream:
                return await grpc_chat(grpc_client, messages, max_tokens)

            yield send_grpc
        return
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(900.0)) as http:

        async def send_http(messages: Messages, max_tokens: int) -> Stream:
            return await http_chat(http, server, messages, max_tokens)

        yield send_http


async def safe_send(send: Send, messages: Messages, max_tokens: int) -> Stream:
    """send, with an exception recorded as the stream's error."""
    start = time.perf_counter()
    try:
        return await send(messages, max_tokens)
    except Exception as e:  # a failed request is counted, not fatal
        return Stream(start=start, error=f"{type(e).__name__}: {e}"[:300])


async def _client(
    send: Send, concurrency: int, client: int, requests: int, max_tokens: int
) -> list[Stream]:
    out = []
    for r in range(requests):
        out.append(await safe_send(send, [("user", prompt(concurrency, client, r))], max_tokens))
    return out


def _reset_peaks(server: Server) -> None:
    for child in server.children:
        procs.reset_peak(child.pid)


def _read_peaks(server: Server) -> dict[str, float | None]:
    return {child.label: procs.peak_rss_mib(child.pid) for child in server.children}


def _read_cpu(server: Server) -> dict[str, float]:
    """CPU seconds used so far by each server process (and its descendants), by label, and by
    this process (the clients)."""
    used = {child.label: procs.tree_cpu_s([child.pid]) for child in server.children}
    return {**used, "client": time.process_time()}


def _cpu_since(server: Server, before: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process used since `before`."""
    return {label: used - before[label] for label, used in _read_cpu(server).items()}


async def run_point(server: Server, cfg: Config, concurrency: int) -> Point:
    """`concurrency` clients, each sending its requests back to back."""
    requests = cfg.requests[concurrency]
    async with open_sender(server, concurrency) as send:
        _reset_peaks(server)
        foreign = procs.ForeignCpu([os.getpid()])
        cpu = _read_cpu(server)
        start = time.perf_counter()
        per_client = await asyncio.gather(
            *(_client(send, concurrency, c, requests, cfg.max_tokens) for c in range(concurrency))
        )
        wall = time.perf_counter() - start
        used = _cpu_since(server, cpu)
        busy = foreign.percent()
    streams = [s for streams in per_client for s in streams]
    return summarise(server.name, concurrency, streams, wall, _read_peaks(server), busy, used)


async def warm_up(server: Server, cfg: Config) -> Stream:
    """One request outside the measured prompts; raises when it fails."""
    async with open_sender(server, 1) as send:
        s = await send([("user", "Write a short story about a warm-up run.")], cfg.max_tokens)
    if s.error or not s.arrivals:
        raise RuntimeError(f"warm-up request failed: {s.error or 'no content'}")
    return s


# ---------------------------------------------------------------------------------------------
# In-process llama-cpp-python (concurrency 1)


def _inproc_request(llm: Any, messages: Messages, max_tokens: int) -> Stream:
    import llama_cpp

    # The same EOS guard llama-cpp-python's server applies for `min_tokens`.
    guard = llama_cpp.MinTokensLogitsProcessor(max_tokens, llm.token_eos())
    s = Stream(start=time.perf_counter())
    finish = None
    for chunk in llm.create_chat_completion(
        messages=[{"role": r, "content": c} for r, c in messages],
        max_tokens=max_tokens,
        temperature=0.0,
        stream=True,
        logits_processor=llama_cpp.LogitsProcessorList([guard]),
    ):
        now = time.perf_counter()
        choice = chunk["choices"][0]
        if choice["delta"].get("content"):
            s.arrivals.append(now)
        finish = choice.get("finish_reason") or finish
    s.tokens = max_tokens if finish == "length" else len(s.arrivals)
    return s


def run_inproc(cfg: Config) -> list[Point]:
    """llama_cpp.Llama in this process, one stream: the floor for Python overhead."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(cfg.model),
        n_threads=cfg.threads,
        n_threads_batch=cfg.threads,
        n_ctx=cfg.ctx_per_slot,
        verbose=False,
    )
    try:
        _inproc_request(llm, [("user", "Write a short story about a warm-up run.")], cfg.max_tokens)
        procs.reset_peak(os.getpid())
        foreign = procs.ForeignCpu([os.getpid()])
        start = time.perf_counter()
        streams = [
            _inproc_request(llm, [("user", prompt(1, 0, r))], cfg.max_tokens)
            for r in range(cfg.requests[1])
        ]
        wall = time.perf_counter() - start
        busy = foreign.percent()
        rss = {"bench process": procs.peak_rss_mib(os.getpid())}
        return [summarise("inproc", 1, streams, wall, rss, busy)]
    finally:
        llm.close()
