"""llama-server's /completion body as a Generate call: prompts, logit_bias and the options
accepted only at their default (gateway/llamacpp/translate.py), with a scripted tokenizer."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.llamacpp import translate
from llamagrid.gateway.llamacpp.schemas import CompletionRequest
from llamagrid.v1 import inference_pb2 as pb


class Tokenizer:
    """Each character is a token (its code point); records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def __call__(self, text: str, add_special: bool) -> list[int]:
        self.calls.append((text, add_special))
        return ([1] if add_special else []) + [ord(c) for c in text]


def translated(tokenizer: Tokenizer | None = None, **body: Any) -> pb.GenerateRequest:
    request = CompletionRequest.model_validate({"prompt": "x", **body})
    return asyncio.run(translate.completion_request(request, tokenizer or Tokenizer()))


def refused(**body: Any) -> OpenAIError:
    with pytest.raises(OpenAIError) as caught:
        translated(**body)
    assert caught.value.status_code == 400
    return caught.value


def test_a_string_prompt_is_sent_as_text() -> None:
    proto = translated(prompt="Hello")
    assert proto.prompt == "Hello" and not proto.sampling.HasField("max_tokens")


def test_a_mixed_prompt_is_one_token_list_with_bos_only_for_a_leading_string() -> None:
    tokenizer = Tokenizer()
    proto = translated(tokenizer, prompt=["ab", 7, "c"])
    assert list(proto.tokens.ids) == [1, 97, 98, 7, 99]
    assert tokenizer.calls == [("ab", True), ("c", False)]
    leading_id = translated(prompt=[7, "c"])
    assert list(leading_id.tokens.ids) == [7, 99]


def test_n_predict_maps_onto_max_tokens_and_zero_evaluates_the_prompt_only() -> None:
    assert translated(n_predict=5).sampling.max_tokens == 5
    zero = translated(n_predict=0)
    assert zero.echo and zero.sampling.HasField("max_tokens") and zero.sampling.max_tokens == 0
    assert not translated(n_predict=-1).sampling.HasField("max_tokens")


def test_logit_bias_takes_ids_texts_false_and_the_object_form() -> None:
    proto = translated(logit_bias=[[5, 1.5], ["ab", False]])
    assert dict(proto.sampling.logit_bias) == {5: 1.5, 97: -100.0, 98: -100.0}
    assert dict(translated(logit_bias={"9": -2}).sampling.logit_bias) == {9: -2.0}


@pytest.mark.parametrize(
    "bias",
    [[[1, True]], [[1.5, 1]], [["", 1]], [[2**40, 1]], [[-1, 1]], {"x": 1}, [[1, "a"]]],
)
def test_bad_logit_bias_entries_are_refused(bias: Any) -> None:
    assert refused(logit_bias=bias).param == "logit_bias"


def test_a_request_tokenizes_at_most_max_texts() -> None:
    pieces = ["a"] * (translate.MAX_TEXTS + 1)
    assert refused(prompt=pieces).param == "prompt"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_keep", 1),
        ("id_slot", 0),
        ("cache_prompt", False),
        ("penalize_nl", False),
        ("tfs_z", 0.9),
        ("system_prompt", "be nice"),
        ("image_data", [{"data": "", "id": 1}]),
        ("frobnicate", 1),
    ],
)
def test_options_llamagrid_cannot_honour_are_refused_by_name(field: str, value: Any) -> None:
    error = refused(**{field: value})
    assert (error.param, error.code) == (field, "unsupported_parameter")


def test_defaults_that_are_all_llamagrid_does_are_accepted() -> None:
    proto = translated(n_keep=0, id_slot=-1, cache_prompt=True, penalize_nl=True, tfs_z=1)
    assert proto.prompt == "x"


def test_sampling_options_are_honoured() -> None:
    sampling = translated(
        temperature=0, top_k=3, seed=-1, n_probs=2, min_keep=1, stop="\n", samplers="kt"
    ).sampling
    assert sampling.temperature == 0 and sampling.top_k == 3 and not sampling.HasField("seed")
    assert sampling.top_logprobs == 2 and sampling.min_keep == 1
    assert list(sampling.stop) == ["\n"] and list(sampling.samplers) == ["k", "t"]
    assert translated(seed=7).sampling.seed == 7
    assert refused(grammar="root ::= x", json_schema={}).param == "json_schema"
