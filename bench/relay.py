"""The gateway's CPU per relayed token, with the model taken out of the measurement.

`python -m bench.relay` starts a token source that speaks the worker's gRPC contract (it admits
every call at once and, every ``--step-ms``, gives each running call one token, like an engine
step of continuous batching), a real gateway in front of it, and raw HTTP/1.1 clients that
stream chat completions and only count bytes. It reports the gateway's CPU time (user + system,
/proc) per streamed token, with the Relay stream and with one gRPC call per request
(``--no-relay``). On the real model the worker takes the CPU the gateway leaves, so this is the
number that decides how many tokens one gateway process can relay.

Next to it, two floors measured on the same machine with the same steps: the CPU per token of a
bare Relay reader (``llamagrid.relay``, the gateway's own client, reading every call with no HTTP
at all), and of a bare asyncio socket that receives one small message per step (what one wake-up
costs here). The gateway's own work per token is its number minus the reader's.

`python -m bench.relay source --port P` runs the token source alone; ``feed`` is the feeder of
the wake-up floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from bench import procs
from bench.config import RESULTS
from llamagrid.grpc_options import server_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.rpc.relay import serve_relay

MODEL = "relay-bench"


class TokenSource(pb_grpc.InferenceServiceServicer):
    """Every call is admitted at once and gets one token per step."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s
        self.tick = asyncio.Event()
        self.running = 0

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            tick, self.tick = self.tick, asyncio.Event()
            tick.set()

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[Any]:
        await context.send_initial_metadata(())
        self.running += 1
        try:
            tokens = request.sampling.max_tokens or 16
            for i in range(tokens):
                await self.tick.wait()
                yield pb.GenerateResponse(chunk=pb.GenerateChunk(text=" tok", token_ids=[i]))
            usage = pb.Usage(prompt_tokens=8, completion_tokens=tokens)
            yield pb.GenerateResponse(
                final=pb.GenerateFinal(finish_reason=pb.FINISH_REASON_LENGTH, usage=usage)
            )
        finally:
            self.running -= 1

    async def Relay(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for message in serve_relay(self.Generate, request_iterator, context, 1024):
            yield message

    def _info(self) -> pb.ModelInfo:
        return pb.ModelInfo(
            alias=MODEL, context_size=4096, capabilities=[pb.CAPABILITY_GENERATE], slots=64
        )

    async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[self._info()])

    async def GetModelInfo(self, request: Any, context: Any) -> pb.GetModelInfoResponse:
        return pb.GetModelInfoResponse(info=self._info())

    async def GetLoad(self, request: Any, context: Any) -> pb.GetLoadResponse:
        return pb.GetLoadResponse(active_requests=self.running, slots=64)


async def serve_source(port: int, step_ms: float) -> None:
    source = TokenSource(step_ms / 1000)  # type: ignore[abstract]  # no Embed, Tokenize...
    server = grpc.aio.server(options=server_options())
    pb_grpc.add_InferenceServiceServicer_to_server(source, server)
    checker = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    ticker = asyncio.create_task(source.ticker())
    try:
        await server.wait_for_termination()
    finally:
        ticker.cancel()


async def _stream(port: int, body: bytes) -> int:
    """One streamed chat over a raw socket; returns the bytes received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    writer.write(head + body)
    received = b""
    total = 0
    while not received.endswith(b"0\r\n\r\n"):
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("the gateway closed the stream early")
        total += len(data)
        received = (received + data)[-16:]
    writer.close()
    return total


async def _load(port: int, clients: int, requests: int, tokens: int) -> None:
    body = json.dumps(
        {
            "model": MODEL,
            "stream": True,
            "max_tokens": tokens,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()

    async def client() -> None:
        for _ in range(requests):
            await _stream(port, body)

    await asyncio.gather(*(client() for _ in range(clients)))


def measure(
    relay: bool, clients: int, requests: int, tokens: int, step_ms: float
) -> dict[str, Any]:
    """Gateway CPU per token for one setting, on fresh processes."""
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        source_port = gateway_port = procs.free_port()
        while gateway_port == source_port:  # free_port may hand out the same port twice
            gateway_port = procs.free_port()
        source = procs.launch(
            "source",
            [
                sys.executable,
                "-m",
                "bench.relay",
                "source",
                "--port",
                str(source_port),
                "--step-ms",
                str(step_ms),
            ],
            log_dir,
        )
        argv = [
            sys.executable,
            "-m",
            "llamagrid.gateway",
            "--worker",
            f"127.0.0.1:{source_port}",
            "--port",
            str(gateway_port),
        ]
        if not relay:
            argv.append("--no-relay")
        gateway = procs.launch("gateway", argv, log_dir)
        try:
            models = f"http://127.0.0.1:{gateway_port}/v1/models"
            procs.wait_http_ok(models, gateway, 60)

            def listed() -> bool:  # the gateway has seen the source turn healthy
                return MODEL in httpx.get(models, timeout=5).text

            procs.poll("the token source listed", gateway, 60, listed)
            asyncio.run(_load(gateway_port, clients, 2, 8))  # warm up
            before, started = procs.tree_cpu_s([gateway.pid]), time.monotonic()
            asyncio.run(_load(gateway_port, clients, requests, tokens))
            cpu, wall = procs.tree_cpu_s([gateway.pid]) - before, time.monotonic() - started
        finally:
            procs.stop(gateway)
            procs.stop(source)
    streamed = clients * requests * tokens
    return {
        "relay": relay,
        "clients": clients,
        "tokens": streamed,
        "tok_s": round(streamed / wall, 1),
        "gateway_cpu_us_per_token": round(cpu / streamed * 1e6, 1),
    }


async def _read_relay(port: int, clients: int, requests: int, tokens: int) -> None:
    """``clients`` loops of Relay calls on one stream, reading every response."""
    from llamagrid.client import AsyncInferenceClient

    request = pb.GenerateRequest(
        model=MODEL, prompt="hi", sampling=pb.SamplingParams(max_tokens=tokens)
    )
    async with AsyncInferenceClient(f"127.0.0.1:{port}") as client:

        async def loop() -> None:
            for _ in range(requests):
                async with client.relay(request) as call:
                    async for _response in call:
                        pass

        await asyncio.gather(*(loop() for _ in range(clients)))


def reader_floor(clients: int, requests: int, tokens: int, step_ms: float) -> float:
    """CPU µs per token of a bare Relay reader (this process, every thread) on the source."""
    with tempfile.TemporaryDirectory() as tmp:
        port = procs.free_port()
        argv = [sys.executable, "-m", "bench.relay", "source", "--port", str(port)]
        source = procs.launch("source", [*argv, "--step-ms", str(step_ms)], Path(tmp))
        try:
            procs.wait_grpc_serving(f"127.0.0.1:{port}", source, 60)
            asyncio.run(_read_relay(port, clients, 1, 8))  # warm up
            before = time.process_time()
            asyncio.run(_read_relay(port, clients, requests, tokens))
            cpu = time.process_time() - before
        finally:
            procs.stop(source)
    return round(cpu / (clients * requests * tokens) * 1e6, 1)


async def feed(port: int, steps: int, step_ms: float, payload: int) -> None:
    """Accept one connection and send it ``payload`` bytes every step, ``steps`` times."""
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(steps):
            await asyncio.sleep(step_ms / 1000)
            writer.write(b"x" * payload)
            await writer.drain()
        writer.close()
        done.set()

    async with await asyncio.start_server(serve, "127.0.0.1", port):
        await done.wait()


def wake_floor(steps: int, step_ms: float, payload: int) -> float:
    """CPU µs per wake-up of an asyncio reader (this process) that a feeder process sends
    ``payload`` bytes every step."""

    async def read(port: int) -> tuple[int, float]:
        reader, writer = await procs_connect(port)
        reads, before = 0, time.process_time()
        while await reader.read(1 << 16):
            reads += 1
        writer.close()
        return reads, time.process_time() - before

    with tempfile.TemporaryDirectory() as tmp:
        port = procs.free_port()
        argv = [sys.executable, "-m", "bench.relay", "feed", "--port", str(port)]
        argv += ["--step-ms", str(step_ms), "--steps", str(steps), "--payload", str(payload)]
        feeder = procs.launch("feeder", argv, Path(tmp))
        try:
            reads, cpu = asyncio.run(read(port))
        finally:
            procs.stop(feeder)
    return round(cpu / max(1, reads) * 1e6, 1)


async def procs_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to a local port, retrying while the process behind it starts."""
    for _ in range(600):
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    modes = ["measure", "source", "feed"]
    parser.add_argument("mode", nargs="?", default="measure", choices=modes)
    parser.add_argument("--steps", type=int, default=300, help="feed: messages to send")
    parser.add_argument("--payload", type=int, default=400, help="feed: bytes per message")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--step-ms", type=float, default=10.0, help="time between steps")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each setting")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.mode == "source":
        asyncio.run(serve_source(args.port, args.step_ms))
        return
    if args.mode == "feed":
        asyncio.run(feed(args.port, args.steps, args.step_ms, args.payload))
        return
    results = []
    for _ in range(args.rounds):  # alternate, so that a busy moment hits both settings
        for relay in (True, False):
            result = measure(relay, args.clients, args.requests, args.tokens, args.step_ms)
            print(json.dumps(result), flush=True)
            results.append(result)
    summary = {
        "relay" if relay else "per_call": sorted(
            r["gateway_cpu_us_per_token"] for r in results if r["relay"] == relay
        )
        for relay in (True, False)
    }
    floors = {
        "reader_cpu_us_per_token": reader_floor(
            args.clients, args.requests, args.tokens, args.step_ms
        ),
        "wake_cpu_us": wake_floor(300, args.step_ms, 400),
    }
    print(json.dumps(floors), flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{stamp}-relay.json"
    record = {"step_ms": args.step_ms, "results": results, "floors": floors}
    out.write_text(json.dumps(record, indent=2) + "\n")
    for name, values in summary.items():
        print(f"{name}: gateway CPU µs per token {values} (median {values[len(values) // 2]})")
    print(
        f"floors: a bare Relay reader {floors['reader_cpu_us_per_token']} µs per token, "
        f"one socket wake-up {floors['wake_cpu_us']} µs"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
