"""The pure parts of LMDeploy's /v1/chat/interactive (gateway/interactive.py): the bounded map
from (API key, integer id) to sessions, its scoping, one opener for concurrent first requests,
the translation of LMDeploy's fields, and the schema of the route."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.errors import OpenAIError, invalid_request
from llamagrid.gateway.interactive import (
    Entry,
    InteractiveRequest,
    InteractiveSessions,
    generate_request,
    rename,
)
from llamagrid.gateway.settings import GatewaySettings


def request_with(authorization: str | None) -> Request:
    headers = [] if authorization is None else [(b"authorization", authorization.encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_ids_are_scoped_per_key_only_when_the_gateway_has_keys() -> None:
    keyed = InteractiveSessions(keyed=True)
    one, two = request_with("Bearer key-one"), request_with("bearer key-two")
    assert keyed.key(one, 7) != keyed.key(two, 7)
    assert keyed.key(one, 7) == keyed.key(request_with("Bearer key-one"), 7)
    assert keyed.key(one, 7) != keyed.key(one, 8)
    assert b"key-one" not in keyed.key(one, 7)[0]  # only a digest is kept
    open_ = InteractiveSessions(keyed=False)
    assert open_.key(one, 7) == open_.key(two, 7) == open_.key(request_with(None), 7)


def test_the_map_is_bounded_least_recently_used_first_out() -> None:
    sessions = InteractiveSessions(keyed=False, max_entries=2)
    a, b, c = (b"", 1), (b"", 2), (b"", 3)
    sessions.put(a, Entry("s1", "m"))
    sessions.put(b, Entry("s2", "m"))
    assert sessions.get(a) is not None  # a is now the most recently used
    sessions.put(c, Entry("s3", "m"))
    assert len(sessions) == 2 and sessions.get(b) is None
    assert sessions.get(a) is not None and sessions.get(c) is not None
    sessions.discard(a, "another-session")  # a newer session under the same id stays
    assert sessions.get(a) is not None
    sessions.discard(a, "s1")
    assert sessions.get(a) is None
    popped = sessions.pop(c)
    assert popped is not None and popped.session_id == "s3" and len(sessions) == 0


async def test_concurrent_first_requests_share_one_opened_session() -> None:
    sessions = InteractiveSessions(keyed=False)
    key = (b"", 1)
    release = asyncio.Event()
    opened: list[str] = []

    async def opener() -> Entry:
        opened.append(f"s{len(opened)}")
        await release.wait()
        return Entry(opened[-1], "m")

    waiting = [asyncio.ensure_future(sessions.get_or_open(key, opener)) for _ in range(5)]
    await asyncio.sleep(0)  # every task reaches the map
    release.set()
    entries = await asyncio.gather(*waiting)
    assert opened == ["s0"] and {entry.session_id for entry in entries} == {"s0"}


async def test_when_the_opener_fails_the_waiters_try_in_turn() -> None:
    sessions = InteractiveSessions(keyed=False)
    key = (b"", 1)
    release = asyncio.Event()
    calls: list[int] = []

    async def opener() -> Entry:
        calls.append(1)
        if len(calls) == 1:
            await release.wait()
            raise invalid_request("refused")
        return Entry("s1", "m")

    both = [asyncio.ensure_future(sessions.get_or_open(key, opener)) for _ in range(2)]
    await asyncio.sleep(0)  # both reach the map (if not, the second finds "s1" all the same)
    release.set()
    failed, opened = await asyncio.gather(*both, return_exceptions=True)
    assert isinstance(failed, OpenAIError)
    assert isinstance(opened, Entry) and opened.session_id == "s1" and len(calls) == 2


def test_lmdeploys_fields_become_a_chat_turn_with_lmdeploys_defaults() -> None:
    body = InteractiveRequest.model_validate({"prompt": "Hi.", "stop": "END"})
    proto = generate_request(body, "m")
    assert proto.model == "m" and [m.role for m in proto.chat.messages] == ["user"]
    assert proto.chat.messages[0].content == "Hi."
    sampling = proto.sampling
    assert sampling.temperature == pytest.approx(0.8) and sampling.top_p == pytest.approx(0.8)
    assert sampling.top_k == 40 and list(sampling.stop) == ["END"]
    assert not sampling.HasField("max_tokens") and not sampling.HasField("seed")
    assert not sampling.HasField("repeat_last_n")  # a penalty of 1 is no penalty
    fields: dict[str, Any] = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "request_output_len": 5,
        "repetition_penalty": 1.2,
        "seed": 9,
        "stop": False,
    }
    tuned = generate_request(InteractiveRequest.model_validate(fields), "m")
    assert [m.role for m in tuned.chat.messages] == ["system", "user"]
    assert tuned.sampling.max_tokens == 5 and tuned.sampling.seed == 9
    assert tuned.sampling.repeat_penalty == pytest.approx(1.2)
    assert tuned.sampling.repeat_last_n == -1 and not tuned.sampling.stop
    unseeded = InteractiveRequest.model_validate({"prompt": "x", "seed": 0})
    assert not generate_request(unseeded, "m").sampling.HasField("seed")


@pytest.mark.parametrize(
    ("param", "message", "renamed"),
    [
        ("max_tokens", "max_tokens must be at least 1", "request_output_len"),
        ("repeat_penalty", "repeat_penalty must be positive", "repetition_penalty"),
        ("messages", "messages must not be empty", "prompt"),
        ("messages[0].role", "messages[0].role must be ...", "prompt[0].role"),
        ("temperature", "temperature must be ...", "temperature"),
    ],
)
def test_worker_errors_name_lmdeploys_fields(param: str, message: str, renamed: str) -> None:
    error = rename(invalid_request(message, param))
    assert error.param == renamed and error.message.startswith(renamed)


def test_the_schema_documents_the_json_answer_and_the_json_lines() -> None:
    settings = GatewaySettings.model_validate({"workers": ["127.0.0.1:1"]})
    schema = create_app(settings, create_pool(settings)).openapi()
    content = schema["paths"]["/v1/chat/interactive"]["post"]["responses"]["200"]["content"]
    reply = {"$ref": "#/components/schemas/InteractiveReply"}
    assert content["application/json"]["schema"] == reply
    assert content["application/x-ndjson"]["itemSchema"] == reply
    fields = schema["components"]["schemas"]["InteractiveReply"]["properties"]
    assert list(fields) == ["text", "tokens", "input_tokens", "history_tokens", "finish_reason"]
