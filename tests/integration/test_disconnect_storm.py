"""A disconnect storm: a thousand Generate calls cancelled at random points leave nothing behind.

The worker has four slots and a small batch (8 tokens per decode), so a prompt of about 24
tokens takes three steps to prefill, and 24 calls in flight keep a queue. Each call is
cancelled by its client at a point drawn from a seeded generator: while queued (before the
worker admits it), as soon as the worker admits it (in prefill: the prompt takes three steps
or more, and the cancellation arrives within one), or after 1 to 4 generated tokens (in
decode). Afterwards GetLoad reports the worker idle, and its KV cache is back to the state a
fresh worker reaches on the same requests, one per slot: the same greedy answers and the same
number of cells in use, so no cancelled request kept a slot or cells.

A smaller storm does the same through the gateway: 150 clients that drop their connection
before the event stream starts, as it starts, or after 1 to 4 events.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving
from tests.serving import (
    ONE_THREAD,
    Stub,
    assert_serving,
    connect,
    greedy,
    wait_idle,
    wait_no_call_in_flight,
)

#: How many calls are cancelled, and how many are in flight at once.
CALLS = 1000
IN_FLIGHT = 24
#: Tokens each storm call would generate if left alone (ignore_eos: never fewer).
STORM_TOKENS = 32
#: The worker's slots.
SLOTS = 4
#: With "Request N: " before it, a prompt of about 24 tokens: three 8-token prefill steps.
TEXT = "The committee met on a grey Tuesday to review the harbour plans for the coming year."
#: One prompt per slot, whose greedy answers and KV use are compared before and after the
#: storm. They share no prefix with each other nor with the other prompts, so each one takes
#: the least valuable sequence: one after the other, they refill every sequence.
PROBES = (
    "Once upon a time, in a quiet village,",
    "List the planets of the solar system:",
    "Water boils at a temperature of",
    "Good morning! Today we will learn",
)


@dataclass(frozen=True)
class Plan:
    """Where one call is cancelled: "queued" after ``delay_s`` (if not admitted by then),
    "admitted" as soon as the worker admits it, "decode" after ``tokens`` tokens."""

    kind: str
    delay_s: float = 0.0
    tokens: int = 0


def plans(seed: int) -> list[Plan]:
    rng = random.Random(seed)
    out = []
    for _ in range(CALLS):
        kind = rng.choices(("queued", "admitted", "decode"), weights=(2, 1, 1))[0]
        out.append(Plan(kind, delay_s=rng.uniform(0, 0.03), tokens=rng.randint(1, 4)))
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storm")


@pytest.fixture(scope="module")
def worker(run_dir: Path) -> Iterator[Proc]:
    """Four slots, 8-token batches, flash attention off (greedy output does not depend on what
    was batched or cached), one thread (tests/serving.py: ONE_THREAD)."""
    args: tuple[str, ...] = ("--parallel", str(SLOTS), "--n-ctx", "4096", "--n-batch", "8")
    args += ("--flash-attn", "off", *ONE_THREAD)
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def channel_and_stub(worker: Proc) -> Iterator[tuple[grpc.Channel, Stub]]:
    channel, stub = connect(worker.target)
    yield channel, stub
    channel.close()


def probe(stub: Stub, text: str) -> str:
    request = pb.GenerateRequest(
        prompt=text, sampling=pb.SamplingParams(temperature=0.0, max_tokens=12)
    )
    return "".join(m.chunk.text for m in stub.Generate(request, timeout=120))


def probes(stub: Stub) -> tuple[list[str], pb.GetLoadResponse]:
    """The probes' greedy answers, one after the other, and the load once all are cached."""
    answers = [probe(stub, text) for text in PROBES]
    return answers, wait_idle(stub)


@pytest.fixture(scope="module")
def before(channel_and_stub: tuple[grpc.Channel, Stub]) -> tuple[str, list[str], int]:
    """On the fresh worker: the greedy answer, the probes' answers and the KV cells in use."""
    assert len(PROBES) == SLOTS
    stub = channel_and_stub[1]
    baseline = greedy(stub)
    answers, load = probes(stub)
    assert load.kv_cells_used > 0
    return baseline, answers, load.kv_cells_used


def storm_request(index: int) -> pb.GenerateRequest:
    sampling = pb.SamplingParams(max_tokens=STORM_TOKENS, ignore_eos=True, seed=index)
    return pb.GenerateRequest(prompt=f"Request {index}: {TEXT}", sampling=sampling)


async def cancel_one(stub: pb_grpc.InferenceServiceAsyncStub, index: int, plan: Plan) -> str:
    """Run one call to its cancellation point; returns the state it was in when cancelled."""
    call = stub.Generate(storm_request(index), timeout=120)
    admitted = asyncio.ensure_future(call.initial_metadata())
    state = "queued"
    try:
        if plan.kind == "queued":
            await asyncio.wait({admitted}, timeout=plan.delay_s)
            state = "prefill" if admitted.done() else "queued"
            return state
        await admitted
        state = "prefill"
        if plan.kind == "admitted":
            return state
        received = 0
        async for message in call:
            assert message.HasField("chunk"), "the call finished before its cancellation"
            received += len(message.chunk.token_ids)
            state = "decode"
            if received >= plan.tokens:
                break
        return state
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
            await admitted
        code = await call.code()
        assert code == grpc.StatusCode.CANCELLED, f"call {index} ended {code}, not cancelled"


async def storm(target: str, seed: int) -> Counter[str]:
    """Cancel CALLS calls, IN_FLIGHT at a time; count the states they were cancelled in."""
    counts: Counter[str] = Counter()
    pending = list(enumerate(plans(seed)))
    async with grpc.aio.insecure_channel(target, options=channel_options()) as channel:
        stub = pb_grpc.InferenceServiceStub(channel)

        async def client() -> None:
            while pending:
                index, plan = pending.pop()
                counts[await cancel_one(stub, index, plan)] += 1

        await asyncio.gather(*(client() for _ in range(IN_FLIGHT)))
    return counts


async def test_a_thousand_random_disconnects_leave_the_worker_idle_with_no_kv_leaked(
    worker: Proc,
    channel_and_stub: tuple[grpc.Channel, Stub],
    before: tuple[str, list[str], int],
) -> None:
    started = time.monotonic()
    counts = await storm(worker.target, seed=11)
    print(f"storm: {dict(counts)} in {time.monotonic() - started:.1f} s")
    assert sum(counts.values()) == CALLS
    # Every phase saw its share of disconnects (planned half, a quarter, a quarter).
    assert counts["queued"] >= 300 and counts["prefill"] >= 150 and counts["decode"] >= 150

    assert worker.popen.poll() is None, worker.log_text()[-4000:]
    channel, stub = channel_and_stub
    baseline, answers, kv_cells = before
    assert_serving(channel, stub, baseline)
    # Every sequence refilled by the probes: the same answers and exactly the cells a fresh
    # worker used for them.
    assert probes(stub)[0] == answers
    assert wait_idle(stub).kv_cells_used == kv_cells


# ---------------------------------------------------------------------------------------------
# Through the gateway: clients that drop their event stream.

HTTP_CALLS = 150
HTTP_IN_FLIGHT = 16


@pytest.fixture(scope="module")
def gateway(run_dir: Path, worker: Proc) -> Iterator[Proc]:
    with running(spawn_gateway(run_dir, worker.target)) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield proc


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=HTTP_IN_FLIGHT * 2)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        yield client


async def drop_one(http: httpx.AsyncClient, url: str, body: dict[str, object], plan: Plan) -> str:
    """Open a streamed completion and drop the connection at the plan's point: before the
    response starts (the gateway answers once the worker admits the call), once it has
    started, or after some tokens. Returns how far it had got."""

    async def read() -> str:
        async with http.stream("POST", url, json=body) as response:
            assert response.status_code == 200, await response.aread()
            if plan.kind != "decode":
                return "admitted"
            chunks = 0
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    assert line != "data: [DONE]", "the stream finished before it was dropped"
                    chunks += 1
                    if chunks >= plan.tokens:
                        return "decode"
        raise AssertionError("the stream ended before it was dropped")

    if plan.kind != "queued":
        return await read()
    try:
        return await asyncio.wait_for(read(), plan.delay_s)
    except TimeoutError:
        return "queued"


async def test_clients_dropping_event_streams_leave_the_worker_idle(
    worker: Proc,
    gateway: Proc,
    channel_and_stub: tuple[grpc.Channel, Stub],
    before: tuple[str, list[str], int],
    http: httpx.AsyncClient,
) -> None:
    base = f"http://127.0.0.1:{gateway.port}"
    model = (await http.get(f"{base}/v1/models")).json()["data"][0]["id"]
    counts: Counter[str] = Counter()
    pending = list(enumerate(plans(seed=12)[:HTTP_CALLS]))

    async def client() -> None:
        while pending:
            index, plan = pending.pop()
            body = {
                "model": model,
                "prompt": f"Request {index}: {TEXT}",
                "max_tokens": STORM_TOKENS,
                "ignore_eos": True,
                "stream": True,
            }
            counts[await drop_one(http, f"{base}/v1/completions", body, plan)] += 1

    await asyncio.gather(*(client() for _ in range(HTTP_IN_FLIGHT)))
    print(f"HTTP storm: {dict(counts)}")
    assert sum(counts.values()) == HTTP_CALLS
    assert gateway.popen.poll() is None, gateway.log_text()[-4000:]
    assert worker.popen.poll() is None, worker.log_text()[-4000:]
    assert counts["queued"] and counts["admitted"] and counts["decode"]
    assert_serving(*channel_and_stub, before[0])
    wait_no_call_in_flight(base)
    assert (await http.get(f"{base}/health")).status_code == 200
