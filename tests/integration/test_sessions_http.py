"""Native sessions over HTTP (gateway/sessions.py) on a real gateway and worker: the routes, the
OpenAI SDK pointed at a session, routing home, and every refusal (issue 12)."""

from __future__ import annotations

import base64
import threading
import time

import httpx
import pytest
from openai import OpenAI

from tests.procs import Proc

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture
def http(base_url: str) -> httpx.Client:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture
def session(http: httpx.Client) -> str:
    reply = http.post("/v1/sessions", json={"model": model_of(http)})
    assert reply.status_code == 201, reply.text
    session_id: str = reply.json()["id"]
    yield session_id
    http.delete(f"/v1/sessions/{session_id}")


def model_of(http: httpx.Client) -> str:
    models: list[str] = [m["id"] for m in http.get("/v1/models").json()["data"]]
    return models[0]


def sdk(base_url: str, session_id: str) -> OpenAI:
    """The OpenAI SDK with its base URL at the session."""
    return OpenAI(base_url=f"{base_url}/v1/sessions/{session_id}", api_key="unused", timeout=120)


def test_the_openai_sdk_on_a_session_url_sends_only_new_turns(
    http: httpx.Client, base_url: str, session: str, worker: Proc
) -> None:
    described = http.get(f"/v1/sessions/{session}").json()
    assert described["object"] == "session" and described["turns"] == 0
    assert described["worker"] == worker.target and described["id"] == session
    client = sdk(base_url, session)
    model = model_of(http)
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=8,
        temperature=0,
    )
    assert raw.headers["x-llamagrid-route"] == "session:home"
    first = raw.parse()
    assert first.usage is not None
    second = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "And another one?"}],
        max_tokens=8,
        temperature=0,
    )
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    # The whole context is the prompt; the first turn's part of it came from the cache.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    cached = second.usage.prompt_tokens_details.cached_tokens or 0
    assert cached >= first.usage.prompt_tokens
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "One more."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    after = http.get(f"/v1/sessions/{session}").json()
    assert after["turns"] == 3 and after["turn_ends"][-1] == after["length"]
    assert after["kv_tier"] == "resident" and not after["busy"]


def test_fork_rollback_cancel_and_delete(http: httpx.Client, base_url: str, session: str) -> None:
    client = sdk(base_url, session)
    for question in ("Hi.", "Name a fruit."):
        client.chat.completions.create(
            model=model_of(http),
            messages=[{"role": "user", "content": question}],
            max_tokens=4,
            temperature=0,
        )
    ends = http.get(f"/v1/sessions/{session}").json()["turn_ends"]
    fork = http.post(f"/v1/sessions/{session}/fork", json={"turns": 1})
    assert fork.status_code == 201, fork.text
    assert fork.json()["turn_ends"] == ends[:1] and fork.json()["id"] != session
    assert http.delete(f"/v1/sessions/{fork.json()['id']}").json()["deleted"] is True
    rolled = http.post(f"/v1/sessions/{session}/rollback", json={"turns": 0}).json()
    assert rolled["turns"] == 0 and rolled["length"] == 0
    too_far = http.post(f"/v1/sessions/{session}/rollback", json={"turns": 5})
    assert too_far.status_code == 400 and too_far.json()["error"]["param"] == "turns"
    idle = http.post(f"/v1/sessions/{session}/cancel").json()
    assert idle == {"id": session, "cancelled": False}
    gone = http.get(f"/v1/sessions/{fork.json()['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"


def test_a_second_concurrent_turn_is_409_and_cancel_stops_the_first(
    http: httpx.Client, base_url: str, session: str
) -> None:
    url = f"/v1/sessions/{session}/chat/completions"
    body = {
        "model": model_of(http),
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", url, json=body) as running:
        lines = running.iter_lines()
        assert next(lines).startswith(":")  # admitted: the turn runs
        second = http.post(url, json={**body, "stream": False, "max_tokens": 2})
        assert second.status_code == 409, second.text
        assert second.json()["error"]["code"] == "session_busy"
        assert http.post(f"/v1/sessions/{session}/cancel").json()["cancelled"] is True
        rest = "\n".join(lines)
    assert '"turn_cancelled"' in rest and "[DONE]" not in rest
    assert http.get(f"/v1/sessions/{session}").json()["turns"] == 0


def test_refusals(http: httpx.Client) -> None:
    model = model_of(http)
    for body in ({"model": model, "ttl_s": 0}, {"model": model, "extra": 1}, {"model": ""}):
        reply = http.post("/v1/sessions", json=body)
        assert reply.status_code == 400, (body, reply.text)
    assert http.post("/v1/sessions", json={"model": "no-such-model"}).status_code == 404
    for bad in ("nope", "lgs.!!!.x", "lgs..ses_x", "lgs.eA.", "other.eA.x"):
        reply = http.get(f"/v1/sessions/{bad}")
        assert reply.status_code == 404, (bad, reply.text)
        assert reply.json()["error"]["code"] == "session_not_found"
    huge = http.get(f"/v1/sessions/{'x' * 600}")
    assert huge.status_code == 400 and huge.json()["error"]["param"] == "session_id"
    # An id naming an address outside the fleet is never dialled: the session is lost.
    foreign = base64.urlsafe_b64encode(b"169.254.169.254:80").decode().rstrip("=")
    lost = http.get(f"/v1/sessions/lgs.{foreign}.ses_abc")
    assert lost.status_code == 404 and lost.json()["error"]["code"] == "session_lost"
    opened = http.post("/v1/sessions", json={"model": model, "ttl_s": 1}).json()
    unknown = opened["id"].rsplit(".", 1)[0] + ".ses_unknown"
    missing = http.get(f"/v1/sessions/{unknown}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
    http.delete(f"/v1/sessions/{opened['id']}")


def test_concurrent_turns_from_threads_give_one_409(http: httpx.Client, session: str) -> None:
    url = f"/v1/sessions/{session}/chat/completions"
    body = {
        "model": model_of(http),
        "messages": [{"role": "user", "content": "Hello."}],
        "max_tokens": 200,
        "ignore_eos": True,
    }
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def attempt() -> None:
        barrier.wait()
        statuses.append(http.post(url, json=body).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(statuses) == [200, 409]


def test_a_client_that_leaves_mid_turn_leaves_the_session_as_it_was(
    http: httpx.Client, session: str
) -> None:
    url = f"/v1/sessions/{session}/chat/completions"
    body = {
        "model": model_of(http),
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with http.stream("POST", url, json=body) as leaving:
        lines = leaving.iter_lines()
        while '"content"' not in next(lines):  # a first token: the turn runs
            pass
    # The connection is closed mid-stream; the worker hears of it and drops the turn.
    deadline = time.monotonic() + 30
    while (described := http.get(f"/v1/sessions/{session}").json())["busy"]:
        assert time.monotonic() < deadline, "the abandoned turn still holds the session"
        time.sleep(0.05)
    assert described["turns"] == 0 and described["length"] == 0
    short = {**body, "stream": False, "max_tokens": 2}
    assert http.post(url, json=short).status_code == 200
    assert http.get(f"/v1/sessions/{session}").json()["turns"] == 1
