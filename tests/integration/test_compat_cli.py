"""llamagrid started as llama-server and as llama-cpp-python's server are started, with their own
flags, on the real model; and llama-cpp-python's routes (tokenizer, Copilot) on the gateway.

Each command is the real `llamagrid` entry point in a real process (the supervisor, its worker
and its gateway). Besides the llama-server / llama-cpp-python flags, each test passes serve's own
``--worker-port`` so that tests running at once do not share the worker's default port.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from llamagrid.worker.model_source import default_model_path
from tests.fleet import stop_supervisor
from tests.procs import ROOT, free_port, wait_http_ok

PROMPT = "The capital of France is"


@contextlib.contextmanager
def started(
    tmp: Path, argv: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m llamagrid ARGV` until the block ends (then SIGTERM, and SIGKILL leftovers)."""
    log = tmp / "llamagrid.log"
    popen = subprocess.Popen(
        [sys.executable, "-m", "llamagrid", *argv],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    try:
        yield popen
    except BaseException:
        print(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        stop_supervisor(popen)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`llamagrid llama-server -m <smollm2> -c 2048 -np 2 --port P`: its base URL."""
    port = free_port()
    argv = ["llama-server", "-m", str(default_model_path()), "-c", "2048", "-np", "2"]
    argv += ["--port", str(port), "-t", "1", "--jinja", "-cb", "--worker-port", str(free_port())]
    with started(tmp_path_factory.mktemp("llama-server"), argv):
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", timeout=180)
        yield base


def test_the_llama_server_command_answers_health_and_a_chat_completion(llama_server: str) -> None:
    assert httpx.get(f"{llama_server}/health").json() == {"status": "ok"}
    model = httpx.get(f"{llama_server}/v1/models").json()["data"][0]["id"]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
    }
    reply = httpx.post(f"{llama_server}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"]


def test_a_llama_cpp_python_client_script_runs_unmodified(llama_server: str) -> None:
    # As llama-cpp-python's server's users call it: plain HTTP, no model named.
    text = "How many tokens in this query?"
    tokens = httpx.post(f"{llama_server}/extras/tokenize", json={"input": text}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    count = httpx.post(f"{llama_server}/extras/tokenize/count", json={"input": text}).json()
    assert count == {"count": len(tokens)}
    back = httpx.post(f"{llama_server}/extras/detokenize", json={"tokens": tokens}).json()
    assert back == {"text": text}


def test_tokenizer_routes_take_a_model_name(llama_server: str) -> None:
    model = httpx.get(f"{llama_server}/v1/models").json()["data"][0]["id"]
    named = httpx.post(f"{llama_server}/extras/tokenize", json={"input": "hi", "model": model})
    plain = httpx.post(f"{llama_server}/extras/tokenize", json={"input": "hi"})
    assert named.status_code == 200 and named.json() == plain.json()


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/extras/tokenize", {}, None),  # no input
        ("/extras/tokenize", {"input": ["a", "b"]}, None),  # not a string
        ("/extras/tokenize", {"input": {"nested": {"deeper": 1}}}, None),
        ("/extras/tokenize", {"input": "x", "add_bos": True}, "add_bos"),
        ("/extras/tokenize/count", {"input": "x", "add_special": False}, "add_special"),
        ("/extras/detokenize", {"tokens": [1.5]}, None),
        ("/extras/detokenize", {"tokens": ["1"]}, None),
        ("/extras/detokenize", {"tokens": [2**31]}, None),
        ("/extras/detokenize", {"tokens": [-1]}, None),  # not in the vocabulary (the worker)
        ("/extras/detokenize", {"tokens": [10**9]}, None),
        ("/extras/detokenize", {"tokens": "12"}, None),
        ("/extras/detokenize", {"tokens": [1] * 4_200_000}, None),  # past --max-token-ids (4 Mi)
    ],
)
def test_a_bad_tokenizer_request_is_a_400_and_the_gateway_keeps_serving(
    llama_server: str, route: str, body: dict[str, object], param: str | None
) -> None:
    reply = httpx.post(f"{llama_server}{route}", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    if param is not None:
        assert (error["param"], error["code"]) == (param, "unsupported_parameter")
    ok = httpx.post(f"{llama_server}/extras/tokenize/count", json={"input": "hello"})
    assert ok.status_code == 200 and ok.json()["count"] > 0


def test_a_huge_tokenize_input_is_refused_before_it_is_tokenized(llama_server: str) -> None:
    huge = "word " * 2_000_000  # 10 MB: past the worker's --max-prompt-bytes
    reply = httpx.post(f"{llama_server}/extras/tokenize", json={"input": huge}, timeout=120)
    assert reply.status_code == 400, reply.text
    assert httpx.post(f"{llama_server}/extras/tokenize", json={"input": "ok"}).status_code == 200


COPILOT = {
    "prompt": "def add(a, b):\n    return",
    "suffix": "",
    "max_tokens": 8,
    "temperature": 0,
    "top_p": 1,
    "n": 1,
    "stop": ["\n\n"],
    "extra": {
        "language": "python",
        "next_indent": 0,
        "trim_by_indentation": True,
        "prompt_tokens": 9,
        "suffix_tokens": 0,
    },
    "nwo": "octo/hello",
}


def test_the_copilot_route_streams_a_completion_as_copilot_asks(llama_server: str) -> None:
    url = f"{llama_server}/v1/engines/copilot-codex/completions"
    texts: list[str] = []
    with httpx.stream("POST", url, json={**COPILOT, "stream": True}, timeout=120) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        assert chunk["object"] == "text_completion"
        texts += [choice["text"] for choice in chunk["choices"]]
    whole = httpx.post(url, json=COPILOT, timeout=120).json()
    assert "".join(texts) == whole["choices"][0]["text"]  # greedy: the same text either way


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"extra": {"language": "python", "secret_mode": True}}, "extra"),
        ({"extra": {"language": "x" * 10_000}}, "extra"),
        ({"extra": "python"}, "extra"),
        ({"nwo": ["a", "b"]}, "nwo"),
        ({"copilot_unknown": 1}, "copilot_unknown"),
    ],
)
def test_copilot_fields_beyond_its_known_no_ops_are_refused_by_name(
    llama_server: str, change: dict[str, object], param: str
) -> None:
    url = f"{llama_server}/v1/engines/copilot-codex/completions"
    reply = httpx.post(url, json={**COPILOT, **change}, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_a_copilot_body_that_is_not_an_object_is_a_400(llama_server: str) -> None:
    url = f"{llama_server}/v1/engines/copilot-codex/completions"
    for body in ([1, 2], "text", None):
        reply = httpx.post(url, json=body, timeout=60)
        assert reply.status_code == 400, reply.text
        assert "error" in reply.json()


def test_the_llama_cpp_python_command_reads_its_flags_and_environment(tmp_path: Path) -> None:
    port = free_port()
    argv = ["llama-cpp-python", "--n_ctx", "1024", "--model_alias", "gpt-3.5-turbo"]
    argv += ["--n_threads", "1", "--worker-port", str(free_port())]
    env = {"MODEL": str(default_model_path()), "HOST": "127.0.0.1", "PORT": str(port)}
    with started(tmp_path, argv, env):
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", timeout=180)
        assert [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]] == ["gpt-3.5-turbo"]
        count = httpx.post(f"{base}/extras/tokenize/count", json={"input": "Hello world"})
        assert count.status_code == 200 and count.json()["count"] > 0


def test_serve_reads_llama_servers_environment_variables(tmp_path: Path) -> None:
    # As a Docker Compose file starts llama-server: no model flags, every setting in LLAMA_ARG_*.
    port = free_port()
    env = {
        "LLAMA_ARG_MODEL": str(default_model_path()),
        "LLAMA_ARG_ALIAS": "from-env",
        "LLAMA_ARG_CTX_SIZE": "1024",
        "LLAMA_ARG_N_PARALLEL": "1",
        "LLAMA_ARG_THREADS": "1",
        "LLAMA_ARG_PORT": str(port),
        "LLAMA_ARG_ENDPOINT_METRICS": "1",
    }
    with started(tmp_path, ["serve", "--worker-port", str(free_port())], env):
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", timeout=180)
        assert [m["id"] for m in httpx.get(f"{base}/v1/models").json()["data"]] == ["from-env"]
        props = httpx.get(f"{base}/props").json()
        assert props["total_slots"] == 1
        assert props["default_generation_settings"]["n_ctx"] == 1024


def test_a_flag_llamagrid_cannot_honour_stops_the_command_before_anything_starts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llamagrid", "llama-server", "-m", "x.gguf", "-nocb", "--temp", "1"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    err = done.stderr.decode()
    assert "-nocb: not supported" in err and "--temp: not supported" in err
