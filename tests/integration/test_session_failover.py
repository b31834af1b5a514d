"""A session survives the loss of its worker (issue 12): two workers, a real redis-server, and
two gateways sharing it as their session store. The home worker is killed with SIGKILL; the next
turn reopens the session elsewhere from the stored transcript (``session:resumed``) and answers
exactly what a run without the kill answers. A stream under way when its worker dies ends with an
error event, is never replayed, and leaves the session as it was.

redis-server is started as the README tells users to run it for a shared session store
(tests/integration/conftest.py ``redis_url``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_serving

WORKER_ARGS = ("--parallel", "2", "--n-ctx", "4096", "--n-threads", "1", "--flash-attn", "off")
QUESTIONS = [f"Name something that is {colour}." for colour in ("red", "blue", "green", "white")]
QUESTIONS += ["Say one word.", "Name a fruit.", "Name a city.", "Name a tree.", "Hi.", "Bye."]


class Fleet:
    def __init__(self, workers: list[Proc], gateways: list[Proc]) -> None:
        self.workers = workers
        self.gateways = gateways
        self.http = [
            httpx.Client(base_url=f"http://127.0.0.1:{g.port}", timeout=120) for g in gateways
        ]

    def wait_available(self, gateway: int, addresses: list[str], timeout: float = 60) -> None:
        wanted = {f'llamagrid_gateway_worker_available{{worker="{a}"}} 1.0' for a in addresses}
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.http[gateway].get("/metrics").text.splitlines()):
            assert time.monotonic() < deadline, "the gateway did not see every worker"
            time.sleep(0.05)

    def kill(self, address: str) -> None:
        victim = next(w for w in self.workers if w.target == address)
        os.kill(victim.popen.pid, signal.SIGKILL)
        victim.popen.wait(30)


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[Fleet]:
    workers = [spawn_worker(tmp_path, *WORKER_ARGS) for _ in range(2)]
    try:
        for worker in workers:
            wait_serving(worker)
        targets = [w.target for w in workers]
        extra = ["--session-store", redis_url, "--health-retry-s", "0.1"]
        gateways = [spawn_gateway(tmp_path, *targets, extra=extra) for _ in range(2)]
        try:
            fleet = Fleet(workers, gateways)
            for index in range(2):
                fleet.wait_available(index, targets)
            yield fleet
        finally:
            for gateway in gateways:
                with running(gateway):
                    pass
    finally:
        for worker in workers:
            with running(worker):
                pass


def model(http: httpx.Client) -> str:
    name: str = http.get("/v1/models").json()["data"][0]["id"]
    return name


def chat_turn(http: httpx.Client, session_id: str, question: str) -> httpx.Response:
    body = {
        "model": model(http),
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 12,
        "temperature": 0,
    }
    return http.post(f"/v1/sessions/{session_id}/chat/completions", json=body)


def text_of(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    content: str = reply.json()["choices"][0]["message"]["content"]
    return content


def test_a_killed_home_worker_loses_no_session(fleet: Fleet) -> None:
    a, b = fleet.http
    opened = a.post("/v1/sessions", json={"model": model(a)})
    assert opened.status_code == 201, opened.text
    session_id, home = opened.json()["id"], opened.json()["worker"]
    answers: list[str] = []
    for index, question in enumerate(QUESTIONS[:5]):
        reply = chat_turn((a, b)[index % 2], session_id, question)  # both gateways, one session
        assert reply.headers["x-llamagrid-route"] == "session:home"
        answers.append(text_of(reply))
    fleet.kill(home)
    reply = chat_turn(b, session_id, QUESTIONS[5])
    answers.append(text_of(reply))
    assert reply.headers["x-llamagrid-route"] == "session:resumed"
    assert reply.headers["x-llamagrid-worker"] != home
    for index, question in enumerate(QUESTIONS[6:], start=6):
        reply = chat_turn((a, b)[index % 2], session_id, question)
        assert reply.headers["x-llamagrid-route"] == "session:home"
        answers.append(text_of(reply))
    described = a.get(f"/v1/sessions/{session_id}").json()
    assert described["turns"] == 10 and described["worker"] != home
    # The same ten turns without a kill: one stateless request over the whole history each.
    history: list[dict[str, str]] = []
    for question, answer in zip(QUESTIONS, answers, strict=True):
        history.append({"role": "user", "content": question})
        body = {"model": model(a), "messages": history, "max_tokens": 12, "temperature": 0}
        reference = a.post("/v1/chat/completions", json=body)
        assert text_of(reference) == answer, f"turn {len(history) // 2 + 1}"
        history.append({"role": "assistant", "content": answer})


def test_a_stream_cut_by_a_dying_worker_is_not_replayed_and_commits_nothing(
    fleet: Fleet,
) -> None:
    a, b = fleet.http
    opened = a.post("/v1/sessions", json={"model": model(a)}).json()
    session_id, home = opened["id"], opened["worker"]
    text_of(chat_turn(a, session_id, QUESTIONS[0]))
    body = {
        "model": model(a),
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    events: list[str] = []
    with a.stream("POST", f"/v1/sessions/{session_id}/chat/completions", json=body) as stream:
        lines = stream.iter_lines()
        for line in lines:
            events.append(line)
            if line.startswith("data: {") and '"content"' in line and len(events) > 6:
                break
        fleet.kill(home)
        events.extend(lines)
    assert any('"error"' in e for e in events) and not any("[DONE]" in e for e in events)
    after = b.get(f"/v1/sessions/{session_id}")
    assert after.status_code == 200, after.text
    assert after.json()["turns"] == 1  # the cut turn committed nothing
    retry = chat_turn(b, session_id, "Count to three.")
    text_of(retry)
    assert b.get(f"/v1/sessions/{session_id}").json()["turns"] == 2


def test_new_sessions_go_where_sessions_per_slot_are_fewest(fleet: Fleet) -> None:
    a, _ = fleet.http
    opened = [a.post("/v1/sessions", json={"model": model(a)}) for _ in range(4)]
    assert all(o.headers["x-llamagrid-route"] == "session:new" for o in opened)
    homes = [o.json()["worker"] for o in opened]
    assert sorted(homes) == sorted([w.target for w in fleet.workers] * 2), homes


def test_without_a_copy_a_lost_session_is_a_404(fleet: Fleet, redis_url: str) -> None:
    a, _ = fleet.http
    opened = a.post("/v1/sessions", json={"model": model(a)}).json()
    redis.Redis.from_url(redis_url).delete(f"llamagrid:session:{opened['id']}")
    fleet.kill(opened["worker"])
    lost = chat_turn(a, opened["id"], "Hello?")
    assert lost.status_code == 404, lost.text
    assert lost.json()["error"]["code"] == "session_lost"
