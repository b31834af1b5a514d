"""Tools and reasoning over HTTP, end to end: the openai SDK and LangChain against a real gateway
and a real SmolLM2 worker whose chat template is Qwen3's (tools as Hermes-style <tool_call>
markup, thinking in <think>). ``required`` and named tool choices are forced by the worker's
grammar, so even this small model makes valid calls."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.procs import ROOT, Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

TEMPLATE = ROOT / "tests" / "fixtures" / "chat_templates" / "qwen3.jinja"
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
#: Enough for a call's markup and short arguments; the grammar ends the call well before.
MAX_TOKENS = 96


class GetWeather(BaseModel):
    """The current weather in a city."""

    city: str


class GetTime(BaseModel):
    """The local time in a time zone."""

    zone: str


WEATHER = openai.pydantic_function_tool(GetWeather, name="get_weather")
TIME = openai.pydantic_function_tool(GetTime, name="get_time")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tools-http")


@pytest.fixture(scope="module")
def worker(run_dir: Path) -> Iterator[Proc]:
    args = ("--parallel", "2", "--n-ctx", "8192", "--chat-template", str(TEMPLATE))
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def base_url(run_dir: Path, worker: Proc) -> Iterator[str]:
    with running(spawn_gateway(run_dir, worker.target)) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        yield url


@pytest.fixture(scope="module")
def model(base_url: str) -> str:
    return str(httpx.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]["id"])


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


def tool_result_turn(
    message: openai.types.chat.ChatCompletionMessage, result: str
) -> list[dict[str, Any]]:
    """The assistant's turn as the client sends it back, and the tool's answer to each call."""
    calls = [
        call.model_dump(include={"id", "type", "function"}) for call in message.tool_calls or []
    ]
    turn: list[dict[str, Any]] = [
        {"role": "assistant", "content": message.content, "tool_calls": calls}
    ]
    turn += [{"role": "tool", "tool_call_id": call["id"], "content": result} for call in calls]
    return turn


def test_required_tool_choice_calls_a_tool_then_the_model_answers_its_result(
    client: openai.OpenAI, model: str
) -> None:
    out = client.chat.completions.create(
        model=model,
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],
        tool_choice="required",
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    assert choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert CALL_ID.fullmatch(call.id) and call.type == "function"
        arguments = json.loads(call.function.arguments)
        schema = GetWeather if call.function.name == "get_weather" else GetTime
        assert call.function.name in ("get_weather", "get_time")
        schema.model_validate(arguments)  # the grammar kept them to the tool's schema
    answer = client.chat.completions.create(
        model=model,
        messages=[*QUESTION, *tool_result_turn(choice.message, "18 C and sunny")],  # type: ignore[list-item]
        tools=[WEATHER, TIME],
        tool_choice="none",
        temperature=0,
        max_tokens=24,
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    assert answer.usage is not None and out.usage is not None
    assert answer.usage.prompt_tokens > out.usage.prompt_tokens  # the call and result were shown


def test_a_named_tool_streams_its_call_in_openais_deltas(client: openai.OpenAI, model: str) -> None:
    chunks = []
    with client.chat.completions.stream(
        model=model,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=MAX_TOKENS,
    ) as stream:
        for event in stream:
            if event.type == "chunk":
                chunks.append(event.chunk)
        final = stream.get_final_completion()
    deltas = [call for chunk in chunks for c in chunk.choices for call in c.delta.tool_calls or []]
    head, *fragments = deltas
    assert (head.index, head.type) == (0, "function") and head.id and CALL_ID.fullmatch(head.id)
    assert head.function is not None and head.function.name == "get_time"
    assert head.function.arguments == ""
    assert fragments and all(
        f.id is None and f.function and f.function.name is None for f in fragments
    )
    assert {f.index for f in fragments} == {0}  # one call: parallel_tool_calls is false
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id == head.id and call.function.name == "get_time"
    assert call.function.arguments == "".join(
        f.function.arguments or "" for f in fragments if f.function
    )
    assert isinstance(call.function.parsed_arguments, GetTime)


def test_langchain_bind_tools_calls_the_named_tool_and_reads_the_result(
    base_url: str, model: str
) -> None:
    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return f"18 C and sunny in {city}"

    llm = ChatOpenAI(
        model=model,
        base_url=f"{base_url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    bound = llm.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False)
    question = HumanMessage("What is the weather in Paris?")
    reply = bound.invoke([question])
    assert isinstance(reply, AIMessage)
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert call["id"] and CALL_ID.fullmatch(call["id"])
    result = get_weather.invoke(call)  # a ToolMessage answering the call
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    answer = llm.invoke([question, reply, result])
    assert isinstance(answer.content, str) and answer.content
    assert not isinstance(answer, AIMessage) or not answer.tool_calls


def test_langchain_streams_a_required_call_into_whole_tool_calls(base_url: str, model: str) -> None:
    llm = ChatOpenAI(
        model=model,
        base_url=f"{base_url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=MAX_TOKENS,
    )
    bound = llm.bind_tools([GetWeather], tool_choice="required", parallel_tool_calls=False)
    whole: AIMessageChunk | None = None
    for piece in bound.stream("What is the weather in Paris?"):
        assert isinstance(piece, AIMessageChunk)
        whole = piece if whole is None else whole + piece
    assert whole is not None
    (call,) = whole.tool_calls
    assert call["name"] == "GetWeather"
    GetWeather.model_validate(call["args"])
    assert whole.response_metadata.get("finish_reason") == "tool_calls"


#: Forces thinking, then an answer (SmolLM2 never thinks on its own).
FORCED_THINKING = 'root ::= "<think>" [a-z] [a-z ]{0,20} "</think>" [A-Za-z] [A-Za-z ]{0,20}'


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_is_split_out_as_reasoning_content(
    client: openai.OpenAI, model: str, stream: bool
) -> None:
    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
        "temperature": 0,
        "max_tokens": 48,
        "extra_body": {"grammar": FORCED_THINKING},
    }
    if stream:
        deltas = [
            c.choices[0].delta
            for c in client.chat.completions.create(**request, stream=True)
            if c.choices
        ]
        reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
        content = "".join(d.content or "" for d in deltas)
    else:
        message = client.chat.completions.create(**request).choices[0].message
        reasoning, content = (
            getattr(message, "reasoning_content", None) or "",
            message.content or "",
        )
    assert reasoning.strip() and "<think>" not in reasoning and "</think>" not in reasoning
    assert content.strip() and "think>" not in content
    whole = client.chat.completions.create(
        **{**request, "extra_body": {"grammar": FORCED_THINKING, "reasoning_format": "none"}}
    )
    text = whole.choices[0].message.content or ""
    assert text.startswith("<think>") and "</think>" in text  # left in the text, markup included
    assert getattr(whole.choices[0].message, "reasoning_content", None) is None


def test_chat_template_kwargs_reach_the_template(client: openai.OpenAI, model: str) -> None:
    def prompt_tokens(**extra: Any) -> int:
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=1,
            extra_body=extra,
        )
        assert out.usage is not None
        return out.usage.prompt_tokens

    # Qwen3's template closes an empty think block in the prompt when thinking is off.
    assert prompt_tokens(chat_template_kwargs={"enable_thinking": False}) > prompt_tokens()


def test_hostile_tool_requests_are_400s_and_the_worker_serves_on(
    client: openai.OpenAI, model: str
) -> None:
    many = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]
    unknown = {"type": "function", "function": {"name": "nope"}}
    for extra in (
        {"tools": many},
        {"tools": [WEATHER], "tool_choice": unknown},
        {"tool_choice": "required"},  # nothing to call
        {"chat_template_kwargs": {"messages": []}},  # may not replace the conversation
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=model,
                messages=QUESTION,
                max_tokens=4,
                extra_body=extra,  # type: ignore[arg-type]
            )
        assert caught.value.param and caught.value.param.split("[")[0].split(".")[0] in extra
    out = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=4)  # type: ignore[arg-type]
    assert out.choices[0].message.content


def test_a_session_turn_can_call_tools(base_url: str, model: str) -> None:
    """The session route shares the chat translation. (Qwen3's template renders earlier turns
    differently once a later one follows, so the worker refuses a next turn on this session:
    only the first one is run here.)"""
    with httpx.Client(base_url=base_url, timeout=120) as http:
        opened = http.post("/v1/sessions", json={"model": model})
        assert opened.status_code == 201, opened.text
        session = opened.json()["id"]
        try:
            sdk = openai.OpenAI(
                base_url=f"{base_url}/v1/sessions/{session}", api_key="unused", timeout=120
            )
            stream = sdk.chat.completions.create(
                model=model,
                messages=QUESTION,  # type: ignore[arg-type]
                tools=[WEATHER],
                tool_choice="required",
                parallel_tool_calls=False,
                temperature=0,
                max_tokens=MAX_TOKENS,
                stream=True,
            )
            chunks = [chunk for chunk in stream if chunk.choices]
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
            calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
            assert calls[0].function is not None and calls[0].function.name == "get_weather"
            arguments = "".join(call.function.arguments or "" for call in calls if call.function)
            GetWeather.model_validate_json(arguments)
            assert http.get(f"/v1/sessions/{session}").json()["turns"] == 1
        finally:
            http.delete(f"/v1/sessions/{session}")
