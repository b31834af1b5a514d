"""The Python client package (blocking client) against a live worker, and reflection."""

from __future__ import annotations

import math
import time
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from llamagrid.client import AsyncInferenceClient
from llamagrid.errors import parse_details
from llamagrid.sync_client import InferenceClient
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc

#: The request every client's parity test sends (see tests/integration/test_clients.py).
PARITY_MESSAGES = [
    ("system", "You are a terse assistant."),
    ("user", "Name three primary colors."),
]


def parity_request() -> pb.GenerateRequest:
    messages = [pb.ChatMessage(role=r, content=c) for r, c in PARITY_MESSAGES]
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=messages),
        sampling=pb.SamplingParams(temperature=0.0, seed=42, max_tokens=24),
    )


def stream_ids(client: InferenceClient, request: pb.GenerateRequest) -> list[int]:
    """Token ids of a Generate stream, checking its shape on the way."""
    ids: list[int] = []
    finals = []
    texts = []
    with client.generate(request, timeout=120) as call:
        for response in call:
            if response.HasField("chunk"):
                ids.extend(response.chunk.token_ids)
                texts.append(response.chunk.text)
            else:
                finals.append(response.final)
    assert len(finals) == 1 and "".join(texts)
    assert finals[0].finish_reason != pb.FINISH_REASON_UNSPECIFIED
    assert finals[0].usage.completion_tokens == len(ids)
    return ids


@pytest.fixture(scope="module")
def client(worker: Proc) -> InferenceClient:
    c = InferenceClient(worker.target)
    c.wait_ready(timeout=60)
    return c


def test_streaming_chat_is_reproducible(client: InferenceClient) -> None:
    assert stream_ids(client, parity_request()) == stream_ids(client, parity_request())


def test_embed_batch(client: InferenceClient) -> None:
    texts = ["a red apple", "a green pear", "the blue sea"]
    out = client.embed(
        pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts], normalize=True)
    )
    sizes = {len(e.values) for e in out.embeddings}
    assert len(out.embeddings) == 3 and len(sizes) == 1 and sizes.pop() > 0
    for e in out.embeddings:
        assert math.isclose(math.sqrt(sum(v * v for v in e.values)), 1.0, abs_tol=1e-3)


def test_large_embedding_batch_needs_the_raised_message_size(
    client: InferenceClient, worker: Proc
) -> None:
    """2,000 vectors of 576 floats are about 4.7 MB: over gRPC's 4 MiB default, within our
    64 MiB (llamagrid.grpc_options.MAX_MESSAGE_BYTES). A channel with gRPC's defaults cannot
    take an answer that large: shown with a large Tokenize answer, which costs the worker far
    less than a second batch of embeddings."""
    request = pb.EmbedRequest(inputs=[pb.EmbedInput(text=f"item {i}") for i in range(2000)])
    out = client.embed(request, timeout=300)
    assert len(out.embeddings) == 2000 and out.ByteSize() > 4 * 1024 * 1024
    text = pb.TokenizeRequest(text="word, " * 600_000, with_pieces=True)
    assert client.tokenize(text, timeout=300).ByteSize() > 4 * 1024 * 1024
    with grpc.insecure_channel(worker.target) as plain:  # gRPC's default limits
        stub = pb_grpc.InferenceServiceStub(plain)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Tokenize(text, timeout=300)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_tokenize_detokenize_round_trip(client: InferenceClient) -> None:
    text = "Hello, llamagrid!"
    ids = client.tokenize(pb.TokenizeRequest(text=text, add_special=False)).token_ids
    assert client.detokenize(pb.DetokenizeRequest(token_ids=ids)).text == text


def test_deadline_mid_generation_stops_the_worker(client: InferenceClient) -> None:
    request = pb.GenerateRequest(
        prompt="Count:",
        sampling=pb.SamplingParams(max_tokens=2000, ignore_eos=True, temperature=0.0),
    )
    with pytest.raises(grpc.RpcError) as caught:
        for _ in client.generate(request, timeout=1.5):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    for _ in range(100):
        if client.get_load().active_requests == 0:
            break
        time.sleep(0.05)
    assert client.get_load().active_requests == 0


def test_invalid_request_is_invalid_argument(client: InferenceClient) -> None:
    request = pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(temperature=-1.0))
    with pytest.raises(grpc.RpcError) as caught:
        list(client.generate(request, timeout=30))
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "temperature" in error.details()  # type: ignore[attr-defined]
    assert parse_details(error.trailing_metadata()).param == "temperature"  # type: ignore[attr-defined]


def test_list_models(client: InferenceClient) -> None:
    assert [m.alias for m in client.list_models().models] == ["smollm2"]


def test_reflection_lists_and_describes_the_service(worker: Proc) -> None:
    """A standard reflection client, with a descriptor pool fed by reflection alone."""
    with grpc.insecure_channel(worker.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("llamagrid.v1.InferenceService")
        generate = service.FindMethodByName("Generate")
        methods = {m.name for m in service.methods}
        request_fields = {f.name for f in generate.input_type.fields}
    assert {
        "llamagrid.v1.InferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert {"Generate", "Embed", "Tokenize", "Detokenize", "GetModelInfo", "ListModels"} <= methods
    assert "GetLoad" in methods
    assert generate.server_streaming and not generate.client_streaming
    assert generate.output_type.full_name == "llamagrid.v1.GenerateResponse"
    assert {"model", "prompt", "tokens", "chat", "sampling"} <= request_fields


def test_template_lora_and_slot_calls(client: InferenceClient) -> None:
    chat = pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="Hi there")])
    prompt = client.apply_chat_template(pb.ApplyChatTemplateRequest(chat=chat)).prompt
    assert "Hi there" in prompt and "<|im_start|>" in prompt
    assert list(client.list_lora_adapters(pb.ListLoraAdaptersRequest()).adapters) == []
    slots = client.get_slots().slots
    assert [s.id for s in slots] == list(range(client.get_load().slots))
    for call in (
        lambda: client.save_slot(pb.SaveSlotRequest(id=0, filename="s.bin")),
        lambda: client.restore_slot(pb.RestoreSlotRequest(id=0, filename="s.bin")),
        lambda: client.erase_slot(pb.EraseSlotRequest(id=0)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert parse_details(error.trailing_metadata()).reason == "SLOT_FILES_OFF"


async def test_the_async_client_lists_slots(worker: Proc) -> None:
    async with AsyncInferenceClient(worker.target) as client:
        slots = (await client.get_slots(timeout=30)).slots
        assert len(slots) == (await client.get_load(timeout=30)).slots
