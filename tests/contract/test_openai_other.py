"""Text completions, embeddings and models through the official openai SDK."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from tests.contract.conftest import Gateway
from tests.contract.fake_worker import EMBEDDING_SIZE, MODEL


async def test_completion_non_stream(client: openai.AsyncOpenAI, gateway: Gateway) -> None:
    out = await client.completions.create(model=MODEL, prompt="Say", max_tokens=3)
    assert out.id.startswith("cmpl-") and out.object == "text_completion" and out.model == MODEL
    assert out.choices[0].text == "Hello, world"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 3
    sent = gateway.worker.generate_requests()[-1]
    assert sent.prompt == "Say" and sent.sampling.max_tokens == 3


async def test_completion_defaults_to_16_tokens(client: openai.AsyncOpenAI, gateway: Gateway):
    await client.completions.create(model=MODEL, prompt="Say")
    assert gateway.worker.generate_requests()[-1].sampling.max_tokens == 16


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2, 3]]])
async def test_completion_token_prompt(
    client: openai.AsyncOpenAI, gateway: Gateway, prompt: list[int] | list[list[int]]
) -> None:
    await client.completions.create(model=MODEL, prompt=prompt)
    sent = gateway.worker.generate_requests()[-1]
    assert sent.WhichOneof("input") == "tokens" and list(sent.tokens.ids) == [1, 2, 3]


async def test_completion_list_with_one_prompt(client: openai.AsyncOpenAI, gateway: Gateway):
    await client.completions.create(model=MODEL, prompt=["only"])
    assert gateway.worker.generate_requests()[-1].prompt == "only"


async def test_completion_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.completions.create(
        model=MODEL, prompt="Say", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello, world!"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_completion_logprobs_legacy_format(client: openai.AsyncOpenAI) -> None:
    out = await client.completions.create(model=MODEL, prompt="Say", logprobs=2)
    logprobs = out.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["Hello", ",", " world", "!"]
    assert logprobs.token_logprobs == [-0.25] * 4
    assert logprobs.top_logprobs is not None
    assert logprobs.top_logprobs[0] == {"Hello": -0.25, "alt0": -1.0}
    assert logprobs.text_offset == [3, 8, 9, 15]  # counted from the start of the prompt


async def test_embeddings_float_are_unit_length(
    client: openai.AsyncOpenAI, gateway: Gateway
) -> None:
    out = await client.embeddings.create(model=MODEL, input=["a", "bbb"], encoding_format="float")
    assert out.model == MODEL and [d.index for d in out.data] == [0, 1]
    for item in out.data:
        assert len(item.embedding) == EMBEDDING_SIZE
        assert math.sqrt(sum(v * v for v in item.embedding)) == pytest.approx(1.0, abs=1e-6)
    assert out.usage.prompt_tokens == out.usage.total_tokens == 4
    sent = gateway.worker.requests[-1]
    assert sent.normalize and [i.text for i in sent.inputs] == ["a", "bbb"]


async def test_embeddings_base64_decodes_to_the_float_vectors(client: openai.AsyncOpenAI):
    floats = await client.embeddings.create(model=MODEL, input="abc", encoding_format="float")
    # The SDK would decode base64 itself; ask for the raw JSON to check the encoding.
    raw = await client.embeddings.with_raw_response.create(
        model=MODEL, input="abc", encoding_format="base64"
    )
    encoded = raw.http_response.json()["data"][0]["embedding"]
    assert isinstance(encoded, str)
    data = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(data) // 4}f", data)
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-7)


@pytest.mark.parametrize("given", [[5, 6, 7], [[5, 6, 7], [8]]])
async def test_embeddings_token_inputs(
    client: openai.AsyncOpenAI, gateway: Gateway, given: list[int] | list[list[int]]
) -> None:
    out = await client.embeddings.create(model=MODEL, input=given)
    sent = gateway.worker.requests[-1]
    expected = [given] if isinstance(given[0], int) else given
    assert [list(i.tokens.ids) for i in sent.inputs] == expected
    assert len(out.data) == len(expected)


async def test_models_list_and_get(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [(MODEL, "model", "llamagrid")]
    model = await client.models.retrieve(MODEL)
    assert model.id == MODEL and model.created == models.data[0].created
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("nope")
    assert caught.value.code == "model_not_found"
