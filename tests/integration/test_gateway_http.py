"""The whole path on the real model: openai SDK -> HTTP/SSE -> gateway -> gRPC -> worker."""

from __future__ import annotations

import base64
import contextlib
import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

MESSAGES = [{"role": "user", "content": "Name three colors."}]


def test_chat_streams_and_stream_equals_non_stream_at_temperature_0(
    openai_client: OpenAI,
) -> None:
    full = openai_client.chat.completions.create(
        model="smollm2", messages=MESSAGES, temperature=0, max_tokens=48
    )  # type: ignore[arg-type]
    text = full.choices[0].message.content
    assert text and full.choices[0].finish_reason in ("stop", "length")
    assert full.usage and full.usage.completion_tokens > 0
    chunks = list(
        openai_client.chat.completions.create(
            model="smollm2",
            messages=MESSAGES,
            temperature=0,
            max_tokens=48,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1  # it really streamed
    assert "".join(deltas) == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_completions_endpoint(openai_client: OpenAI) -> None:
    out = openai_client.completions.create(
        model="smollm2", prompt="The capital of France is", temperature=0, max_tokens=8
    )
    assert out.choices[0].text
    assert out.usage and out.usage.prompt_tokens > 3


def test_json_schema_output_parses_and_validates(openai_client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    out = openai_client.chat.completions.create(
        model="smollm2",
        temperature=0,
        max_tokens=80,
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    doc = json.loads(out.choices[0].message.content or "")
    jsonschema.validate(doc, schema)


def test_json_object_mode(openai_client: OpenAI) -> None:
    out = openai_client.chat.completions.create(
        model="smollm2",
        temperature=0,
        max_tokens=300,
        messages=[
            {"role": "user", "content": "Reply with a JSON object with the keys name and color."}
        ],
        response_format={"type": "json_object"},
    )
    assert out.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(out.choices[0].message.content or ""), dict)


def test_embeddings_http_match_grpc(
    openai_client: OpenAI, stub: pb_grpc.InferenceServiceStub
) -> None:
    texts = ["a red apple", "a green pear"]
    http = openai_client.embeddings.create(model="smollm2", input=texts)
    grpc_out = stub.Embed(
        pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts], normalize=True)
    )
    assert len(http.data) == 2
    for item, ref in zip(http.data, grpc_out.embeddings, strict=True):
        assert len(item.embedding) == len(ref.values)
        assert max(abs(a - b) for a, b in zip(item.embedding, ref.values, strict=True)) < 1e-5
    b64 = openai_client.embeddings.with_raw_response.create(
        model="smollm2", input=texts[0], encoding_format="base64"
    ).http_response.json()
    raw = base64.b64decode(b64["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert (
        max(abs(a - b) for a, b in zip(floats, grpc_out.embeddings[0].values, strict=True)) < 1e-6
    )


def test_models_and_health(base_url: str, openai_client: OpenAI) -> None:
    assert [m.id for m in openai_client.models.list()] == ["smollm2"]
    assert httpx.get(f"{base_url}/health").status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("{not json", 400, None),
        ({"model": "smollm2", "messages": "hello"}, 400, None),
        ({"model": "smollm2", "messages": []}, 400, None),
        ({"model": "smollm2", "messages": MESSAGES, "temperature": "hot"}, 400, None),
        ({"model": "nope", "messages": MESSAGES}, 404, "model_not_found"),
        ({"model": "smollm2", "messages": MESSAGES, "n": 5}, 400, "invalid_value"),  # > slots
        (
            {
                "model": "smollm2",
                "messages": MESSAGES,
                "functions": [{"name": "f"}],
            },
            400,
            "unsupported_parameter",
        ),
        (
            {
                "model": "smollm2",
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "word " * 2100}],
            },
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_bad_input_gets_openai_error_and_worker_keeps_serving(
    base_url: str, openai_client: OpenAI, body: object, status: int, code: str | None
) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if code:
        assert err["code"] == code
    ok = openai_client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=4,
    )
    assert ok.choices[0].message.content is not None


def test_embedding_input_over_the_context_is_400(openai_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.embeddings.create(model="smollm2", input=["short", "word " * 3000])
    assert err.value.code == "context_length_exceeded"
    assert len(openai_client.embeddings.create(model="smollm2", input="fine").data) == 1


def test_unsupported_parameter_via_sdk(openai_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        openai_client.chat.completions.create(
            model="smollm2",
            messages=MESSAGES,  # type: ignore[arg-type]
            functions=[{"name": "f"}],
        )
    assert err.value.code == "unsupported_parameter"


LONG = {
    "model": "smollm2",
    "max_tokens": 4000,
    "ignore_eos": True,
    "messages": [{"role": "user", "content": "Write."}],
}


def test_prefix_reuse_shows_as_cached_tokens(openai_client: OpenAI) -> None:
    system = "You answer in one short sentence. " * 30
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hi!"}]
    outs = [
        openai_client.chat.completions.create(
            model="smollm2", messages=messages, temperature=0, max_tokens=16
        )  # type: ignore[arg-type]
        for _ in range(2)
    ]
    usage = outs[1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    assert outs[1].choices[0].message.content  # equality: see test_engine, flash attention off


@contextlib.contextmanager
def one_slot_gateway(tmp_path: Path, *worker_args: str) -> Iterator[str]:
    """A gateway in front of a worker with a single slot; yields the gateway's base URL."""
    worker = spawn_worker(
        tmp_path, "--parallel", "1", "--n-ctx", "8192", "--n-batch", "64", *worker_args
    )
    with running(worker):
        wait_serving(worker)
        with running(spawn_gateway(tmp_path, worker.target)) as gw:
            base = f"http://127.0.0.1:{gw.port}"
            wait_http_ok(f"{base}/health")
            yield base


def served_promptly(base: str) -> None:
    """A short request completes within a timeout far below what a busy slot would cost."""
    client = OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=20)
    out = client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
    )
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens > 0


def test_disconnect_mid_stream_frees_the_worker(tmp_path: Path) -> None:
    """One slot only: if the abandoned stream kept generating, the next request would wait
    for its 4000 tokens and time out."""
    with one_slot_gateway(tmp_path) as base:
        body = {**LONG, "stream": True}
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: ") for line in got)
        served_promptly(base)  # the connection is closed: the slot is free at once


def test_disconnect_while_queued_or_in_prefill_frees_the_worker(tmp_path: Path) -> None:
    """One slot: A runs, B waits in the queue, C's long prompt is being prefilled. B and C
    disconnect, A is cancelled; a request after that must not wait behind B or C."""
    with one_slot_gateway(tmp_path) as base:
        url = f"{base}/v1/chat/completions"
        with httpx.stream("POST", url, json={**LONG, "stream": True}, timeout=60) as a:
            # Keep the line iterator: a dropped one is closed when the garbage collector gets
            # to it, and that closes A's connection (and frees the slot) at a random moment.
            a_lines = a.iter_lines()
            next(a_lines)  # A holds the slot
            with pytest.raises(httpx.ReadTimeout):  # B queues behind A, then gives up
                httpx.post(url, json=LONG, timeout=1.0)
        prefill = {**LONG, "messages": [{"role": "user", "content": "word " * 1800}]}
        with pytest.raises(httpx.ReadTimeout):  # C disconnects during its prefill
            httpx.post(url, json=prefill, timeout=0.3)
        served_promptly(base)


def test_full_queue_is_429_with_retry_after(tmp_path: Path) -> None:
    """One slot and no queue: while A streams, B is refused at once."""
    with one_slot_gateway(tmp_path, "--max-queue", "0") as base:
        url = f"{base}/v1/chat/completions"
        with httpx.stream("POST", url, json={**LONG, "stream": True}, timeout=60) as a:
            a_lines = a.iter_lines()  # kept: see test_disconnect_while_queued_or_in_prefill...
            next(a_lines)  # A holds the slot
            client = OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=20)
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="smollm2", messages=MESSAGES)  # type: ignore[arg-type]
        # A's slot frees as soon as its disconnect reaches the worker; then B's retry is served.
        for _ in range(100):
            with contextlib.suppress(openai.RateLimitError):
                served_promptly(base)
                break
            time.sleep(0.05)
        else:
            pytest.fail("the slot never became free")
    assert int(caught.value.response.headers["retry-after"]) >= 1
    body = caught.value.response.json()["error"]
    assert body["type"] == "rate_limit_error" and body["code"] == "queue_full"


def test_a_schema_keyword_that_would_be_ignored_is_a_400_unsupported_parameter(
    openai_client: OpenAI,
) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer", "minimum": 18}}}
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": schema},
            },
            max_tokens=8,
        )
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "unsupported_parameter"
    assert error["param"] == "response_format"
    assert "'minimum' is not supported" in error["message"]
