"""LoRA bookkeeping without a model (engine/lora.py): the rule for a list of scales, the scales
it sets, the worker's flags, and KV reuse keyed by the scales the cells were computed under.
The adapters themselves run in tests/integration/test_lora.py."""

from __future__ import annotations

import math

import pytest

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.lora.schemas import LoraScaleIn
from llamagrid.gateway.lora.translate import request_lora
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.errors import EngineError
from llamagrid.worker.engine.host_cache import HostCache
from llamagrid.worker.engine.lora import (
    MAX_LORA_ENTRIES,
    LoraScale,
    check_lora,
    parse_scaled,
    scales_of,
)
from llamagrid.worker.engine.prefix_cache import PrefixCache
from llamagrid.worker.main import lora_flags


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([LoraScale(2, 1.0)], "unknown"),
        ([LoraScale(0, 1.0), LoraScale(0, 0.5)], "twice"),
        ([LoraScale(0, math.nan)], "between"),
        ([LoraScale(1, math.inf)], "between"),
        ([LoraScale(0, 10.5)], "between"),
        ([LoraScale(0, -10.5)], "between"),
        ([LoraScale(0, 0.1)] * (MAX_LORA_ENTRIES + 1), "at most"),
    ],
)
def test_a_bad_list_is_refused_naming_the_field(entries: list[LoraScale], words: str) -> None:
    with pytest.raises(EngineError) as refused:
        check_lora(entries, 2, "adapters")
    assert refused.value.param == "adapters" and words in str(refused.value)


def test_a_list_for_a_worker_without_adapters_is_refused_and_an_empty_one_is_not() -> None:
    with pytest.raises(EngineError, match="no LoRA adapters"):
        check_lora([LoraScale(0, 0.0)], 0)
    check_lora([], 0)
    check_lora([LoraScale(1, -10.0), LoraScale(0, 10.0)], 2)


def test_adapters_a_list_leaves_out_get_scale_0() -> None:
    assert scales_of([LoraScale(2, 0.5)], 3) == (0.0, 0.0, 0.5)
    assert scales_of([], 2) == (0.0, 0.0)


def test_a_scaled_adapter_setting_is_the_path_then_the_last_colon_and_a_finite_scale() -> None:
    assert parse_scaled("/models/a:b.gguf:0.25") == ("/models/a:b.gguf", 0.25)
    for bad in ("a.gguf", ":1", "a.gguf:x", "a.gguf:nan", "a.gguf:inf"):
        with pytest.raises(ValueError):
            parse_scaled(bad)


def test_llama_servers_lora_flags_keep_the_command_line_order() -> None:
    args = ["--lora-scaled", "a.gguf", "0.5", "--lora", "b.gguf", "--parallel", "2"]
    assert lora_flags(args) == [
        "--lora-scaled", "a.gguf:0.5", "--lora-scaled", "b.gguf:1", "--parallel", "2"
    ]  # fmt: skip
    assert lora_flags(["--lora", "b.gguf"]) == ["--lora", "b.gguf"]
    assert lora_flags(["--lora-scaled", "a.gguf:2"]) == ["--lora-scaled", "a.gguf:2"]


def test_host_entries_are_found_only_under_the_scales_they_were_computed_with() -> None:
    cache = HostCache(budget_bytes=1000, min_tokens=2)
    cache.add([1, 2, 3], b"x" * 10, session=False, scales=(1.0,))
    assert cache.find([1, 2, 3, 4], 3, (0.0,)) is None
    assert cache.worth_saving([1, 2, 3], (0.0,)) and not cache.worth_saving([1, 2, 3], (1.0,))
    cache.add([1, 2, 3, 4], b"y" * 10, session=False, scales=(0.0,))  # supersedes nothing
    assert len(cache.entries) == 2
    found = cache.find([1, 2, 3, 4, 5], 4, (1.0,))
    assert found is not None and found[0].scales == (1.0,) and found[1] == 3


def test_a_sequence_computed_under_other_scales_offers_no_prefix() -> None:
    cache = PrefixCache(2, shareable=True)
    cache.retain(0, [5, 6, 7, 8, 9] * 10)
    prompt = [5, 6, 7, 8, 9] * 10 + [1]
    assert cache.plan(prompt, [0, 1], {}).length == 50
    assert cache.plan(prompt, [0, 1], {}, foreign=frozenset({0})).length == 0


def test_the_http_lora_field_goes_on_the_wire_and_an_empty_list_is_refused() -> None:
    proto = pb.GenerateRequest()
    request_lora([LoraScaleIn(id=1, scale=0.5)], proto)
    assert [(e.id, e.scale) for e in proto.lora] == [(1, 0.5)]
    request_lora(None, proto)
    with pytest.raises(OpenAIError) as refused:
        request_lora([], pb.GenerateRequest())
    assert refused.value.param == "lora"
