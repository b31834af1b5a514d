"""OpenAI's Responses API (gateway/responses/) on a real gateway and worker, driven by the official
``openai`` SDK's ``responses`` client: plain and chained responses, forks, streams, retrieval,
deletion, stateless responses and every refusal (issue 12)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import openai
import openai.types.responses as sdk
import pytest
from openai import OpenAI

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

#: The SDK's model of each event a stream may hold, for strict validation.
EVENT_TYPES: dict[str, type[Any]] = {
    "response.created": sdk.ResponseCreatedEvent,
    "response.in_progress": sdk.ResponseInProgressEvent,
    "response.output_item.added": sdk.ResponseOutputItemAddedEvent,
    "response.content_part.added": sdk.ResponseContentPartAddedEvent,
    "response.output_text.delta": sdk.ResponseTextDeltaEvent,
    "response.output_text.done": sdk.ResponseTextDoneEvent,
    "response.content_part.done": sdk.ResponseContentPartDoneEvent,
    "response.output_item.done": sdk.ResponseOutputItemDoneEvent,
    "response.completed": sdk.ResponseCompletedEvent,
    "response.incomplete": sdk.ResponseIncompleteEvent,
}
OPENING = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
#: A schema whose answers end within a few tokens: the stream always completes.
TINY_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
TINY_FORMAT = {"format": {"type": "json_schema", "name": "tiny", "schema": TINY_SCHEMA}}


@pytest.fixture(scope="module")
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def model(http: httpx.Client) -> str:
    models: list[str] = [m["id"] for m in http.get("/v1/models").json()["data"]]
    return models[0]


def session_of(response_id: str) -> str:
    """The session id a stored response's id names (``resp.<turn>.<session id>``)."""
    prefix, turn, session = response_id.split(".", 2)
    assert prefix == "resp" and turn.isdigit(), response_id
    return session


def turn_of(response_id: str) -> int:
    return int(response_id.split(".", 2)[1])


def sessions_on(stub: pb_grpc.InferenceServiceStub) -> int:
    return int(stub.GetLoad(pb.GetLoadRequest(), timeout=10).sessions)


def strict(raw: dict[str, Any]) -> sdk.Response:
    """The response, validated (not merely constructed) by the SDK's own model."""
    return sdk.Response.model_validate(raw)


def create(openai_client: OpenAI, model: str, **fields: Any) -> sdk.Response:
    """``client.responses.create``, greedy and short unless told otherwise; the raw JSON is
    validated strictly too."""
    fields = {"temperature": 0, "max_output_tokens": 8, **fields}
    raw = openai_client.responses.with_raw_response.create(model=model, **fields)
    strict(json.loads(raw.text))
    return raw.parse()


def test_a_plain_response_and_one_with_instructions(
    openai_client: OpenAI, http: httpx.Client, model: str
) -> None:
    raw = openai_client.responses.with_raw_response.create(
        model=model, input="Name a colour.", temperature=0, max_output_tokens=8
    )
    assert raw.headers["x-llamagrid-route"] == "session:home"
    plain = raw.parse()
    strict(json.loads(raw.text))
    assert plain.object == "response" and turn_of(plain.id) == 1
    assert plain.status in ("completed", "incomplete") and plain.output_text
    assert plain.output[0].type == "message" and plain.output[0].role == "assistant"
    usage = plain.usage
    assert usage is not None and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    described = http.get(f"/v1/sessions/{session_of(plain.id)}").json()
    assert described["turns"] == 1 and described["length"] > usage.input_tokens

    # instructions are a system message before the input: the same tokens as a chat with one.
    instructed = create(
        openai_client, model, input="Name a colour.", instructions="Answer in one word."
    )
    assert instructed.instructions == "Answer in one word."
    chat = openai_client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Name a colour."},
        ],
        max_tokens=1,
    )
    assert chat.usage is not None and instructed.usage is not None
    assert instructed.usage.input_tokens == chat.usage.prompt_tokens


def test_chaining_on_the_latest_response_appends_a_turn_that_reuses_the_context(
    openai_client: OpenAI, http: httpx.Client, model: str
) -> None:
    first = create(openai_client, model, input="My name is Ada. Say hello.")
    second = create(openai_client, model, input="What is my name?", previous_response_id=first.id)
    assert session_of(second.id) == session_of(first.id) and turn_of(second.id) == 2
    assert second.previous_response_id == first.id
    assert first.usage is not None and second.usage is not None
    # The whole context is the input; the first turn's part of it came from the cache.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    third = create(openai_client, model, input="Thanks.", previous_response_id=second.id)
    assert session_of(third.id) == session_of(first.id) and turn_of(third.id) == 3
    described = http.get(f"/v1/sessions/{session_of(first.id)}").json()
    assert described["turns"] == 3


def test_chaining_on_an_older_response_forks_and_leaves_the_later_turns_alone(
    openai_client: OpenAI, http: httpx.Client, model: str
) -> None:
    first = create(openai_client, model, input="Count: one, two.")
    second = create(openai_client, model, input="Go on.", previous_response_id=first.id)
    session = session_of(first.id)
    before = http.get(f"/v1/sessions/{session}").json()
    branch = create(openai_client, model, input="Stop there.", previous_response_id=first.id)
    fork = session_of(branch.id)
    assert fork != session and turn_of(branch.id) == 2
    assert branch.usage is not None and first.usage is not None
    assert branch.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    after = http.get(f"/v1/sessions/{session}").json()
    assert after["turn_ends"] == before["turn_ends"] and after["turns"] == 2
    forked = http.get(f"/v1/sessions/{fork}").json()
    assert forked["turns"] == 2 and forked["turn_ends"][0] == before["turn_ends"][0]
    # Both branches go on: the original from its latest response, the fork from its own.
    later = create(openai_client, model, input="And then?", previous_response_id=second.id)
    assert session_of(later.id) == session and turn_of(later.id) == 3
    on_fork = create(openai_client, model, input="And then?", previous_response_id=branch.id)
    assert session_of(on_fork.id) == fork and turn_of(on_fork.id) == 3


def test_two_chains_on_the_same_response_at_once_both_succeed(
    base_url: str, model: str, openai_client: OpenAI
) -> None:
    first = create(openai_client, model, input="Hello.")
    body = {
        "model": model,
        "input": "Tell me a story.",
        "previous_response_id": first.id,
        "max_output_tokens": 24,
    }
    ids: list[str] = []
    barrier = threading.Barrier(2)

    def chain() -> None:
        barrier.wait()
        reply = httpx.post(f"{base_url}/v1/responses", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["id"])

    threads = [threading.Thread(target=chain) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(ids) == 2 and all(turn_of(i) == 2 for i in ids)
    # One appended to the conversation, the other forked it.
    assert sorted(session_of(i) == session_of(first.id) for i in ids) == [False, True]


def test_a_stream_has_every_event_in_order_as_the_sdk_parses_it(
    openai_client: OpenAI, base_url: str, model: str
) -> None:
    events = list(
        openai_client.responses.create(
            model=model, input="Say hello.", temperature=0, max_output_tokens=12, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:4] == OPENING and kinds[-4:-1] == CLOSING
    assert kinds[-1] in ("response.completed", "response.incomplete")
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and kinds[4:-4] == ["response.output_text.delta"] * len(deltas)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    text = "".join(delta.delta for delta in deltas)  # type: ignore[union-attr]
    assert events[-4].text == text == final.output_text  # type: ignore[union-attr]
    assert events[0].response.id == final.id and final.usage is not None  # type: ignore[union-attr]
    assert (final.status == "completed") == (kinds[-1] == "response.completed")

    # The same stream, read raw: every event passes the SDK's models strictly, and the stream
    # ends with [DONE].
    body = {"model": model, "input": "Say hello.", "max_output_tokens": 12, "stream": True}
    with httpx.stream("POST", f"{base_url}/v1/responses", json=body, timeout=120) as reply:
        assert reply.status_code == 200
        data = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    for line in data[:-1]:
        event = json.loads(line)
        EVENT_TYPES[event["type"]].model_validate(event)


def test_the_stream_helper_chains_and_gets_its_final_response(
    openai_client: OpenAI, http: httpx.Client, model: str
) -> None:
    first = create(
        openai_client, model, input="Is the sky blue?", text=TINY_FORMAT, max_output_tokens=64
    )
    assert json.loads(first.output_text) in ({"ok": True}, {"ok": False})
    with openai_client.responses.stream(
        model=model,
        input="Is grass green?",
        previous_response_id=first.id,
        text=TINY_FORMAT,  # type: ignore[arg-type]
        max_output_tokens=64,
        temperature=0,
    ) as stream:
        texts = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(texts)
    assert json.loads(final.output_text) in ({"ok": True}, {"ok": False})
    assert session_of(final.id) == session_of(first.id) and turn_of(final.id) == 2
    assert final.usage is not None and first.usage is not None
    assert final.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    assert openai_client.responses.retrieve(final.id).output_text == final.output_text
    assert http.get(f"/v1/sessions/{session_of(first.id)}").json()["turns"] == 2


def test_retrieve_and_delete(openai_client: OpenAI, model: str) -> None:
    made = create(openai_client, model, input="Hi.", metadata={"topic": "greeting"})
    got = openai_client.responses.retrieve(made.id)
    assert got.model_dump() == made.model_dump() and got.metadata == {"topic": "greeting"}
    assert openai_client.responses.delete(made.id) is None
    with pytest.raises(openai.NotFoundError) as gone:
        openai_client.responses.retrieve(made.id)
    assert gone.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError) as chained:
        create(openai_client, model, input="Again.", previous_response_id=made.id)
    assert chained.value.code == "previous_response_not_found"


def test_store_false_is_stateless(
    openai_client: OpenAI, model: str, stub: pb_grpc.InferenceServiceStub
) -> None:
    before = sessions_on(stub)
    first = create(openai_client, model, input="Name a fruit.", store=False)
    assert first.id.startswith("resp_") and first.output_text
    # The conversation is the client's to send: earlier output items are accepted as input.
    history: list[Any] = [
        {"role": "user", "content": "Name a fruit."},
        first.output[0].model_dump(exclude_none=True),
        {"role": "user", "content": [{"type": "input_text", "text": "Another one?"}]},
    ]
    second = create(openai_client, model, input=history, store=False)
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert sessions_on(stub) == before
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        create(openai_client, model, input="More.", previous_response_id=first.id)


def test_a_new_session_whose_first_turn_fails_is_closed(
    http: httpx.Client, model: str, stub: pb_grpc.InferenceServiceStub
) -> None:
    before = sessions_on(stub)
    body = b'{"model": "%s", "input": "Hi.", "temperature": NaN}' % model.encode()
    reply = http.post("/v1/responses", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "temperature"
    # The session opened for it is closed in the background (other sessions may only expire).
    deadline = time.monotonic() + 30
    while sessions_on(stub) > before:
        assert time.monotonic() < deadline, "the failed response's session was not closed"
        time.sleep(0.05)


def test_a_stream_its_client_leaves_closes_the_session_opened_for_it(
    base_url: str, http: httpx.Client, model: str
) -> None:
    # At least 300 numbers: the turn cannot end before the client leaves.
    numbers = {"type": "array", "items": {"type": "integer"}, "minItems": 300}
    body = {
        "model": model,
        "input": "Count.",
        "stream": True,
        "max_output_tokens": 2000,
        "text": {"format": {"type": "json_schema", "name": "numbers", "schema": numbers}},
    }
    with httpx.stream("POST", f"{base_url}/v1/responses", json=body, timeout=120) as reply:
        assert reply.status_code == 200
        lines = (line for line in reply.iter_lines() if line.startswith("data: "))
        created = json.loads(next(lines)[6:])
    session = session_of(created["response"]["id"])
    deadline = time.monotonic() + 30
    while http.get(f"/v1/sessions/{session}").status_code != 404:
        assert time.monotonic() < deadline, "the abandoned response's session was not closed"
        time.sleep(0.05)


def refused(http: httpx.Client, body: dict[str, Any], status: int = 400) -> dict[str, Any]:
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == status, (body, reply.text)
    error: dict[str, Any] = reply.json()["error"]
    return error


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"truncation": "auto"}, "truncation"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"background": True}, "background"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"seed": 1}, "seed"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        ({"store": False, "previous_response_id": "resp.1.lgs.eA.ses_x"}, "store"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    http: httpx.Client, model: str, fields: dict[str, Any], param: str
) -> None:
    error = refused(http, {"model": model, "input": "Hi.", **fields})
    assert error["code"] == "unsupported_parameter" and error["param"] == param


def test_defaults_of_unsupported_fields_are_accepted(http: httpx.Client, model: str) -> None:
    body = {
        "model": model,
        "input": "Hi.",
        "store": False,
        "max_output_tokens": 1,
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "truncation": "disabled",
        "reasoning": {"effort": None},
        "include": None,
        "seed": None,
        "service_tier": "auto",
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "stream_options": None,
    }
    reply = http.post("/v1/responses", json=body)
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
            "input[0].type",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].type",
        ),
    ],
)
def test_input_items_and_parts_that_are_not_text_are_refused(
    http: httpx.Client, model: str, body: dict[str, Any], param: str
) -> None:
    error = refused(http, {"model": model, **body})
    assert error["code"] == "unsupported_parameter" and error["param"] == param


def test_hostile_inputs_get_400s_and_the_worker_keeps_serving(
    http: httpx.Client, model: str, openai_client: OpenAI
) -> None:
    base = {"model": model, "store": False, "max_output_tokens": 1}
    cases: list[tuple[dict[str, Any], str | None]] = [
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user"}]}, "input[0].content"),
        ({"input": [{"content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        ({"input": [{"role": "user", "content": "x"}] * 4097}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "x"}] * 65}]},
            "input",
        ),
        ({"input": "Hi.", "metadata": {str(n): "v" for n in range(17)}}, "metadata"),
        ({"input": "Hi.", "metadata": {"k": "v" * 513}}, "metadata"),
        ({"input": "Hi.", "previous_response_id": "r" * 700}, "previous_response_id"),
        ({"input": "Hi.", "model": "m" * 300}, "model"),
        ({"input": "Hi.", "stream_options": {"include_obfuscation": False}}, "stream_options"),
        ({"input": "Hi.", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "Hi.", "max_output_tokens": -1}, "max_output_tokens"),
        ({"input": "x" * (9 * 1024 * 1024)}, "input"),  # more text than the worker takes
        ({"input": 7}, "input"),
    ]
    for fields, param in cases:
        error = refused(http, {**base, **fields})
        if param is not None:
            assert error["param"] == param, (param, error)
    for name in ("temperature", "top_p"):
        for value in ("NaN", "Infinity", "-Infinity"):
            body = json.dumps({**base, "input": "Hi."})[:-1] + f', "{name}": {value}}}'
            reply = http.post(
                "/v1/responses", content=body, headers={"content-type": "application/json"}
            )
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["param"] == name
    deep = '{"model": "m", "input": ' + "[" * 100_000 + "]" * 100_000 + "}"
    reply = http.post("/v1/responses", content=deep, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    nested = '{"model": "m", "input": ' + "[" * 40 + "]" * 40 + "}"
    reply = http.post("/v1/responses", content=nested, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "input"
    surrogate = '{"model": "%s", "input": "Hi.", "store": false, "metadata": {"k": "\\ud800"}}'
    reply = http.post(
        "/v1/responses", content=surrogate % model, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400 and "Unicode" in reply.json()["error"]["message"]
    surrogate = '{"model": "%s", "input": "\\ud800", "store": false}'
    reply = http.post(
        "/v1/responses", content=surrogate % model, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400 and "Unicode" in reply.json()["error"]["message"]
    # Still serving, and correctly.
    after = create(openai_client, model, input="Name a colour.", store=False)
    assert after.output_text


def test_unknown_and_gone_previous_responses_are_404s(
    http: httpx.Client, model: str, openai_client: OpenAI
) -> None:
    made = create(openai_client, model, input="Hi.")
    session = session_of(made.id)
    for previous in (
        "resp_0123",
        "resp.1.lgs.!!!.ses_x",
        "resp.0." + session,
        "resp.01." + session,
        "resp.2." + session,  # no second turn yet
        "resp.99999999999." + session,
        "resp.1." + session.rsplit(".", 1)[0] + ".ses_unknown",
        "resp.1.lgs.MTY5LjI1NC4xNjkuMjU0Ojgw.ses_abc",  # a worker outside the fleet
    ):
        error = refused(
            http, {"model": model, "input": "Hi.", "previous_response_id": previous}, 404
        )
        assert error["code"] == "previous_response_not_found", previous
        assert error["param"] == "previous_response_id"
    wrong_model = refused(
        http, {"model": "other-model", "input": "Hi.", "previous_response_id": made.id}
    )
    assert wrong_model["param"] == "model"
    # A response whose session was deleted cannot be chained on.
    assert http.delete(f"/v1/sessions/{session}").status_code == 200
    error = refused(http, {"model": model, "input": "Hi.", "previous_response_id": made.id}, 404)
    assert error["code"] == "previous_response_not_found"
    # Retrieval does not need the session: the gateway stored the response itself.
    assert http.get(f"/v1/responses/{made.id}").json()["id"] == made.id


def test_retrieval_refusals(http: httpx.Client) -> None:
    assert http.get(f"/v1/responses/{'r' * 700}").status_code == 400
    missing = http.get("/v1/responses/resp_unknown")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "response_not_found"
    streamed = http.get("/v1/responses/resp_unknown", params={"stream": "true"})
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
    assert http.delete("/v1/responses/resp_unknown").status_code == 404
