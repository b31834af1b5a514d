"""Fuzzing of the gateway's HTTP API from its own OpenAPI schema (schemathesis), end to end.

A real gateway with an API key sits in front of a real worker; the schema is the one the gateway
serves at /openapi.json. Every operation gets schema-valid requests (positive) and, where the
schema can be violated, schema-invalid ones (negative), sent with the key. These checks hold
for every answer:

- ``not_a_server_error``: no 5xx, whatever was sent.
- ``status_code_conformance``: the status is documented (200, or the 4XX/5XX error responses).
- ``content_type_conformance``: JSON, or an event stream where the schema says so.
- ``response_schema_conformance``: a JSON body matches its model, errors included; each
  event of a stream has its data.
- ``negative_data_rejection``: a schema-invalid request is refused with a 4xx.
- Our own: an event stream ends with ``[DONE]``, or with an error event for a request error
  (a grammar that dead-ends midway); never with a server error.

``positive_data_acceptance`` is left out on purpose: the schema gives each field's type, and
the worker decides its range (design.md: validated once, by the worker). A schema-valid
temperature of -3 or an empty prompt is rightly a 400.

Schema-valid requests are steered so that many reach the worker: most name the model it
serves, half leave out the fields that are mostly refused (functions, tools, n, ...) and send
plain messages (no tool calls, at least one), half of the completions are streamed, token ids
are sent as JSON integers (7, not 7.0), and a completion length that fits the context is cut
to at most 8 tokens (a longer one is refused before any work, so it is kept). One request in
eight goes with a wrong key instead, and must be a 401. After each operation the gateway and
the worker are alive, the gateway is ready and the worker idle; after the whole run the greedy
answer is the same over gRPC and through the gateway as before it.

The budget is bounded (LLAMAGRID_FUZZ_SCALE multiplies it) and the run derandomized: the
same requests on every run.
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as sc
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving
from tests.serving import (
    GREEDY_PROMPT,
    GREEDY_TOKENS,
    ONE_THREAD,
    Stub,
    assert_serving,
    connect,
    greedy,
    wait_idle,
)

#: Multiplies every budget below: LLAMAGRID_FUZZ_SCALE=10 fuzzes ten times longer.
FUZZ_SCALE = float(os.environ.get("LLAMAGRID_FUZZ_SCALE", "1"))
KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: Every operation of the schema and its budget of schema-valid examples.
OPERATIONS: dict[tuple[str, str], int] = {
    ("POST", "/v1/chat/completions"): 200,
    ("POST", "/v1/completions"): 200,
    ("POST", "/v1/embeddings"): 100,
    ("GET", "/v1/models"): 5,
    ("GET", "/v1/models/{model_id}"): 15,
    ("GET", "/health"): 5,
    ("GET", "/livez"): 5,
    ("POST", "/v1/sessions"): 30,
    ("GET", "/v1/sessions/{session_id}"): 20,
    ("DELETE", "/v1/sessions/{session_id}"): 15,
    ("POST", "/v1/sessions/{session_id}/fork"): 20,
    ("POST", "/v1/sessions/{session_id}/rollback"): 20,
    ("POST", "/v1/sessions/{session_id}/cancel"): 15,
    ("POST", "/v1/sessions/{session_id}/chat/completions"): 80,
    ("POST", "/v1/responses"): 80,
    ("GET", "/v1/responses/{response_id}"): 15,
    ("DELETE", "/v1/responses/{response_id}"): 15,
    ("POST", "/v1/chat/interactive"): 80,
    ("GET", "/v1/console/fleet"): 5,
}
#: The budget of schema-invalid examples of each operation that takes a body.
NEGATIVE_EXAMPLES = 80
#: The most tokens a steered request generates.
MAX_TOKENS = 8
#: A completion length above this does not fit the worker's context and is refused at once.
CONTEXT = 1024
#: Fields refused with 400 unsupported_parameter whenever they are set, and fields whose
#: schema-valid values are mostly refused (a random tool type, a tool_choice naming no tool, n
#: over the worker's slots, dimensions on a worker that allows none, chat_template_kwargs that
#: replace the template's own variables).
REFUSED_BY_NAME = (
    "functions",
    "function_call",
    "audio",
    "prediction",
    "web_search_options",
    "modalities",
    "best_of",
    "suffix",
    "tools",
    "tool_choice",
    "n",
    "dimensions",
    "chat_template_kwargs",
)
#: What makes a message part of a tool call's exchange.
MESSAGE_TOOL_FIELDS = ("tool_calls", "tool_call_id", "reasoning_content")
CHECKS = [
    sc.not_a_server_error,
    sc.status_code_conformance,
    sc.content_type_conformance,
    sc.response_schema_conformance,
    sc.negative_data_rejection,
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-http")


@pytest.fixture(scope="module")
def worker(run_dir: Path) -> Iterator[Proc]:
    """2 slots of 1024 tokens, flash attention off (greedy output independent of caching),
    one thread (tests/serving.py: ONE_THREAD)."""
    args = ("--parallel", "2", "--n-ctx", str(2 * CONTEXT), "--flash-attn", "off", *ONE_THREAD)
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def gateway(run_dir: Path, worker: Proc) -> Iterator[Proc]:
    """The gateway under test, with an API key (from a file: never on a command line)."""
    key_file = run_dir / "keys"
    key_file.write_text(KEY + "\n")
    extra = ["--api-key-file", str(key_file)]
    with running(spawn_gateway(run_dir, worker.target, extra=extra)) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield proc


@pytest.fixture(scope="module")
def base_url(gateway: Proc) -> str:
    return f"http://127.0.0.1:{gateway.port}"


@pytest.fixture(scope="module")
def schema(base_url: str) -> OpenApiSchema:
    loaded = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=AUTH)
    assert isinstance(loaded, OpenApiSchema)
    loaded.config.max_stream_events = 1000  # read whole streams (by default: 20 events)
    return loaded


@pytest.fixture(scope="module")
def alias(base_url: str) -> str:
    models = httpx.get(f"{base_url}/v1/models", headers=AUTH, timeout=30).json()["data"]
    assert len(models) == 1
    return str(models[0]["id"])


@pytest.fixture(scope="module")
def channel_and_stub(worker: Proc) -> Iterator[tuple[grpc.Channel, Stub]]:
    channel, stub = connect(worker.target)
    yield channel, stub
    channel.close()


def gateway_greedy(base_url: str, alias: str) -> str:
    body = {
        "model": alias,
        "messages": [{"role": "user", "content": GREEDY_PROMPT}],
        "temperature": 0,
        "max_tokens": GREEDY_TOKENS,
    }
    reply = httpx.post(f"{base_url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def baseline(channel_and_stub: tuple[grpc.Channel, Stub], base_url: str, alias: str) -> str:
    """The greedy answer before any fuzzing; the gateway gives the worker's answer."""
    answer = greedy(channel_and_stub[1])
    assert gateway_greedy(base_url, alias) == answer
    return answer


@pytest.fixture(scope="module", autouse=True)
def answers_as_before(
    channel_and_stub: tuple[grpc.Channel, Stub], base_url: str, alias: str, baseline: str
) -> Iterator[None]:
    """After the whole run: the greedy answer is the same over gRPC and through the gateway."""
    yield
    assert_serving(*channel_and_stub, baseline)
    assert gateway_greedy(base_url, alias) == baseline


@pytest.fixture
def still_serving(
    worker: Proc, gateway: Proc, channel_and_stub: tuple[grpc.Channel, Stub], base_url: str
) -> Iterator[None]:
    """After each test: both processes live, the gateway is ready, the worker is idle."""
    yield
    assert gateway.popen.poll() is None, gateway.log_text()[-4000:]
    assert worker.popen.poll() is None, worker.log_text()[-4000:]
    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    wait_idle(channel_and_stub[1])


#: Each route's field for the most tokens to generate.
LENGTH_FIELD = {"/v1/responses": "max_output_tokens", "/v1/chat/interactive": "request_output_len"}


def steer(
    body: Any, alias: str, model: bool, drop_refused: bool, stream: bool, path: str = ""
) -> None:
    """Steer a schema-valid body towards the worker (see the module's docstring)."""
    if not isinstance(body, dict):
        return
    length = LENGTH_FIELD.get(path)
    if length is not None:  # these routes take their own length field, generating from input
        if model:
            body["model"] = alias
        value = body.get(length)
        if not isinstance(value, int) or value <= 0 or value > MAX_TOKENS:
            body[length] = MAX_TOKENS
        return
    if model:
        body["model"] = alias
    if stream and ("messages" in body or "prompt" in body):
        body["stream"] = True
    if drop_refused:
        for name in REFUSED_BY_NAME:
            body.pop(name, None)
        if isinstance(body.get("messages"), list):
            body["messages"] = plain_messages(body["messages"])
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if isinstance(value, int) and MAX_TOKENS < value <= CONTEXT:
            body[name] = value % (MAX_TOKENS + 1)
    for name in ("prompt", "input"):
        if name in body:
            body[name] = integral(body[name])
    generates = "messages" in body or "prompt" in body
    if generates and (body.get("max_completion_tokens") or body.get("max_tokens")) is None:
        body["max_tokens"] = MAX_TOKENS  # unset (or null) means up to the whole context


def plain_messages(messages: list[Any]) -> list[Any]:
    """At least one message, none of them a tool call or a tool's answer (the rules that tie
    those together are the worker's, and random messages break them), text parts only."""
    plain = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        message = {k: v for k, v in message.items() if k not in MESSAGE_TOOL_FIELDS}
        if message.get("role") == "tool":
            message["role"] = "user"
        if isinstance(message.get("content"), list):
            parts = [
                p for p in message["content"] if isinstance(p, dict) and p.get("type") == "text"
            ]
            message["content"] = parts or "Hi"
        plain.append(message)
    return plain or [{"role": "user", "content": "Hi"}]


def open_session(base_url: str, alias: str) -> str:
    """A new session's id (the fuzzed call then works on a real session)."""
    reply = httpx.post(f"{base_url}/v1/sessions", json={"model": alias}, headers=AUTH, timeout=60)
    assert reply.status_code == 201, reply.text
    session_id: str = reply.json()["id"]
    return session_id


def integral(value: Any) -> Any:
    """Token ids as JSON integers: JSON Schema counts 7.0 as an integer, the gateway takes
    token ids written as integers only (7.0 is a 400)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


def stream_ends_cleanly(response: Any) -> bool:
    """An event stream's data lines are JSON, and it ends with [DONE] or a request error.
    Returns whether the response was an event stream."""
    if not response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return False
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data, response.text
    for line in data[:-1]:
        assert "error" not in json.loads(line), line
    if data[-1] != "[DONE]":
        assert json.loads(data[-1])["error"]["type"] == "invalid_request_error", data[-1]
    return True


def fuzz_settings(max_examples: int) -> settings:
    """A bounded, derandomized run that keeps no database of failing examples. Failures are
    reported as generated: shrinking them could take minutes."""
    return settings(
        max_examples=max(1, round(max_examples * FUZZ_SCALE)),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )


def test_every_operation_of_the_schema_is_fuzzed(schema: OpenApiSchema) -> None:
    """A new route must join OPERATIONS (and get a budget), or this fails."""
    served = {
        (method.upper(), path)
        for path, item in schema.raw_schema["paths"].items()
        for method in item
    }
    assert served == set(OPERATIONS)


def modes(method: str) -> list[GenerationMode]:
    """A body can be made schema-invalid; the other operations' parameters (a path string, or
    none at all) cannot."""
    return (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if method == "POST"
        else [GenerationMode.POSITIVE]
    )


CASES = [(op, mode) for op in OPERATIONS for mode in modes(op[0])]


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for (m, p), mode in CASES]
)
def test_fuzzed_requests_get_no_server_error_and_conform_to_the_schema(
    schema: OpenApiSchema,
    base_url: str,
    alias: str,
    operation: tuple[str, str],
    mode: GenerationMode,
) -> None:
    method, path = operation
    strategy = schema[path][method].as_strategy(generation_mode=mode)
    statuses: Counter[int | str] = Counter()
    counter = itertools.count()
    positive = mode == GenerationMode.POSITIVE

    @fuzz_settings(OPERATIONS[operation] if positive else NEGATIVE_EXAMPLES)
    @given(strategy)
    def run(case: Any) -> None:
        # Taken in turn rather than drawn: Hypothesis draws a strategy's simplest value most.
        n = next(counter)
        wrong_key = n % 8 == 5
        if positive:
            steer(
                case.body,
                alias,
                model=n % 4 != 3,
                drop_refused=n % 2 == 0,
                stream=n // 2 % 2 == 0,
                path=path,
            )
        headers = {"Authorization": "Bearer wrong-key"} if wrong_key else AUTH
        opened = None
        if positive and "{session_id}" in path and n % 3 != 2:  # most on a real session
            opened = open_session(base_url, alias)
            case.path_parameters["session_id"] = opened
        response = case.call(base_url=base_url, headers=headers, timeout=120)
        if opened is not None:
            httpx.delete(f"{base_url}/v1/sessions/{opened}", headers=AUTH, timeout=60)
        statuses[response.status_code] += 1
        if wrong_key and path.startswith("/v1/"):
            assert response.status_code == 401, response.text
        case.validate_response(response, checks=CHECKS, headers=headers)
        if stream_ends_cleanly(response):
            statuses["streamed"] += 1

    run()
    print(f"{method} {path} {mode.value}: statuses {dict(statuses)}")
    if positive and path.endswith("completions"):  # some requests went all the way, streamed
        assert statuses["streamed"] > 0 and statuses[200] > statuses["streamed"], statuses


@pytest.mark.usefixtures("still_serving")
def test_an_embedding_input_that_tokenizes_to_nothing_is_a_400(base_url: str, alias: str) -> None:
    """Found by the gRPC fuzzing (test_fuzz_grpc.py): "\\x1d" tokenizes to no token, and an
    embedding input of it was a 500 (the worker's decode of an empty sequence failed)."""
    body = {"model": alias, "input": ["word", "\x1d"]}
    reply = httpx.post(f"{base_url}/v1/embeddings", json=body, headers=AUTH, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == "input"
