"""The worker streams what the engine produced in batches: everything pending is one message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.events import (
    Admitted,
    Chunk,
    Event,
    Final,
    FinishReason,
    LogprobEntry,
    TokenLogprob,
    Usage,
)
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.engine.reports import ModelDescription
from llamagrid.worker.engine.requests import GenerationSpec
from llamagrid.worker.engine.slot import Job
from llamagrid.worker.model_source import ModelSource
from llamagrid.worker.rpc.servicer import InferenceService
from llamagrid.worker.rpc.translate import batch_to_proto
from llamagrid.worker.settings import WorkerSettings

DESCRIPTION = ModelDescription(
    alias="m",
    file="m.gguf",
    hf_repo="",
    context_per_slot=512,
    train_context_size=512,
    parameter_count=1,
    size_bytes=1,
    chat_template="",
    can_generate=True,
    can_embed=False,
    slots=1,
    embedding_size=8,
    vocab_size=100,
    pooling="none",
    description="",
)
FINAL = Final(FinishReason.LENGTH, Usage(prompt_tokens=3, completion_tokens=3))


def logprob(token_id: int, data: bytes) -> TokenLogprob:
    chosen = LogprobEntry(token_id, data, -0.5)
    return TokenLogprob(chosen, (chosen, LogprobEntry(9, b"z", -3.0)))


def test_the_chunks_of_a_batch_become_one_message_before_the_final_one() -> None:
    batch: list[Event] = [
        Chunk("He", [1], [logprob(1, b"He")]),
        Chunk("", [2]),  # half of a character: no text yet
        Chunk("llo\u00e9", [3], [logprob(3, b"llo\xc3\xa9")]),
        FINAL,
    ]
    chunk, final = batch_to_proto(batch)
    assert chunk.chunk.text == "Hello\u00e9" and list(chunk.chunk.token_ids) == [1, 2, 3]
    assert [lp.chosen.token_id for lp in chunk.chunk.logprobs] == [1, 3]
    assert final.final.finish_reason == pb.FINISH_REASON_LENGTH
    assert batch_to_proto([Chunk("a", [1])])[0].chunk.text == "a"
    assert [m.WhichOneof("event") for m in batch_to_proto([FINAL])] == ["final"]


class FakeEngine:
    """An engine whose generate yields scripted batches."""

    def __init__(self, batches: list[list[Event]]) -> None:
        self.batches = batches

    def description(self) -> ModelDescription:
        return DESCRIPTION

    async def generate(self, request: GenerationSpec) -> AsyncIterator[list[Event]]:
        for batch in self.batches:
            yield batch


class FakeContext:
    """The part of a grpc.aio ServicerContext that Generate uses."""

    def __init__(self) -> None:
        self.sent_metadata = 0

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.sent_metadata += 1


async def test_the_servicer_sends_one_message_per_batch_and_admission_as_metadata() -> None:
    batches: list[list[Event]] = [
        [Admitted(), Chunk("a", [1])],
        [Chunk("b", [2]), Chunk("c", [3])],
        [Chunk("d", [4]), FINAL],
    ]
    service = InferenceService(FakeEngine(batches))  # type: ignore[arg-type]
    context = FakeContext()
    request = pb.GenerateRequest(model="m", prompt="x")
    responses = [r async for r in service.Generate(request, context)]  # type: ignore[arg-type]
    assert context.sent_metadata == 1
    assert [r.WhichOneof("event") for r in responses] == ["chunk"] * 3 + ["final"]
    assert [r.chunk.text for r in responses[:3]] == ["a", "bc", "d"]
    assert list(responses[1].chunk.token_ids) == [2, 3]


class OneTokenPrompts:
    """Tokenizes every prompt as one token (on the engine's tokenizer threads)."""

    def prompt_tokens(self, spec: GenerationSpec) -> list[int]:
        return [1]


def engine() -> LlamaEngine:
    """A LlamaEngine that looks loaded but runs no thread: the test plays the engine thread."""
    llama = LlamaEngine(WorkerSettings(), ModelSource(Path("m.gguf"), "m"))
    llama._desc = DESCRIPTION
    llama._prompts = OneTokenPrompts()  # type: ignore[assignment]
    return llama


async def submitted(llama: LlamaEngine) -> Job:
    """The job the engine thread would have taken from the inbox."""
    while llama._inbox.empty():
        await asyncio.sleep(0)
    kind, job = llama._inbox.get()
    assert kind == "job"
    assert isinstance(job, Job)
    return job


async def test_everything_pending_comes_out_as_one_batch() -> None:
    llama = engine()
    stream = llama.generate(GenerationSpec(prompt="x"))
    first = asyncio.ensure_future(anext(stream))
    job = await submitted(llama)
    job.channel.push(Admitted())
    assert await first == [Admitted()]
    for event in (Chunk("a", [1]), Chunk("b", [2]), FINAL):
        job.channel.push(event)
    assert await anext(stream) == [Chunk("a", [1]), Chunk("b", [2]), FINAL]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert not job.cancelled


async def test_events_before_an_error_are_delivered_then_the_error_is_raised() -> None:
    llama = engine()
    stream = llama.generate(GenerationSpec(prompt="x"))
    first = asyncio.ensure_future(anext(stream))
    job = await submitted(llama)
    failure = EngineError(Reason.INTERNAL, "decode failed")
    for item in (Admitted(), Chunk("a", [1]), failure):
        job.channel.push(item)
    assert await first == [Admitted(), Chunk("a", [1])]
    with pytest.raises(EngineError, match="decode failed"):
        await anext(stream)
    assert not job.cancelled


async def test_closing_the_batches_early_cancels_the_job() -> None:
    llama = engine()
    stream = llama.generate(GenerationSpec(prompt="x"))
    first = asyncio.ensure_future(anext(stream))
    job = await submitted(llama)
    job.channel.push(Admitted())
    await first
    await stream.aclose()  # type: ignore[attr-defined]
    assert job.cancelled
