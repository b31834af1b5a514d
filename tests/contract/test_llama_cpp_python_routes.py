"""llama-cpp-python's server routes on the gateway, against the fake worker: what reaches the
worker, auth, model choice and Copilot's no-op fields (gateway/llamacpp_python/)."""

from __future__ import annotations

import json

from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import AUTH_HEADERS, Gateway, eventually, running_gateway
from tests.contract.fake_worker import MODEL, FakeWorker


def sent(worker: FakeWorker, kind: type) -> list:
    return [r for r in worker.requests if isinstance(r, kind)]


async def test_tokenize_asks_for_special_tokens_as_llama_cpp_python_counts_them(
    gateway: Gateway,
) -> None:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        reply = await http.post("/extras/tokenize", json={"input": "hi"})
        count = await http.post("/extras/tokenize/count", json={"input": "hi", "model": MODEL})
    assert reply.json() == {"tokens": [ord("h"), ord("i")]}
    assert count.json() == {"count": 2}
    first = sent(gateway.worker, pb.TokenizeRequest)[0]
    assert (first.model, first.text, first.add_special, first.parse_special) == (
        MODEL,
        "hi",
        True,
        True,
    )


async def test_detokenize_returns_the_workers_text(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        reply = await http.post("/extras/detokenize", json={"tokens": [104, 105]})
    assert reply.json() == {"text": "hi"}
    assert list(sent(gateway.worker, pb.DetokenizeRequest)[0].token_ids) == [104, 105]


async def test_the_routes_need_the_api_key(gateway: Gateway) -> None:
    async with gateway.http() as http:
        for route, body in [
            ("/extras/tokenize", {"input": "x"}),
            ("/extras/tokenize/count", {"input": "x"}),
            ("/extras/detokenize", {"tokens": [1]}),
            ("/v1/engines/copilot-codex/completions", {"prompt": "x"}),
        ]:
            reply = await http.post(route, json=body)
            assert reply.status_code == 401, route
    assert sent(gateway.worker, pb.TokenizeRequest) == []


async def test_an_undeclared_field_is_refused_by_name_before_the_worker_is_called(
    gateway: Gateway,
) -> None:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        reply = await http.post("/extras/tokenize", json={"input": "x", "add_bos": False})
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "add_bos"
    assert reply.json()["error"]["code"] == "unsupported_parameter"
    assert sent(gateway.worker, pb.TokenizeRequest) == []


async def test_copilot_runs_on_the_single_model_without_its_no_op_fields(gateway: Gateway) -> None:
    body = {
        "prompt": "def f():",
        "max_tokens": 4,
        "stream": True,
        "extra": {"language": "python", "next_indent": 4},
        "nwo": "octo/repo",
    }
    async with (
        gateway.http(headers=AUTH_HEADERS) as http,
        http.stream("POST", "/v1/engines/copilot-codex/completions", json=body) as reply,
    ):
        assert reply.status_code == 200
        events = [line[6:] async for line in reply.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "text_completion" for e in events[:-1])
    request = sent(gateway.worker, pb.GenerateRequest)[0]
    assert (request.model, request.prompt) == (MODEL, "def f():")


async def test_copilot_runs_on_the_model_aliased_copilot_codex_among_several() -> None:
    worker = FakeWorker(models=("chat", "copilot-codex"))
    await worker.start(serving=True)
    try:
        async with running_gateway(worker) as gw:
            await eventually(lambda: len(gw.pool.models()) == 2)
            async with gw.http() as http:
                reply = await http.post(
                    "/v1/engines/copilot-codex/completions", json={"prompt": "x", "max_tokens": 2}
                )
            assert reply.status_code == 200, reply.text
            assert sent(worker, pb.GenerateRequest)[0].model == "copilot-codex"
    finally:
        await worker.stop()
