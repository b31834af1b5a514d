"""The gateway's CPU per relayed token, with the model taken out of the measurement.

`python -m bench.relay` starts a token source that speaks the worker's gRPC contract (it admits
every call at once and, every ``--step-ms``, gives each running call one token, like an engine
step of continuous batching), a real gateway in front of it, and raw HTTP/1.1 clients that
stream chat completions and only count bytes. It reports the gateway's CPU time (user + system,
/proc) per streamed token, with the Relay stream and with one gRPC call per request
(``--no-relay``). On the real model the worker takes the CPU the gateway leaves, so this is the
number that decides how many tokens one gateway process can relay.

`python -m bench.relay source --port P` runs the token source alone.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.relay", description=__doc__)
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "source"])
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
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / f"{stamp}-relay.json"
    out.write_text(json.dumps({"step_ms": args.step_ms, "results": results}, indent=2) + "\n")
    for name, values in summary.items():
        print(f"{name}: gateway CPU µs per token {values} (median {values[len(values) // 2]})")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
