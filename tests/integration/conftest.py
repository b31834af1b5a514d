"""Fixtures for the integration ring: real worker processes on SmolLM2 and a real gateway."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from openai import OpenAI

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.mmproj_model import write_projector
from tests.procs import (
    Proc,
    free_port,
    running,
    spawn_gateway,
    spawn_worker,
    wait_http_ok,
    wait_serving,
)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("procs")


@pytest.fixture(scope="session")
def worker(run_dir: Path) -> Iterator[Proc]:
    """The shared worker: SmolLM2, 4 slots."""
    with running(spawn_worker(run_dir, "--parallel", "4", "--n-ctx", "8192")) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="session")
def gateway(run_dir: Path, worker: Proc) -> Iterator[Proc]:
    """The shared gateway, strict about model names (an unknown name is a 404)."""
    with running(spawn_gateway(run_dir, worker.target, extra=["--strict-model-names"])) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield proc


@pytest.fixture(scope="session")
def base_url(gateway: Proc) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest.fixture(scope="session")
def openai_client(base_url: str) -> OpenAI:
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def stub(worker: Proc) -> Iterator[pb_grpc.InferenceServiceStub]:
    channel = grpc.insecure_channel(worker.target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="session")
def vision_projector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A llava-style projector GGUF for SmolLM2 with seeded random weights (tests/mmproj_model.py),
    written once per session: 16 tokens an image, projected to SmolLM2's width."""
    return write_projector(tmp_path_factory.mktemp("mmproj") / "mmproj.gguf")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on a free port, as the README tells users to run one for a shared
    session store (no persistence), for the tests of one module."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: `make test` installs it (Debian's redis-server)"
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)
