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
from llamagrid.sync_client import InferenceClient
from tests.certs import Certs, make_certs
from tests.integration.test_python_client import PARITY_MESSAGES, parity_request, stream_ids
from tests.procs import Proc, running, spawn_worker

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


def tls_results(language: str, output: str) -> tuple[list[str], list[str]]:
    """The TLS tests that a suite's run reports as passed, and those it reports as skipped."""
    if language == "go":
        found = re.findall(r"^\s*--- (PASS|SKIP): (TestTLS\w*)", output, re.MULTILINE)
        return [n for r, n in found if r == "PASS"], [n for r, n in found if r == "SKIP"]
    if language == "rust":
        found = re.findall(r"^test (tls_\w+) \.\.\. (ok|ignored)", output, re.MULTILINE)
        return [n for n, r in found if r == "ok"], [n for n, r in found if r == "ignored"]
    # Java: surefire's report of the TLS test class (the test removes it before the run).
    if not JAVA_TLS_REPORT.exists():
        return [], []
    passed: list[str] = []
    skipped: list[str] = []
    for case in ET.parse(JAVA_TLS_REPORT).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("skipped") is not None:
            skipped.append(name)
        elif case.find("failure") is None and case.find("error") is None:
            passed.append(name)
    return passed, skipped


@pytest.mark.parametrize("language", list(SUITES))
def test_client_suite_passes_against_a_live_worker(
    language: str, worker: Proc, tls_environment: dict[str, str], parity_dir: Path
) -> None:
    command, cwd, extra = SUITES[language]
    env = {
        **os.environ,
        **extra,
        **tls_environment,
        "LLAMAGRID_WORKER_ADDR": worker.target,
        "LLAMAGRID_PARITY_OUT": str(parity_dir / f"{language}.json"),
    }
    JAVA_TLS_REPORT.unlink(missing_ok=True)
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output[-6000:]}"
    assert (parity_dir / f"{language}.json").exists(), "the suite wrote no parity output"
    passed, skipped = tls_results(language, output)
    assert not skipped, f"{language}: TLS tests skipped with a TLS worker running: {skipped}"
    assert len(passed) == TLS_TESTS, f"{language}: these TLS tests passed: {passed}"


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
