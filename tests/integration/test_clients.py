"""The Go, Java and Rust clients' own test suites against a live worker, and parity.

Each suite reads the worker's address from LLAMAGRID_WORKER_ADDR and, when
LLAMAGRID_PARITY_OUT is set, writes the token ids of the shared greedy request (see
test_python_client.PARITY_MESSAGES) there. The parity test then compares them with the
Python clients and with the HTTP gateway. Toolchains (go, mvn, cargo) must be installed; their
caches stay outside the clone (Go and Maven defaults in $HOME, cargo's target directory under
~/.cache/llamagrid).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from openai import OpenAI

from llamagrid.client import AsyncInferenceClient
from llamagrid.sync_client import InferenceClient
from tests.integration.test_python_client import PARITY_MESSAGES, parity_request, stream_ids
from tests.procs import Proc

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llamagrid"

#: language -> (command, working directory, extra environment)
SUITES: dict[str, tuple[list[str], Path, dict[str, str]]] = {
    "go": (["go", "test", "-count=1", "./..."], ROOT / "clients/go", {}),
    "java": (["mvn", "-B", "-q", "-f", "clients/java/pom.xml", "test"], ROOT, {}),
    "rust": (
        ["cargo", "test", "-j2", "--manifest-path", "clients/rust/Cargo.toml"],
        ROOT,
        {"CARGO_TARGET_DIR": str(CACHE / "cargo-target")},
    ),
}


@pytest.fixture(scope="module")
def parity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parity")


@pytest.mark.parametrize("language", list(SUITES))
def test_client_suite_passes_against_a_live_worker(
    language: str, worker: Proc, parity_dir: Path
) -> None:
    command, cwd, extra = SUITES[language]
    env = {
        **os.environ,
        **extra,
        "LLAMAGRID_WORKER_ADDR": worker.target,
        "LLAMAGRID_PARITY_OUT": str(parity_dir / f"{language}.json"),
    }
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500, check=False
    )
    output = (done.stdout + done.stderr)[-6000:]
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    assert (parity_dir / f"{language}.json").exists(), "the suite wrote no parity output"


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
