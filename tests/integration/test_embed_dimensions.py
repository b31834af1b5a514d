"""Embeddings ``dimensions`` on the real model: truncated and renormalised where the worker's
--embedding-dimensions allows it, refused with a reason everywhere else, over HTTP and gRPC."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from openai import OpenAI

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving
from tests.serving import ONE_THREAD, connect

#: SmolLM2-135M's embedding width.
WIDTH = 576
ALLOWED = (64, 128, 256)
TEXT = "a red apple on a wooden table"


@pytest.fixture(scope="module")
def flagged_worker(run_dir: Path) -> Iterator[Proc]:
    """SmolLM2, declared (for the test's sake) as trained for widths 64, 128 and 256."""
    flag = ",".join(str(size) for size in ALLOWED)
    args = ("--embedding-dimensions", flag, "--parallel", "1", "--n-ctx", "1024", *ONE_THREAD)
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def flagged_stub(flagged_worker: Proc) -> Iterator[pb_grpc.InferenceServiceStub]:
    channel, stub = connect(flagged_worker.target)
    yield stub
    channel.close()


@pytest.fixture(scope="module")
def flagged_url(run_dir: Path, flagged_worker: Proc) -> Iterator[str]:
    with running(spawn_gateway(run_dir, flagged_worker.target)) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        yield url


@pytest.fixture(scope="module")
def flagged(flagged_url: str) -> OpenAI:
    return OpenAI(base_url=f"{flagged_url}/v1", api_key="unused", max_retries=0, timeout=120)


def truncated(vector: list[float], size: int) -> list[float]:
    """The first ``size`` components, scaled to unit length."""
    head = vector[:size]
    norm = math.sqrt(sum(v * v for v in head))
    return [v / norm for v in head]


def assert_close(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


def test_model_info_reports_the_allowed_widths(
    flagged_stub: pb_grpc.InferenceServiceStub, stub: pb_grpc.InferenceServiceStub
) -> None:
    info = flagged_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).info
    assert info.embedding_size == WIDTH
    assert not info.embedding_dimensions.any
    assert tuple(info.embedding_dimensions.sizes) == ALLOWED
    plain = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).info
    assert not plain.HasField("embedding_dimensions")


@pytest.mark.parametrize("size", ALLOWED)
def test_dimensions_truncate_and_renormalise(flagged: OpenAI, size: int) -> None:
    full = flagged.embeddings.create(model="smollm2", input=TEXT).data[0].embedding
    assert len(full) == WIDTH
    short = flagged.embeddings.create(model="smollm2", input=[TEXT, TEXT], dimensions=size)
    for item in short.data:
        assert_close(item.embedding, truncated(full, size))
        assert abs(math.fsum(v * v for v in item.embedding) - 1.0) < 1e-5


def test_dimensions_with_base64(flagged_url: str, flagged: OpenAI) -> None:
    full = flagged.embeddings.create(model="smollm2", input=TEXT).data[0].embedding
    body = {"model": "smollm2", "input": TEXT, "dimensions": 64, "encoding_format": "base64"}
    reply = httpx.post(f"{flagged_url}/v1/embeddings", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    raw = base64.b64decode(reply.json()["data"][0]["embedding"])
    assert len(raw) == 64 * 4
    assert_close(list(struct.unpack("<64f", raw)), truncated(full, 64))


def test_grpc_dimensions_truncate_and_normalise_only_when_asked(
    flagged_stub: pb_grpc.InferenceServiceStub,
) -> None:
    inputs = [pb.EmbedInput(text=TEXT)]
    raw_full = flagged_stub.Embed(pb.EmbedRequest(inputs=inputs), timeout=60).embeddings[0]
    raw_short = flagged_stub.Embed(
        pb.EmbedRequest(inputs=inputs, dimensions=128), timeout=60
    ).embeddings[0]
    assert_close(list(raw_short.values), list(raw_full.values)[:128])  # no normalize: a prefix
    unit = flagged_stub.Embed(
        pb.EmbedRequest(inputs=inputs, dimensions=128, normalize=True), timeout=60
    ).embeddings[0]
    assert_close(list(unit.values), truncated(list(raw_full.values), 128))


def http_error(base_url: str, dimensions: Any) -> dict[str, Any]:
    body = {"model": "smollm2", "input": TEXT, "dimensions": dimensions}
    reply = httpx.post(f"{base_url}/v1/embeddings", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert error["param"] == "dimensions" and error["type"] == "invalid_request_error"
    return error


@pytest.mark.parametrize("dimensions", [0, -64, 64.0, 64.5, "64", True, None, [64], 2**32])
def test_dimensions_must_be_a_positive_integer(flagged_url: str, dimensions: Any) -> None:
    if dimensions is None:  # null means "not set": the full width
        body = {"model": "smollm2", "input": TEXT, "dimensions": None}
        reply = httpx.post(f"{flagged_url}/v1/embeddings", json=body, timeout=60)
        assert reply.status_code == 200 and len(reply.json()["data"][0]["embedding"]) == WIDTH
        return
    http_error(flagged_url, dimensions)


def test_a_width_the_model_was_not_trained_for_is_refused(flagged_url: str) -> None:
    error = http_error(flagged_url, 100)
    assert "64, 128, 256" in error["message"]
    wider = http_error(flagged_url, WIDTH + 1)
    assert str(WIDTH) in wider["message"]


def test_grpc_refuses_what_http_refuses(flagged_stub: pb_grpc.InferenceServiceStub) -> None:
    inputs = [pb.EmbedInput(text=TEXT)]
    for dimensions in (0, 100, WIDTH + 1, 2**32 - 1):
        with pytest.raises(grpc.RpcError) as caught:
            flagged_stub.Embed(pb.EmbedRequest(inputs=inputs, dimensions=dimensions), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_model_not_declared_for_truncation_refuses_dimensions(
    openai_client: OpenAI, stub: pb_grpc.InferenceServiceStub
) -> None:
    for size in (64, WIDTH):
        with pytest.raises(openai.BadRequestError) as caught:
            openai_client.embeddings.create(model="smollm2", input=TEXT, dimensions=size)
        assert caught.value.code == "unsupported_parameter"
        assert caught.value.param == "dimensions"
        assert "Matryoshka" in caught.value.message
    with pytest.raises(grpc.RpcError) as refused:
        stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=TEXT)], dimensions=64), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Matryoshka" in (refused.value.details() or "")
    # Without dimensions the same worker embeds at full width.
    assert len(openai_client.embeddings.create(model="smollm2", input=TEXT).data[0].embedding) == (
        WIDTH
    )


def test_a_listed_width_wider_than_the_model_fails_the_worker(run_dir: Path) -> None:
    flags = ("--embedding-dimensions", f"64,{WIDTH + 1}", *ONE_THREAD)
    proc = spawn_worker(run_dir, *flags, wait_port=False)
    with running(proc):
        assert proc.popen.wait(timeout=120) != 0
    assert f"--embedding-dimensions {WIDTH + 1} exceeds" in proc.log_text()
