"""n > 1, list prompts, echo and prompt logprobs on the real model, over gRPC and HTTP.

The worker has 4 slots, 32-token batches (so that a prompt's prefill takes a countable number
of decode steps) and flash attention off (a sequence's greedy output does not depend on what
else is in the batch). A prompt decoded in one batch and the same prompt decoded from the
prefix cache (its last token alone) may still go different ways after a near tie, so a test
that compares a choice with a one-choice request runs the prompt once first: both then come
from the cache.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
from openai import OpenAI

from llamagrid.client import AsyncInferenceClient
from llamagrid.errors import parse_details
from llamagrid.v1 import inference_pb2 as pb
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

SLOTS = 4
N_BATCH = 32
PROMPT_LOGPROBS_LIMIT = 256
MODEL = "smollm2"
USER = [pb.ChatMessage(role="user", content="Tell me a short story about a robot.")]
CONTEXT = "The quick brown fox jumps over the lazy dog. The capital of France is"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    args = ["--parallel", str(SLOTS), "--n-ctx", str(SLOTS * 1024), "--flash-attn", "off"]
    args += ["--n-batch", str(N_BATCH), "--alias", MODEL]
    args += ["--max-prompt-logprobs-tokens", str(PROMPT_LOGPROBS_LIMIT)]
    with running(spawn_worker(tmp_path_factory.mktemp("choices"), *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def base_url(worker: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(spawn_gateway(tmp_path_factory.mktemp("choices-gw"), worker.target)) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        yield url


@pytest.fixture(scope="module")
def openai_client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
async def client(worker: Proc) -> AsyncIterator[AsyncInferenceClient]:
    async with AsyncInferenceClient(worker.target) as c:
        yield c


@dataclass
class Choices:
    """A Generate stream, by choice."""

    texts: dict[int, str] = field(default_factory=dict)
    tokens: dict[int, list[int]] = field(default_factory=dict)
    logprobs: dict[int, list[pb.TokenLogprob]] = field(default_factory=dict)
    finals: dict[int, pb.GenerateFinal] = field(default_factory=dict)
    prompt_text: str = ""
    prompt_logprobs: list[pb.TokenLogprob] = field(default_factory=list)


async def run(client: AsyncInferenceClient, request: pb.GenerateRequest) -> Choices:
    out = Choices()
    async for message in client.generate(request, timeout=300):
        if message.HasField("chunk"):
            c = message.chunk
            assert c.index not in out.finals, "a chunk after its choice's final message"
            out.texts[c.index] = out.texts.get(c.index, "") + c.text
            out.tokens.setdefault(c.index, []).extend(c.token_ids)
            out.logprobs.setdefault(c.index, []).extend(c.logprobs)
            if c.prompt_text or c.prompt_logprobs:
                assert c.index == 0 and not out.prompt_text and not out.prompt_logprobs
                out.prompt_text, out.prompt_logprobs = c.prompt_text, list(c.prompt_logprobs)
        else:
            assert message.final.index not in out.finals
            out.finals[message.final.index] = message.final
    return out


def chat(n: int | None = None, **sampling: Any) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=USER), sampling=pb.SamplingParams(**sampling)
    )
    if n is not None:
        request.n = n
    return request


def greedy(n: int | None = None, max_tokens: int = 24) -> pb.GenerateRequest:
    return chat(n, max_tokens=max_tokens, temperature=0.0)


async def settled(client: AsyncInferenceClient) -> pb.GetLoadResponse:
    """GetLoad once nothing is active or queued (fails the test if that never happens)."""
    for _ in range(1000):
        load = await client.get_load()
        if load.active_requests == 0 and load.queued_requests == 0:
            return load
        await asyncio.sleep(0.01)
    pytest.fail(f"the worker never became idle: {load}")


async def passed_steps(client: AsyncInferenceClient, steps: int, queued: int) -> pb.GetLoadResponse:
    """GetLoad once ``queued`` requests wait, and ``steps`` decode steps later."""
    for _ in range(3000):
        load = await client.get_load()
        if load.queued_requests == queued:
            break
        await asyncio.sleep(0.01)
    assert load.queued_requests == queued, load
    first = load.decode_steps
    while (load := await client.get_load()).decode_steps < first + steps:
        await asyncio.sleep(0.01)
    return load


def refusal(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str]:
    return error.code(), parse_details(error.trailing_metadata()).param


# ------------------------------------------------------------------------------ n over gRPC


async def test_greedy_choices_each_equal_the_one_choice_answer(
    client: AsyncInferenceClient,
) -> None:
    await run(client, greedy(max_tokens=1))  # the prompt is now cached (module docstring)
    one = await run(client, greedy())
    three = await run(client, greedy(3))
    assert sorted(three.finals) == [0, 1, 2]
    assert three.texts == {i: one.texts[0] for i in range(3)}
    assert three.tokens == {i: one.tokens[0] for i in range(3)}
    for final in three.finals.values():
        assert final.finish_reason == one.finals[0].finish_reason
        assert final.usage.completion_tokens == len(one.tokens[0])


async def test_the_prompt_is_prefilled_once_for_all_choices(client: AsyncInferenceClient) -> None:
    """A cold prompt of P tokens takes ceil(P / n_batch) decode steps for four choices, as for
    one; its tokens are counted once, in choice 0's usage."""
    words = " ".join(f"zebra{i} walks past lamp{i * 7}." for i in range(12))
    request = pb.GenerateRequest(prompt=f"Unique{id(words)} {words}", n=SLOTS)
    request.sampling.max_tokens = 1
    request.sampling.temperature = 0.0
    before = await settled(client)
    out = await run(client, request)
    after = await settled(client)
    prompt = out.finals[0].usage.prompt_tokens
    assert prompt > 2 * N_BATCH
    assert after.decode_steps - before.decode_steps == math.ceil(prompt / N_BATCH)
    assert out.finals[0].usage.prefilled_tokens == prompt
    for index in range(1, SLOTS):
        usage = out.finals[index].usage
        assert (usage.prompt_tokens, usage.prefilled_tokens, usage.cached_tokens) == (0, 0, 0)
        assert usage.completion_tokens == 1


async def test_a_seeded_request_samples_choice_i_with_seed_plus_i(
    client: AsyncInferenceClient,
) -> None:
    seed = 4242
    await run(client, greedy(max_tokens=1))  # the prompt is now cached (module docstring)
    many = await run(client, chat(3, max_tokens=16, temperature=1.0, seed=seed))
    for index in range(3):
        one = await run(client, chat(None, max_tokens=16, temperature=1.0, seed=seed + index))
        assert many.tokens[index] == one.tokens[0], index
    assert len({tuple(tokens) for tokens in many.tokens.values()}) > 1


async def test_every_choice_follows_the_grammar(client: AsyncInferenceClient) -> None:
    request = chat(SLOTS, max_tokens=8, temperature=1.5, seed=1)
    request.sampling.grammar = 'root ::= ("yes" | "no" | "maybe") "."'
    out = await run(client, request)
    assert sorted(out.finals) == list(range(SLOTS))
    assert all(text in ("yes.", "no.", "maybe.") for text in out.texts.values()), out.texts


async def test_cancelling_a_request_frees_every_choice_slot(client: AsyncInferenceClient) -> None:
    endless = chat(SLOTS, max_tokens=900, ignore_eos=True, temperature=0.0)
    stream = client.generate(endless, timeout=300)
    seen: set[int] = set()
    async for message in stream:
        seen.add(message.chunk.index)
        if len(seen) == SLOTS:
            break
    stream.cancel()
    await settled(client)
    out = await asyncio.wait_for(run(client, greedy(SLOTS, max_tokens=2)), 120)
    assert sorted(out.finals) == list(range(SLOTS))


async def test_a_request_for_several_choices_is_not_overtaken(
    client: AsyncInferenceClient,
) -> None:
    """While one slot is busy, a request for every slot waits, and a later one-choice request
    waits behind it although three slots are free."""
    endless = client.generate(chat(None, max_tokens=900, ignore_eos=True), timeout=300)
    await endless.admitted()
    await anext(endless)
    wide = asyncio.ensure_future(run(client, greedy(SLOTS, max_tokens=2)))
    # The wide request is queued once the engine has taken it from its inbox, which it does at
    # every step; its prompt is tokenized (a millisecond) long before three steps have passed.
    await passed_steps(client, 3, queued=1)
    narrow = asyncio.ensure_future(run(client, greedy(None, max_tokens=2)))
    load = await passed_steps(client, 5, queued=2)  # five admission passes
    assert (load.active_requests, load.queued_requests) == (1, 2)
    assert not narrow.done()
    endless.cancel()
    wide_out, narrow_out = await asyncio.wait_for(asyncio.gather(wide, narrow), 120)
    assert sorted(wide_out.finals) == list(range(SLOTS)) and list(narrow_out.finals) == [0]


async def test_refusals(client: AsyncInferenceClient) -> None:
    """Every bad value of the new fields is INVALID_ARGUMENT naming it; the worker serves on."""
    too_long = " ".join(["word"] * (2 * PROMPT_LOGPROBS_LIMIT))
    cases: list[tuple[pb.GenerateRequest, str]] = [
        (greedy(SLOTS + 1), "n"),
        (greedy(0), "n"),
        (greedy(17), "n"),
        (greedy(2**32 - 1), "n"),
        (pb.GenerateRequest(prompt="Hi", prompt_logprobs=21), "prompt_logprobs"),
        (pb.GenerateRequest(prompt="Hi", prompt_logprobs=2**32 - 1), "prompt_logprobs"),
        (pb.GenerateRequest(prompt=too_long, prompt_logprobs=0), "prompt_logprobs"),
        (pb.GenerateRequest(chat=pb.ChatConversation(messages=USER), echo=True), "echo"),
        (pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=0)), "max_tokens"),
    ]
    session = await client.open_session()
    for name, value in (("n", 2), ("prompt_logprobs", 1), ("echo", True)):
        turn = pb.GenerateRequest(prompt="Hi", session=pb.SessionRef(session_id=session.session_id))
        setattr(turn, name, value)
        cases.append((turn, name))
    for request, param in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await run(client, request)
        assert refusal(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, param), request
    out = await run(client, greedy(2, max_tokens=2))
    assert sorted(out.finals) == [0, 1]


# ------------------------------------------------------------------------------ prompt logprobs


async def test_prompt_logprobs_are_the_logprobs_of_the_same_tokens_generated(
    client: AsyncInferenceClient,
) -> None:
    """Each prompt token's log-probability is the one it got when it was generated, and the
    token was the most likely there. Not to the last digit: llama.cpp's logits for a position
    decoded in a batch of prompt tokens differ a little from those of the same position decoded
    alone (by up to 0.02 in log-probability on SmolLM2), while a token misplaced by one position
    would be off by whole units."""
    context = list((await client.tokenize(pb.TokenizeRequest(text=CONTEXT))).token_ids)
    request = pb.GenerateRequest(tokens=pb.TokenList(ids=context))
    request.sampling.max_tokens, request.sampling.temperature = 8, 0.0
    request.sampling.top_logprobs = 3
    generated = await run(client, request)
    tokens = generated.tokens[0]
    scored = pb.GenerateRequest(tokens=pb.TokenList(ids=context + tokens), prompt_logprobs=3)
    scored.sampling.max_tokens = 0
    out = await run(client, scored)
    assert out.finals[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert not any(out.tokens.values())
    assert out.finals[0].usage.cached_tokens == 0  # every position computed
    entries = out.prompt_logprobs
    assert [e.chosen.token_id for e in entries] == context + tokens
    assert entries[0].chosen.logprob == 0.0 and not entries[0].top
    for entry, reference in zip(entries[len(context) :], generated.logprobs[0], strict=True):
        assert entry.chosen.logprob == pytest.approx(reference.chosen.logprob, abs=0.05)
        assert entry.top[0].token_id == entry.chosen.token_id
    assert all(len(e.top) == 3 for e in entries[1:])


async def test_prompt_logprobs_with_choices_come_once_before_any_token(
    client: AsyncInferenceClient,
) -> None:
    request = pb.GenerateRequest(prompt=CONTEXT, n=2, prompt_logprobs=1, echo=True)
    request.sampling.max_tokens, request.sampling.temperature = 3, 0.0
    out = await run(client, request)
    assert out.prompt_text == CONTEXT
    assert len(out.prompt_logprobs) == out.finals[0].usage.prompt_tokens
    assert out.texts[0] == out.texts[1] and out.texts[0]


# ------------------------------------------------------------------------------ HTTP


async def test_an_lm_eval_loglikelihood_request(
    client: AsyncInferenceClient, openai_client: OpenAI
) -> None:
    """lm-eval-harness's loglikelihood payload over HTTP (token lists, echo, logprobs 1,
    max_tokens 1): the continuation's log-likelihood equals the sum of the log-probabilities
    the model gave the same tokens when it generated them greedily (over gRPC), is_greedy
    holds, and each prompt of the batch has its choice."""
    context = list((await client.tokenize(pb.TokenizeRequest(text=CONTEXT))).token_ids)
    request = pb.GenerateRequest(tokens=pb.TokenList(ids=context))
    request.sampling.max_tokens, request.sampling.temperature = 6, 0.0
    request.sampling.top_logprobs = 1
    reference = await run(client, request)
    continuation = reference.tokens[0]
    other = context[:5]
    payload = await asyncio.to_thread(
        openai_client.completions.create,
        model=MODEL,
        prompt=[context + continuation, other],
        temperature=0,
        max_tokens=1,
        logprobs=1,
        echo=True,
        seed=1234,
    )
    choices = sorted(payload.choices, key=lambda c: c.index)
    assert [c.index for c in choices] == [0, 1]
    logprobs = choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert logprobs.top_logprobs is not None
    assert len(logprobs.token_logprobs) == len(context) + len(continuation) + 1
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    ctxlen = len(context)
    got = logprobs.token_logprobs[ctxlen:-1]
    want = [entry.chosen.logprob for entry in reference.logprobs[0]]
    # Batched prompt positions differ a little from positions decoded one by one (see above).
    assert sum(got) == pytest.approx(sum(want), abs=0.1)  # type: ignore[arg-type]
    is_greedy = all(
        token == max(top.values())
        for token, top in zip(got, logprobs.top_logprobs[ctxlen:-1], strict=True)
        if top is not None
    )
    assert is_greedy
    assert choices[0].text.startswith(CONTEXT + reference.texts[0])
    short = choices[1].logprobs
    assert short is not None and short.token_logprobs is not None
    assert len(short.token_logprobs) == len(other) + 1


def test_echo_with_max_tokens_0_returns_only_the_prompt(openai_client: OpenAI) -> None:
    answer = openai_client.completions.create(
        model=MODEL, prompt=CONTEXT, max_tokens=0, echo=True, logprobs=2
    )
    (choice,) = answer.choices
    assert choice.text == CONTEXT and choice.finish_reason == "length"
    assert choice.logprobs is not None and choice.logprobs.text_offset is not None
    assert choice.logprobs.text_offset[0] == 0
    assert "".join(choice.logprobs.tokens or []) == CONTEXT
    assert answer.usage is not None and answer.usage.completion_tokens == 0


def test_list_prompts_give_each_prompt_n_choices_in_order(openai_client: OpenAI) -> None:
    """Prompt i's choice j is index i * n + j (echo shows which prompt a choice answers); the
    usage adds up every prompt once and every choice's tokens."""
    prompts = ["The capital of France is", "One, two, three,", "Water boils at"]
    answer = openai_client.completions.create(
        model=MODEL, prompt=prompts, n=2, max_tokens=5, temperature=0, echo=True
    )
    assert [c.index for c in answer.choices] == list(range(6))
    for i, prompt in enumerate(prompts):
        first, second = answer.choices[2 * i], answer.choices[2 * i + 1]
        assert first.text == second.text and first.text.startswith(prompt), (first, second)
        assert len(first.text) > len(prompt) and first.finish_reason == "length"
    prompt_tokens = 0
    for prompt in prompts:
        alone = openai_client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=0, echo=True
        )
        assert alone.usage is not None
        prompt_tokens += alone.usage.prompt_tokens
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (prompt_tokens, 30)


def test_a_streamed_chat_with_n_indexes_each_choice(openai_client: OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Name a colour."}]
    for _ in range(2):  # the second comes from the prefix cache, as the streamed one does
        one = openai_client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0
        )
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    usage = None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        usage = chunk.usage or usage
    assert texts == {0: one.choices[0].message.content, 1: one.choices[0].message.content}
    assert usage is not None and one.usage is not None
    assert usage.prompt_tokens == one.usage.prompt_tokens
    assert usage.completion_tokens == 2 * one.usage.completion_tokens


def test_http_refusals(base_url: str) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    for path, body, param in [
        ("/v1/chat/completions", {"messages": messages, "n": SLOTS + 1}, "n"),
        ("/v1/completions", {"prompt": "Hi", "n": 0}, "n"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": ["Hi"] * 65}, "prompt"),
        ("/v1/completions", {"prompt": "Hi", "echo": True, "logprobs": 21}, "top_logprobs"),
    ]:
        answer = httpx.post(f"{base_url}{path}", json={"model": MODEL, **body}, timeout=60)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"]["param"] == param, answer.text
    ok = httpx.post(
        f"{base_url}/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 1, "n": 2},
        timeout=60,
    )
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2


# ------------------------------------------------------------------------------ unified KV


@pytest.fixture(scope="module")
def unified(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    args = ["--parallel", "3", "--n-ctx", "3072", "--kv-unified"]
    with running(spawn_worker(tmp_path_factory.mktemp("unified"), *args)) as proc:
        wait_serving(proc)
        yield proc


async def test_choices_share_the_prompt_cells_with_a_unified_kv_cache(unified: Proc) -> None:
    async with AsyncInferenceClient(unified.target) as c:
        out = await run(c, greedy(3, max_tokens=8))
        assert sorted(out.finals) == [0, 1, 2]
        assert all(out.texts[i] for i in range(3))
        prompt = out.finals[0].usage.prompt_tokens
        assert out.finals[0].usage.prefilled_tokens == prompt
        assert sum(f.usage.prompt_tokens for f in out.finals.values()) == prompt
