"""llama.cpp's samplers without a model: the chain each setup builds, defaults, validation,
and the HTTP and gRPC forms of the fields."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.openai import translate
from llamagrid.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.requests import GenerationSpec, Sampling
from llamagrid.worker.engine.sampling import resolve, wants_history
from llamagrid.worker.engine.validation import check_generation, check_sampling
from llamagrid.worker.native.sampler import (
    DEFAULT_DRY_BREAKERS,
    DEFAULT_SAMPLERS,
    SamplerConfig,
    chain_plan,
)
from llamagrid.worker.rpc.translate import sampling_from_proto

VOCAB = 49152
CONTEXT = 2048
USER = [{"role": "user", "content": "hi"}]


def plan(**options: Any) -> tuple[str, ...]:
    return chain_plan(resolve(Sampling(**options), CONTEXT))


# ---------------------------------------------------------------------------------------------
# The chain


def test_the_default_chain_is_llama_servers_with_the_idle_samplers_left_out() -> None:
    # penalties (repeat 1), DRY (multiplier 0), top-n-sigma (-1), typical (1) and XTC (0) idle
    assert plan() == ("top_k", "top_p", "min_p", "temperature", "dist")


def test_each_sampler_joins_the_chain_when_its_setting_makes_it_act() -> None:
    full = plan(
        repeat_penalty=1.1,
        dry_multiplier=0.8,
        top_n_sigma=1.5,
        typical_p=0.9,
        xtc_probability=0.5,
        dynatemp_range=0.5,
    )
    assert full == (*DEFAULT_SAMPLERS, "dist")
    assert plan(xtc_probability=0.5, xtc_threshold=0.6) == plan()  # above 0.5 XTC is idle
    assert plan(dry_multiplier=0.8, dry_penalty_last_n=0) == plan()
    assert plan(top_k=0, top_p=1.0, min_p=0.0) == ("temperature", "dist")
    assert plan(logit_bias={5: 1.0})[0] == "logit_bias"


def test_samplers_sets_the_order_by_name_or_letter_and_adaptive_p_draws_last() -> None:
    assert plan(samplers=("temperature", "top_k")) == ("temperature", "top_k", "dist")
    assert plan(samplers=tuple("tk")) == ("temperature", "top_k", "dist")
    assert plan(samplers=("typical_p",), typical_p=0.5) == ("typ_p", "dist")
    assert plan(samplers=("adaptive_p", "min_p")) == ("min_p", "adaptive_p")


def test_mirostat_replaces_the_chain_with_temperature_and_mirostat() -> None:
    assert plan(mirostat=1, top_k=5, repeat_penalty=1.3) == ("temp", "mirostat")
    assert plan(mirostat=2, samplers=("top_k",)) == ("temp", "mirostat_v2")
    assert plan(mirostat=2, logit_bias={1: -5.0}) == ("logit_bias", "temp", "mirostat_v2")


def test_temperature_zero_is_greedy_after_the_samplers_that_change_logits() -> None:
    assert plan(temperature=0) == ("greedy",)
    assert plan(temperature=0, repeat_penalty=1.2, dry_multiplier=1) == (
        "penalties",
        "dry",
        "greedy",
    )
    # samplers that may drop the most likely token keep llama.cpp's chain (temp 0 keeps one)
    assert plan(temperature=0, typical_p=0.5)[-2:] == ("temperature", "dist")
    assert plan(temperature=0, xtc_probability=1.0)[-2:] == ("temperature", "dist")
    # a penalty after top-k may lift a token top-k dropped: the drop must stay
    after = plan(temperature=0, presence_penalty=-1, samplers=("top_k", "penalties", "temperature"))
    assert after == ("top_k", "penalties", "temperature", "dist")
    # dynamic temperature at 0 is not greedy; no temperature in the order means no greedy
    assert plan(temperature=0, dynatemp_range=0.5)[-2:] == ("temperature", "dist")
    assert plan(temperature=0, samplers=("top_k",)) == ("top_k", "dist")


def test_only_penalties_and_dry_need_the_prompt() -> None:
    assert not wants_history(Sampling(), CONTEXT)
    assert wants_history(Sampling(repeat_penalty=1.1), CONTEXT)
    assert wants_history(Sampling(dry_multiplier=0.5), CONTEXT)
    assert not wants_history(Sampling(dry_multiplier=0.5, mirostat=2), CONTEXT)


# ---------------------------------------------------------------------------------------------
# Defaults


def test_unset_options_get_llama_servers_defaults() -> None:
    cfg = resolve(Sampling(), CONTEXT)
    assert cfg == SamplerConfig(dry_penalty_last_n=CONTEXT)
    assert (cfg.mirostat, cfg.mirostat_tau, cfg.mirostat_eta) == (0, 5.0, pytest.approx(0.1))
    assert (cfg.dry_base, cfg.dry_allowed_length) == (1.75, 2)
    assert cfg.dry_sequence_breakers == DEFAULT_DRY_BREAKERS == ("\n", ":", '"', "*")
    assert (cfg.xtc_threshold, cfg.top_n_sigma, cfg.dynatemp_exponent) == (0.1, -1.0, 1.0)
    assert cfg.samplers == DEFAULT_SAMPLERS and cfg.min_keep == 0


def test_given_options_are_kept_and_look_backs_of_minus_one_become_the_context() -> None:
    cfg = resolve(
        Sampling(dry_penalty_last_n=-1, samplers=("k", "typical_p"), dry_sequence_breakers=("x",)),
        CONTEXT,
    )
    assert cfg.dry_penalty_last_n == CONTEXT
    assert cfg.samplers == ("top_k", "typ_p") and cfg.dry_sequence_breakers == ("x",)
    assert resolve(Sampling(dry_penalty_last_n=7, xtc_threshold=0.0), CONTEXT).xtc_threshold == 0


# ---------------------------------------------------------------------------------------------
# Validation: each bad value is refused naming its field


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"mirostat": 3}, "mirostat"),
        ({"mirostat_tau": math.nan}, "mirostat_tau"),
        ({"mirostat_tau": -0.1}, "mirostat_tau"),
        ({"mirostat_eta": math.inf}, "mirostat_eta"),
        ({"dry_multiplier": -1.0}, "dry_multiplier"),
        ({"dry_multiplier": 1e30}, "dry_multiplier"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_base": math.nan}, "dry_base"),
        ({"dry_allowed_length": -1}, "dry_allowed_length"),
        ({"dry_penalty_last_n": -2}, "dry_penalty_last_n"),
        ({"xtc_probability": 1.5}, "xtc_probability"),
        ({"xtc_threshold": -math.inf}, "xtc_threshold"),
        ({"top_n_sigma": -2.0}, "top_n_sigma"),
        ({"top_n_sigma": math.nan}, "top_n_sigma"),
        ({"dynatemp_range": -1.0}, "dynatemp_range"),
        ({"dynatemp_exponent": 1e9}, "dynatemp_exponent"),
        ({"min_keep": VOCAB + 1}, "min_keep"),
        ({"adaptive_target": 2.0}, "adaptive_target"),
        ({"adaptive_decay": 1.0}, "adaptive_decay"),
        ({"samplers": ("top_k", "tfs_z")}, "samplers"),
        ({"samplers": ("",)}, "samplers"),
        ({"samplers": ("kk",)}, "samplers"),
        ({"samplers": ("top_k", "k")}, "samplers"),
        ({"samplers": ("x" * 1_000_000,)}, "samplers"),
        ({"dry_sequence_breakers": ("",)}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ("a\0b",)}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ("x" * 41,)}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ("é" * 21,)}, "dry_sequence_breakers"),  # 42 bytes
        ({"dry_sequence_breakers": ("x",) * 17}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ("x",) * 1_000_000}, "dry_sequence_breakers"),
    ],
)
def test_a_sampler_option_out_of_range_is_refused_naming_it(
    options: dict[str, Any], param: str
) -> None:
    with pytest.raises(EngineError) as caught:
        check_sampling(Sampling(**options), VOCAB)
    assert caught.value.reason is Reason.INVALID_VALUE and caught.value.param == param


def test_the_edges_survive_the_wires_float32() -> None:
    check_sampling(sampling_from_proto(pb.SamplingParams(adaptive_decay=0.99)), VOCAB)


def test_the_edges_of_each_range_are_accepted() -> None:
    check_sampling(
        Sampling(
            mirostat=2,
            mirostat_tau=100.0,
            mirostat_eta=0.0,
            dry_multiplier=100.0,
            dry_base=1.0,
            dry_allowed_length=2**31 - 1,
            dry_penalty_last_n=-1,
            dry_sequence_breakers=("x" * 40,) * 16,
            xtc_probability=1.0,
            xtc_threshold=0.0,
            top_n_sigma=-1.0,
            dynatemp_range=100.0,
            dynatemp_exponent=0.0,
            min_keep=VOCAB,
            samplers=tuple("edskypmxta"),
            adaptive_target=-1.0,
            adaptive_decay=0.99,
        ),
        VOCAB,
    )


def test_infill_is_refused_as_unsupported() -> None:
    for name in ("infill", "i"):
        with pytest.raises(EngineError) as caught:
            check_sampling(Sampling(samplers=("top_k", name)), VOCAB)
        assert caught.value.reason is Reason.UNSUPPORTED and caught.value.param == "samplers"


def test_dry_looks_back_at_most_over_the_context() -> None:
    spec = GenerationSpec(prompt="hi", sampling=Sampling(dry_penalty_last_n=CONTEXT + 1))
    with pytest.raises(EngineError) as caught:
        check_generation(spec, VOCAB, context_per_slot=CONTEXT)
    assert caught.value.param == "dry_penalty_last_n"
    with pytest.raises(EngineError):
        resolve(spec.sampling, CONTEXT)


# ---------------------------------------------------------------------------------------------
# The wire forms


def all_fields() -> dict[str, Any]:
    return {
        "mirostat": 2,
        "mirostat_tau": 3.5,
        "mirostat_eta": 0.25,
        "dry_multiplier": 0.75,
        "dry_base": 2.0,
        "dry_allowed_length": 3,
        "dry_penalty_last_n": -1,
        "dry_sequence_breakers": ["\n", "##"],
        "xtc_probability": 0.5,
        "xtc_threshold": 0.125,
        "top_n_sigma": 1.5,
        "dynatemp_range": 0.5,
        "dynatemp_exponent": 2.0,
        "min_keep": 4,
        "samplers": ["dry", "top_k", "temperature"],
        "adaptive_target": 0.5,
        "adaptive_decay": 0.75,
    }


def test_grpc_sampling_params_carry_every_sampler_field() -> None:
    fields = all_fields()
    s = sampling_from_proto(pb.SamplingParams(**fields))
    for name, value in fields.items():
        assert getattr(s, name) == (tuple(value) if isinstance(value, list) else value), name
    unset = sampling_from_proto(pb.SamplingParams())
    assert unset.mirostat is None and unset.samplers == () and unset.dry_sequence_breakers == ()


@pytest.mark.parametrize("body", [ChatCompletionRequest, CompletionRequest])
def test_http_fields_of_llama_server_reach_the_wire_under_the_same_names(body: Any) -> None:
    fields = all_fields()
    extra: dict[str, Any] = {"messages": USER} if body is ChatCompletionRequest else {"prompt": "x"}
    request = body.model_validate({"model": "m", **extra, **fields})
    sampling = translate.sampling_params(request, None)
    for name, value in fields.items():
        got = getattr(sampling, name)
        assert (list(got) if isinstance(value, list) else got) == value, name


def test_samplers_as_a_string_of_letters_becomes_a_list() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", "samplers": "edkt"})
    assert list(translate.sampling_params(request, None).samplers) == ["e", "d", "k", "t"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"samplers": []}, "samplers"),
        ({"samplers": ""}, "samplers"),
        ({"dry_sequence_breakers": []}, "dry_sequence_breakers"),
        ({"grammar": 'root ::= "a"', "json_schema": {}}, "json_schema"),
    ],
)
def test_an_empty_list_the_wire_cannot_carry_is_a_400(fields: dict[str, Any], param: str) -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", **fields})
    with pytest.raises(OpenAIError) as caught:
        translate.sampling_params(request, None)
    assert caught.value.status_code == 400 and caught.value.param == param


def test_n_probs_is_the_openai_logprobs_fields_of_each_route() -> None:
    chat = ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "n_probs": 3})
    assert chat.logprobs is True and chat.top_logprobs == 3
    assert translate.chat_request(chat).sampling.top_logprobs == 3
    text = CompletionRequest.model_validate({"model": "m", "prompt": "x", "n_probs": 3})
    assert text.logprobs == 3
    agree = {"model": "m", "messages": USER, "n_probs": 2, "logprobs": True, "top_logprobs": 2}
    assert ChatCompletionRequest.model_validate(agree).top_logprobs == 2
    none = ChatCompletionRequest.model_validate({"model": "m", "messages": USER, "n_probs": 0})
    assert none.logprobs is None


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        (
            ChatCompletionRequest,
            {"messages": USER, "n_probs": 3, "top_logprobs": 2, "logprobs": True},
        ),
        (ChatCompletionRequest, {"messages": USER, "n_probs": 3, "logprobs": False}),
        (CompletionRequest, {"prompt": "x", "n_probs": 3, "logprobs": 1}),
    ],
)
def test_n_probs_and_logprobs_that_disagree_are_refused(body: Any, fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="n_probs"):
        body.model_validate({"model": "m", **fields})


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize(
    "fields",
    [
        {"response_format": {"type": "json_object", "schema": SCHEMA}},
        {"json_schema": SCHEMA},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": SCHEMA},
            }
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": SCHEMA, "strict": True},
            }
        },
    ],
)
def test_every_form_of_a_schema_reaches_the_worker(fields: dict[str, Any]) -> None:
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})
    assert json.loads(translate.chat_request(request).sampling.json_schema) == SCHEMA


def test_json_schema_on_text_completions_and_plain_json_object() -> None:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "x", "json_schema": {}})
    assert translate.sampling_params(request, None).json_schema == "{}"
    plain = {"model": "m", "messages": USER, "response_format": {"type": "json_object"}}
    chat = ChatCompletionRequest.model_validate(plain)
    assert json.loads(translate.chat_request(chat).sampling.json_schema) == {"type": "object"}


def test_response_format_and_json_schema_together_are_refused() -> None:
    both = {
        "model": "m",
        "messages": USER,
        "response_format": {"type": "json_object"},
        "json_schema": SCHEMA,
    }
    with pytest.raises(OpenAIError) as caught:
        translate.chat_request(ChatCompletionRequest.model_validate(both))
    assert caught.value.param == "json_schema"
