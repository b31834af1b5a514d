"""After a process says it is ready, no request imports a module: the first one is not slower.

Python's import-time log (PYTHONPROFILEIMPORTTIME) lists every module as it is imported. Each
process is started with it on; once the process reports ready, its log must not grow with
import lines while it serves every kind of request. An import on the serving path takes the
import lock on the event loop, which is what made the first requests slow.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import ROOT, Proc, free_port, running, spawn_worker, wait_http_ok, wait_serving

IMPORT_LOG = {"PYTHONPROFILEIMPORTTIME": "1"}


def imports_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("import time:")]


@contextlib.contextmanager
def gateway_with_import_log(tmp: Path, worker: str) -> Iterator[tuple[int, Path]]:
    port, log = free_port(), tmp / "gateway-imports.log"
    argv = [sys.executable, "-m", "llamagrid.gateway", "--port", str(port), "--worker", worker]
    with log.open("wb") as out:
        popen = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, **IMPORT_LOG}
        )
    try:
        yield port, log
    finally:
        popen.terminate()
        popen.wait(30)


def serve_every_kind_of_request(stub: pb_grpc.InferenceServiceStub) -> None:
    chat = pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="Hi")])
    sampling = pb.SamplingParams(max_tokens=3, top_logprobs=2)
    list(stub.Generate(pb.GenerateRequest(chat=chat, sampling=sampling), timeout=60))
    stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="Hi")]), timeout=60)
    stub.Tokenize(pb.TokenizeRequest(text="Hi", with_pieces=True), timeout=60)
    stub.Detokenize(pb.DetokenizeRequest(token_ids=[1, 2]), timeout=60)
    stub.GetLoad(pb.GetLoadRequest(), timeout=60)
    with contextlib.suppress(grpc.RpcError):  # an error status is a path too
        list(stub.Generate(pb.GenerateRequest(chat=pb.ChatConversation()), timeout=60))


def test_a_ready_worker_imports_nothing_while_serving(tmp_path: Path) -> None:
    proc: Proc
    with running(
        spawn_worker(tmp_path, "--parallel", "2", "--n-ctx", "2048", env=IMPORT_LOG)
    ) as proc:
        wait_serving(proc)
        before = imports_in(proc.log_text())
        channel = grpc.insecure_channel(proc.target, options=channel_options())
        with channel:
            serve_every_kind_of_request(pb_grpc.InferenceServiceStub(channel))
        assert before, "the import-time log is empty: the check cannot see imports"
        assert imports_in(proc.log_text()) == before


def test_a_ready_gateway_imports_nothing_while_serving(tmp_path: Path, worker: Proc) -> None:
    with gateway_with_import_log(tmp_path, worker.target) as (port, log):
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health")
        before = imports_in(log.read_text(errors="replace"))
        chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}
        with httpx.Client(base_url=base, timeout=60) as http:
            for body in (
                {**chat, "max_tokens": 3, "stream": True, "logprobs": True, "top_logprobs": 2},
                {**chat, "max_tokens": 3},
                {"model": "smollm2", "prompt": "Hi", "max_tokens": 2, "stream": True},
                {**chat, "messages": []},
            ):
                route = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
                http.post(route, json=body).read()
            http.post("/v1/embeddings", json={"model": "smollm2", "input": "Hi"})
            http.get("/v1/models")
            http.get("/metrics")
        assert before, "the import-time log is empty: the check cannot see imports"
        assert imports_in(log.read_text(errors="replace")) == before
