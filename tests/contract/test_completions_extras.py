"""n > 1, /v1/completions list prompts, echo and prompt logprobs, against the fake worker.

The fake sends n choices interleaved piece by piece, their final messages in reverse order, the
prompt counted in choice 0's usage only, and (echo, prompt_logprobs) the prompt's text and one
log-probability per word first, as the worker does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from tests.contract.conftest import Gateway, eventually, running_gateway
from tests.contract.fake_worker import (
    CACHED_TOKENS,
    MODEL,
    PROMPT_TOKENS,
    Failure,
    FakeWorker,
    prompt_logprob,
    prompt_words,
)

TEXT = "Hello, world!"
PIECES = 4  # the fake's pieces of TEXT


async def post(gateway: Gateway, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with gateway.http(headers={"Authorization": "Bearer sk-test"}) as http:
        response = await http.post(path, json={"model": MODEL, **body})
    return response.status_code, response.json()


async def events(gateway: Gateway, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON events of a streamed response (without [DONE], which must end it)."""
    body = {"model": MODEL, "stream": True, **body}
    async with (
        gateway.http(headers={"Authorization": "Bearer sk-test"}) as http,
        http.stream("POST", path, json=body) as response,
    ):
        assert response.status_code == 200
        data = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def by_choice(stream: list[dict[str, Any]], key: str) -> dict[int, str]:
    """Each choice's text (key "text") or content (key "content"), joined."""
    out: dict[int, str] = {}
    for event in stream:
        for choice in event["choices"]:
            part = choice["text"] if key == "text" else choice["delta"].get("content") or ""
            out[choice["index"]] = out.get(choice["index"], "") + part
    return out


def finishes(stream: list[dict[str, Any]]) -> dict[int, str]:
    return {
        c["index"]: c["finish_reason"]
        for event in stream
        for c in event["choices"]
        if c["finish_reason"] is not None
    }


# ------------------------------------------------------------------------------ list prompts


async def test_a_list_of_prompts_is_a_call_per_prompt_and_choices_are_indexed_as_openai_does(
    gateway: Gateway,
) -> None:
    status, body = await post(
        gateway, "/v1/completions", {"prompt": ["a", "b b", "c"], "n": 2, "max_tokens": 3}
    )
    assert status == 200, body
    calls = gateway.worker.generate_requests()
    assert sorted(c.prompt for c in calls) == ["a", "b b", "c"]
    assert {c.n for c in calls} == {2}
    assert len({c.request_id for c in calls}) == 1 and calls[0].request_id == body["id"]
    assert [c["index"] for c in body["choices"]] == list(range(6))
    assert all(c["text"] == "Hello, world" for c in body["choices"])
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    # The prompt counts once per call; every choice's tokens count.
    assert body["usage"]["prompt_tokens"] == 3 * PROMPT_TOKENS
    assert body["usage"]["completion_tokens"] == 6 * 3
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 3 * CACHED_TOKENS


async def test_a_list_of_token_lists_is_a_call_per_list(gateway: Gateway) -> None:
    status, body = await post(gateway, "/v1/completions", {"prompt": [[1, 2], [3]]})
    assert status == 200, body
    calls = gateway.worker.generate_requests()
    assert sorted(list(c.tokens.ids) for c in calls) == [[1, 2], [3]]
    assert [c["index"] for c in body["choices"]] == [0, 1]


async def test_list_prompts_run_at_once(gateway: Gateway) -> None:
    """Every call is admitted before any is let through: they were started together."""
    gate = asyncio.Event()
    gateway.worker.script.admit_gate = gate
    task = asyncio.ensure_future(post(gateway, "/v1/completions", {"prompt": ["a", "b", "c"]}))
    await eventually(lambda: len(gateway.worker.generate_requests()) == 3)
    gate.set()
    status, body = await task
    assert status == 200 and len(body["choices"]) == 3


@pytest.mark.parametrize("count", [65, 10_000])
async def test_more_than_64_prompts_are_refused_before_any_call(
    gateway: Gateway, count: int
) -> None:
    status, body = await post(gateway, "/v1/completions", {"prompt": ["x"] * count})
    assert status == 400
    assert body["error"]["param"] == "prompt" and "at most 64" in body["error"]["message"]
    status, body = await post(gateway, "/v1/completions", {"prompt": [[1]] * count})
    assert status == 400 and body["error"]["param"] == "prompt"
    assert gateway.worker.generate_requests() == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refused_prompt_refuses_the_request_and_cancels_the_other_calls(
    gateway: Gateway, stream: bool
) -> None:
    gateway.worker.script.refuse_prompt = "bad"
    gateway.worker.script.admit_gate = asyncio.Event()  # the others wait in the "queue"
    body = {"prompt": ["a", "bad", "c"], "stream": stream}
    status, answer = await post(gateway, "/v1/completions", body)
    assert status == 400
    assert answer["error"]["param"] == "prompt"
    await eventually(lambda: len(gateway.worker.cancelled) == 2)
    assert sorted(c.prompt for c in gateway.worker.cancelled) == ["a", "c"]


async def test_a_call_failing_mid_stream_ends_the_merged_stream_with_an_error(
    gateway: Gateway,
) -> None:
    gateway.worker.script.failure = Failure(grpc.StatusCode.INTERNAL, "boom", after_chunks=2)
    gateway.worker.script.delay_s = 0.05
    async with gateway.http(headers={"Authorization": "Bearer sk-test"}) as http:
        body = {"model": MODEL, "prompt": ["a", "b"], "stream": True}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            data = [line[6:] async for line in response.aiter_lines() if line.startswith("data")]
    assert "error" in json.loads(data[-1])


async def test_closing_a_merged_stream_cancels_every_call(gateway: Gateway) -> None:
    gateway.worker.script.delay_s = 0.5
    gateway.worker.script.pieces = ["x"] * 100
    async with gateway.http(headers={"Authorization": "Bearer sk-test"}) as http:
        body = {"model": MODEL, "prompt": ["a", "b", "c"], "stream": True, "max_tokens": 100}
        async with http.stream("POST", "/v1/completions", json=body) as response:
            async for line in response.aiter_lines():
                if '"text":"x"' in line:
                    break
    await eventually(lambda: len(gateway.worker.cancelled) == 3)


async def test_streamed_list_prompts_index_every_event_and_send_usage_once(
    gateway: Gateway,
) -> None:
    body = {"prompt": ["a", "b"], "n": 2, "stream_options": {"include_usage": True}}
    stream = await events(gateway, "/v1/completions", body)
    assert by_choice(stream, "text") == {i: TEXT for i in range(4)}
    assert finishes(stream) == {i: "stop" for i in range(4)}
    usage = [event["usage"] for event in stream if event.get("usage")]
    assert usage == [stream[-1]["usage"]] and stream[-1]["choices"] == []
    assert usage[0]["prompt_tokens"] == 2 * PROMPT_TOKENS
    assert usage[0]["completion_tokens"] == 4 * PIECES


# ------------------------------------------------------------------------------ n


async def test_chat_n_is_sent_to_the_worker_and_each_choice_has_its_index(
    gateway: Gateway,
) -> None:
    answer = await gateway.openai().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=3
    )
    assert gateway.worker.generate_requests()[0].n == 3
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.message.content for c in answer.choices] == [TEXT] * 3
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == PROMPT_TOKENS
    assert answer.usage.completion_tokens == 3 * PIECES


async def test_a_streamed_chat_with_n_opens_every_choice_and_indexes_every_delta(
    gateway: Gateway,
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "n": 2}
    stream = await events(gateway, "/v1/chat/completions", body)
    roles = [c["index"] for e in stream for c in e["choices"] if c["delta"].get("role")]
    assert roles == [0, 1]
    assert by_choice(stream, "content") == {0: TEXT, 1: TEXT}
    assert finishes(stream) == {0: "stop", 1: "stop"}


async def test_n_reaches_the_worker_unjudged_without_it(gateway: Gateway) -> None:
    """1 is sent as it is; unset stays unset. The worker bounds n (by its slots)."""
    await post(gateway, "/v1/completions", {"prompt": "a", "n": 1})
    await post(gateway, "/v1/completions", {"prompt": "a"})
    one, unset = gateway.worker.generate_requests()
    assert one.HasField("n") and one.n == 1
    assert not unset.HasField("n")


@pytest.mark.parametrize("n", [-1, 2**32, "two", 1.5, [2]])
async def test_n_that_the_wire_cannot_carry_is_a_400_before_any_call(
    gateway: Gateway, n: object
) -> None:
    for path, body in (
        ("/v1/completions", {"prompt": "a", "n": n}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "n": n}),
    ):
        status, answer = await post(gateway, path, body)
        assert status == 400, answer
        assert answer["error"]["param"] == "n"
    assert gateway.worker.generate_requests() == []


# ------------------------------------------------------------------------------ echo


async def test_echo_puts_the_prompt_before_each_choice(gateway: Gateway) -> None:
    status, body = await post(
        gateway, "/v1/completions", {"prompt": ["one two", "three"], "echo": True, "n": 2}
    )
    assert status == 200, body
    call = gateway.worker.generate_requests()[0]
    assert call.echo and not call.HasField("prompt_logprobs")
    texts = [c["text"] for c in body["choices"]]
    assert texts == ["one two" + TEXT] * 2 + ["three" + TEXT] * 2
    assert all(c["logprobs"] is None for c in body["choices"])


async def test_echo_with_logprobs_scores_the_prompt_first_token_null(gateway: Gateway) -> None:
    """lm-eval-harness's log-likelihood request: max_tokens 0, echo, logprobs."""
    prompt = "The cat sat"
    status, body = await post(
        gateway, "/v1/completions", {"prompt": prompt, "echo": True, "logprobs": 2, "max_tokens": 0}
    )
    assert status == 200, body
    call = gateway.worker.generate_requests()[0]
    assert call.prompt_logprobs == 2 and call.sampling.max_tokens == 0
    (choice,) = body["choices"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length"
    words = prompt_words(prompt)
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == words
    assert logprobs["token_logprobs"] == [None] + [prompt_logprob(i) for i in range(1, 3)]
    assert logprobs["top_logprobs"][0] is None
    assert all(len(top) == 2 for top in logprobs["top_logprobs"][1:])
    assert logprobs["text_offset"] == [0, 3, 7]


async def test_echoed_offsets_run_on_into_the_generated_tokens(gateway: Gateway) -> None:
    prompt = "ab cd"
    status, body = await post(
        gateway, "/v1/completions", {"prompt": prompt, "echo": True, "logprobs": 0, "max_tokens": 2}
    )
    assert status == 200, body
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == ["ab", " cd", "Hello", ","]
    assert logprobs["text_offset"] == [0, 2, 5, 10]
    assert body["choices"][0]["text"] == "ab cdHello,"


async def test_a_streamed_echo_opens_each_choice_with_the_prompt(gateway: Gateway) -> None:
    body = {"prompt": ["x y", "z"], "n": 2, "echo": True, "logprobs": 1, "max_tokens": 1}
    stream = await events(gateway, "/v1/completions", body)
    texts = by_choice(stream, "text")
    assert texts == {0: "x yHello", 1: "x yHello", 2: "zHello", 3: "zHello"}
    firsts: dict[int, dict[str, Any]] = {}
    for event in stream:
        for choice in event["choices"]:
            firsts.setdefault(choice["index"], choice)
    assert firsts[1]["text"] == "x y"
    assert firsts[1]["logprobs"]["token_logprobs"] == [None, prompt_logprob(1)]
    assert firsts[3]["logprobs"]["tokens"] == ["z"]


async def test_echo_on_a_token_prompt_sends_the_worker_the_tokens(gateway: Gateway) -> None:
    status, body = await post(
        gateway, "/v1/completions", {"prompt": [5, 6], "echo": True, "max_tokens": 0}
    )
    assert status == 200, body
    assert body["choices"][0]["text"] == "<5><6>"


async def test_echo_stays_off_when_false(gateway: Gateway) -> None:
    status, body = await post(gateway, "/v1/completions", {"prompt": "p", "echo": False})
    assert status == 200
    call = gateway.worker.generate_requests()[0]
    assert not call.echo and not call.HasField("prompt_logprobs")
    assert body["choices"][0]["text"] == TEXT


async def test_prompt_logprobs_reach_the_worker_only_with_echo(gateway: Gateway) -> None:
    await post(gateway, "/v1/completions", {"prompt": "p", "logprobs": 3})
    (call,) = gateway.worker.generate_requests()
    assert call.sampling.top_logprobs == 3 and not call.HasField("prompt_logprobs")


async def test_relay_off_still_serves_several_choices(worker: FakeWorker) -> None:
    """A worker without the Relay method: the plain Generate stream ends after n finals too."""
    worker.relay = False
    async with running_gateway(worker) as gw:
        await eventually(gw.pool.any_healthy)
        status, body = await post(gw, "/v1/completions", {"prompt": "a", "n": 3})
    assert status == 200, body
    assert [c["text"] for c in body["choices"]] == [TEXT] * 3
