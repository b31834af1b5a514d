"""No silent drops: every field the OpenAI routes accept is honoured, an accepted no-op, or
refused with 400 ``unsupported_parameter``, shown on the real model through a real gateway.

``FIELDS`` classifies every field that the chat, completions and embeddings bodies declare,
and every accepted no-op (llamagrid.gateway.fields.OPENAI_NO_OPS); a field added to a body
without a row here fails the first test. Then, against a seeded request:
- an honoured field changes what the response shows: the text, the worker's sampler chain (it
  logs the chain at debug level), the prompt's token count (a template input), or the shape
  (choices, logprobs, token ids, tool calls, an event stream, the vector's width). The sampler
  fields are shown in test_samplers.py's cases, which this test checks cover them;
- a no-op leaves the response as it was;
- a refused field is a 400 ``unsupported_parameter`` naming it.

The worker runs a small ChatML template of this test's that shows each template input (tools,
reasoning_effort, enable_thinking), allows embeddings of width 64, and logs its sampler chains.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel

from llamagrid.gateway.fields import OPENAI_NO_OPS
from llamagrid.gateway.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from llamagrid.worker.model_source import default_model_path
from tests.integration.test_samplers import CASES as SAMPLER_CASES
from tests.lora_adapter import write_lora_adapter
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

MODEL = "smollm2"
Route = Literal["chat", "completions", "embeddings"]
PATHS: dict[Route, str] = {
    "chat": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
BODIES: dict[Route, type[BaseModel]] = {
    "chat": ChatCompletionRequest,
    "completions": CompletionRequest,
    "embeddings": EmbeddingRequest,
}
#: ChatML, plus each template input the gateway passes on, shown where it changes the prompt.
TEMPLATE = """\
{%- if tools %}<|im_start|>system
You may call these tools: {{ tools | tojson }}
Answer a call as <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>
{% endif %}
{%- if reasoning_effort %}<|im_start|>system
Reasoning effort: {{ reasoning_effort }}<|im_end|>
{% endif %}
{%- for message in messages %}<|im_start|>{{ message.role }}
{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>
{{ call.function | tojson }}
</tool_call>{% endfor %}{% endif %}{{ message.content or "" }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% if enable_thinking %}<think>
{% endif %}{% endif %}"""
CHAT: dict[str, Any] = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
    "max_tokens": 16,
    "seed": 11,
    "temperature": 0.9,
}
TEXT: dict[str, Any] = {
    "model": MODEL,
    "prompt": "Once upon a time, in a small village by the sea, there lived",
    "max_tokens": 16,
    "seed": 11,
    "temperature": 0.9,
}
EMBED: dict[str, Any] = {"model": MODEL, "input": "a cat on a mat"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CHAIN = re.compile(r"sampler chain: (.*)$", re.MULTILINE)


@dataclass
class Reply:
    """What a response shows."""

    status: int
    body: Any
    events: list[Any]
    chain: str

    def message(self) -> dict[str, Any]:
        return dict(self.body["choices"][0]["message"])

    def text(self) -> str:
        choice = self.body["choices"][0]
        return str(choice["message"]["content"] if "message" in choice else choice["text"])


@dataclass
class Honoured:
    """A field honoured: ``change`` added to ``base`` changes what ``shows`` picks out."""

    change: dict[str, Any]
    shows: Callable[[Reply], Any]
    base: dict[str, Any] = field(default_factory=dict)


@dataclass
class Refused:
    """A field refused at ``value`` (with ``base``): 400 unsupported_parameter naming it."""

    value: Any
    base: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoOp:
    """A field accepted at ``value`` that leaves the response as it was."""

    value: Any


#: A sampler field: shown by test_samplers.CASES.
SAMPLER = "sampler"
Row = Honoured | Refused | NoOp | Literal["sampler"]


def text(reply: Reply) -> str:
    return reply.text()


def text_or_chain(reply: Reply) -> tuple[str, str]:
    return reply.text(), reply.chain


def prompt_tokens(reply: Reply) -> int:
    return int(reply.body["usage"]["prompt_tokens"])


def completion_tokens(reply: Reply) -> int:
    return int(reply.body["usage"]["completion_tokens"])


def status(reply: Reply) -> int:
    return reply.status


def choices(reply: Reply) -> int:
    return len(reply.body["choices"])


def finish(reply: Reply) -> str:
    return str(reply.body["choices"][0]["finish_reason"])


def logprobs(reply: Reply) -> Any:
    return reply.body["choices"][0].get("logprobs")


def top_logprobs(reply: Reply) -> int:
    return len(reply.body["choices"][0]["logprobs"]["content"][0]["top_logprobs"])


def token_ids(reply: Reply) -> Any:
    return reply.body["choices"][0].get("token_ids")


def tool_calls(reply: Reply) -> int:
    return len(reply.message().get("tool_calls") or [])


def split(reply: Reply) -> tuple[Any, Any]:
    message = reply.message()
    return message.get("content"), message.get("reasoning_content")


def kind(reply: Reply) -> str:
    return "events" if reply.events else "json"


def usage_event(reply: Reply) -> bool:
    return any(event.get("usage") for event in reply.events)


def vector(reply: Reply) -> Any:
    return reply.body["data"][0]["embedding"]


def width(reply: Reply) -> int:
    embedding = vector(reply)
    if isinstance(embedding, str):
        return len(base64.b64decode(embedding)) // 4
    return len(embedding)


SCHEMA_INT = {"type": "integer"}
#: Every field of every body, by route.
FIELDS: dict[Route, dict[str, Row]] = {
    "chat": {
        "model": Honoured({"model": "no-such-model"}, status),
        "messages": Honoured({"messages": [{"role": "user", "content": "Name a colour."}]}, text),
        "stream": Honoured({"stream": True}, kind),
        "stream_options": Honoured(
            {"stream_options": {"include_usage": True}}, usage_event, {"stream": True}
        ),
        "stop": Honoured({"stop": [" "]}, text),
        "max_tokens": Honoured({"max_tokens": 2}, completion_tokens),
        "max_completion_tokens": Honoured({"max_completion_tokens": 2}, completion_tokens),
        "temperature": Honoured({"temperature": 0.1}, text),
        "top_p": Honoured({"top_p": 0.05}, text),
        "seed": Honoured({"seed": 12}, text),
        "presence_penalty": Honoured({"presence_penalty": 1.5}, text_or_chain),
        "frequency_penalty": Honoured({"frequency_penalty": 1.5}, text_or_chain),
        "logit_bias": Honoured({"logit_bias": {"1000": 100}}, text),
        "n": Honoured({"n": 2}, choices),
        "top_k": Honoured({"top_k": 1}, text_or_chain),
        "min_p": Honoured({"min_p": 0.5}, text_or_chain),
        "typical_p": Honoured({"typical_p": 0.2}, text_or_chain),
        "repeat_penalty": Honoured({"repeat_penalty": 1.5}, text_or_chain),
        "repeat_last_n": Honoured({"repeat_last_n": 0}, text_or_chain, {"repeat_penalty": 1.5}),
        "ignore_eos": Honoured(
            {"ignore_eos": True},
            finish,
            {"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 64},
        ),
        "grammar": Honoured({"grammar": 'root ::= "yes" | "no"'}, text),
        "json_schema": Honoured({"json_schema": SCHEMA_INT}, text),
        "response_format": Honoured({"response_format": {"type": "json_object"}}, text),
        "n_probs": Honoured({"n_probs": 2}, logprobs),
        "logprobs": Honoured({"logprobs": True}, logprobs),
        "top_logprobs": Honoured({"top_logprobs": 3}, top_logprobs, {"logprobs": True}),
        "return_token_ids": Honoured({"return_token_ids": True}, token_ids),
        "tools": Honoured({"tools": [WEATHER]}, prompt_tokens),
        "tool_choice": Honoured(
            {"tool_choice": "required"}, tool_calls, {"tools": [WEATHER], "max_tokens": 64}
        ),
        "parallel_tool_calls": Honoured(
            {"parallel_tool_calls": False},
            tool_calls,
            {"tools": [WEATHER], "tool_choice": "required", "max_tokens": 96},
        ),
        "chat_template_kwargs": Honoured(
            {"chat_template_kwargs": {"enable_thinking": True}}, prompt_tokens
        ),
        "reasoning_effort": Honoured({"reasoning_effort": "high"}, prompt_tokens),
        "reasoning_format": Honoured(
            {"reasoning_format": "none"},
            split,
            {"chat_template_kwargs": {"enable_thinking": True}},
        ),
        "functions": Refused([WEATHER["function"]]),
        "function_call": Refused("auto"),
        "audio": Refused({"voice": "alloy", "format": "wav"}),
        "modalities": Refused(["text", "audio"]),
        "prediction": Refused({"type": "content", "content": "x"}),
        "web_search_options": Refused({}),
        "lora": Honoured({"lora": [{"id": 0, "scale": 1.0}]}, text),
        "user": NoOp("user-1"),
    },
    "completions": {
        "model": Honoured({"model": "no-such-model"}, status),
        "prompt": Honoured({"prompt": "The capital of France is"}, text),
        "stream": Honoured({"stream": True}, kind),
        "stream_options": Honoured(
            {"stream_options": {"include_usage": True}}, usage_event, {"stream": True}
        ),
        "stop": Honoured({"stop": [" "]}, text),
        "max_tokens": Honoured({"max_tokens": 2}, completion_tokens),
        "temperature": Honoured({"temperature": 0.1}, text),
        "top_p": Honoured({"top_p": 0.05}, text),
        "seed": Honoured({"seed": 12}, text),
        "presence_penalty": Honoured({"presence_penalty": 1.5}, text_or_chain),
        "frequency_penalty": Honoured({"frequency_penalty": 1.5}, text_or_chain),
        "logit_bias": Honoured({"logit_bias": {"1000": 100}}, text),
        "n": Honoured({"n": 2}, choices),
        "top_k": Honoured({"top_k": 1}, text_or_chain),
        "min_p": Honoured({"min_p": 0.5}, text_or_chain),
        "typical_p": Honoured({"typical_p": 0.2}, text_or_chain),
        "repeat_penalty": Honoured({"repeat_penalty": 1.5}, text_or_chain),
        "repeat_last_n": Honoured({"repeat_last_n": 0}, text_or_chain, {"repeat_penalty": 1.5}),
        # The base ends at once: the end-of-generation token (<|im_end|>, 2) is pushed up.
        "ignore_eos": Honoured({"ignore_eos": True}, finish, {"logit_bias": {"2": 100}}),
        "grammar": Honoured({"grammar": 'root ::= "yes" | "no"'}, text),
        "json_schema": Honoured({"json_schema": SCHEMA_INT}, text),
        "n_probs": Honoured({"n_probs": 2}, logprobs),
        "logprobs": Honoured({"logprobs": 2}, logprobs),
        "echo": Honoured({"echo": True}, text),
        "best_of": Refused(2),
        # Honoured as fill-in-the-middle by a model with FIM tokens (test_infill.py); SmolLM2
        # has none, so its worker refuses it, named as suffix.
        "suffix": Refused("The end."),
        "lora": Honoured({"lora": [{"id": 0, "scale": 1.0}]}, text),
        "user": NoOp("user-1"),
    },
    "embeddings": {
        "model": Honoured({"model": "no-such-model"}, status),
        "input": Honoured({"input": "a dog on a log"}, vector),
        "encoding_format": Honoured({"encoding_format": "base64"}, vector),
        "dimensions": Honoured({"dimensions": 64}, width),
        "user": NoOp("user-1"),
    },
}
#: The accepted no-ops of the chat and completions routes, at a value each.
NO_OP_VALUES: dict[str, Any] = {
    "store": True,
    "metadata": {"app": "tests", "run": "1"},
    "safety_identifier": "hashed-user",
    "prompt_cache_key": "conversation-7",
    "prompt_cache_retention": "24h",
    "service_tier": "auto",
}
for _route in ("chat", "completions"):
    for _sampler in {name for case in SAMPLER_CASES for name in case[0]}:
        FIELDS[_route][_sampler] = SAMPLER
    for _name, _value in NO_OP_VALUES.items():
        FIELDS[_route][_name] = NoOp(_value)


def rows(kinds: tuple[type, ...]) -> list[Any]:
    return [
        pytest.param(route, name, row, id=f"{route}-{name}")
        for route, table in FIELDS.items()
        for name, row in table.items()
        if isinstance(row, kinds)
    ]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    run_dir: Path = tmp_path_factory.mktemp("every-field")
    template = run_dir / "template.jinja"
    template.write_text(TEMPLATE)
    args = ("--parallel", "2", "--n-ctx", "2048", "--log-level", "debug")
    args += ("--chat-template", str(template), "--embedding-dimensions", "64")
    # A LoRA adapter, off unless a request's ``lora`` turns it on.
    adapter = write_lora_adapter(run_dir / "adapter.gguf", default_model_path(), seed=1)
    args += ("--lora-scaled", str(adapter), "0")
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def base_url(worker: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Strict model names: an unknown model is a 404 (by default any name reaches one model).
    gateway = spawn_gateway(
        tmp_path_factory.mktemp("gw"), worker.target, extra=("--strict-model-names",)
    )
    with running(gateway) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield f"http://127.0.0.1:{proc.port}"


def post(base_url: str, worker: Proc, route: Route, body: dict[str, Any]) -> Reply:
    """One request; a stream is read whole."""
    before = len(CHAIN.findall(worker.log_text()))
    reply = httpx.post(base_url + PATHS[route], json=body, timeout=120)
    events = []
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line[len("data: ") :] for line in reply.text.splitlines()]
        events = [json.loads(data) for data in lines if data.startswith("{")]
        payload: Any = None
    else:
        payload = reply.json()
    chains = CHAIN.findall(worker.log_text())
    return Reply(reply.status_code, payload, events, chains[-1] if len(chains) > before else "")


def base_of(route: Route) -> dict[str, Any]:
    return {"chat": CHAT, "completions": TEXT, "embeddings": EMBED}[route]


@pytest.mark.parametrize("route", list(FIELDS))
def test_every_field_of_every_body_has_a_row(route: Route) -> None:
    declared = set(BODIES[route].model_fields)
    if route != "embeddings":
        declared |= set(OPENAI_NO_OPS)
    assert declared == set(FIELDS[route]), declared ^ set(FIELDS[route])


def test_the_sampler_cases_show_every_sampler_field_of_the_bodies() -> None:
    shown = {name for case in SAMPLER_CASES for name in case[0]}
    assert shown <= set(ChatCompletionRequest.model_fields) & set(CompletionRequest.model_fields)


@pytest.mark.parametrize(("route", "name", "row"), rows((Honoured,)))
def test_an_honoured_field_changes_the_response(
    base_url: str, worker: Proc, route: Route, name: str, row: Honoured
) -> None:
    body = {**base_of(route), **row.base}
    before = post(base_url, worker, route, body)
    after = post(base_url, worker, route, {**body, **row.change})
    assert before.status == 200, before.body
    assert after.status == (404 if name == "model" else 200), after.body
    print(f"{route} {name}: {row.shows(before)!r} -> {row.shows(after)!r}")
    assert row.shows(after) != row.shows(before)


@pytest.mark.parametrize(("route", "name", "row"), rows((NoOp,)))
def test_an_accepted_no_op_leaves_the_response_as_it_was(
    base_url: str, worker: Proc, route: Route, name: str, row: NoOp
) -> None:
    body = base_of(route)
    before = post(base_url, worker, route, body)
    after = post(base_url, worker, route, {**body, name: row.value})
    assert before.status == after.status == 200, after.body
    if route == "embeddings":
        assert vector(after) == pytest.approx(vector(before))
    else:
        assert after.text() == before.text()
        assert after.chain == before.chain


@pytest.mark.parametrize(("route", "name", "row"), rows((Refused,)))
def test_a_refused_field_is_a_400_naming_it(
    base_url: str, worker: Proc, route: Route, name: str, row: Refused
) -> None:
    reply = post(base_url, worker, route, {**base_of(route), **row.base, name: row.value})
    assert reply.status == 400, reply.body
    error = reply.body["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", name)


@pytest.mark.parametrize("route", ["chat", "completions", "embeddings"])
def test_a_field_no_body_declares_is_refused_by_name(
    base_url: str, worker: Proc, route: Route
) -> None:
    reply = post(base_url, worker, route, {**base_of(route), "frobnicate": {"level": 11}})
    assert reply.status == 400, reply.body
    error = reply.body["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "frobnicate")
