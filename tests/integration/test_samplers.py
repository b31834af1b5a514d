"""Every llama.cpp sampler field is honoured, over HTTP and gRPC, on the real model.

Each field is shown to act in one of two ways, against the same seeded request without it: the
native chain the worker built changes (the worker logs it at debug level as llama.cpp names its
samplers), or the text changes. The worker runs one slot, so requests never share a batch and
a seeded request gives the same text every time.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

MODEL = "smollm2"
PROMPT = "Once upon a time, in a small village by the sea, there lived"
#: A prompt that asks to go on repeating: what DRY is for.
REPEATS = (
    "The cat sat on the mat. The dog sat on the log. The cat sat on the mat. The dog sat on "
    "the log. The cat sat on the mat. The"
)
#: The request every case is compared with: seeded, sampled, short. (At temperature 1 exactly,
#: llama.cpp names its temperature sampler "?temp".)
BASE: dict[str, Any] = {"prompt": PROMPT, "max_tokens": 16, "seed": 11, "temperature": 0.9}
#: DRY's cases: greedy on the repeating prompt.
DRY: dict[str, Any] = {"prompt": REPEATS, "temperature": 0}
CHAIN = re.compile(r"sampler chain: (.*)$", re.MULTILINE)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    run_dir: Path = tmp_path_factory.mktemp("samplers")
    args = ("--parallel", "1", "--n-ctx", "1024", "--log-level", "debug")
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def base_url(worker: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running(spawn_gateway(tmp_path_factory.mktemp("gw"), worker.target)) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield f"http://127.0.0.1:{proc.port}"


@pytest.fixture(scope="module")
def stub(worker: Proc) -> Iterator[pb_grpc.InferenceServiceStub]:
    channel = grpc.insecure_channel(worker.target, options=channel_options())
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


def last_chain(worker: Proc) -> str:
    """The chain of the last request the worker admitted."""
    chains = CHAIN.findall(worker.log_text())
    assert chains, "the worker logged no sampler chain"
    return str(chains[-1])


def complete(base_url: str, worker: Proc, **fields: Any) -> tuple[str, str]:
    """(text, chain) of a seeded text completion over HTTP."""
    body = {"model": MODEL, **BASE, **fields}
    reply = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"], last_chain(worker)


#: (field and value, what the base request also holds, what the chain must then hold or lack).
#: None as the chain part: the field changes values inside samplers; the text must change.
CASES: list[tuple[dict[str, Any], dict[str, Any], str | None]] = [
    ({"mirostat": 1}, {}, "temp -> mirostat"),
    ({"mirostat": 2}, {}, "temp -> mirostat-v2"),
    ({"mirostat_tau": 1.0}, {"mirostat": 2}, None),
    ({"mirostat_eta": 1.0}, {"mirostat": 2, "mirostat_tau": 1.0}, None),
    ({"dry_multiplier": 0.8}, DRY, "dry"),
    ({"dry_multiplier": 0.8}, DRY, None),
    ({"dry_base": 4.0}, {**DRY, "dry_multiplier": 0.05}, None),
    ({"dry_allowed_length": 12}, {**DRY, "dry_multiplier": 0.8}, None),
    ({"dry_penalty_last_n": 0}, {**DRY, "dry_multiplier": 0.8}, "!dry"),
    ({"dry_penalty_last_n": 4}, {**DRY, "dry_multiplier": 0.8}, None),
    ({"dry_sequence_breakers": [" "]}, {**DRY, "dry_multiplier": 0.8}, None),
    ({"xtc_probability": 1.0}, {}, "xtc"),
    ({"xtc_threshold": 0.6}, {"xtc_probability": 1.0}, "!xtc"),
    ({"xtc_threshold": 0.01}, {"xtc_probability": 1.0}, None),
    ({"top_n_sigma": 0.5}, {}, "top-n-sigma"),
    ({"dynatemp_range": 0.9}, {}, "temp-ext"),
    ({"dynatemp_exponent": 0.0}, {"dynatemp_range": 0.9}, None),
    ({"min_keep": 100}, {"top_p": 0.01, "temperature": 2.0}, None),
    ({"samplers": ["temperature", "top_k"]}, {}, "temp -> top-k -> dist"),
    ({"samplers": "mt"}, {}, "min-p -> temp -> dist"),
    ({"samplers": ["min_p", "adaptive_p"]}, {}, "min-p -> adaptive-p"),
    ({"adaptive_target": 0.05}, {"samplers": ["min_p", "adaptive_p"]}, None),
    ({"adaptive_decay": 0.0}, {"samplers": ["adaptive_p"], "adaptive_target": 0.2}, None),
]


@pytest.mark.parametrize(
    ("field", "base", "chain"), CASES, ids=[f"{next(iter(c[0]))}-{i}" for i, c in enumerate(CASES)]
)
def test_each_sampler_field_changes_the_chain_or_the_text(
    base_url: str, worker: Proc, field: dict[str, Any], base: dict[str, Any], chain: str | None
) -> None:
    complete(base_url, worker, **base)  # the prompt's prefix is cached from here on
    before_text, before_chain = complete(base_url, worker, **base)
    text, after_chain = complete(base_url, worker, **base, **field)
    print(f"{field}: {before_chain!r} {before_text!r} -> {after_chain!r} {text!r}")
    if chain is None:
        assert text != before_text
    elif chain.startswith("!"):
        assert chain[1:] in before_chain.split(" -> ") and chain[1:] not in after_chain
    else:
        assert chain in after_chain and after_chain != before_chain
    again, _ = complete(base_url, worker, **base, **field)
    assert again == text  # seeded: the difference is the field's, not chance


def test_the_prompt_is_given_to_the_penalties_as_llama_server_does(
    base_url: str, worker: Proc
) -> None:
    """The first token can be penalized only for what the prompt holds."""
    first = {**DRY, "max_tokens": 1}
    complete(base_url, worker, **first)
    plain, _ = complete(base_url, worker, **first)
    penalized, chain = complete(base_url, worker, **first, repeat_penalty=5.0)
    assert chain == "penalties -> greedy" and plain == " dog" and penalized != plain
    dry, chain = complete(base_url, worker, **first, dry_multiplier=2.0, dry_allowed_length=1)
    assert chain == "dry -> greedy" and dry != plain


def test_grpc_builds_the_same_chain_and_text_as_http(
    base_url: str, worker: Proc, stub: pb_grpc.InferenceServiceStub
) -> None:
    fields: dict[str, Any] = {
        "dry_multiplier": 0.8,
        "dry_sequence_breakers": ["\n", "."],
        "xtc_probability": 0.5,
        "xtc_threshold": 0.05,
        "top_n_sigma": 2.0,
        "dynatemp_range": 0.4,
        "dynatemp_exponent": 1.5,
        "min_keep": 2,
        "samplers": ["dry", "top_n_sigma", "top_k", "xtc", "temperature"],
    }
    http_text, http_chain = complete(base_url, worker, **fields)
    assert http_chain == "dry -> top-n-sigma -> top-k -> xtc -> temp-ext -> dist"
    sampling = pb.SamplingParams(max_tokens=16, seed=11, temperature=0.9, **fields)
    request = pb.GenerateRequest(prompt=PROMPT, sampling=sampling)
    grpc_text = "".join(m.chunk.text for m in stub.Generate(request, timeout=120))
    assert (grpc_text, last_chain(worker)) == (http_text, http_chain)


def test_n_probs_returns_that_many_alternatives(base_url: str) -> None:
    body = {"model": MODEL, **BASE, "max_tokens": 2, "n_probs": 3}
    text = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120).json()
    assert [len(top) for top in text["choices"][0]["logprobs"]["top_logprobs"]] == [3, 3]
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    reply = httpx.post(f"{base_url}/v1/chat/completions", json={**chat, "n_probs": 2}, timeout=120)
    content = reply.json()["choices"][0]["logprobs"]["content"]
    assert [len(entry["top_logprobs"]) for entry in content] == [2, 2]


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "form",
    [
        {"response_format": {"type": "json_object", "schema": SCHEMA}},
        {"json_schema": SCHEMA},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": SCHEMA},
            }
        },
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": SCHEMA, "strict": True},
            }
        },
    ],
    ids=["json_object-schema", "top-level-json_schema", "json_schema", "json_schema-strict"],
)
def test_every_form_of_a_schema_constrains_the_answer(base_url: str, form: dict[str, Any]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "max_tokens": 40,
        "temperature": 0,
        **form,
    }
    reply = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"name", "age"} and isinstance(answer["age"], int)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"mirostat": 7}, "mirostat"),
        ({"mirostat_tau": 1000.0}, "mirostat_tau"),
        ({"dry_base": 0.5}, "dry_base"),
        ({"dry_penalty_last_n": 2**31 - 1, "dry_multiplier": 1.0}, "dry_penalty_last_n"),
        ({"dry_sequence_breakers": ["x"] * 10_000}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ["x" * 1000]}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": []}, "dry_sequence_breakers"),
        ({"samplers": ["top_k", "nucleus_of_doom"]}, "samplers"),
        ({"samplers": "kk"}, "samplers"),
        ({"samplers": "kq"}, "samplers"),
        ({"samplers": ["top_k"] * 100_000}, "samplers"),
        ({"samplers": []}, "samplers"),
        ({"samplers": ["infill"]}, "samplers"),
        ({"samplers": [["top_k"]]}, "samplers"),
        ({"min_keep": 2**32 - 1}, "min_keep"),
        ({"xtc_probability": -0.5}, "xtc_probability"),
        ({"adaptive_decay": 1.0}, "adaptive_decay"),
    ],
)
def test_a_bad_sampler_field_is_a_400_naming_it_and_the_worker_serves_on(
    base_url: str, worker: Proc, fields: dict[str, Any], param: str
) -> None:
    body = {"model": MODEL, **BASE, **fields}
    reply = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param
    assert complete(base_url, worker)[0] == complete(base_url, worker)[0]


def test_a_nan_float_is_refused_over_grpc(stub: pb_grpc.InferenceServiceStub) -> None:
    for name in ("mirostat_eta", "dry_multiplier", "top_n_sigma", "dynatemp_exponent"):
        sampling = pb.SamplingParams(max_tokens=1, **{name: math.nan})
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(pb.GenerateRequest(prompt="Hi", sampling=sampling), timeout=60))
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and name in error.details()
