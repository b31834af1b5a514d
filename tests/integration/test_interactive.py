"""LMDeploy's ``POST /v1/chat/interactive`` (gateway/interactive.py) on a real gateway and worker
(issue 12): turns kept by integer id, ids scoped per API key, cancel, ending a session,
stateless requests, LMDeploy's own client, and every hostile field."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.procs import Proc, running, spawn_gateway, wait_http_ok

URL = "/v1/chat/interactive"
HEADER = "x-llamagrid-session-id"
FIELDS = ["text", "tokens", "input_tokens", "history_tokens", "finish_reason"]
NOTHING = {"text": "", "tokens": 0, "input_tokens": 0, "history_tokens": 0, "finish_reason": "stop"}
KEYS = ("key-one", "key-two")
GREEDY = {"temperature": 0, "top_k": 1}


# ---------------------------------------------------------------------------------------------
# LMDeploy's client, as released: lmdeploy/serve/openai/api_client.py at tag v0.9.2.post1
# (github.com/InternLM/lmdeploy), the methods that speak /v1/chat/interactive, copied line for
# line (docstrings shortened). Installing lmdeploy would pull in torch; these lines need only
# requests. They send exactly LMDeploy's requests (every parameter, through locals(), the
# **kwargs dict included) and parse the answers exactly as LMDeploy does.


def json_loads(content):
    """Loads content to json format."""
    try:
        content = json.loads(content)
        return content
    except:  # noqa
        logger = logging.getLogger("lmdeploy")
        logger.warning(f"weird json content {content}")
        return ""


class APIClient:
    """Chatbot for LLaMA series models with turbomind as inference engine."""

    def __init__(self, api_server_url: str, api_key: str | None = None, **kwargs):
        self.api_server_url = api_server_url
        self.chat_intractive_v1_url = f"{api_server_url}/v1/chat/interactive"
        self.chat_completions_v1_url = f"{api_server_url}/v1/chat/completions"
        self.completions_v1_url = f"{api_server_url}/v1/completions"
        self.models_v1_url = f"{api_server_url}/v1/models"
        self.encode_v1_url = f"{api_server_url}/v1/encode"
        self._available_models = None
        self.api_key = api_key
        self.headers = {"content-type": "application/json"}
        if api_key is not None:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def chat_interactive_v1(
        self,
        prompt: str | list[dict[str, str]],
        image_url: str | list[str] | None = None,
        session_id: int = -1,
        interactive_mode: bool = False,
        stream: bool = False,
        stop: str | list[str] | None = None,
        request_output_len: int | None = None,
        top_p: float = 0.8,
        top_k: int = 40,
        temperature: float = 0.8,
        repetition_penalty: float = 1.0,
        ignore_eos: bool = False,
        skip_special_tokens: bool | None = True,
        adapter_name: str | None = None,
        **kwargs,
    ):
        """Interactive completions.

        Yields:
            json objects consist of text, tokens, input_tokens,
                history_tokens, finish_reason
        """
        pload = {k: v for k, v in locals().copy().items() if k[:2] != "__" and k not in ["self"]}
        response = requests.post(
            self.chat_intractive_v1_url, headers=self.headers, json=pload, stream=stream
        )
        for chunk in response.iter_lines(chunk_size=8192, decode_unicode=False, delimiter=b"\n"):
            if chunk:
                decoded = chunk.decode("utf-8")
                output = json_loads(decoded)
                yield output

    def chat(
        self,
        prompt: str,
        session_id: int,
        image_url: str | list[str] | None = None,
        request_output_len: int = 512,
        stream: bool = False,
        top_p: float = 0.8,
        top_k: int = 40,
        temperature: float = 0.8,
        repetition_penalty: float = 1.0,
        ignore_eos: bool = False,
    ):
        """Chat with a unique session_id.

        Yields:
            text, tokens, finish_reason
        """
        assert session_id != -1, "please set a value other than -1"
        for outputs in self.chat_interactive_v1(
            prompt,
            session_id=session_id,
            image_url=image_url,
            request_output_len=request_output_len,
            interactive_mode=True,
            stream=stream,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            repetition_penalty=repetition_penalty,
            ignore_eos=ignore_eos,
        ):
            if outputs["finish_reason"] == "length" and outputs["tokens"] == 0:
                print("WARNING: exceed session max length. Please end the session.")
            yield outputs["text"], outputs["tokens"], outputs["finish_reason"]

    def end_session(self, session_id: int):
        """End the session with a unique session_id."""
        for out in self.chat_interactive_v1(  # noqa: B007 (as LMDeploy wrote it)
            prompt="", session_id=session_id, request_output_len=0, interactive_mode=False
        ):
            pass


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def keyed_gateway(run_dir: Path, worker: Proc) -> Iterator[Proc]:
    """A gateway with two API keys (from a file: never on a command line)."""
    key_file = run_dir / "interactive-keys"
    key_file.write_text("\n".join(KEYS) + "\n")
    extra = ["--api-key-file", str(key_file)]
    with running(spawn_gateway(run_dir, worker.target, extra=extra)) as proc:
        wait_http_ok(f"http://127.0.0.1:{proc.port}/health")
        yield proc


class Ids:
    """Integer ids no other test uses (the gateway's map outlives each test)."""

    def __init__(self) -> None:
        self.next = 1000

    def __call__(self) -> int:
        self.next += 1
        return self.next


new_id = Ids()


def turn(http: httpx.Client, session_id: int, prompt: Any, **fields: Any) -> httpx.Response:
    body = {"prompt": prompt, "session_id": session_id, "interactive_mode": True}
    body.update({"request_output_len": 8, **GREEDY, **fields})
    return http.post(URL, json=body)


def native(http: httpx.Client, public_id: str) -> dict[str, Any]:
    reply = http.get(f"/v1/sessions/{public_id}")
    assert reply.status_code == 200, reply.text
    described: dict[str, Any] = reply.json()
    return described


def lines_of(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.iter_lines() if line]


# ---------------------------------------------------------------------------------------------
# Turns


def test_turns_keep_the_history_and_history_tokens_is_the_length_before_each(
    http: httpx.Client,
) -> None:
    session_id = new_id()
    questions = ["Name a colour.", "Why is the sky blue?", "Say hello in French."]
    public = None
    histories: list[int] = []
    for number, question in enumerate(questions):
        before = native(http, public)["length"] if public else 0
        reply = turn(http, session_id, question)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert list(body) == FIELDS
        assert body["text"] and body["finish_reason"] in ("stop", "length")
        assert 0 < body["tokens"] <= 8 and body["input_tokens"] > 0
        assert body["history_tokens"] == before
        public = public or reply.headers[HEADER]
        assert reply.headers[HEADER] == public  # the same session every turn
        assert reply.headers["x-llamagrid-route"] == "session:home"
        described = native(http, public)
        assert described["turns"] == number + 1
        # The session grew by this turn's prompt and answer exactly.
        assert described["length"] == before + body["input_tokens"] + body["tokens"]
        histories.append(body["history_tokens"])
    assert histories[0] == 0 and histories[0] < histories[1] < histories[2]


def test_a_streamed_turn_is_json_lines_with_the_exact_counts_last(http: httpx.Client) -> None:
    session_id = new_id()
    first = turn(http, session_id, "Name a colour.")
    public = first.headers[HEADER]
    length = native(http, public)["length"]
    body = {
        "prompt": "Name another one.",
        "session_id": session_id,
        "interactive_mode": True,
        "stream": True,
        "request_output_len": 12,
        **GREEDY,
    }
    with http.stream("POST", URL, json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/x-ndjson"
        assert reply.headers[HEADER] == public
        raw = reply.read().decode()
    assert raw.endswith("\n") and "data:" not in raw  # JSON lines, not server-sent events
    lines = [json.loads(line) for line in raw.splitlines()]
    assert len(lines) >= 2
    for line in lines:
        assert list(line) == FIELDS
        assert line["history_tokens"] == length
    counts = [line["tokens"] for line in lines]
    assert counts == sorted(counts) and counts[-1] <= 12
    *chunks, last = lines
    assert all(line["finish_reason"] is None for line in chunks)
    assert last["finish_reason"] in ("stop", "length") and last["input_tokens"] > 0
    # The same turn, not streamed, on a fork of the session taken before it: the same counts.
    fork = http.post(f"/v1/sessions/{public}/fork", json={"turns": 1}).json()
    assert native(http, public)["turns"] == 2
    again = http.post(
        f"/v1/sessions/{fork['id']}/chat/completions",
        json={
            "model": fork["model"],
            "messages": [{"role": "user", "content": "Name another one."}],
            "max_tokens": 12,
            **GREEDY,
        },
    ).json()
    assert again["usage"]["prompt_tokens"] == last["history_tokens"] + last["input_tokens"]
    http.delete(f"/v1/sessions/{fork['id']}")


def test_a_lost_session_is_a_404_once_and_then_the_id_starts_afresh(http: httpx.Client) -> None:
    session_id = new_id()
    public = turn(http, session_id, "Hi.").headers[HEADER]
    assert http.delete(f"/v1/sessions/{public}").status_code == 200
    lost = turn(http, session_id, "Do you remember me?")
    assert lost.status_code == 404, lost.text
    assert lost.json()["error"]["code"] in ("session_not_found", "session_lost")
    assert lost.headers[HEADER] == public
    fresh = turn(http, session_id, "Hello again.")
    assert fresh.status_code == 200, fresh.text
    assert fresh.headers[HEADER] != public and fresh.json()["history_tokens"] == 0


# ---------------------------------------------------------------------------------------------
# Ending, cancelling, stateless


def test_interactive_mode_false_makes_a_last_turn_and_an_empty_prompt_ends(
    http: httpx.Client,
) -> None:
    session_id = new_id()
    public = turn(http, session_id, "My name is Ada.").headers[HEADER]
    length = native(http, public)["length"]
    last = turn(http, session_id, "What is my name?", interactive_mode=False)
    assert last.status_code == 200, last.text
    assert last.headers[HEADER] == public
    assert last.json()["history_tokens"] == length  # the turn saw the history
    assert http.get(f"/v1/sessions/{public}").status_code == 404  # then the session ended
    restarted = turn(http, session_id, "Hi.")
    assert restarted.json()["history_tokens"] == 0 and restarted.headers[HEADER] != public
    # An empty prompt with interactive_mode false only ends the session.
    other = restarted.headers[HEADER]
    body = {"prompt": "", "session_id": session_id, "interactive_mode": False}
    ended = http.post(URL, json={**body, "request_output_len": 0})
    assert ended.status_code == 200 and ended.json() == NOTHING
    assert ended.headers[HEADER] == other
    assert http.get(f"/v1/sessions/{other}").status_code == 404
    # Ending what is not there is not an error (LMDeploy answers the same).
    again = http.post(URL, json=body)
    assert again.status_code == 200 and again.json() == NOTHING and HEADER not in again.headers


def test_cancel_ends_the_running_turn_and_leaves_the_session_as_it_was(
    http: httpx.Client, base_url: str
) -> None:
    session_id = new_id()
    public = turn(http, session_id, "Hi.").headers[HEADER]
    before = native(http, public)
    body = {
        "prompt": "Count to a thousand.",
        "session_id": session_id,
        "interactive_mode": True,
        "stream": True,
        "request_output_len": 1500,
        "ignore_eos": True,
    }
    with (
        httpx.Client(base_url=base_url, timeout=120) as other,
        http.stream("POST", URL, json=body) as running_turn,
    ):
        # The headers arrive once the worker has admitted the turn: it is running.
        assert running_turn.status_code == 200
        busy = other.post(URL, json={**body, "stream": False, "request_output_len": 2})
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "session_busy"
        cancel = {"prompt": "", "session_id": session_id, "cancel": True}
        cancelled = other.post(URL, json=cancel)
        assert cancelled.status_code == 200 and cancelled.json() == NOTHING
        assert cancelled.headers[HEADER] == public
        lines = lines_of(running_turn)
    last = lines[-1]
    assert last["finish_reason"] == "error" and last["error"]["code"] == "turn_cancelled"
    assert all(line["finish_reason"] is None for line in lines[:-1])
    after = native(http, public)
    assert after["turn_ends"] == before["turn_ends"] and not after["busy"]
    assert turn(http, session_id, "Still there?").json()["history_tokens"] == before["length"]
    # Cancelling needs a session; an unknown one has nothing to cancel.
    refused = http.post(URL, json={"prompt": "", "cancel": True})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "session_id"
    idle = http.post(URL, json={"prompt": "", "session_id": new_id(), "cancel": True})
    assert idle.status_code == 200 and idle.json() == NOTHING


def test_requests_without_a_session_keep_nothing(http: httpx.Client) -> None:
    for fields in ({"session_id": -1}, {"session_id": -1, "interactive_mode": False}, {}):
        body = {"prompt": "Name a colour.", "request_output_len": 6, **GREEDY, **fields}
        replies = [http.post(URL, json=body) for _ in range(2)]
        for reply in replies:
            assert reply.status_code == 200, reply.text
            assert HEADER not in reply.headers
            assert reply.json()["history_tokens"] == 0
        first, second = (reply.json() for reply in replies)
        assert first["input_tokens"] == second["input_tokens"]  # no history grew
    # An id never used, with interactive_mode false: stateless too, and nothing is kept.
    unknown = new_id()
    body = {"prompt": "Hi.", "session_id": unknown, "request_output_len": 4, **GREEDY}
    reply = http.post(URL, json=body)
    assert reply.status_code == 200 and HEADER not in reply.headers
    assert turn(http, unknown, "Hi.").json()["history_tokens"] == 0
    # The prompt may be OpenAI messages.
    messages = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Name a colour."},
    ]
    listed = http.post(URL, json={"prompt": messages, "request_output_len": 4, **GREEDY})
    assert listed.status_code == 200 and listed.json()["text"]


# ---------------------------------------------------------------------------------------------
# Keys


def test_integer_ids_are_scoped_per_api_key(keyed_gateway: Proc) -> None:
    base = f"http://127.0.0.1:{keyed_gateway.port}"
    clients = [
        httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {key}"})
        for key in KEYS
    ]
    try:
        one, two = clients
        first = turn(one, 7, "Hi, I am one.")
        assert first.status_code == 200, first.text
        second = turn(one, 7, "Who am I?")
        assert second.json()["history_tokens"] > 0
        other = turn(two, 7, "Hi, I am two.")
        assert other.status_code == 200, other.text
        # The same integer from the other key: another session, from an empty history.
        assert other.headers[HEADER] != first.headers[HEADER]
        assert other.json()["history_tokens"] == 0
        # Ending it under one key leaves the other key's session alone.
        body = {"prompt": "", "session_id": 7, "interactive_mode": False}
        assert two.post(URL, json=body).json() == NOTHING
        assert turn(one, 7, "Still one?").json()["history_tokens"] > 0
        assert turn(two, 7, "New two.").json()["history_tokens"] == 0
        # Without a key, nothing.
        refused = httpx.post(f"{base}{URL}", json={"prompt": "Hi.", "session_id": 7})
        assert refused.status_code == 401
    finally:
        for client in clients:
            client.close()


def test_lmdeploys_own_client_works_unchanged(keyed_gateway: Proc) -> None:
    """LMDeploy's APIClient (above), with an API key: chat across turns, streamed and not, then
    end_session."""
    client = APIClient(f"http://127.0.0.1:{keyed_gateway.port}", api_key=KEYS[0])
    session_id = 4242
    outputs = list(
        client.chat_interactive_v1(
            "Name a colour.",
            session_id=session_id,
            interactive_mode=True,
            request_output_len=8,
            temperature=0,
            top_k=1,
        )
    )
    assert len(outputs) == 1 and set(outputs[0]) == set(FIELDS)
    assert outputs[0]["text"] and outputs[0]["history_tokens"] == 0
    chat = client.chat(
        "And another one?", session_id, request_output_len=8, stream=True, temperature=0, top_k=1
    )
    streamed = list(chat)
    assert len(streamed) >= 2
    text = "".join(piece for piece, _, _ in streamed)
    tokens, finish = streamed[-1][1], streamed[-1][2]
    assert text and 0 < tokens <= 8 and finish in ("stop", "length")
    history = list(
        client.chat_interactive_v1(
            "One more.", session_id=session_id, interactive_mode=True, request_output_len=4
        )
    )[-1]["history_tokens"]
    assert history > outputs[0]["input_tokens"] + outputs[0]["tokens"]
    client.end_session(session_id)
    fresh = list(
        client.chat_interactive_v1(
            "Hello.", session_id=session_id, interactive_mode=True, request_output_len=4
        )
    )
    assert fresh[-1]["history_tokens"] == 0
    client.end_session(session_id)
    # Stateless, as LMDeploy's chat_interactive_v1 is by default.
    (stateless,) = list(client.chat_interactive_v1("Hi.", request_output_len=4))
    assert stateless["history_tokens"] == 0 and stateless["finish_reason"] in ("stop", "length")


# ---------------------------------------------------------------------------------------------
# Hostile fields

HUGE = 2**200
#: (body fields, the param the 400 names, the error code or None).
REFUSED: list[tuple[dict[str, Any], str | None, str | None]] = [
    ({"session_id": 2**63}, "session_id", None),
    ({"session_id": HUGE}, "session_id", None),
    ({"session_id": -2}, "session_id", None),
    ({"session_id": "7"}, "session_id", None),
    ({"session_id": 7.5}, "session_id", None),
    ({"session_id": True}, "session_id", None),
    ({"session_id": [7]}, "session_id", None),
    ({"session_id": None}, "session_id", None),
    ({"interactive_mode": "yes"}, "interactive_mode", None),
    ({"interactive_mode": [True]}, "interactive_mode", None),
    ({"stream": 1}, "stream", None),
    ({"cancel": "true"}, "cancel", None),
    ({"request_output_len": -1}, "request_output_len", None),
    ({"request_output_len": 2**32}, "request_output_len", None),
    ({"request_output_len": HUGE}, "request_output_len", None),
    ({"request_output_len": "8"}, "request_output_len", None),
    ({"request_output_len": math.nan}, "request_output_len", None),
    ({"request_output_len": 0}, "request_output_len", None),
    ({"top_k": 2**31}, "top_k", None),
    ({"top_k": -(2**31) - 1}, "top_k", None),
    ({"top_k": [1]}, "top_k", None),
    ({"top_k": -5}, "top_k", None),
    ({"temperature": math.nan}, "temperature", None),
    ({"temperature": math.inf}, "temperature", None),
    ({"temperature": -1}, "temperature", None),
    ({"temperature": "hot"}, "temperature", None),
    ({"temperature": None}, "temperature", None),
    ({"top_p": math.nan}, "top_p", None),
    ({"top_p": 2}, "top_p", None),
    ({"min_p": -1e300}, "min_p", None),
    ({"repetition_penalty": math.nan}, "repetition_penalty", None),
    ({"repetition_penalty": -1}, "repetition_penalty", None),
    ({"repetition_penalty": 1e300}, "repetition_penalty", None),
    ({"seed": -1}, "seed", None),
    ({"seed": 2**64}, "seed", None),
    ({"seed": HUGE}, "seed", None),
    ({"ignore_eos": "no"}, "ignore_eos", None),
    ({"prompt": 42}, "prompt", None),
    ({"prompt": None}, "prompt", None),
    ({"prompt": [["Hi."]]}, "prompt", None),
    ({"prompt": [[{"role": "user", "content": "Hi."}]]}, "prompt", None),
    ({"prompt": [{"role": "hacker", "content": "Hi."}]}, "prompt", None),
    ({"prompt": [{"role": "user", "content": [[1]]}]}, "prompt", None),
    ({"prompt": []}, "prompt", None),
    ({"prompt": [{"role": "user", "content": "x"}] * 5000}, "prompt", None),
    ({"prompt": "x" * (9 * 1024 * 1024)}, "prompt", None),
    ({"prompt": "\ud800"}, None, None),
    ({"stop": [["a"]]}, "stop", None),
    ({"stop": 5}, "stop", None),
    ({"stop": ["a"] * 17}, "stop", None),
    ({"stop": ["x" * 300]}, "stop", None),
    ({"stop": [""]}, "stop", None),
    ({"stop": True}, "stop", "unsupported_parameter"),
    ({"image_url": "http://127.0.0.1/cat.png"}, "image_url", "model_not_multimodal"),
    ({"image_url": ["data:image/png;base64,AAAA"] * 2}, "image_url[0]", "model_not_multimodal"),
    ({"image_url": [["x"]]}, "image_url", None),
    ({"prompt": [{"role": "user", "content": "x"}], "image_url": "data:,"}, "image_url", None),
    ({"adapter_name": "lora"}, "adapter_name", "unsupported_parameter"),
    ({"adapter_name": {"a": 1}}, "adapter_name", None),
    ({"skip_special_tokens": False}, "skip_special_tokens", "unsupported_parameter"),
    ({"min_new_tokens": 5}, "min_new_tokens", "unsupported_parameter"),
    ({"min_new_tokens": -1}, "min_new_tokens", None),
    ({"kwargs": {"model": "x"}}, "kwargs", "unsupported_parameter"),
    ({"kwargs": [1]}, "kwargs", None),
    ({"model": ""}, "model", None),
    ({"model": "m" * 300}, "model", None),
]


def _ids(cases: Iterable[tuple[dict[str, Any], str | None, str | None]]) -> list[str]:
    return [repr(fields)[:60] for fields, _, _ in cases]


@pytest.mark.parametrize(("fields", "param", "code"), REFUSED, ids=_ids(REFUSED))
def test_hostile_fields_are_400s_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], param: str | None, code: str | None
) -> None:
    for session_id in (-1, new_id()):
        body = {
            "prompt": "Hi.",
            "session_id": session_id,
            "interactive_mode": True,
            "request_output_len": 4,
            **fields,
        }
        # NaN and infinities as JSON spells them in Python (NaN, Infinity): parsed, then refused.
        reply = http.post(
            URL, content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert reply.status_code == 400, (fields, reply.text)
        error = reply.json()["error"]
        if param is not None:
            assert error["param"] == param or error["param"].startswith(param + "["), error
        if code is not None:
            assert error["code"] == code, error
    # Nothing was opened for the refused requests, and the route still answers.
    assert turn(http, session_id, "Hi.").json()["history_tokens"] == 0


def test_an_unknown_model_is_a_404_and_unknown_fields_are_refused(http: httpx.Client) -> None:
    """LMDeploy ignores fields it does not know; llamagrid names them (no silent drops), unless
    they hold nothing."""
    reply = http.post(URL, json={"prompt": "Hi.", "model": "no-such-model"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    extra = {"prompt": "Hi.", "request_output_len": 2, "no_such_field": [1, [2]]}
    reply = http.post(URL, json=extra)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "no_such_field")
    assert http.post(URL, json={**extra, "no_such_field": None}).status_code == 200


def test_a_session_keeps_its_model_and_a_refused_request_changes_nothing(
    http: httpx.Client,
) -> None:
    session_id = new_id()
    public = turn(http, session_id, "Hi.").headers[HEADER]
    length = native(http, public)["length"]
    for interactive in (True, False):
        refused = turn(http, session_id, "Hi.", model="another-model", interactive_mode=interactive)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        assert refused.headers[HEADER] == public
        hostile = turn(http, session_id, "Hi.", temperature="hot", interactive_mode=interactive)
        assert hostile.status_code == 400
    assert native(http, public)["length"] == length  # neither a turn nor the end
    assert turn(http, session_id, "Again.").json()["history_tokens"] == length
