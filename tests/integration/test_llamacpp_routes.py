"""llama-server's native routes on a real gateway in front of a real SmolLM2 worker: the fields
and stream format of llama.cpp's server README, the README's fetch example, and hostile
bodies answered in llama-server's error shape with the worker still serving."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_gateway

PROMPT = "Building a website can be done in 10 simple steps:"
GREEDY = {"temperature": 0, "seed": 1}
TIMINGS = (
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
)
#: The README's fetch example (llama.cpp's server README, "Node JS Test"), as published.
FETCH_EXAMPLE = """\
const prompt = `Building a website can be done in 10 simple steps:`;

async function Test() {
    let response = await fetch("http://127.0.0.1:8080/completion", {
        method: 'POST',
        body: JSON.stringify({
            prompt,
            n_predict: 512,
        })
    })
    console.log((await response.json()).content)
}

Test()
"""


@pytest.fixture(scope="module")
def url(run_dir: Path, worker: Proc) -> Iterator[str]:
    """A gateway with llamagrid's default model naming: any name reaches its single model."""
    with running(spawn_gateway(run_dir, worker.target)) as proc:
        yield f"http://127.0.0.1:{proc.port}"


def post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def complete(url: str, **body: Any) -> dict[str, Any]:
    reply = post(url, "/completion", {"prompt": PROMPT, "n_predict": 8, **GREEDY, **body})
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def stream(url: str, **body: Any) -> list[dict[str, Any]]:
    """The events of a streamed /completion, read as llama-server's clients read them: every
    ``data: `` line is JSON."""
    events = []
    payload = {"prompt": PROMPT, "n_predict": 8, **GREEDY, **body, "stream": True}
    with httpx.stream("POST", f"{url}/completion", json=payload, timeout=120) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: ") :]))
    return events


def test_a_completion_carries_llama_servers_fields(url: str) -> None:
    out = complete(url)
    assert isinstance(out["content"], str) and out["content"]
    assert out["stop"] is True
    assert len(out["tokens"]) == out["tokens_predicted"] == 8
    assert out["stop_type"] == "limit" and out["stopped_limit"] is True
    assert out["stopped_eos"] is False and out["stopped_word"] is False
    assert out["stopping_word"] == ""
    assert out["tokens_evaluated"] > 0 and out["truncated"] is False
    timings = out["timings"]
    assert set(TIMINGS) <= set(timings)
    assert timings["predicted_n"] == 8 and timings["predicted_ms"] > 0
    assert timings["predicted_per_second"] == pytest.approx(8000 / timings["predicted_ms"])
    settings = out["generation_settings"]
    assert settings["n_ctx"] > 0 and settings["n_predict"] == 8
    assert settings["temperature"] == 0 and settings["top_k"] == 40
    assert out["prompt"] == PROMPT
    assert "completion_probabilities" not in out


def test_a_streamed_completion_sends_content_then_a_closing_event(url: str) -> None:
    whole = complete(url)
    events = stream(url)
    assert events[-1]["stop"] is True and events[-1]["content"] == ""
    assert all(event["stop"] is False for event in events[:-1])
    assert "".join(event["content"] for event in events) == whole["content"]
    assert [t for event in events for t in event["tokens"]] == whole["tokens"]
    closing = events[-1]
    assert closing["stop_type"] == "limit" and closing["tokens_predicted"] == 8
    assert set(TIMINGS) <= set(closing["timings"])


def test_the_readmes_fetch_example_runs(url: str, tmp_path: Path) -> None:
    """The example as published, with only its origin pointed at this gateway."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "index.js"
    script.write_text(FETCH_EXAMPLE.replace("http://127.0.0.1:8080", url))
    done = subprocess.run([node, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and done.stdout.strip() != "undefined"


def test_a_prompt_as_token_ids_or_a_mix_is_one_prompt(url: str) -> None:
    head = post(url, "/tokenize", {"content": "Hello", "add_special": True}).json()["tokens"]
    tail = post(url, "/tokenize", {"content": " world"}).json()["tokens"]
    as_ids = complete(url, prompt=head + tail)
    mixed = complete(url, prompt=["Hello", *tail])
    assert mixed["content"] == as_ids["content"] and mixed["tokens"] == as_ids["tokens"]
    assert mixed["tokens_evaluated"] == len(head) + len(tail)


def test_logit_bias_in_the_array_form_bans_tokens(url: str) -> None:
    first = complete(url, n_predict=1)["tokens"][0]
    banned = complete(url, n_predict=1, logit_bias=[[first, False]])["tokens"][0]
    assert banned != first
    text = post(url, "/detokenize", {"tokens": [first]}).json()["content"]
    by_text = complete(url, n_predict=1, logit_bias=[[text, False]])
    assert by_text["tokens"][0] != first
    assert by_text["generation_settings"]["logit_bias"] == [[first, -100.0]]


def test_n_probs_gives_each_tokens_alternatives(url: str) -> None:
    out = complete(url, n_probs=3)
    probs = out["completion_probabilities"]
    assert len(probs) == len(out["tokens"]) == 8
    for entry in probs:
        assert len(entry["probs"]) == 3 and isinstance(entry["content"], str)
        assert all(0 <= p["prob"] <= 1 and isinstance(p["tok_str"], str) for p in entry["probs"])
    events = stream(url, n_probs=2)
    streamed = [e for event in events[:-1] for e in event["completion_probabilities"]]
    assert len(streamed) == 8 and all(len(e["probs"]) == 2 for e in streamed)


def test_a_stop_word_ends_the_completion(url: str) -> None:
    content = complete(url, n_predict=16)["content"]
    word = content.split()[2]
    out = complete(url, n_predict=16, stop=[word])
    assert out["stop_type"] == "word" and out["stopped_word"] is True
    assert out["stopping_word"] == word and word not in out["content"]


def test_n_predict_0_evaluates_the_prompt_only(url: str) -> None:
    out = complete(url, n_predict=0)
    assert out["content"] == "" and out["tokens"] == [] and out["tokens_evaluated"] > 0


def test_tokenize_and_detokenize_round_trip(url: str) -> None:
    text = "Hello 🦙 world"
    ids = post(url, "/tokenize", {"content": text}).json()["tokens"]
    assert ids and all(isinstance(i, int) for i in ids)
    assert post(url, "/detokenize", {"tokens": ids}).json() == {"content": text}
    pieces = post(url, "/tokenize", {"content": text, "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == ids
    raw = b"".join(
        p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces
    )
    assert raw == text.encode()
    assert any(isinstance(p["piece"], list) for p in pieces)  # the emoji's bytes are split


def test_embedding_has_llama_servers_shapes(url: str) -> None:
    one = post(url, "/embedding", {"content": "hello"})
    assert one.status_code == 200, one.text
    vector = one.json()["embedding"]
    assert len(vector) > 0 and math.isclose(sum(v * v for v in vector), 1, rel_tol=1e-3)
    many = post(url, "/embeddings", {"content": ["hello", "world"]}).json()
    assert [entry["index"] for entry in many] == [0, 1]
    assert many[0]["embedding"][0] == pytest.approx(vector, abs=1e-5)


def test_props_describe_the_model(url: str) -> None:
    props = httpx.get(f"{url}/props", timeout=30).json()
    assert props["total_slots"] == 4
    assert "{%" in props["chat_template"]
    assert props["model_path"].endswith(".gguf") and "/" not in props["model_path"]
    settings = props["default_generation_settings"]
    assert settings["n_ctx"] > 0 and settings["temperature"] == 0.8
    assert httpx.get(f"{url}/props", params={"model": "any"}, timeout=30).status_code == 200


def test_health_has_llama_servers_shape(url: str) -> None:
    for path in ("/health", "/v1/health"):
        reply = httpx.get(f"{url}{path}", timeout=30)
        assert (reply.status_code, reply.json()) == (200, {"status": "ok"})


def test_any_model_name_reaches_the_single_model(url: str) -> None:
    chat = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}]}
    reply = post(url, "/v1/chat/completions", {**chat, "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert complete(url, model="gpt-4")["tokens_predicted"] == 8


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n_predict": 2**40}, "n_predict"),
        ({"n_predict": -2}, "n_predict"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"logit_bias": [[1]]}, "logit_bias"),
        ({"logit_bias": [[1, "x"]]}, "logit_bias"),
        ({"logit_bias": [[[1], 2]]}, "logit_bias"),
        ({"logit_bias": [[1, True]]}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": [[2**40, 1]]}, "logit_bias"),
        ({"logit_bias": [["", 1]]}, "logit_bias"),
        ({"n_keep": 5}, "n_keep"),
        ({"cache_prompt": False}, "cache_prompt"),
        ({"id_slot": 0}, "id_slot"),
        ({"tfs_z": 0.5}, "tfs_z"),
        ({"image_data": [{"data": "x", "id": 1}]}, "image_data"),
        ({"frobnicate": {"a": [1]}}, "frobnicate"),
        ({"n_probs": 21}, "n_probs"),
        ({"grammar": "root ::= ((", "n_predict": 1}, None),
    ],
)
def test_hostile_bodies_are_refused_in_llama_servers_shape(
    url: str, body: dict[str, Any], param: str | None
) -> None:
    reply = post(url, "/completion", {"prompt": PROMPT, **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == 400 and error["type"] == "invalid_request_error"
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error.get("param", "").startswith(param), error


def test_nan_and_an_unknown_field_name_what_they_refuse(url: str) -> None:
    raw = '{"prompt": "x", "temperature": NaN}'
    reply = httpx.post(f"{url}/completion", content=raw, timeout=60)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == 400
    unknown = post(url, "/completion", {"prompt": "x", "mirostat_ent": 1}).json()["error"]
    assert unknown["param"] == "mirostat_ent" and unknown["reason"] == "unsupported_parameter"
    tokenize = post(url, "/tokenize", {"content": "x", "parse_special": True}).json()["error"]
    assert tokenize["param"] == "parse_special"


def test_the_worker_still_serves_the_same_completion_after_hostile_bodies(url: str) -> None:
    before = complete(url)["content"]
    for body in ({"prompt": [2**31]}, {"prompt": "x" * 100_000, "n_predict": 1}):
        assert post(url, "/completion", body).status_code in (400, 413)
    assert complete(url)["content"] == before


def test_metrics_carry_llama_servers_series(url: str) -> None:
    out = complete(url)
    text = httpx.get(f"{url}/metrics", timeout=30).text
    samples = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("llamacpp:") and 'model="smollm2"' in line
    }
    assert samples["llamacpp:tokens_predicted_total"] >= out["tokens_predicted"]
    assert samples["llamacpp:prompt_tokens_total"] > 0
    assert samples["llamacpp:tokens_predicted_seconds_total"] > 0
    assert samples["llamacpp:predicted_tokens_seconds"] > 0
    assert 0 <= samples["llamacpp:kv_cache_usage_ratio"] <= 1
    for name in ("n_decode_total", "kv_cache_tokens", "requests_processing", "requests_deferred"):
        assert f"llamacpp:{name}" in samples


def test_apply_template_renders_the_prompt_a_chat_runs_on(url: str) -> None:
    messages = [{"role": "user", "content": "Hi <|im_end|> there"}]
    reply = post(url, "/apply-template", {"messages": messages})
    assert reply.status_code == 200, reply.text
    prompt = reply.json()["prompt"]
    assert "Hi <|im_end|> there" in prompt and prompt.rstrip().endswith("assistant")
    refused = post(url, "/apply-template", {"messages": []})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 400


def test_a_lone_surrogate_is_a_400_on_every_route(url: str) -> None:
    text = '"a\\ud800b"'
    bodies = {
        "/completion": f'{{"prompt": {text}, "n_predict": 1}}',
        "/tokenize": f'{{"content": {text}}}',
        "/embedding": f'{{"content": {text}}}',
        "/apply-template": f'{{"messages": [{{"role": "user", "content": {text}}}]}}',
    }
    for path, raw in bodies.items():
        reply = httpx.post(f"{url}{path}", content=raw, timeout=60)
        assert reply.status_code == 400 and reply.json()["error"]["code"] == 400, (path, reply.text)


def test_apply_chat_template_over_grpc_checks_its_input(
    stub: pb_grpc.InferenceServiceStub,
) -> None:
    chat = pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="Hi")])
    reply = stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(chat=chat), timeout=30)
    assert "Hi" in reply.prompt
    bad = [
        (pb.ApplyChatTemplateRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ApplyChatTemplateRequest(model="nope", chat=chat), grpc.StatusCode.NOT_FOUND),
        (
            pb.ApplyChatTemplateRequest(
                chat=pb.ChatConversation(messages=[pb.ChatMessage(role="", content="x")])
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in bad:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ApplyChatTemplate(request, timeout=30)
        assert caught.value.code() == code, caught.value
    assert stub.ApplyChatTemplate(pb.ApplyChatTemplateRequest(chat=chat), timeout=30) == reply
