"""Errors: every one answered in OpenAI's shape, with the right status."""

from __future__ import annotations

import grpc
import openai
import pytest

from llamagrid.errors import (
    REASON_CONTEXT_LENGTH_EXCEEDED,
    REASON_INVALID_VALUE,
    REASON_QUEUE_FULL,
)
from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import API_KEY, Gateway, eventually, running_gateway
from tests.contract.fake_worker import MODEL, FakeWorker

MESSAGES = [{"role": "user", "content": "Hi"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def assert_openai_shape(body: dict) -> dict:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


async def test_malformed_json_is_a_400(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        response = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "fake-model", "messages": [',
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 400
    error = assert_openai_shape(response.json())
    assert error["type"] == "invalid_request_error" and "JSON" in error["message"]


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (
            "/v1/chat/completions",
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        ),
        ("/v1/completions", b'{"model": "fake-model", "prompt": "\\udfff", "stream": true}'),
        ("/v1/embeddings", b'{"model": "fake-model", "input": ["ok", "\\ud83d"]}'),
    ],
)
async def test_a_lone_surrogate_is_a_400_and_never_reaches_a_worker(
    gateway: Gateway, worker: FakeWorker, route: str, body: bytes
) -> None:
    async with gateway.http(headers=AUTH) as http:
        response = await http.post(
            route, content=body, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text
    error = assert_openai_shape(response.json())
    assert "not valid Unicode" in error["message"]
    assert not worker.requests


async def test_wrong_type_names_the_field(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        response = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES, "temperature": "hot"},
        )
    assert response.status_code == 400
    error = assert_openai_shape(response.json())
    assert error["param"] == "temperature" and "temperature" in error["message"]


async def test_nested_wrong_type_names_the_path(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        response = await http.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user"}, 7]}
        )
    assert response.status_code == 400
    assert assert_openai_shape(response.json())["param"] == "messages[1]"


async def test_missing_body_is_a_400(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        response = await http.post("/v1/embeddings")
    assert response.status_code == 400
    assert_openai_shape(response.json())


async def test_the_worker_judges_empty_messages_and_the_gateway_maps_its_answer(
    client: openai.AsyncOpenAI, worker: FakeWorker
) -> None:
    worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "messages must not be empty",
        reason=REASON_INVALID_VALUE,
        param="messages",
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=[])
    assert caught.value.param == "messages"
    assert caught.value.body["message"] == "messages must not be empty"  # type: ignore[index]
    assert not worker.generate_requests()[-1].chat.messages


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
async def test_unsupported_chat_parameters(
    client: openai.AsyncOpenAI, gateway: Gateway, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, extra_body=extra)
    assert caught.value.code == "unsupported_parameter" and caught.value.param == param
    assert gateway.worker.generate_requests() == []  # refused before reaching the worker


async def test_an_image_part_for_a_model_without_a_projector_is_refused(
    client: openai.AsyncOpenAI,
) -> None:
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": [image]}]
        )
    assert caught.value.code == "model_not_multimodal"
    assert caught.value.param == "messages[0].content[0].image_url"


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"best_of": 2}, "best_of"), ({"suffix": "x", "prompt": [1, 2]}, "suffix")],
)
async def test_unsupported_completion_parameters(
    client: openai.AsyncOpenAI, extra: dict, param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.completions.create(model=MODEL, **{"prompt": "x", **extra})
    assert caught.value.code == "unsupported_parameter" and caught.value.param == param


async def test_embedding_dimensions_unsupported(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model=MODEL, input="x", dimensions=2)
    assert caught.value.code == "unsupported_parameter" and caught.value.param == "dimensions"


@pytest.mark.parametrize("stream", [False, True])
async def test_unknown_model_is_a_404_with_strict_model_names(
    worker: FakeWorker, stream: bool
) -> None:
    async with running_gateway(worker, api_key=API_KEY, strict_model_names=True) as gateway:
        await eventually(gateway.pool.any_healthy)
        client = gateway.openai()
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(
                model="no-such-model", messages=MESSAGES, stream=stream
            )
        assert caught.value.code == "model_not_found" and caught.value.param == "model"
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="no-such-model", input="x")


@pytest.mark.parametrize("stream", [False, True])
async def test_any_model_name_reaches_a_gateways_single_model(
    client: openai.AsyncOpenAI, worker: FakeWorker, stream: bool
) -> None:
    if stream:
        chunks = await client.chat.completions.create(
            model="gpt-3.5-turbo", messages=MESSAGES, stream=True
        )
        assert [chunk async for chunk in chunks]
    else:
        reply = await client.chat.completions.create(model="gpt-3.5-turbo", messages=MESSAGES)
        assert reply.choices[0].message.content
    # The worker is asked for its own alias.
    assert worker.generate_requests()[-1].model == MODEL
    embedded = await client.embeddings.create(model="text-embedding-3-small", input="x")
    sent = worker.requests[-1]
    assert embedded.data and isinstance(sent, pb.EmbedRequest) and sent.model == MODEL


@pytest.mark.parametrize("stream", [False, True])
async def test_queue_full_is_a_429_with_retry_after(
    client: openai.AsyncOpenAI, gateway: Gateway, stream: bool
) -> None:
    gateway.worker.fail_with(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "queue full",
        reason=REASON_QUEUE_FULL,
        retry_after_s=2.2,
    )
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.code == "queue_full"


async def test_429_without_retry_info_defaults_to_one_second(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    gateway.worker.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
    with pytest.raises(openai.RateLimitError) as caught:
        await client.embeddings.create(model=MODEL, input="x")
    assert caught.value.response.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
    ],
)
async def test_status_mapping(
    client: openai.AsyncOpenAI, gateway: Gateway, code: grpc.StatusCode, status: int
) -> None:
    gateway.worker.fail_with(code, "scripted")
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == status
    assert_openai_shape(caught.value.response.json())


async def test_gateway_deadline_is_a_504(worker: FakeWorker) -> None:
    worker.script.first_delay_s = 5
    async with running_gateway(worker, timeout_s=0.2) as gw:
        await eventually(gw.pool.any_healthy)
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.openai().chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 504


async def test_context_length_exceeded(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    gateway.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "prompt of 9000 tokens exceeds the context of 2048",
        reason=REASON_CONTEXT_LENGTH_EXCEEDED,
        param="messages",
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert "9000" in caught.value.message


async def test_error_after_the_stream_started_is_an_event(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    gateway.worker.fail_with(grpc.StatusCode.INTERNAL, "engine died", after_chunks=2)
    stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError, match="engine died"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "Hello", ","]


async def test_api_key_is_required(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await gateway.openai(api_key="wrong").models.list()
    assert caught.value.code == "invalid_api_key"
    async with gateway.http() as http:
        response = await http.get("/v1/models")
    assert response.status_code == 401
    assert_openai_shape(response.json())


async def test_unknown_route_and_method(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        missing = await http.get("/v1/nothing-here")
        wrong_method = await http.delete("/v1/chat/completions")
    assert missing.status_code == 404
    assert assert_openai_shape(missing.json())["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert assert_openai_shape(wrong_method.json())["code"] == "method_not_allowed"


async def test_no_healthy_worker_is_a_503_for_streams_too(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    await gateway.worker.set_serving(False)
    await eventually(lambda: not gateway.pool.any_healthy())
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert caught.value.status_code == 503
    assert gateway.worker.generate_requests() == []
