"""The Responses API's pure parts (gateway/responses/): refusals, input translation, response
ids, the bounded store, and response objects and stream events as the ``openai`` SDK's own
models validate them."""

from __future__ import annotations

import json
from typing import Any

import openai.types.responses as sdk
import pytest
from pydantic import ValidationError

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.responses import render, translate
from llamagrid.gateway.responses.schemas import ResponseCreateRequest
from llamagrid.gateway.responses.store import ResponseStore
from llamagrid.v1 import inference_pb2 as pb

SESSION = "lgs.MTI3LjAuMC4xOjUwMDUx.ses_abc"
SDK_EVENTS: dict[str, type[Any]] = {
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


def body(**fields: Any) -> ResponseCreateRequest:
    return ResponseCreateRequest.model_validate({"model": "m", "input": "Hi.", **fields})


def final(reason: int = pb.FINISH_REASON_EOS) -> pb.GenerateFinal:
    usage = pb.Usage(prompt_tokens=40, completion_tokens=5, cached_tokens=30)
    return pb.GenerateFinal(finish_reason=reason, usage=usage)


def test_stored_ids_name_their_session_and_turn() -> None:
    response_id = translate.stored_id(3, SESSION)
    assert response_id == f"resp.3.{SESSION}"
    assert translate.parse_previous(response_id) == (SESSION, 3)
    assert translate.unstored_id().startswith("resp_")


@pytest.mark.parametrize(
    "bad",
    [
        "resp_0123",
        f"resp.0.{SESSION}",
        f"resp.01.{SESSION}",
        f"resp.+1.{SESSION}",
        f"resp.².{SESSION}",
        f"resp.4294967296.{SESSION}",
        f"resp.99999999999.{SESSION}",
        "resp.1.other.x.y",
        "resp.1.",
        "",
    ],
)
def test_other_ids_are_not_found(bad: str) -> None:
    with pytest.raises(OpenAIError) as error:
        translate.parse_previous(bad)
    assert error.value.status_code == 404 and error.value.code == "previous_response_not_found"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"parallel_tool_calls": 1}, "parallel_tool_calls"),  # not True
        ({"top_logprobs": False}, "top_logprobs"),  # not 0
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"prompt_cache_retention": "24h"}, "prompt_cache_retention"),
        ({"anything_else": 0}, "anything_else"),
        ({"text": {"verbosity": "high"}}, "text.verbosity"),
        ({"store": False, "previous_response_id": "resp.1.x"}, "store"),
    ],
)
def test_fields_that_cannot_be_honoured_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(OpenAIError) as error:
        translate.check(body(**fields))
    assert error.value.param == param and error.value.code == "unsupported_parameter"


def test_defaults_and_nulls_are_accepted() -> None:
    translate.check(
        body(
            tools=[],
            tool_choice="none",
            parallel_tool_calls=True,
            top_logprobs=0,
            reasoning={"effort": None, "summary": None},
            include=[],
            background=False,
            service_tier="default",
            truncation="disabled",
            prompt_cache_retention="in_memory",
            conversation=None,
            prompt={},
            text={"format": {"type": "text"}, "verbosity": "medium"},
            stream=True,
            stream_options={"include_obfuscation": True},
        )
    )


def test_limits_of_the_body() -> None:
    for fields in (
        {"metadata": {str(n): "" for n in range(17)}},
        {"metadata": {"k" * 65: ""}},
        {"input": [{"role": "user", "content": "x"}] * 4097},
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": ""}] * 65}]},
        {"previous_response_id": "r" * 641},
        {"user": "u" * 257},
        {"model": ""},
        {"max_output_tokens": 2**32},
        {"stream_options": {"other": 1}},
        {"text": {"format": {"type": "json_schema"}, "extra": 1}},
    ):
        with pytest.raises(ValidationError):
            body(**fields)
    with pytest.raises(OpenAIError, match="stream_options"):
        translate.check(body(stream_options={"include_obfuscation": False}))
    with pytest.raises(OpenAIError, match="Unicode"):
        translate.check(body(metadata={"k": "\ud800"}))


def test_instructions_and_input_become_chat_messages() -> None:
    request = body(
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Speak French."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "A"}]},
            {
                "id": "msg_1",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "B", "annotations": []}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "C"},
                    {"type": "input_text", "text": "D"},
                ],
            },
        ],
        temperature=0,
        top_p=0.5,
        max_output_tokens=9,
    )
    proto = translate.generate_request(request, "resp_x")
    turns = [(m.role, m.content) for m in proto.chat.messages]
    assert turns == [
        ("system", "Be brief."),
        ("system", "Speak French."),
        ("user", "A"),
        ("assistant", "B"),
        ("user", "C\nD"),
    ]
    sampling = proto.sampling
    assert sampling.temperature == 0 and sampling.HasField("temperature")
    assert sampling.top_p == 0.5 and sampling.max_tokens == 9 and proto.request_id == "resp_x"
    assert not sampling.HasField("json_schema") and not proto.HasField("session")
    plain = translate.generate_request(body(), "resp_y")
    assert [(m.role, m.content) for m in plain.chat.messages] == [("user", "Hi.")]


@pytest.mark.parametrize(
    ("item", "param", "code"),
    [
        ({"type": "function_call", "call_id": "c"}, "input[0].type", "unsupported_parameter"),
        ({"type": "item_reference", "id": "x"}, "input[0].type", "unsupported_parameter"),
        (
            {"role": "user", "content": [{"type": "input_file"}]},
            "input[0].content[0].type",
            "unsupported_parameter",
        ),
        ({"role": "tool", "content": "x"}, "input[0].role", None),
        ({"role": "user"}, "input[0].content", None),
        ({"content": "x"}, "input[0].role", None),
        ({"role": "user", "content": [{"type": "input_text"}]}, "input[0].content[0].text", None),
    ],
)
def test_input_that_is_not_text_messages_is_refused(
    item: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(OpenAIError) as error:
        translate.generate_request(body(input=[item]), "resp_x")
    assert error.value.param == param and error.value.code == code


def test_text_formats_become_json_schemas() -> None:
    assert translate.text_schema(None) is None
    plain = body(text={"format": {"type": "text"}})
    assert translate.text_schema(plain.text) is None
    any_object = body(text={"format": {"type": "json_object"}})
    assert translate.text_schema(any_object.text) == '{"type":"object"}'
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    named = body(text={"format": {"type": "json_schema", "name": "n", "schema": schema}})
    assert json.loads(translate.text_schema(named.text) or "") == schema


def test_a_lone_surrogate_in_the_input_is_a_400() -> None:
    with pytest.raises(OpenAIError, match="Unicode") as error:
        translate.generate_request(body(input="\ud800"), "resp_x")
    assert error.value.status_code == 400


def test_the_store_is_bounded_in_responses_and_bytes() -> None:
    store = ResponseStore(max_responses=3, max_bytes=10)
    for name in "abc":
        store.put(name, b"12")
    assert store.get("a") == b"12"  # now the most recently used
    store.put("d", b"12")
    assert store.get("b") is None and len(store) == 3
    store.put("e", b"1234567")  # 13 bytes in all: the least recently used go
    assert store.get("c") is None and store.get("a") is None and store.size == 9
    assert store.get("d") == b"12" and store.get("e") == b"1234567"
    store.put("big", b"x" * 11)  # larger than the whole store: not kept
    assert store.get("big") is None and store.size == 9
    store.put("d", b"1")  # replaced, not counted twice
    assert store.size == 8


def test_deleted_ids_are_remembered_within_bounds() -> None:
    store = ResponseStore(max_responses=2)
    store.put("a", b"{}")
    assert store.delete("a") and not store.delete("a") and store.get("a") is None
    assert store.deleted("a") and not store.deleted("b")
    for name in "bc":
        store.put(name, b"{}")
        store.delete(name)
    assert not store.deleted("a") and store.deleted("b") and store.deleted("c")


def test_a_finished_response_is_what_the_sdk_validates() -> None:
    request = body(instructions="Be brief.", metadata={"k": "v"}, temperature=0.5)
    head = render.started(request, translate.stored_id(1, SESSION))
    done = render.finished(head, "msg_1", "Hello", final())
    parsed = sdk.Response.model_validate(json.loads(done.model_dump_json()))
    assert parsed.output_text == "Hello" and parsed.status == "completed"
    assert parsed.instructions == "Be brief." and parsed.metadata == {"k": "v"}
    assert parsed.usage is not None and parsed.usage.input_tokens == 40
    assert parsed.usage.input_tokens_details.cached_tokens == 30
    assert parsed.usage.total_tokens == 45 and parsed.completed_at is not None
    cut = render.finished(head, "msg_1", "Hel", final(pb.FINISH_REASON_LENGTH))
    parsed = sdk.Response.model_validate(json.loads(cut.model_dump_json()))
    assert parsed.status == "incomplete" and parsed.completed_at is None
    assert parsed.incomplete_details is not None
    assert parsed.incomplete_details.reason == "max_output_tokens"
    assert parsed.output[0].status == "incomplete"  # type: ignore[union-attr]


@pytest.mark.parametrize("reason", [pb.FINISH_REASON_EOS, pb.FINISH_REASON_LENGTH])
def test_stream_events_are_what_the_sdk_validates_in_order(reason: int) -> None:
    head = render.started(body(stream=True), translate.stored_id(2, SESSION))
    events = render.ResponseEvents(head, "msg_1")
    batches = [
        events.opening(),
        events.delta("Hel"),
        events.delta('lo "x"\n'),
        events.closing(final(reason)),
    ]
    parsed = [json.loads(event) for batch in batches for event in batch]
    for event in parsed:
        SDK_EVENTS[event["type"]].model_validate(event)
    assert [event["sequence_number"] for event in parsed] == list(range(len(parsed)))
    last = "response.completed" if reason == pb.FINISH_REASON_EOS else "response.incomplete"
    assert [event["type"] for event in parsed] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        last,
    ]
    assert (
        parsed[6]["text"]
        == 'Hello "x"\n'
        == parsed[-1]["response"]["output"][0]["content"][0]["text"]
    )
    assert events.result is not None and events.result.id == parsed[0]["response"]["id"]
