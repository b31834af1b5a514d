"""A soak: minutes of mixed load through the gateway, with process memory that stays flat.

Six clients send, through a real gateway to a real worker: chat completions (streamed and not,
JSON mode sometimes), text completions (with log-probabilities sometimes), embeddings, streams
they drop midway, and requests that must be refused (out-of-range values, an empty
conversation, unknown models and paths, a body that is not JSON, a grammar that does not
parse). The run lasts LLAMAGRID_SOAK_S seconds (90 by default, CI's budget; set more for a
longer soak).

The load never pauses. Its first third (at least 30 s) is a warm-up: it takes every path, and
the worker's resident memory climbs for about that long before it levels off (on SmolLM2, from
about 315 to 390 MiB in the first 40 s, then flat over minutes). From then on both processes'
VmRSS is read twice a second. "After the warm-up" is the highest reading of the first WINDOW_S
seconds, "at the end" the highest of the last WINDOW_S. The highest, because the worker's RSS
drops by 20 to 40 MiB whenever its engine idles for a moment (memory handed back) and climbs
back to its level within seconds: a window's lowest or median reading depends on whether it
caught such a dip, its highest reading is the level itself, and a leak raises it. Both figures
are printed.

Growth must stay under MAX_GROWTH_MIB. For the worker 48 MiB: its level itself wanders by
about 25 MiB over minutes with no trend (390 to 410 MiB over five minutes), and a leak of 100 KB
per request (one token's logits, a sampler's candidate array) exceeds 48 MiB within the run's
several hundred requests. For the gateway, whose RSS moves by well under 1 MiB, 4 MiB, which a
leak of 16 KB per request exceeds.

No answer is a 5xx, every answer is the one its request calls for, and at the end the worker is
idle, the gateway has no call in flight and has ejected no worker, and the greedy answer is the
same as before the soak.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving
from tests.serving import (
    ONE_THREAD,
    Stub,
    assert_serving,
    connect,
    gateway_metric,
    greedy,
    wait_no_call_in_flight,
)

SOAK_S = float(os.environ.get("LLAMAGRID_SOAK_S", "90"))
WARMUP_S = max(30.0, SOAK_S / 3)
CLIENTS = 6
#: The span of RSS readings whose highest is taken after the warm-up, and at the end.
WINDOW_S = 15.0
#: How often RSS is read.
SAMPLE_S = 0.5
#: The load after the warm-up, long enough for two windows.
MEASURED_S = max(SOAK_S - WARMUP_S, 3 * WINDOW_S)
#: The most each process's resident memory may grow from the warm-up to the end.
MAX_GROWTH_MIB = {"worker": 48, "gateway": 4}
WORDS = (
    "river", "mountain", "lantern", "copper", "violet", "orchard", "whisper", "harbor", "meadow",
    "thunder", "pocket", "marble", "ladder", "canyon", "ember", "falcon", "garden", "island",
)  # fmt: skip


def rss_kib(pid: int) -> int:
    """A process's resident set size (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soak")


@pytest.fixture(scope="module")
def worker(run_dir: Path) -> Iterator[Proc]:
    """Four slots, one thread (tests/serving.py: ONE_THREAD), flash attention off (greedy
    output does not depend on what was batched or cached). The host KV tier gets 16 MiB: the
    soak's distinct prompts fill it during the warm-up, and from then on it churns (saves,
    restores, evictions) at its bound, so a leak in it shows as growth. With the default
    budget (1 GiB) it would still be filling at the end, and its growth would hide a leak."""
    args = ("--parallel", "4", "--n-ctx", "4096", "--flash-attn", "off", *ONE_THREAD)
    args += ("--host-cache-mib", "16")
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def gateway(run_dir: Path, worker: Proc) -> Iterator[Proc]:
    with running(spawn_gateway(run_dir, worker.target, extra=["--strict-model-names"])) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield proc


@pytest.fixture(scope="module")
def channel_and_stub(worker: Proc) -> Iterator[tuple[grpc.Channel, Stub]]:
    channel, stub = connect(worker.target)
    yield channel, stub
    channel.close()


@dataclass
class Client:
    """One simulated client: it draws its requests from its own seeded generator."""

    http: httpx.AsyncClient
    model: str
    rng: random.Random
    outcomes: Counter[str]

    def words(self, n: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(n))

    def chat_body(self, **extra: object) -> dict[str, object]:
        content = f"Write about {self.words(self.rng.randint(2, 12))}."
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.rng.randint(2, 12),
            "temperature": self.rng.choice([0.0, 0.7, 1.0]),
            **extra,
        }

    def expect(self, name: str, status: int, response: httpx.Response) -> None:
        assert response.status_code < 500, f"{name}: {response.status_code} {response.text}"
        assert response.status_code == status, f"{name}: {response.status_code} {response.text}"
        self.outcomes[name] += 1

    async def chat(self) -> None:
        extra: dict[str, object] = {}
        if self.rng.random() < 0.2:
            extra["response_format"] = {"type": "json_object"}
        reply = await self.http.post("/v1/chat/completions", json=self.chat_body(**extra))
        self.expect("chat", 200, reply)
        assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")

    async def stream(self, path: str, body: dict[str, object], drop_after: int | None) -> int:
        """Stream a completion; drop the connection after ``drop_after`` events, if given.
        Returns the status."""
        async with self.http.stream("POST", path, json={**body, "stream": True}) as response:
            if response.status_code != 200:
                await response.aread()
                return response.status_code
            events = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                assert '"error"' not in line, line
                if line == "data: [DONE]":
                    return 200
                events += 1
                if drop_after is not None and events >= drop_after:
                    return 200  # leaving the block closes the connection mid-stream
        raise AssertionError("the stream ended without [DONE]")

    async def streamed_chat(self) -> None:
        body = self.chat_body(stream_options={"include_usage": True})
        assert await self.stream("/v1/chat/completions", body, None) == 200
        self.outcomes["streamed chat"] += 1

    async def completion(self) -> None:
        body: dict[str, object] = {
            "model": self.model,
            "prompt": f"The {self.words(self.rng.randint(1, 8))}",
            "max_tokens": self.rng.randint(2, 12),
            "logprobs": self.rng.choice([None, 0, 3]),
        }
        if self.rng.random() < 0.5:
            assert await self.stream("/v1/completions", body, None) == 200
            self.outcomes["streamed completion"] += 1
        else:
            self.expect("completion", 200, await self.http.post("/v1/completions", json=body))

    async def embeddings(self) -> None:
        inputs = [self.words(self.rng.randint(1, 20)) for _ in range(self.rng.randint(1, 4))]
        reply = await self.http.post("/v1/embeddings", json={"model": self.model, "input": inputs})
        self.expect("embeddings", 200, reply)
        assert len(reply.json()["data"]) == len(inputs)

    async def dropped_stream(self) -> None:
        body = self.chat_body(max_tokens=32, ignore_eos=True)
        drop_after = self.rng.randint(1, 4)
        assert await self.stream("/v1/chat/completions", body, drop_after) == 200
        self.outcomes["dropped stream"] += 1

    async def refused(self) -> None:
        """A request that must be refused, with the status it must get."""
        chat = "/v1/chat/completions"
        cases: list[tuple[str, str, object, int]] = [
            ("temperature", chat, self.chat_body(temperature=1000), 400),
            ("no messages", chat, {**self.chat_body(), "messages": []}, 400),
            ("context", chat, self.chat_body(max_tokens=10**9), 400),
            ("stop strings", chat, self.chat_body(stop=["x"] * 100), 400),
            ("grammar", chat, self.chat_body(grammar="root ::= (("), 400),
            ("unknown model", chat, {**self.chat_body(), "model": f"m-{self.rng.random()}"}, 404),
            ("not json", chat, b'{"model": ', 400),
            ("unknown path", f"/v1/{self.rng.randrange(10**9)}", {}, 404),
        ]
        name, path, body, status = self.rng.choice(cases)
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            reply = await self.http.post(path, content=body, headers=headers)
        else:
            reply = await self.http.post(path, json=body)
        self.expect(f"refused: {name}", status, reply)

    async def run(self, until: float) -> None:
        actions: list[tuple[Callable[[], Awaitable[None]], int]] = [
            (self.chat, 3),
            (self.streamed_chat, 3),
            (self.completion, 2),
            (self.embeddings, 2),
            (self.dropped_stream, 2),
            (self.refused, 3),
        ]
        calls, weights = zip(*actions, strict=True)
        while time.monotonic() < until:
            await self.rng.choices(calls, weights)[0]()


async def load(base_url: str, model: str, seconds: float, seed: int) -> Counter[str]:
    """Run the clients for ``seconds``; every request they started has ended on return."""
    outcomes: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CLIENTS * 2)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:
        until = time.monotonic() + seconds
        clients = [
            Client(http, model, random.Random(seed * 100 + n), outcomes) for n in range(CLIENTS)
        ]
        await asyncio.gather(*(client.run(until) for client in clients))
    return outcomes


async def sample_rss(pids: dict[str, int], readings: dict[str, list[int]]) -> None:
    """After the warm-up, read each process's VmRSS every SAMPLE_S seconds, until cancelled."""
    await asyncio.sleep(WARMUP_S)
    while True:
        for name, pid in pids.items():
            readings[name].append(rss_kib(pid))
        await asyncio.sleep(SAMPLE_S)


@pytest.mark.timeout(WARMUP_S + MEASURED_S + 180)  # pytest-timeout's default is 300 s
async def test_mixed_load_keeps_memory_flat_and_ends_idle(
    worker: Proc, gateway: Proc, channel_and_stub: tuple[grpc.Channel, Stub]
) -> None:
    channel, stub = channel_and_stub
    base_url = f"http://127.0.0.1:{gateway.port}"
    model = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]["id"]
    baseline = greedy(stub)
    pids = {"worker": worker.popen.pid, "gateway": gateway.popen.pid}

    readings: dict[str, list[int]] = {name: [] for name in pids}
    sampler = asyncio.create_task(sample_rss(pids, readings))
    started = time.monotonic()
    outcomes = await load(base_url, model, WARMUP_S + MEASURED_S, seed=1)
    elapsed = time.monotonic() - started
    sampler.cancel()

    total = sum(outcomes.values())
    print(f"soak: {total} requests in {elapsed:.0f} s, the first {WARMUP_S:.0f} s a warm-up")
    print(f"soak: outcomes {json.dumps(dict(sorted(outcomes.items())))}")
    window = int(WINDOW_S / SAMPLE_S)
    for name, values in readings.items():
        assert len(values) >= 2 * window, f"{len(values)} readings"
        first, last = max(values[:window]), max(values[-window:])
        growth = (last - first) / 1024
        print(
            f"soak: {name} VmRSS {first / 1024:.1f} MiB after the warm-up, "
            f"{last / 1024:.1f} MiB at the end ({growth:+.1f} MiB; readings from "
            f"{min(values) / 1024:.1f} to {max(values) / 1024:.1f} MiB)"
        )
        assert growth <= MAX_GROWTH_MIB[name], f"{name} grew by {growth:.1f} MiB"

    assert set(outcomes) >= {"chat", "streamed chat", "embeddings", "dropped stream"}
    assert worker.popen.poll() is None, worker.log_text()[-4000:]
    assert gateway.popen.poll() is None, gateway.log_text()[-4000:]
    assert_serving(channel, stub, baseline)
    wait_no_call_in_flight(base_url)
    assert gateway_metric(base_url, "llamagrid_gateway_worker_ejected{") == [0.0]
