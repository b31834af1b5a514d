"""The Relay RPC on the real model: many Generate calls over one stream, one step per message."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from llamagrid.client import AsyncInferenceClient
from llamagrid.errors import REASON_INVALID_VALUE, parse_details
from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc

PROMPTS = ["Count to ten.", "Name three colours.", "What is a cat?", "Say hello."]


def chat(text: str, max_tokens: int = 24, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **sampling
        ),
    )


async def ids_of(stream: AsyncIterator[pb.GenerateResponse]) -> list[int]:
    ids: list[int] = []
    async for response in stream:
        if response.HasField("chunk"):
            ids.extend(response.chunk.token_ids)
    return ids


async def until_idle(client: AsyncInferenceClient, timeout: float = 30.0) -> pb.GetLoadResponse:
    async with asyncio.timeout(timeout):
        while True:
            load = await client.get_load(timeout=5)
            if load.active_requests == 0 and load.queued_requests == 0:
                return load
            await asyncio.sleep(0.02)


async def test_one_message_carries_a_whole_step_and_the_tokens_match_generate(
    worker: Proc,
) -> None:
    """Four calls on one stream get the same greedy tokens as four Generate calls, and the
    worker sends each decode step of all of them in one message."""
    async with AsyncInferenceClient(worker.target) as client:
        expected = [await ids_of(client.generate(chat(p), timeout=120)) for p in PROMPTS]

        requests: asyncio.Queue[pb.RelayRequest | None] = asyncio.Queue()
        for tag, prompt in enumerate(PROMPTS, start=1):
            requests.put_nowait(pb.RelayRequest(start=pb.RelayStart(tag=tag, request=chat(prompt))))

        async def send() -> AsyncIterator[pb.RelayRequest]:
            while (request := await requests.get()) is not None:
                yield request

        channel = grpc.aio.insecure_channel(worker.target, options=channel_options())
        stub = pb_grpc.InferenceServiceStub(channel)
        ids: dict[int, list[int]] = {tag: [] for tag in range(1, len(PROMPTS) + 1)}
        admitted: set[int] = set()
        finals: set[int] = set()
        chunks_per_message: list[int] = []
        async with asyncio.timeout(120):
            stream = stub.Relay(send())
            async for message in stream:
                kinds = Counter(event.WhichOneof("event") for event in message.events)
                assert kinds["error"] == 0, message
                chunks = 0
                for event in message.events:
                    if event.HasField("admitted"):
                        assert event.tag not in ids or not ids[event.tag]
                        admitted.add(event.tag)
                    elif event.response.HasField("chunk"):
                        assert event.tag in admitted
                        ids[event.tag].extend(event.response.chunk.token_ids)
                        chunks += 1
                    else:
                        finals.add(event.tag)
                chunks_per_message.append(chunks)
                if len(finals) == len(PROMPTS):
                    requests.put_nowait(None)  # half-close: the stream then ends
        await channel.close()
        assert [ids[tag] for tag in sorted(ids)] == expected
        # 4 sequences decode together: their tokens of a step travel in one message.
        assert max(chunks_per_message) == len(PROMPTS), chunks_per_message
        full = sum(1 for n in chunks_per_message if n == len(PROMPTS))
        assert full >= 10, chunks_per_message


async def test_a_refused_call_carries_its_status_and_details(worker: Proc) -> None:
    async with AsyncInferenceClient(worker.target) as client:
        bad = chat("hi", repeat_penalty=float("inf"))
        call = client.relay(bad, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.admitted()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = parse_details(refused.value.trailing_metadata())
        assert details.reason == REASON_INVALID_VALUE
        assert details.param == "repeat_penalty"
        # The same stream still serves the next call.
        good = client.relay(chat("Say hello.", max_tokens=4), timeout=60)
        await good.admitted()
        assert len(await ids_of(good)) == 4


async def test_cancelling_a_call_frees_its_slot_and_leaves_the_others_running(
    worker: Proc,
) -> None:
    async with AsyncInferenceClient(worker.target) as client:
        long = client.relay(chat("Tell a long story.", max_tokens=2000), timeout=120)
        short = client.relay(chat("Say hello.", max_tokens=40), timeout=120)
        await long.admitted()
        seen = 0
        async for response in long:
            seen += len(response.chunk.token_ids)
            if seen >= 3:
                break
        assert long.cancel()
        assert len(await ids_of(short)) == 40
        load = await until_idle(client)
        assert load.active_requests == 0


async def test_a_call_past_its_deadline_ends_with_deadline_exceeded(worker: Proc) -> None:
    async with AsyncInferenceClient(worker.target) as client:
        call = client.relay(chat("Tell a long story.", max_tokens=1500), timeout=0.5)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await ids_of(call)
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await until_idle(client)
