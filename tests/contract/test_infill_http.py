"""Code infilling through the gateway against the fake worker: what ``suffix`` on
/v1/completions and llama-server's /infill send to the worker, and how the worker's refusals
of an infill input are named on each route."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest

from tests.contract.conftest import AUTH_HEADERS, Gateway
from tests.contract.fake_worker import MODEL


async def post(gateway: Gateway, path: str, body: dict[str, Any]) -> httpx.Response:
    async with gateway.http(headers=AUTH_HEADERS) as http:
        return await http.post(path, json=body)


async def test_suffix_sends_the_prompt_and_suffix_as_an_infill_input(gateway: Gateway) -> None:
    body = {"model": MODEL, "prompt": "def f(", "suffix": "):\n", "max_tokens": 3}
    reply = await post(gateway, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    sent = gateway.worker.generate_requests()[-1]
    assert sent.WhichOneof("input") == "infill"
    assert (sent.infill.prefix, sent.infill.suffix, sent.infill.prompt) == ("def f(", "):\n", "")
    assert sent.sampling.max_tokens == 3


async def test_infill_sends_its_code_and_completion_options(gateway: Gateway) -> None:
    body = {
        "model": MODEL,
        "input_prefix": "def f(",
        "input_suffix": "):\n",
        "input_extra": [{"filename": "a.py", "text": "X = 1"}, {"text": "Y = 2"}],
        "prompt": "a",
        "n_predict": 4,
        "temperature": 0.5,
        "stop": ["\n"],
    }
    reply = await post(gateway, "/infill", body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["content"] == "Hello, world!" and answer["stop"] is True
    assert {"tokens_predicted", "tokens_evaluated", "generation_settings", "timings"} <= set(answer)
    sent = gateway.worker.generate_requests()[-1]
    infill = sent.infill
    assert (infill.prefix, infill.suffix, infill.prompt) == ("def f(", "):\n", "a")
    assert [(c.filename, c.text) for c in infill.extra] == [("a.py", "X = 1"), ("", "Y = 2")]
    assert sent.sampling.max_tokens == 4 and list(sent.sampling.stop) == ["\n"]
    assert sent.sampling.temperature == pytest.approx(0.5)
    assert not sent.echo


@pytest.mark.parametrize("stream", [False, True])
async def test_a_worker_without_fim_tokens_is_named_as_suffix(
    gateway: Gateway, stream: bool
) -> None:
    gateway.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "this model has no fill-in-the-middle tokens",
        reason="UNSUPPORTED_PARAMETER",
        param="infill",
    )
    body = {"model": MODEL, "prompt": "a", "suffix": "b", "stream": stream}
    reply = await post(gateway, "/v1/completions", body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "suffix")


async def test_a_worker_refusing_the_infill_size_is_named_as_prompt(gateway: Gateway) -> None:
    gateway.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT, "too long", reason="INVALID_VALUE", param="infill"
    )
    reply = await post(gateway, "/v1/completions", {"model": MODEL, "prompt": "a", "suffix": "b"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt"


async def test_infill_errors_come_in_llama_servers_shape(gateway: Gateway) -> None:
    gateway.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "this model has no fill-in-the-middle tokens",
        reason="UNSUPPORTED_PARAMETER",
        param="infill",
    )
    reply = await post(gateway, "/infill", {"model": MODEL, "input_prefix": "a"})
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["type"], error["reason"]) == (
        400,
        "invalid_request_error",
        "unsupported_parameter",
    )


@pytest.mark.parametrize(
    "change",
    [
        {"input_extra": [{"text": {"nested": ["deep"]}}]},
        {"input_extra": {"filename": "a"}},
        {"input_suffix": None},
        {"input_prefix": ["a"]},
        {"prompt": [1, 2, 3]},
        {"input_extra": [{"filename": "a", "frobnicate": 1}]},
        {"n_predict": 0},
    ],
)
async def test_a_malformed_infill_body_is_a_400_that_reaches_no_worker(
    gateway: Gateway, change: dict[str, Any]
) -> None:
    before = len(gateway.worker.generate_requests())
    reply = await post(gateway, "/infill", {"model": MODEL, "input_prefix": "a", **change})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == 400
    assert len(gateway.worker.generate_requests()) == before
