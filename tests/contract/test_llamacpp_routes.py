"""llama-server's native routes against the fake worker: the stream's framing (no [DONE]),
llama-server's error shape, body reading, and model naming."""

from __future__ import annotations

import json

import grpc
import httpx

from tests.contract.conftest import API_KEY, Gateway, eventually, running_gateway
from tests.contract.fake_worker import MODEL, PROMPT_TOKENS, FakeWorker

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_a_completion_answers_with_the_workers_text(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        reply = await http.post("/completion", json={"prompt": "Hi", "n_predict": 4})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["content"] == "Hello, world!" and body["stop"] is True
    assert body["stop_type"] == "eos" and body["stopped_eos"] is True
    assert body["tokens_evaluated"] == PROMPT_TOKENS and body["tokens_predicted"] == 4
    assert gateway.worker.generate_requests()[-1].sampling.max_tokens == 4


async def test_a_stream_is_data_events_without_done(gateway: Gateway) -> None:
    async with (
        gateway.http(headers=AUTH) as http,
        http.stream("POST", "/completion", json={"prompt": "Hi", "stream": True}) as reply,
    ):
        text = "".join([part async for part in reply.aiter_text()])
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    events = [json.loads(item) for item in data]  # every event is JSON: no [DONE]
    assert "".join(event["content"] for event in events) == "Hello, world!"
    assert [event["stop"] for event in events] == [False] * (len(events) - 1) + [True]


async def test_a_text_plain_body_or_one_without_a_type_is_read_as_json(gateway: Gateway) -> None:
    headers = {**AUTH, "Content-Type": "text/plain;charset=UTF-8"}
    async with gateway.http(headers=headers) as http:
        reply = await http.post("/completion", content=json.dumps({"prompt": "Hi"}))
    assert reply.status_code == 200, reply.text
    async with gateway.http(headers=AUTH) as http:  # content= sends no Content-Type
        reply = await http.post("/completion", content=json.dumps({"prompt": "Hi"}))
    assert reply.status_code == 200, reply.text


async def test_errors_take_llama_servers_shape(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        unknown = await http.post("/completion", json={"prompt": "Hi", "frobnicate": 1})
        malformed = await http.post("/tokenize", content=b"{not json")
        no_key = await http.post("/detokenize", json={"tokens": [1]}, headers={"Authorization": ""})
    error = unknown.json()["error"]
    assert unknown.status_code == 400
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert (error["param"], error["reason"]) == ("frobnicate", "unsupported_parameter")
    assert malformed.status_code == 400 and malformed.json()["error"]["code"] == 400
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == 401


async def test_a_workers_refusal_of_a_stream_is_a_plain_llama_error(
    gateway: Gateway,
) -> None:
    gateway.worker.fail_with(grpc.StatusCode.INVALID_ARGUMENT, "bad value")
    async with gateway.http(headers=AUTH) as http:
        reply = await http.post("/completion", json={"prompt": "Hi", "stream": True})
    assert reply.status_code == 400
    assert reply.json()["error"] == {
        "code": 400,
        "message": "bad value",
        "type": "invalid_request_error",
    }


async def test_tokenize_and_detokenize_go_to_the_worker(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        ids = (await http.post("/tokenize", json={"content": "ab"})).json()
        text = (await http.post("/detokenize", json={"tokens": [97, 98]})).json()
    assert ids == {"tokens": [97, 98]} and text == {"content": "ab"}


async def test_any_model_name_reaches_the_single_model_unless_strict(
    worker: FakeWorker,
) -> None:
    body = {"prompt": "Hi", "model": "gpt-3.5-turbo"}
    async with running_gateway(worker) as lenient:
        await eventually(lambda: bool(lenient.pool.models()))
        async with httpx.AsyncClient(base_url=lenient.url) as http:
            assert (await http.post("/completion", json=body)).status_code == 200
    assert worker.generate_requests()[-1].model == MODEL
    async with running_gateway(worker, strict_model_names=True) as strict:
        await eventually(lambda: bool(strict.pool.models()))
        async with httpx.AsyncClient(base_url=strict.url) as http:
            refused = await http.post("/completion", json=body)
    assert refused.status_code == 404 and refused.json()["error"]["code"] == 404
