"""Request limits: JSON schemas, stop strings and repeat_last_n, checked before any work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.limits import DEFAULT_LIMITS, RequestLimits
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.engine.requests import GenerationSpec, Grammar, JsonSchema, Message, Sampling
from llamagrid.worker.engine.sampling import resolve
from llamagrid.worker.engine.schema_check import check_json_schema
from llamagrid.worker.engine.validation import (
    check_embed_inputs,
    check_generation,
    check_sampling,
)
from llamagrid.worker.model_source import ModelSource
from llamagrid.worker.settings import WorkerSettings
from tests.unit.test_worker_batching import DESCRIPTION

N_VOCAB = 49152


def schema_refusal(schema: Any, limits: RequestLimits = DEFAULT_LIMITS) -> str:
    text = schema if isinstance(schema, str) else json.dumps(schema)
    with pytest.raises(EngineError) as caught:
        check_json_schema(text, limits)
    assert caught.value.reason is Reason.INVALID_VALUE
    assert caught.value.param == "response_format"
    return caught.value.message


def sampling_refusal(sampling: Sampling, param: str) -> str:
    with pytest.raises(EngineError) as caught:
        check_sampling(sampling, N_VOCAB)
    assert caught.value.reason is Reason.INVALID_VALUE
    assert caught.value.param == param
    return caught.value.message


def test_a_million_character_max_length_is_refused_before_conversion() -> None:
    message = schema_refusal({"type": "string", "maxLength": 1_000_000})
    assert "maxLength 1000000" in message and "limit of 500" in message


@pytest.mark.parametrize("keyword", ["minLength", "maxLength", "minItems", "maxItems"])
def test_every_count_the_converter_repeats_by_is_bounded(keyword: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "array", keyword: 5000}}}
    assert f"{keyword} 5000" in schema_refusal(schema)
    check_json_schema(json.dumps({"type": "array", keyword: 500}), DEFAULT_LIMITS)


@pytest.mark.parametrize("value", [-1, 2.5, "5", True, 1e300])
def test_a_count_must_be_a_whole_number(value: object) -> None:
    assert "whole number" in schema_refusal({"type": "string", "maxLength": value})


def test_a_minimum_above_the_maximum_is_refused() -> None:
    assert "minItems is above maxItems" in schema_refusal({"minItems": 3, "maxItems": 2})


def test_pattern_repetitions_are_bounded_too() -> None:
    assert "repeats {1000000}" in schema_refusal({"type": "string", "pattern": "^a{0,1000000}$"})
    check_json_schema('{"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}', DEFAULT_LIMITS)


def test_a_property_named_like_a_keyword_and_data_values_are_not_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {"maxLength": {"type": "integer"}, "pattern": {"type": "string"}},
        "default": {"maxLength": 10**9},
        "enum": [{"minItems": -5}],
    }
    check_json_schema(json.dumps(schema), DEFAULT_LIMITS)


def test_a_schema_nested_too_deep_is_refused_without_recursion() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"x": deep}}
    assert "deeper than 64 levels" in schema_refusal(deep)
    assert "deeper than 64 levels" in schema_refusal("[" * 30_000 + "]" * 30_000)


def test_a_schema_over_the_byte_limit_is_refused_by_its_size() -> None:
    limits = RequestLimits(max_schema_bytes=100)
    assert "the limit is 100" in schema_refusal({"description": "x" * 200}, limits)


def test_too_many_properties_in_one_object_are_refused() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {} for i in range(300)}}
    assert "300 properties" in schema_refusal(schema)


@pytest.mark.parametrize("schema", ["not json", "[1, 2]", "true"])
def test_a_schema_must_be_a_json_object(schema: str) -> None:
    schema_refusal(schema)


def test_stop_strings_are_limited_in_count_and_length() -> None:
    message = sampling_refusal(Sampling(stop=tuple(f"s{i}" for i in range(100_000))), "stop")
    assert "100000 stop strings" in message and "at most 16" in message
    message = sampling_refusal(Sampling(stop=("x" * 1_000_000,)), "stop")
    assert "1000000 bytes" in message and "limit is 256" in message
    check_sampling(Sampling(stop=tuple("x" * 256 for _ in range(16))), N_VOCAB)


def test_grammar_and_schema_errors_name_their_field() -> None:
    assert "deeper than" in sampling_refusal(
        Sampling(constraint=Grammar("root ::= " + "(" * 2000 + ")" * 2000)), "grammar"
    )
    sampling_refusal(Sampling(constraint=JsonSchema('{"maxItems": 99999}')), "response_format")


def test_repeat_last_n_may_not_look_back_past_the_context() -> None:
    spec = GenerationSpec(
        messages=(Message("user", "hi"),), sampling=Sampling(repeat_last_n=2**31 - 1)
    )
    with pytest.raises(EngineError) as caught:
        check_generation(spec, N_VOCAB, context_per_slot=2048)
    assert caught.value.param == "repeat_last_n" and "2048" in caught.value.message
    with pytest.raises(EngineError):  # the scheduler's own check, where the context is known
        resolve(spec.sampling, context_per_slot=2048)
    assert resolve(Sampling(repeat_last_n=-1), context_per_slot=2048).repeat_last_n == 2048
    assert resolve(Sampling(repeat_last_n=2048), context_per_slot=2048).repeat_last_n == 2048


def test_every_limit_is_a_worker_setting_with_the_same_default() -> None:
    settings = WorkerSettings()
    assert RequestLimits.from_settings(settings) == DEFAULT_LIMITS
    fields = WorkerSettings.model_fields
    for name in RequestLimits.__dataclass_fields__:
        assert fields[name].description, name
    changed = WorkerSettings(max_stop_strings=4, grammar_timeout_s=1.5)
    limits = RequestLimits.from_settings(changed)
    assert limits.max_stop_strings == 4 and limits.grammar_timeout_s == 1.5


SMALL = RequestLimits(max_messages=3, max_prompt_bytes=1024, max_embed_inputs=2, max_token_ids=8)


@pytest.mark.parametrize(
    ("spec", "param", "words"),
    [
        (GenerationSpec(messages=(Message("user", "hi"),) * 4), "messages", "4 messages"),
        (GenerationSpec(messages=(Message("user", "é" * 600),)), "messages", "over 1024 bytes"),
        (GenerationSpec(prompt="x" * 10_000_000), "prompt", "over 1024 bytes"),
        (GenerationSpec(tokens=(1,) * 9), "prompt", "9 token ids"),
    ],
)
def test_sizes_are_checked_before_any_template_or_tokenizer_runs(
    spec: GenerationSpec, param: str, words: str
) -> None:
    with pytest.raises(EngineError) as caught:
        check_generation(spec, n_vocab=100, limits=SMALL)
    assert caught.value.param == param and words in caught.value.message


def test_five_hundred_thousand_messages_are_refused_at_once() -> None:
    many = (Message("user", "hi"),) * 500_000
    with pytest.raises(EngineError, match="500000 messages"):
        check_generation(GenerationSpec(messages=many), n_vocab=100)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (["a", "b", "c"], "3 inputs"),
        (["x" * 2000], "over 1024 bytes"),
        ([[1] * 5, [2] * 4], "9 token ids"),
    ],
)
def test_an_embed_request_is_bounded_in_inputs_text_and_tokens(
    inputs: list[Any], words: str
) -> None:
    with pytest.raises(EngineError) as caught:
        check_embed_inputs(inputs, n_vocab=100, limits=SMALL)
    assert caught.value.param == "input" and words in caught.value.message


def test_the_request_size_limits_come_from_the_worker_settings() -> None:
    settings = WorkerSettings(max_messages=7, max_prompt_bytes=2048, max_embed_inputs=3)
    limits = RequestLimits.from_settings(settings)
    assert (limits.max_messages, limits.max_prompt_bytes, limits.max_embed_inputs) == (7, 2048, 3)


async def test_a_full_embedding_queue_is_queue_full_with_a_retry_delay() -> None:
    engine = LlamaEngine(WorkerSettings(max_embed_queue=4), ModelSource(Path("m.gguf"), "m"))
    engine._desc = DESCRIPTION  # looks loaded; no thread runs, nothing is queued for real
    engine._embed_queued = 3
    with pytest.raises(EngineError) as caught:
        await engine.embed(["a", "b"], normalize=True)
    assert caught.value.reason is Reason.QUEUE_FULL and caught.value.retry_after_s == 1.0


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "minimum": 1, "maximum": 5},
        {"type": "number", "multipleOf": 0.5},
        {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
        {"not": {"type": "string"}},
        {"if": {"type": "string"}, "then": {"maxLength": 3}},
        {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"$defs": {"age": {"type": "integer", "maximum": 150}}, "$ref": "#/$defs/age"},
        {"type": "string", "format": "email"},
    ],
)
def test_a_keyword_the_converter_would_ignore_is_refused_as_unsupported(
    schema: dict[str, Any],
) -> None:
    with pytest.raises(EngineError) as caught:
        check_json_schema(json.dumps(schema), DEFAULT_LIMITS)
    assert caught.value.reason == Reason.UNSUPPORTED
    assert caught.value.param == "response_format"
    assert "not supported" in caught.value.message


def test_names_and_data_that_look_like_unsupported_keywords_are_accepted() -> None:
    schema = {
        "type": "object",
        "title": "annotations are fine",
        "properties": {"minimum": {"type": "integer"}, "not": {"type": "string"}},
        "$defs": {"if": {"type": "string", "format": "date-time"}},
        "examples": [{"maximum": 3}],
        "const": {"multipleOf": 2},
    }
    check_json_schema(json.dumps(schema), DEFAULT_LIMITS)
