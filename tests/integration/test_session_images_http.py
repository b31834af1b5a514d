"""Images in session turns over HTTP: a real gateway in front of two SmolLM2 workers with the
seeded test projector (tests/mmproj_model.py: 16 tokens per 56x56 image) and the shared
text-only worker, with the gateway's session store in memory or in a real redis-server.

A turn with a ``data:`` image is loaded as ``/v1/chat/completions`` loads it; a later text turn
reuses the cached context, image included. When the session's worker is killed, the next turn
reopens the session on the other worker from the gateway's copy (its images included) and
answers what a session that never moved answers to the same turns. Bad images in a session turn
are 400s, after which the session goes on as before.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_session_failover import Fleet
from tests.mmproj_model import IMAGE_TOKENS, png_image
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_serving

VISION = "smollm2-vision"
TEXT_MODEL = "smollm2"
WORKER_ARGS = ("--parallel", "2", "--n-ctx", "4096", "--n-threads", "1", "--flash-attn", "off")
#: The turns of a conversation: one with an image, then text turns that refer back to it.
FIRST = "What is in this picture?"
LATER = ("What colour is the thing in the picture?", "Describe the picture again.")


def data_url(image: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(image).decode()}"


def looking_at(url: str, text: str = FIRST) -> list[dict[str, Any]]:
    """A user message with an image and a question."""
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def saying(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


@contextlib.contextmanager
def started(
    tmp: Path, projector: Path, text_worker: Proc, store: str, count: int
) -> Iterator[Fleet]:
    """``count`` vision workers and the shared text-only one behind one gateway whose session
    store is ``store``."""
    args = ("--mmproj", str(projector), "--alias", VISION, *WORKER_ARGS)
    workers = [spawn_worker(tmp, *args) for _ in range(count)]
    try:
        for proc in workers:
            wait_serving(proc)
        targets = [*(w.target for w in workers), text_worker.target]
        extra = ["--session-store", store, "--health-retry-s", "0.1"]
        with running(spawn_gateway(tmp, *targets, extra=extra)) as gateway:
            fleet = Fleet(workers, [gateway])
            fleet.wait_available(0, targets)
            yield fleet
    finally:
        for proc in workers:
            with running(proc):
                pass


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, vision_projector: Path, worker: Proc
) -> Iterator[Fleet]:
    """One vision worker and the text-only one, the session store in the gateway's memory."""
    tmp = tmp_path_factory.mktemp("session-images")
    with started(tmp, vision_projector, worker, "memory", 1) as fleet:
        yield fleet


@pytest.fixture(params=["memory", "redis"])
def fleet(
    request: pytest.FixtureRequest, tmp_path: Path, vision_projector: Path, worker: Proc
) -> Iterator[Fleet]:
    """Two vision workers (one is to be killed), the session store in the gateway's memory or
    in a redis-server."""
    store = request.getfixturevalue("redis_url") if request.param == "redis" else "memory"
    with started(tmp_path, vision_projector, worker, store, 2) as fleet:
        yield fleet


def open_session(http: httpx.Client, model: str = VISION) -> dict[str, Any]:
    opened = http.post("/v1/sessions", json={"model": model})
    assert opened.status_code == 201, opened.text
    session: dict[str, Any] = opened.json()
    return session


def turn(http: httpx.Client, session: dict[str, Any], messages: list[Any]) -> httpx.Response:
    body = {"model": session["model"], "messages": messages, "max_tokens": 8, "temperature": 0}
    return http.post(f"/v1/sessions/{session['id']}/chat/completions", json=body)


def answer(reply: httpx.Response) -> tuple[str, dict[str, Any]]:
    """The reply's text and usage."""
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body["choices"][0]["message"]["content"], body["usage"]


def conversation(http: httpx.Client, session: dict[str, Any], url: str) -> list[str]:
    """The image turn and the text turns after it, each reusing the context before it, the
    image's included."""
    text, usage = answer(turn(http, session, looking_at(url)))
    image_turn, texts = usage["prompt_tokens"], [text]
    for question in LATER:
        text, usage = answer(turn(http, session, saying(question)))
        assert usage["prompt_tokens_details"]["cached_tokens"] >= image_turn, usage
        texts.append(text)
    return texts


def test_a_session_turn_takes_an_image_and_later_turns_reuse_it(shared: Fleet) -> None:
    (http,) = shared.http
    url = data_url(png_image(56, 56, 11))
    session = open_session(http)
    with_image = answer(turn(http, session, looking_at(url)))[1]
    plain = open_session(http)
    without = answer(turn(http, plain, saying(FIRST)))[1]
    assert with_image["prompt_tokens"] == without["prompt_tokens"] + IMAGE_TOKENS
    usage = answer(turn(http, session, saying(LATER[0])))[1]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= with_image["prompt_tokens"]
    described = http.get(f"/v1/sessions/{session['id']}").json()
    assert (described["turns"], described["images"]) == (2, 1)
    assert http.get(f"/v1/sessions/{plain['id']}").json()["images"] == 0


def test_a_session_with_images_survives_its_worker_and_answers_as_one_that_never_moved(
    fleet: Fleet,
) -> None:
    (http,) = fleet.http
    url = data_url(png_image(56, 56, 12))
    moved = open_session(http)
    before_kill = conversation(http, moved, url)
    fleet.kill(moved["worker"])
    reply = turn(http, moved, saying("And now?"))
    after_kill = answer(reply)[0]
    assert reply.headers["x-llamagrid-route"] == "session:resumed"
    assert reply.headers["x-llamagrid-worker"] != moved["worker"]
    described = http.get(f"/v1/sessions/{moved['id']}").json()
    assert (described["turns"], described["images"]) == (len(LATER) + 2, 1)
    assert described["worker"] != moved["worker"]
    # The same turns on a session that never moved (on the surviving worker, its KV resident).
    control = open_session(http)
    assert conversation(http, control, url) == before_kill
    assert answer(turn(http, control, saying("And now?")))[0] == after_kill
    # The moved session goes on at its new home, reusing its context.
    reply = turn(http, moved, saying("Once more."))
    assert reply.headers["x-llamagrid-route"] == "session:home"
    assert answer(reply)[1]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize(
    ("model", "url", "says"),
    [
        (TEXT_MODEL, data_url(png_image(56, 56, 13)), "does not read images"),
        (VISION, "https://example.com/cat.png", "fetching images is off"),
        (VISION, data_url(b"not an image at all"), ""),
    ],
)
def test_a_bad_image_in_a_session_turn_is_a_400_and_the_session_goes_on(
    shared: Fleet, model: str, url: str, says: str
) -> None:
    (http,) = shared.http
    session = open_session(http, model)
    answer(turn(http, session, saying("Hello.")))
    refused = turn(http, session, looking_at(url))
    assert refused.status_code == 400, refused.text
    assert says in refused.json()["error"]["message"]
    answer(turn(http, session, saying("Hello again.")))
    described = http.get(f"/v1/sessions/{session['id']}").json()
    assert (described["turns"], described["images"]) == (2, 0)
