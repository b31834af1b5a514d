"""The typed asyncio client against the fake worker."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator

import grpc
import pytest

from llamagrid.client import AsyncInferenceClient
from llamagrid.errors import REASON_QUEUE_FULL, parse_details
from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import eventually
from tests.contract.fake_worker import MODEL, FakeWorker

REQUEST = pb.GenerateRequest(model=MODEL, prompt="x")


@pytest.fixture
async def client(worker: FakeWorker) -> AsyncIterator[AsyncInferenceClient]:
    async with AsyncInferenceClient(worker.address) as client:
        yield client


async def test_generate_streams_chunks_then_final(client: AsyncInferenceClient) -> None:
    responses = [response async for response in client.generate(REQUEST)]
    assert [r.chunk.text for r in responses[:-1]] == ["Hello", ",", " world", "!"]
    assert responses[-1].final.finish_reason == pb.FINISH_REASON_EOS


async def test_admitted_raises_the_rejection(
    client: AsyncInferenceClient, worker: FakeWorker
) -> None:
    worker.fail_with(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "full", reason=REASON_QUEUE_FULL, retry_after_s=2
    )
    stream = client.generate(REQUEST)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.admitted()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = parse_details(caught.value.trailing_metadata())
    assert details.reason == REASON_QUEUE_FULL and details.retry_after_s == 2


async def test_admitted_returns_once_accepted(
    client: AsyncInferenceClient, worker: FakeWorker
) -> None:
    worker.script.first_delay_s = 30
    async with client.generate(REQUEST) as stream:
        await asyncio.wait_for(stream.admitted(), timeout=5)
        assert worker.chunks_sent == 0
    await worker.wait_cancelled()


async def test_leaving_the_block_cancels_the_call(
    client: AsyncInferenceClient, worker: FakeWorker
) -> None:
    worker.script.delay_s = 30
    async with client.generate(REQUEST) as stream:
        assert (await anext(stream)).chunk.text == "Hello"
    assert stream.cancelled()
    await worker.wait_cancelled()


async def test_cancelling_the_reading_task_cancels_the_call(
    client: AsyncInferenceClient, worker: FakeWorker
) -> None:
    worker.script.first_delay_s = 30

    async def consume() -> None:
        async for _ in client.generate(REQUEST):
            pass

    task = asyncio.create_task(consume())
    await eventually(lambda: len(worker.requests) == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await worker.wait_cancelled()


async def test_dropping_the_stream_cancels_the_call(
    client: AsyncInferenceClient, worker: FakeWorker
) -> None:
    worker.script.delay_s = 30
    async for _ in client.generate(REQUEST):
        break  # stop iterating without closing
    gc.collect()
    await worker.wait_cancelled()


async def test_unary_methods(client: AsyncInferenceClient) -> None:
    embedded = await client.embed(
        pb.EmbedRequest(model=MODEL, inputs=[pb.EmbedInput(text="ab")], normalize=True)
    )
    assert len(embedded.embeddings) == 1 and embedded.total_tokens == 2
    tokens = await client.tokenize(pb.TokenizeRequest(model=MODEL, text="hi"))
    assert list(tokens.token_ids) == [ord("h"), ord("i")]
    text = await client.detokenize(pb.DetokenizeRequest(token_ids=tokens.token_ids))
    assert text.text == "hi"
    info = await client.get_model_info(pb.GetModelInfoRequest(model=MODEL))
    assert info.info.alias == MODEL and info.info.context_size == 2048
    listed = await client.list_models()
    assert [m.alias for m in listed.models] == [MODEL]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.get_model_info(pb.GetModelInfoRequest(model="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_health_follows_the_status(
    client: AsyncInferenceClient, worker: FakeWorker
) -> None:
    await worker.set_serving(False)
    watch = client.watch_health("")
    assert await anext(watch) is False
    await worker.set_serving(True)
    assert await anext(watch) is True
    await watch.aclose()
