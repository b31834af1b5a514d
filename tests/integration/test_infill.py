"""Code infilling end to end: llama-server's POST /infill, ``suffix`` on /v1/completions and
GenerateRequest.infill, on real workers behind a real gateway.

SmolLM2-135M has no fill-in-the-middle tokens: its worker refuses infilling (400 over HTTP,
INVALID_ARGUMENT over gRPC). A copy of it whose GGUF metadata declares five of its control
tokens as FIM tokens (tests/fim_model.py) stands for a FIM model: the prompt the worker builds
is read back token by token through prompt_logprobs and compared with the layout llama-server
uses, each text tokenized through the Tokenize RPC. Decoding is greedy, so HTTP and gRPC
answers to the same input are compared exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest

from llamagrid.v1 import inference_pb2 as pb
from tests.fim_model import FIM_IDS, write_fim_model
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving
from tests.serving import Stub, connect

FIM = "fim"
PLAIN = "smollm2"
PREFIX = "def add(a, b):\n    return"
SUFFIX = "\n\nprint(add(1, 2))\n"
EXTRA = [{"filename": "util.py", "text": "X = 1\n"}]
MIDDLE_START = " a"
N_PREDICT = 8
#: The FIM worker's limit on a request's text (--max-prompt-bytes), small to test cheaply.
MAX_PROMPT_BYTES = 65536


@pytest.fixture(scope="module")
def fim_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    run_dir = tmp_path_factory.mktemp("infill")
    model = write_fim_model(run_dir / "smollm2-fim.gguf")
    args = ("--model", str(model), "--alias", FIM, "--parallel", "2", "--n-ctx", "2048")
    args += ("--max-prompt-bytes", str(MAX_PROMPT_BYTES))
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def url(fim_worker: Proc, worker: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway in front of the FIM worker and the shared SmolLM2 worker."""
    run_dir = tmp_path_factory.mktemp("infill-gw")
    with running(spawn_gateway(run_dir, fim_worker.target, worker.target)) as proc:
        base = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{base}/health")
        yield base


@pytest.fixture(scope="module")
def fim_stub(fim_worker: Proc) -> Iterator[Stub]:
    channel, stub = connect(fim_worker.target)
    yield stub
    channel.close()


def text_ids(stub: Stub, text: str) -> list[int]:
    """The ids of a plain text (no BOS, special-token text not parsed)."""
    return list(stub.Tokenize(pb.TokenizeRequest(text=text), timeout=60).token_ids)


def expected_prompt(
    stub: Stub, prefix: str, suffix: str, extra: list[dict[str, str]], middle: str
) -> list[int]:
    """llama-server's repo-level layout (SmolLM2 adds no BOS)."""
    ids = [FIM_IDS["repo"], *text_ids(stub, "myproject\n")]
    for chunk in extra:
        ids += [FIM_IDS["separator"], *text_ids(stub, chunk["filename"] + "\n")]
        ids += text_ids(stub, chunk["text"])
    ids += [FIM_IDS["separator"], *text_ids(stub, "filename\n")]
    ids += [FIM_IDS["prefix"], *text_ids(stub, prefix), *text_ids(stub, middle)]
    return [*ids, FIM_IDS["suffix"], *text_ids(stub, suffix), FIM_IDS["middle"]]


def infill_proto(prefix: str, suffix: str, extra: list[dict[str, str]], middle: str) -> pb.Infill:
    chunks = [pb.InfillChunk(filename=c["filename"], text=c["text"]) for c in extra]
    return pb.Infill(prefix=prefix, suffix=suffix, extra=chunks, prompt=middle)


def generate(stub: Stub, infill: pb.Infill) -> tuple[list[int], str, pb.GenerateFinal]:
    """The prompt's token ids, the greedy text and the final message of an infill request."""
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=N_PREDICT)
    request = pb.GenerateRequest(infill=infill, sampling=sampling, prompt_logprobs=0)
    prompt: list[int] = []
    text: list[str] = []
    final = None
    for message in stub.Generate(request, timeout=120):
        if message.HasField("chunk"):
            prompt += [entry.chosen.token_id for entry in message.chunk.prompt_logprobs]
            text.append(message.chunk.text)
        else:
            final = message.final
    assert final is not None
    return prompt, "".join(text), final


def infill_body(**fields: Any) -> dict[str, Any]:
    body = {
        "model": FIM,
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "input_extra": EXTRA,
        "prompt": MIDDLE_START,
        "n_predict": N_PREDICT,
        "temperature": 0,
    }
    return {**body, **fields}


def events(reply: httpx.Response) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data: ") for line in reply.text.splitlines()]
    return [json.loads(line) for line in lines if line.startswith("{")]


# The model's FIM tokens.
def test_model_info_says_which_model_can_fill_in_the_middle(fim_stub: Stub, stub: Stub) -> None:
    fim = fim_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).info
    plain = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).info
    assert (fim.fill_in_middle, plain.fill_in_middle) == (True, False)


def test_the_worker_builds_llama_servers_infill_prompt_from_the_fim_tokens(fim_stub: Stub) -> None:
    infill = infill_proto(PREFIX, SUFFIX, EXTRA, MIDDLE_START)
    prompt, text, final = generate(fim_stub, infill)
    expected = expected_prompt(fim_stub, PREFIX, SUFFIX, EXTRA, MIDDLE_START)
    assert prompt == expected
    assert prompt[0] == FIM_IDS["repo"] and prompt[-1] == FIM_IDS["middle"]
    assert final.usage.prompt_tokens == len(expected)
    assert final.usage.completion_tokens >= 1 and text


def test_special_token_text_in_the_code_stays_text(fim_stub: Stub) -> None:
    prefix = "<gh_stars><|im_start|>x"
    prompt, _, _ = generate(fim_stub, infill_proto(prefix, "", [], ""))
    assert prompt.count(FIM_IDS["prefix"]) == 1 and 1 not in prompt  # 1: <|im_start|>
    assert prompt == expected_prompt(fim_stub, prefix, "", [], "")


# llama-server's /infill.
def test_infill_answers_like_completion_with_the_greedy_text_of_grpc(
    url: str, fim_stub: Stub
) -> None:
    reply = httpx.post(f"{url}/infill", json=infill_body(), timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    prompt, text, _ = generate(fim_stub, infill_proto(PREFIX, SUFFIX, EXTRA, MIDDLE_START))
    assert body["content"] == text
    assert body["tokens_evaluated"] == len(prompt)
    assert 1 <= body["tokens_predicted"] <= N_PREDICT
    assert body["stop"] is True and body["stop_type"] in ("eos", "limit")
    assert body["generation_settings"]["n_predict"] == N_PREDICT


def test_infill_streams_like_completion(url: str) -> None:
    whole = httpx.post(f"{url}/infill", json=infill_body(), timeout=120).json()
    reply = httpx.post(f"{url}/infill", json=infill_body(stream=True), timeout=120)
    assert reply.status_code == 200, reply.text
    got = events(reply)
    assert [e["stop"] for e in got] == [False] * (len(got) - 1) + [True]
    assert "".join(e["content"] for e in got) == whole["content"]
    assert got[-1]["tokens_evaluated"] == whole["tokens_evaluated"]


def test_an_empty_infill_still_completes(url: str) -> None:
    body = {"model": FIM, "n_predict": 2, "temperature": 0}
    reply = httpx.post(f"{url}/infill", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    # myproject line, current-file line, and the prefix, suffix and middle tokens
    assert reply.json()["tokens_evaluated"] > 3


# suffix on /v1/completions.
def test_suffix_on_completions_fills_in_between_prompt_and_suffix(url: str, fim_stub: Stub) -> None:
    body = {"model": FIM, "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": N_PREDICT}
    reply = httpx.post(f"{url}/v1/completions", json={**body, "temperature": 0}, timeout=120)
    assert reply.status_code == 200, reply.text
    prompt, text, _ = generate(fim_stub, infill_proto(PREFIX, SUFFIX, [], ""))
    assert prompt == expected_prompt(fim_stub, PREFIX, SUFFIX, [], "")
    assert reply.json()["choices"][0]["text"] == text
    assert reply.json()["usage"]["prompt_tokens"] == len(prompt)


def test_an_empty_suffix_is_a_plain_completion(url: str) -> None:
    body = {"model": FIM, "prompt": PREFIX, "max_tokens": 2, "temperature": 0}
    plain = httpx.post(f"{url}/v1/completions", json=body, timeout=120).json()
    empty = httpx.post(f"{url}/v1/completions", json={**body, "suffix": ""}, timeout=120).json()
    assert empty["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"]
    assert empty["choices"][0]["text"] == plain["choices"][0]["text"]


def test_suffix_needs_a_text_prompt(url: str) -> None:
    body = {"model": FIM, "prompt": [1, 2, 3], "suffix": "x", "max_tokens": 2}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "suffix")


def test_echo_and_suffix_exclude_each_other(url: str) -> None:
    body = {"model": FIM, "prompt": "a", "suffix": "b", "echo": True, "max_tokens": 2}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "echo"


# A model without FIM tokens.
@pytest.mark.parametrize("stream", [False, True])
def test_a_model_without_fim_tokens_refuses_suffix(url: str, stream: bool) -> None:
    body = {"model": PLAIN, "prompt": "a", "suffix": "b", "max_tokens": 2, "stream": stream}
    reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "suffix")
    assert "fill-in-the-middle" in error["message"]


def test_a_model_without_fim_tokens_refuses_infill(url: str, stub: Stub) -> None:
    reply = httpx.post(f"{url}/infill", json=infill_body(model=PLAIN), timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["reason"]) == (400, "unsupported_parameter")
    assert "fill-in-the-middle" in error["message"]
    request = pb.GenerateRequest(infill=pb.Infill(prefix="a"))
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# Hostile inputs: refused, and the worker serves as before.
HOSTILE: list[tuple[str, dict[str, Any], str | None]] = [
    ("too many chunks", {"input_extra": [{"filename": "f", "text": "t"}] * 65}, "infill.extra"),
    ("a long filename", {"input_extra": [{"filename": "f" * 257}]}, "infill.extra[0].filename"),
    (
        "a filename of two lines",
        {"input_extra": [{"filename": "a\nb"}]},
        "infill.extra[0].filename",
    ),
    ("a huge prefix", {"input_prefix": "x" * (MAX_PROMPT_BYTES + 1)}, "infill"),
    ("huge extra text", {"input_extra": [{"text": "y" * 40000}] * 2}, "infill"),
    ("a nested chunk text", {"input_extra": [{"text": {"nested": [["deep"]]}}]}, None),
    ("extra that is not a list", {"input_extra": "util.py"}, None),
    ("a chunk that is not an object", {"input_extra": [["util.py", "x"]]}, None),
    ("a prefix that is a number", {"input_prefix": 12}, None),
    ("an unknown chunk field", {"input_extra": [{"filename": "a", "lines": 3}]}, None),
    ("a token-id prompt", {"prompt": [1, 2]}, None),
    ("no completion", {"n_predict": 0}, "n_predict"),
]


@pytest.fixture(scope="module")
def before(url: str) -> str:
    """The greedy answer to infill_body() before any hostile request."""
    reply = httpx.post(f"{url}/infill", json=infill_body(), timeout=120)
    assert reply.status_code == 200, reply.text
    content = reply.json()["content"]
    assert isinstance(content, str)
    return content


@pytest.mark.parametrize(("case", "change", "param"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_infill_is_a_400_and_the_worker_serves_on(
    url: str, before: str, case: str, change: dict[str, Any], param: str | None
) -> None:
    reply = httpx.post(f"{url}/infill", json=infill_body(**change), timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == 400
    if param is not None:
        assert error["param"] == param
    after = httpx.post(f"{url}/infill", json=infill_body(), timeout=120).json()["content"]
    assert after == before


def test_nan_in_an_infill_body_is_a_400(url: str) -> None:
    raw = json.dumps(infill_body()).replace(
        f'"input_prefix": {json.dumps(PREFIX)}', '"input_prefix": NaN'
    )
    assert "NaN" in raw
    reply = httpx.post(
        f"{url}/infill", content=raw, headers={"content-type": "application/json"}, timeout=60
    )
    assert reply.status_code == 400, reply.text


def test_infill_needs_no_session(fim_stub: Stub) -> None:
    request = pb.GenerateRequest(
        infill=pb.Infill(prefix="a"), session=pb.SessionRef(session_id="s" * 32)
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(fim_stub.Generate(request, timeout=60))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "infill" in (caught.value.details() or "")
