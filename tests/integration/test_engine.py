"""The continuous-batching engine on the real model, through the async Python client.

No assertion here is about speed. Batching is checked by what comes out (texts, the order
in which tokens arrive) and by the worker's own counters (GetLoad's decode steps, KV cells).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llamagrid.client import AsyncInferenceClient, GenerateStream
from llamagrid.errors import REASON_QUEUE_FULL, REASON_QUEUE_TIMEOUT, parse_details
from llamagrid.v1 import inference_pb2 as pb
from tests.procs import Proc, running, spawn_worker, wait_serving

SUBJECTS = ["cat", "robot", "ship", "tree", "king", "river", "cloud", "lamp"]
#: A system prompt long enough to be worth caching (about 250 tokens).
SYSTEM = "You are a careful assistant. " + " ".join(
    f"Rule {i}: answer briefly and never invent facts about item {i}." for i in range(20)
)


def chat(user: str, system: str = "", **sampling: object) -> pb.GenerateRequest:
    messages = [pb.ChatMessage(role="system", content=system)] if system else []
    messages.append(pb.ChatMessage(role="user", content=user))
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=messages), sampling=pb.SamplingParams(**sampling)
    )


def greedy(user: str, max_tokens: int = 48, system: str = "") -> pb.GenerateRequest:
    return chat(user, system, max_tokens=max_tokens, temperature=0.0, seed=7)


def endless(user: str = "Count upwards from one.", max_tokens: int = 1500) -> pb.GenerateRequest:
    return chat(user, max_tokens=max_tokens, ignore_eos=True, temperature=0.0)


async def run(client: AsyncInferenceClient, req: pb.GenerateRequest) -> tuple[list[int], pb.Usage]:
    ids: list[int] = []
    usage = None
    async for msg in client.generate(req, timeout=300):
        if msg.HasField("chunk"):
            ids.extend(msg.chunk.token_ids)
        else:
            usage = msg.final.usage
    assert usage is not None
    return ids, usage


async def next_chunk(stream: GenerateStream) -> pb.GenerateChunk:
    msg = await anext(stream)
    assert msg.HasField("chunk")
    return msg.chunk


async def settled(client: AsyncInferenceClient) -> pb.GetLoadResponse:
    """GetLoad once nothing is active or queued (fails the test if that never happens)."""
    for _ in range(500):
        load = await client.get_load()
        if load.active_requests == 0 and load.queued_requests == 0:
            return load
        await asyncio.sleep(0.01)
    pytest.fail(f"the worker never became idle: {load}")


def start(tmp: Path, *args: str) -> Iterator[Proc]:
    with running(spawn_worker(tmp, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def eight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """8 slots, each with a KV buffer of its own (the default)."""
    yield from start(tmp_path_factory.mktemp("eight"), "--parallel", "8", "--n-ctx", "16384")


@pytest.fixture(scope="module")
def exact(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Flash attention off: greedy output independent of batching and caching on the CPU."""
    yield from start(tmp_path_factory.mktemp("exact"), "--parallel", "4", "--flash-attn", "off")


@pytest.fixture(scope="module")
def chunky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """5 slots and small steps: a long prompt takes many steps to prefill."""
    yield from start(
        tmp_path_factory.mktemp("chunky"), "--parallel", "5", "--n-batch", "64", "--n-ctx", "10240"
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One slot, one place in the queue, tiny prefill chunks."""
    yield from start(
        tmp_path_factory.mktemp("single"),
        *("--parallel", "1", "--max-queue", "1", "--n-batch", "16", "--n-ctx", "4096"),
    )


async def test_eight_concurrent_greedy_streams_equal_their_solo_runs(eight: Proc) -> None:
    """With a KV buffer per slot, a greedy output doesn't depend on the rest of the batch."""
    async with AsyncInferenceClient(eight.target) as client:
        prompts = [greedy(f"Write one sentence about a {s}.") for s in SUBJECTS]
        alone = [(await run(client, p))[0] for p in prompts]
        steps_before = (await client.get_load()).decode_steps
        together = await asyncio.gather(*(run(client, p) for p in prompts))
        steps = (await client.get_load()).decode_steps - steps_before
    assert [ids for ids, _ in together] == alone
    assert all(len(ids) > 0 for ids in alone)
    # Batched: far fewer decode steps than the tokens generated (one step per token alone).
    assert steps < sum(len(ids) for ids in alone) / 2


async def test_prefix_reuse_reports_cached_tokens_and_keeps_the_output(exact: Proc) -> None:
    async with AsyncInferenceClient(exact.target) as client:
        # Something else first, so that the next prompt's cold run reuses a short prefix too.
        await run(client, greedy("Hello."))
        first, usage1 = await run(client, greedy("What is a river?", system=SYSTEM))
        second, usage2 = await run(client, greedy("What is a river?", system=SYSTEM))
        other, usage3 = await run(client, greedy("What is a lamp?", system=SYSTEM))
    assert usage1.prompt_tokens > 200
    assert second == first
    # All but the last prompt token (decoded again for its logits) came from the cache.
    assert usage2.cached_tokens == usage2.prompt_tokens - 1
    # A different question after the same system prompt reuses the system prompt.
    assert usage1.prompt_tokens - 20 < usage3.cached_tokens < usage3.prompt_tokens
    assert other


async def test_a_running_request_donates_its_prefix_by_copy(exact: Proc) -> None:
    """With a KV buffer per slot, a request whose system prompt only a running request holds
    gets a copy of that request's buffer, trimmed to the prefix: the same output, no prefill."""
    tutor = "You are a patient tutor who explains things to children. " * 20
    async with AsyncInferenceClient(exact.target) as client:
        reference, cold = await run(client, greedy("What is a cloud?", system=tutor))
        # The running stream takes the idle slot that holds the tutor prompt.
        stream = client.generate(
            chat("Tell a long story.", tutor, max_tokens=1500, ignore_eos=True, temperature=0.0),
            timeout=300,
        )
        await next_chunk(stream)
        copied, usage = await run(client, greedy("What is a cloud?", system=tutor))
        stream.cancel()
    assert cold.prompt_tokens > 200 and cold.cached_tokens < 20
    # Everything up to the user's turn came from the running request's buffer.
    assert cold.prompt_tokens - 20 < usage.cached_tokens < cold.prompt_tokens
    assert copied == reference


async def test_prefix_reuse_with_default_flash_attention(eight: Proc) -> None:
    """With llama.cpp's CPU flash attention, a cached prompt's output may differ after a near
    tie (README, Determinism): the cache is used and the output is a normal completion."""
    async with AsyncInferenceClient(eight.target) as client:
        first, _ = await run(client, greedy("What is a lamp?", system=SYSTEM))
        second, usage = await run(client, greedy("What is a lamp?", system=SYSTEM))
    assert usage.cached_tokens == usage.prompt_tokens - 1
    assert len(second) > 0 and second[:8] == first[:8]


async def test_long_prompt_is_prefilled_in_chunks_while_streams_keep_flowing(chunky: Proc) -> None:
    """4 streams decode while a ~1,500-token prompt arrives. With 64-token steps its prefill
    takes many steps, and each of those steps also carries one token of every stream."""
    events: list[str] = []
    async with AsyncInferenceClient(chunky.target) as client:
        streams = [client.generate(endless(f"Count {s}s.", 400), timeout=300) for s in SUBJECTS[:4]]
        for stream in streams:
            await next_chunk(stream)

        async def drain(name: str, stream: GenerateStream) -> None:
            async for msg in stream:
                if msg.HasField("chunk") and msg.chunk.token_ids:
                    events.append(name)

        tasks = [asyncio.create_task(drain(f"s{i}", s)) for i, s in enumerate(streams)]
        long = client.generate(greedy("word " * 1500, max_tokens=1), timeout=300)
        await long.admitted()
        events.append("long-admitted")
        async for msg in long:
            if msg.HasField("final"):
                events.append("long-done")
                assert msg.final.usage.prompt_tokens > 1500
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    during = events[events.index("long-admitted") : events.index("long-done")]
    for i in range(4):
        assert during.count(f"s{i}") >= 10, during


async def test_cancel_in_queue_prefill_and_decode_frees_the_slot_at_once(single: Proc) -> None:
    async with AsyncInferenceClient(single.target) as client:
        reference, _ = await run(client, greedy("Name a color."))

        # Decode: the running stream is dropped by the next step.
        running_stream = client.generate(endless(), timeout=300)
        for _ in range(3):
            await next_chunk(running_stream)
        running_stream.cancel()
        at_cancel = (await client.get_load()).decode_steps
        assert (await settled(client)).decode_steps - at_cancel <= 2

        # Queue: B waits behind A; cancelling B empties the queue while A still runs.
        a = client.generate(endless(), timeout=300)
        await next_chunk(a)
        b = client.generate(greedy("Name a fruit."), timeout=300)
        for _ in range(200):
            if (await client.get_load()).queued_requests == 1:
                break
            await asyncio.sleep(0.01)
        b.cancel()
        for _ in range(200):
            load = await client.get_load()
            if load.queued_requests == 0:
                break
            await asyncio.sleep(0.01)
        assert load.queued_requests == 0 and load.active_requests == 1
        a.cancel()
        await settled(client)

        # Prefill: a 2,000-token prompt takes 125 steps of 16 tokens; cancel right after admission.
        prefill = client.generate(greedy("word " * 2000, max_tokens=4), timeout=300)
        await prefill.admitted()
        prefill.cancel()
        at_cancel = (await client.get_load()).decode_steps
        assert (await settled(client)).decode_steps - at_cancel <= 2

        # The freed slot and its KV serve the next request exactly as before.
        after, _ = await run(client, greedy("Name a color."))
    assert after == reference


async def test_full_queue_and_queue_timeout_are_resource_exhausted(tmp_path: Path) -> None:
    args = ("--parallel", "1", "--max-queue", "1", "--queue-timeout-s", "1")
    with running(spawn_worker(tmp_path, *args)) as worker:
        wait_serving(worker)
        async with AsyncInferenceClient(worker.target) as client:
            a = client.generate(endless(), timeout=300)
            await next_chunk(a)
            queued = client.generate(greedy("Name a fruit."), timeout=300)
            for _ in range(200):
                if (await client.get_load()).queued_requests == 1:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await run(client, greedy("Name a tree."))
            # The queued request outlives its 1 s queue timeout behind the endless stream.
            with pytest.raises(grpc.aio.AioRpcError) as expired:
                await anext(queued)
            a.cancel()
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = parse_details(full.value.trailing_metadata())
    assert details.reason == REASON_QUEUE_FULL and details.retry_after_s is not None
    assert expired.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert parse_details(expired.value.trailing_metadata()).reason == REASON_QUEUE_TIMEOUT


async def test_unified_kv_shares_a_concurrent_prefix(tmp_path: Path) -> None:
    """With --kv-unified, requests running together reuse each other's system prompt."""
    with running(spawn_worker(tmp_path, "--parallel", "4", "--kv-unified")) as worker:
        wait_serving(worker)
        async with AsyncInferenceClient(worker.target) as client:
            first = client.generate(endless("Count.", 200), timeout=300)
            first_req_tokens = (await run(client, greedy("Hi", system=SYSTEM)))[1].prompt_tokens
            await next_chunk(first)
            results = await asyncio.gather(
                *(run(client, greedy(f"Describe a {s}.", system=SYSTEM)) for s in SUBJECTS[:3])
            )
            load = await client.get_load()
            first.cancel()
    assert first_req_tokens > 200
    for ids, usage in results:
        assert ids and usage.cached_tokens > 200
    # Shared cells are counted once: far less than 4 sequences of ~250 tokens each.
    assert load.kv_cells_used < 4 * 250


async def test_load_report(eight: Proc) -> None:
    async with AsyncInferenceClient(eight.target) as client:
        idle = await settled(client)
        stream = client.generate(endless(), timeout=300)
        await next_chunk(stream)
        busy = await client.get_load()
        stream.cancel()
    assert idle.slots == 8 and idle.max_queue == 64
    assert idle.kv_cells_total >= 16384
    assert busy.active_requests == 1 and busy.queued_requests == 0
    # The running sequence holds at least its prompt and first token.
    assert 20 < busy.kv_cells_used <= busy.kv_cells_total


async def test_seed_is_honoured(eight: Proc) -> None:
    def sampled(seed: int) -> pb.GenerateRequest:
        return chat("Invent a name for a cat.", max_tokens=24, temperature=1.0, seed=seed)

    async with AsyncInferenceClient(eight.target) as client:
        a, _ = await run(client, sampled(1))
        again, _ = await run(client, sampled(1))
        others = [(await run(client, sampled(s)))[0] for s in (2, 3, 4)]
    assert a == again
    assert any(o != a for o in others)


async def test_concurrent_embeds_batch_together_and_match_solo(eight: Proc) -> None:
    texts = [[f"{s} number {i}" for i in range(3)] for s in SUBJECTS[:6]]

    def request(batch: list[str]) -> pb.EmbedRequest:
        return pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in batch], normalize=True)

    async with AsyncInferenceClient(eight.target) as client:
        alone = [await client.embed(request(b)) for b in texts]
        stream = client.generate(endless(), timeout=300)  # embeds interleave with decoding
        await next_chunk(stream)
        together = await asyncio.gather(*(client.embed(request(b)) for b in texts))
        still_streaming = await next_chunk(stream)
        stream.cancel()
    assert still_streaming.token_ids
    for solo, batched in zip(alone, together, strict=True):
        assert len(batched.embeddings) == 3
        for a, b in zip(solo.embeddings, batched.embeddings, strict=True):
            assert max(abs(x - y) for x, y in zip(a.values, b.values, strict=True)) < 1e-4


async def test_embedding_input_longer_than_the_context_is_invalid(eight: Proc) -> None:
    async with AsyncInferenceClient(eight.target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="word " * 3000)]))
        # The worker is fine afterwards.
        ok = await client.embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="fine")]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parse_details(caught.value.trailing_metadata()).reason == "CONTEXT_LENGTH_EXCEEDED"
    assert len(ok.embeddings) == 1


async def test_an_abandoned_embedding_batch_is_dropped(eight: Proc) -> None:
    request = pb.EmbedRequest(inputs=[pb.EmbedInput(text=f"item {i}") for i in range(2000)])
    async with AsyncInferenceClient(eight.target) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.embed(request, timeout=0.5)
        for _ in range(300):
            load = await client.get_load()
            if load.embed_queued_inputs == 0:
                break
            await asyncio.sleep(0.05)
        after = await client.embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="next")]))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert load.embed_queued_inputs == 0
    assert len(after.embeddings) == 1
