"""worker.rpc.relay without a network: limits, refusals, cancellation and coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.rpc.relay import RelayStream


class Script:
    """A Generate stand-in: admits, then sends ``n`` chunks when told to, then the final."""

    def __init__(self, expected: int = 0) -> None:
        self.step = asyncio.Event()
        self.cancelled: list[str] = []
        self.expected = expected
        #: Set once ``expected`` calls are admitted and waiting for their first step.
        self.waiting = asyncio.Event()
        self._admitted = 0

    async def generate(self, request: pb.GenerateRequest, context: Any) -> AsyncIterator[Any]:
        if request.prompt == "refuse":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused", ())
        await context.send_initial_metadata(())
        self._admitted += 1
        if self._admitted == self.expected:
            self.waiting.set()
        try:
            for i in range(request.sampling.max_tokens):
                await self.step.wait()
                yield pb.GenerateResponse(chunk=pb.GenerateChunk(text=f"{i}", token_ids=[i]))
            yield pb.GenerateResponse(final=pb.GenerateFinal())
        except asyncio.CancelledError:
            self.cancelled.append(request.prompt)
            raise


def start(tag: int, prompt: str, tokens: int = 2) -> pb.RelayRequest:
    request = pb.GenerateRequest(prompt=prompt, sampling=pb.SamplingParams(max_tokens=tokens))
    return pb.RelayRequest(start=pb.RelayStart(tag=tag, request=request))


class Requests:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.RelayRequest | None] = asyncio.Queue()

    def send(self, *requests: pb.RelayRequest | None) -> None:
        for request in requests:
            self.queue.put_nowait(request)

    async def __aiter__(self) -> AsyncIterator[pb.RelayRequest]:
        while (request := await self.queue.get()) is not None:
            yield request


async def run(
    script: Script, requests: Requests, max_calls: int = 8
) -> tuple[list[pb.RelayResponse], list[grpc.StatusCode]]:
    ended: list[grpc.StatusCode] = []
    stream = RelayStream(script.generate, None, max_calls, ended.append)  # type: ignore[arg-type]
    messages = [m async for m in stream.run(aiter(requests))]
    return messages, ended


def events(messages: list[pb.RelayResponse]) -> list[tuple[int, str]]:
    return [(e.tag, e.WhichOneof("event")) for m in messages for e in m.events]


async def test_calls_over_the_limit_and_running_tags_are_refused() -> None:
    script, requests = Script(), Requests()
    requests.send(start(1, "a"), start(1, "again"), start(2, "b"), start(3, "c"), None)
    script.step.set()
    messages, ended = await asyncio.wait_for(run(script, requests, max_calls=2), 5)
    errors = [e for m in messages for e in m.events if e.HasField("error")]
    assert sorted(e.tag for e in errors) == [1, 3]  # the duplicate tag 1, and tag 3 (limit)
    assert {e.error.code for e in errors} == {grpc.StatusCode.FAILED_PRECONDITION.value[0]}
    finals = [e.tag for m in messages for e in m.events if e.response.HasField("final")]
    assert sorted(finals) == [1, 2]
    assert ended == [grpc.StatusCode.OK, grpc.StatusCode.OK]


async def test_an_aborted_call_ends_with_its_status_and_the_stream_goes_on() -> None:
    script, requests = Script(), Requests()
    requests.send(start(1, "refuse"), start(2, "fine"), None)
    script.step.set()
    messages, ended = await asyncio.wait_for(run(script, requests), 5)
    by_tag = events(messages)
    assert (1, "error") in by_tag and (1, "admitted") not in by_tag
    assert [kind for tag, kind in by_tag if tag == 2] == [
        "admitted",
        "response",
        "response",
        "response",
    ]
    assert sorted(c.name for c in ended) == ["INVALID_ARGUMENT", "OK"]


async def test_a_cancel_stops_only_its_call() -> None:
    script, requests = Script(expected=2), Requests()
    requests.send(start(1, "stays", 3), start(2, "goes", 3))

    async def steer() -> None:
        await script.waiting.wait()  # both admitted and waiting for their first step
        requests.send(pb.RelayRequest(cancel=2), pb.RelayRequest(cancel=99))
        while not script.cancelled:
            await asyncio.sleep(0)
        script.step.set()
        requests.send(None)

    (messages, _), _ = await asyncio.wait_for(asyncio.gather(run(script, requests), steer()), 5)
    assert script.cancelled == ["goes"]
    kinds = events(messages)
    assert [k for t, k in kinds if t == 1].count("response") == 4
    assert not [k for t, k in kinds if t == 2 and k == "response"]


async def test_events_produced_together_travel_in_one_message() -> None:
    script, requests = Script(expected=8), Requests()
    requests.send(*(start(tag, f"p{tag}", 5) for tag in range(1, 9)))

    async def steer() -> None:
        await script.waiting.wait()
        script.step.set()
        requests.send(None)

    (messages, _), _ = await asyncio.wait_for(asyncio.gather(run(script, requests), steer()), 5)
    chunks = [sum(e.response.HasField("chunk") for e in m.events) for m in messages]
    assert sum(chunks) == 40
    # Each message carries the chunks all 8 calls had ready (each call may have two waiting).
    assert [n for n in chunks if n] == [16, 16, 8], chunks
