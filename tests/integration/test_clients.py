"""The Go, Java and Rust clients' own test suites against a live worker, and parity.

Each suite reads the worker's address from LLAMAGRID_WORKER_ADDR and, when
LLAMAGRID_PARITY_OUT is set, writes the token ids of the shared greedy request (see
test_python_client.PARITY_MESSAGES) there. The parity test then compares them with the
Python clients and with the HTTP gateway. Toolchains (go, mvn, cargo) must be installed; their
caches stay outside the clone (Go and Maven defaults in $HOME, cargo's target directory under
~/.cache/llamagrid).

A second worker serves TLS, requires client certificates (mTLS) and a token, with certificates
generated here (tests/certs.py). The suites get it as LLAMAGRID_TLS_* variables (see
tls_environment) and run their TLS tests against it; alone, they skip those tests. Here every
TLS test must run and pass: a suite that skipped one, or ran none, fails.

A third worker reads images: SmolLM2 with the test projector (tests/mmproj_model.py, 16 tokens
a 56x56 image). The suites get it as LLAMAGRID_VISION_WORKER_ADDR, with a 56x56 PNG in
LLAMAGRID_TEST_IMAGE, and run their image tests against it (the plain worker must refuse the
same request); they too must all run and pass here. The Python clients' image test is here too.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from openai import OpenAI

from llamagrid.client import AsyncInferenceClient
from llamagrid.content import image_part, message
from llamagrid.sync_client import InferenceClient
from llamagrid.v1 import inference_pb2 as pb
from tests.certs import Certs, make_certs
from tests.integration.test_python_client import PARITY_MESSAGES, parity_request, stream_ids
from tests.mmproj_model import IMAGE_TOKENS, png_image
from tests.procs import Proc, running, spawn_worker, wait_serving

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamagrid"

#: language -> (command, working directory, extra environment)
SUITES: dict[str, tuple[list[str], Path, dict[str, str]]] = {
    # -v: the output then names every test that passed or was skipped.
    "go": (["go", "test", "-count=1", "-v", "./..."], ROOT / "clients/go", {}),
    "java": (["mvn", "-B", "-q", "-f", "clients/java/pom.xml", "test"], ROOT, {}),
    "rust": (
        ["cargo", "test", "-j2", "--manifest-path", "clients/rust/Cargo.toml"],
        ROOT,
        {"CARGO_TARGET_DIR": str(CACHE / "cargo-target")},
    ),
}


#: How many tests against the TLS worker each suite has (Go's TestTLS*, Rust's tls_*, Java's
#: TlsWorkerTest).
TLS_TESTS = 5
#: Where the Java suite's surefire report of its TLS tests lands.
JAVA_TLS_REPORT = (
    ROOT / "clients/java/target/surefire-reports/TEST-dev.llamagrid.client.TlsWorkerTest.xml"
)
#: How many tests against the vision worker each suite has (Go's TestImage*, Rust's image_*,
#: Java's ImageWorkerTest), and where the Java suite's report of them lands.
IMAGE_TESTS = 2
JAVA_IMAGE_REPORT = JAVA_TLS_REPORT.with_name("TEST-dev.llamagrid.client.ImageWorkerTest.xml")
#: The image the suites send (56x56, so IMAGE_TOKENS tokens to the test projector).
IMAGE_PNG = png_image(56, 56, 7)


@pytest.fixture(scope="module")
def parity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def tls_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A worker with TLS, mTLS and a token, described by the variables the suites read."""
    tmp = tmp_path_factory.mktemp("tls-worker")
    certs = make_certs(tmp / "certs")
    token = secrets.token_urlsafe(32)
    proc = spawn_worker(
        tmp,
        "--parallel",
        "2",
        "--tls-cert",
        str(certs.server_cert),
        "--tls-key",
        str(certs.server_key),
        "--tls-client-ca",
        str(certs.ca),
        env={"LLAMAGRID_WORKER_TOKEN": token},
    )
    with running(proc):
        wait_serving_tls(proc, certs)
        yield {
            "LLAMAGRID_TLS_WORKER_ADDR": proc.target,
            "LLAMAGRID_TLS_CA": str(certs.ca),
            "LLAMAGRID_TLS_CLIENT_CERT": str(certs.client_cert),
            "LLAMAGRID_TLS_CLIENT_KEY": str(certs.client_key),
            "LLAMAGRID_TLS_STRANGER_CERT": str(certs.stranger_cert),
            "LLAMAGRID_TLS_STRANGER_KEY": str(certs.stranger_key),
            "LLAMAGRID_TLS_TOKEN": token,
        }


def wait_serving_tls(proc: Proc, certs: Certs, timeout: float = 120.0) -> None:
    """Poll the worker's health over mTLS (health needs no token) until it is SERVING."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.client_key.read_bytes(),
        certificate_chain=certs.client_cert.read_bytes(),
    )
    options = [("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 200)]
    deadline = time.monotonic() + timeout
    with grpc.secure_channel(proc.target, credentials, options=options) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(
                    f"TLS worker exited ({proc.popen.returncode}):\n{proc.log_text()}"
                )
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"TLS worker did not become SERVING within {timeout} s:\n{proc.log_text()}")


@pytest.fixture(scope="module")
def vision_environment(
    tmp_path_factory: pytest.TempPathFactory, vision_projector: Path
) -> Iterator[dict[str, str]]:
    """A worker that reads images, and a 56x56 PNG, described by the variables the suites read."""
    tmp = tmp_path_factory.mktemp("vision-worker")
    image = tmp / "image.png"
    image.write_bytes(IMAGE_PNG)
    with running(spawn_worker(tmp, "--mmproj", str(vision_projector))) as proc:
        wait_serving(proc)
        yield {"LLAMAGRID_VISION_WORKER_ADDR": proc.target, "LLAMAGRID_TEST_IMAGE": str(image)}


def tls_results(language: str, output: str) -> tuple[list[str], list[str]]:
    """The TLS tests that a suite's run reports as passed, and those it reports as skipped."""
    return group_results(language, output, ("TestTLS", "tls_", JAVA_TLS_REPORT))


def image_results(language: str, output: str) -> tuple[list[str], list[str]]:
    """The image tests that a suite's run reports as passed, and those it reports as skipped."""
    return group_results(language, output, ("TestImage", "image_", JAVA_IMAGE_REPORT))


def group_results(
    language: str, output: str, group: tuple[str, str, Path]
) -> tuple[list[str], list[str]]:
    """The tests of a group (Go's name prefix, Rust's name prefix, Java's surefire report of its
    test class) that a suite's run reports as passed, and those it reports as skipped."""
    go_prefix, rust_prefix, java_report = group
    if language == "go":
        found = re.findall(rf"^\s*--- (PASS|SKIP): ({go_prefix}\w*)", output, re.MULTILINE)
        return [n for r, n in found if r == "PASS"], [n for r, n in found if r == "SKIP"]
    if language == "rust":
        pattern = rf"^test ({rust_prefix}\w+) \.\.\. (ok|ignored)"
        found = re.findall(pattern, output, re.MULTILINE)
        return [n for n, r in found if r == "ok"], [n for n, r in found if r == "ignored"]
    # Java: surefire's report of the test class (the test removes it before the run).
    if not java_report.exists():
        return [], []
    passed: list[str] = []
    skipped: list[str] = []
    for case in ET.parse(java_report).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("skipped") is not None:
            skipped.append(name)
        elif case.find("failure") is None and case.find("error") is None:
            passed.append(name)
    return passed, skipped


@pytest.mark.parametrize("language", list(SUITES))
def test_client_suite_passes_against_a_live_worker(
    language: str,
    worker: Proc,
    tls_environment: dict[str, str],
    vision_environment: dict[str, str],
    parity_dir: Path,
) -> None:
    command, cwd, extra = SUITES[language]
    env = {
        **os.environ,
        **extra,
        **tls_environment,
        **vision_environment,
        "LLAMAGRID_WORKER_ADDR": worker.target,
        "LLAMAGRID_PARITY_OUT": str(parity_dir / f"{language}.json"),
    }
    JAVA_TLS_REPORT.unlink(missing_ok=True)
    JAVA_IMAGE_REPORT.unlink(missing_ok=True)
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    assert (parity_dir / f"{language}.json").exists(), "the suite wrote no parity output"
    passed, skipped = tls_results(language, output)
    assert not skipped, f"{language}: TLS tests skipped with a TLS worker running: {skipped}"
    assert len(passed) == TLS_TESTS, f"{language}: these TLS tests passed: {passed}"
    passed, skipped = image_results(language, output)
    assert not skipped, f"{language}: image tests skipped with a vision worker running: {skipped}"
    assert len(passed) == IMAGE_TESTS, f"{language}: these image tests passed: {passed}"


async def test_same_greedy_tokens_in_every_language_and_over_http(
    worker: Proc, openai_client: OpenAI, parity_dir: Path
) -> None:
    """Runs after the suites above (same module, declared later)."""
    ids = {}
    for language in SUITES:
        path = parity_dir / f"{language}.json"
        assert path.exists(), f"no parity output from {language} (did its suite run?)"
        ids[language] = json.loads(path.read_text())["token_ids"]
    with InferenceClient(worker.target) as sync_client:
        ids["python"] = stream_ids(sync_client, parity_request())
    async with AsyncInferenceClient(worker.target) as async_client:
        ids["python-async"] = [
            token
            async for msg in async_client.generate(parity_request(), timeout=120)
            if msg.HasField("chunk")
            for token in msg.chunk.token_ids
        ]
    http = openai_client.chat.completions.create(
        model="smollm2",
        messages=[{"role": r, "content": c} for r, c in PARITY_MESSAGES],  # type: ignore[misc]
        temperature=0,
        seed=42,
        max_tokens=24,
        extra_body={"return_token_ids": True},
    )
    ids["http"] = http.choices[0].model_extra["token_ids"]  # type: ignore[index]
    assert ids["python"], "the parity request generated nothing"
    assert all(v == ids["python"] for v in ids.values()), ids


def image_chat(*parts: str | pb.ContentPart) -> pb.GenerateRequest:
    """A greedy chat of one user turn made of these parts (llamagrid.content.message)."""
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[message("user", *parts)]),
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=8),
    )


def run_to_end(
    client: InferenceClient, request: pb.GenerateRequest
) -> tuple[list[int], pb.GenerateFinal]:
    """A Generate stream's token ids and its one final message."""
    ids: list[int] = []
    finals: list[pb.GenerateFinal] = []
    with client.generate(request, timeout=120) as call:
        for response in call:
            if response.HasField("chunk"):
                ids.extend(response.chunk.token_ids)
            else:
                finals.append(response.final)
    assert len(finals) == 1 and finals[0].usage.completion_tokens == len(ids), finals
    return ids, finals[0]


async def test_python_clients_send_images(worker: Proc, vision_environment: dict[str, str]) -> None:
    """A turn of a text part and an image part: its prompt is the same turn's without the image
    plus the image's tokens; the asyncio client gets the blocking one's greedy tokens; a worker
    without a projector refuses it with INVALID_ARGUMENT."""
    question = "What is in this picture?"
    with_image = image_chat(question, image_part(IMAGE_PNG, "image/png"))
    target = vision_environment["LLAMAGRID_VISION_WORKER_ADDR"]
    with InferenceClient(target) as vision:
        info = vision.get_model_info(pb.GetModelInfoRequest(), timeout=30).info
        assert info.vision and info.media_marker, info
        ids, final = run_to_end(vision, with_image)
        _, text_only = run_to_end(vision, image_chat(question))
    assert final.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS
    assert ids, "nothing generated"
    async with AsyncInferenceClient(target) as async_vision:
        async_ids = [
            token
            async for msg in async_vision.generate(with_image, timeout=120)
            if msg.HasField("chunk")
            for token in msg.chunk.token_ids
        ]
    assert async_ids == ids
    with InferenceClient(worker.target) as plain, pytest.raises(grpc.RpcError) as refused:
        run_to_end(plain, with_image)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
