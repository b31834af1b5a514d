"""Worker pieces that need no model: chat templates, sampling defaults and validation,
proto translation."""

from __future__ import annotations

import pytest

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.worker.engine.chat_template import CHATML_TEMPLATE, ChatTemplate
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.events import Chunk, Final, FinishReason, Usage
from llamagrid.worker.engine.requests import GenerationSpec, JsonSchema, Sampling
from llamagrid.worker.engine.sampling import resolve
from llamagrid.worker.engine.validation import (
    check_embed_inputs,
    check_generation,
    check_sampling,
)
from llamagrid.worker.native.grammar import json_schema_to_gbnf
from llamagrid.worker.native.llama_backend import RANDOM_SEED
from llamagrid.worker.rpc.translate import (
    chunks_to_proto,
    final_to_proto,
    generation_from_proto,
    sampling_from_proto,
)


def test_chatml_fallback_renders_generation_prompt() -> None:
    t = ChatTemplate("")
    assert t.source == CHATML_TEMPLATE
    out = t.render([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_errors_are_invalid_argument() -> None:
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(EngineError) as err:
        t.render([{"role": "user", "content": "x"}])
    assert err.value.reason is Reason.INVALID_VALUE
    assert "roles must alternate" in err.value.message


def test_template_is_sandboxed() -> None:
    t = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(EngineError):
        t.render([{"role": "user", "content": "x"}])


def test_broken_template_fails_check() -> None:
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}").check()


def test_unset_fields_get_defaults_and_zero_is_kept() -> None:
    cfg = resolve(Sampling(temperature=0.0, top_k=0, repeat_last_n=-1), context_per_slot=2048)
    assert cfg.temperature == 0.0  # explicit 0 means greedy, not "default"
    assert cfg.top_k == 0
    assert cfg.repeat_last_n == 2048
    assert cfg.top_p == 0.95 and cfg.seed == RANDOM_SEED


def test_json_schema_becomes_a_grammar() -> None:
    assert "root ::=" in json_schema_to_gbnf('{"type": "object"}')


@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        (Sampling(temperature=-0.1), "temperature"),
        (Sampling(top_p=1.5), "top_p"),
        (Sampling(min_p=2), "min_p"),
        (Sampling(presence_penalty=3), "presence_penalty"),
        (Sampling(top_logprobs=21), "top_logprobs"),
        (Sampling(max_tokens=0), "max_tokens"),
        (Sampling(logit_bias={50_000: 1.0}), "logit_bias"),
        (Sampling(logit_bias={5: 101.0}), "logit_bias"),
        (Sampling(stop=("",)), "stop"),
    ],
)
def test_validation_names_the_field(sampling: Sampling, param: str) -> None:
    with pytest.raises(EngineError) as err:
        check_sampling(sampling, n_vocab=49152)
    assert err.value.param == param
    assert err.value.reason is Reason.INVALID_VALUE


def test_sampling_from_proto_keeps_presence() -> None:
    p = pb.SamplingParams(
        temperature=0.0,
        max_tokens=7,
        stop=["a"],
        logit_bias={3: -5.0},
        json_schema='{"type":"object"}',
    )
    s = sampling_from_proto(p)
    assert s.temperature == 0.0 and s.max_tokens == 7 and s.top_p is None
    assert s.stop == ("a",) and s.logit_bias == {3: -5.0}
    assert s.constraint == JsonSchema('{"type":"object"}')


def test_generation_from_proto_inputs() -> None:
    chat = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="hi", name="bob")])
    )
    assert generation_from_proto(chat).messages[0].name == "bob"  # type: ignore[index]
    toks = generation_from_proto(pb.GenerateRequest(tokens=pb.TokenList(ids=[1, 2])))
    assert toks.tokens == (1, 2)
    with pytest.raises(EngineError) as no_input:
        check_generation(generation_from_proto(pb.GenerateRequest()), n_vocab=49152)
    assert no_input.value.param == "input"
    no_role = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="", content="x")])
    )
    with pytest.raises(EngineError) as caught:
        check_generation(generation_from_proto(no_role), n_vocab=49152)
    assert caught.value.param == "messages[0].role"


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        (GenerationSpec(messages=()), "messages"),
        (GenerationSpec(tokens=()), "prompt"),
        (GenerationSpec(tokens=(1, 49152)), "prompt"),
        (GenerationSpec(prompt="a", tokens=(1,)), "input"),
        (GenerationSpec(prompt="a", sampling=Sampling(temperature=float("nan"))), "temperature"),
        (
            GenerationSpec(prompt="a", sampling=Sampling(repeat_penalty=float("inf"))),
            "repeat_penalty",
        ),
        (GenerationSpec(prompt="a", sampling=Sampling(logit_bias={1: float("nan")})), "logit_bias"),
    ],
)
def test_one_rule_per_field_names_it(spec: GenerationSpec, param: str) -> None:
    with pytest.raises(EngineError) as caught:
        check_generation(spec, n_vocab=49152)
    assert (caught.value.reason, caught.value.param) == (Reason.INVALID_VALUE, param)


def test_embed_inputs_are_checked_before_any_work() -> None:
    for inputs, message in (([], "input must not be empty"), (["a", ""], "input 1 is empty")):
        with pytest.raises(EngineError) as caught:
            check_embed_inputs(inputs, n_vocab=10)
        assert (caught.value.param, caught.value.message) == ("input", message)
    with pytest.raises(EngineError, match="outside the vocabulary"):
        check_embed_inputs([[1, 10]], n_vocab=10)


def test_events_to_proto() -> None:
    msg = chunks_to_proto([Chunk("he", [1]), Chunk("llo", [2, 3])])
    assert msg.chunk.text == "hello" and list(msg.chunk.token_ids) == [1, 2, 3]
    fin = final_to_proto(Final(FinishReason.LENGTH, Usage(3, 4, 1), ""))
    assert fin.final.finish_reason == pb.FINISH_REASON_LENGTH
    assert fin.final.usage.cached_tokens == 1
