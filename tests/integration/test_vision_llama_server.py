"""llamagrid and llama.cpp's llama-server answer the same greedy tokens for the same image and
prompt, both on SmolLM2 with the test projector (tests/mmproj_model.py).

Both take the same raw prompt, so that no chat template differs: llama-server's ``/completion``
with ``multimodal_data`` and its media marker (from ``/props``), and the worker's
GenerateRequest.prompt with GenerateRequest.images and its marker (ModelInfo.media_marker).
Both decode greedily with the end-of-generation token ignored, so every one of the tokens is
compared, and neither reuses a cached prompt.

llama-server is the one bench/build_llama_server.sh builds from the llama.cpp sources that
llama-cpp-python vendors (the same llama.cpp, mtmd included). CI does not build it, so the test
is skipped, saying so, where it is absent.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.model_source import default_model_path
from tests.mmproj_model import IMAGE_TOKENS, png_image
from tests.procs import Proc, free_port, running, spawn_worker, wait_http_ok, wait_serving

#: The prompt around the image; "{marker}" becomes each server's own media marker.
PROMPT = "Look at this picture.\n{marker}\nThe picture shows"
TOKENS = 16
#: Most likely tokens compared at each position.
TOP = 3
IMAGES = {"noise": png_image(56, 56, 1), "red": png_image(56, 56, (220, 20, 20))}


def llama_server_binary() -> Path:
    """Where bench/build_llama_server.sh puts llama-server for this llama-cpp-python."""
    version = importlib.metadata.version("llama-cpp-python")
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    cache = os.environ.get("LLAMAGRID_BENCH_CACHE") or str(Path(xdg) / "llamagrid" / "bench")
    return Path(cache) / f"llama.cpp-{version}" / "build" / "bin" / "llama-server"


@pytest.fixture(scope="module")
def llama_server(run_dir: Path, vision_projector: Path) -> Iterator[str]:
    """llama-server on SmolLM2 with the projector, one slot, two threads; its base URL."""
    binary = llama_server_binary()
    if not os.access(binary, os.X_OK):
        pytest.skip(
            f"no llama-server at {binary}: bench/build_llama_server.sh builds it (CI does not)"
        )
    port = free_port()
    log = run_dir / f"llama-server-{port}.log"
    argv = [str(binary), "-m", str(default_model_path()), "--mmproj", str(vision_projector)]
    argv += ["-np", "1", "-c", "2048", "-t", "2", "-tb", "2", "--no-webui"]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    with running(Proc(popen, port, log)) as proc:
        wait_http_ok(f"http://127.0.0.1:{port}/health")
        assert proc.popen.poll() is None, proc.log_text()
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def vision_stub(run_dir: Path, vision_projector: Path) -> Iterator[pb_grpc.InferenceServiceStub]:
    """A worker on SmolLM2 with the projector, one slot."""
    args = ["--mmproj", str(vision_projector), "--parallel", "1", "--n-ctx", "2048"]
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        channel = grpc.insecure_channel(proc.target, options=channel_options())
        yield pb_grpc.InferenceServiceStub(channel)
        channel.close()


def ask_llama_server(base_url: str, image: bytes | None) -> dict[str, Any]:
    """llama-server's greedy /completion of PROMPT (with the image in its marker's place)."""
    props = httpx.get(f"{base_url}/props", timeout=30).json()
    body: dict[str, Any] = {
        "n_predict": TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "cache_prompt": False,
        "return_tokens": True,
        "n_probs": TOP,
        "stream": False,
    }
    if image is None:
        body["prompt"] = PROMPT.format(marker="")
    else:
        text = PROMPT.format(marker=props["media_marker"])
        data = [base64.b64encode(image).decode()]
        body["prompt"] = {"prompt_string": text, "multimodal_data": data}
    reply = httpx.post(f"{base_url}/completion", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def count_tokens(base_url: str, text: str, add_special: bool) -> int:
    """How many tokens llama-server makes of text (with BOS if add_special and the model wants
    one)."""
    body = {"content": text, "add_special": add_special}
    return len(httpx.post(f"{base_url}/tokenize", json=body, timeout=30).json()["tokens"])


@dataclass
class Answer:
    """What a server answered: the greedy tokens, their text, the prompt's length, and each
    token's log-probability with the ids of the TOP most likely tokens at its position."""

    ids: list[int]
    text: str
    prompt_tokens: int
    logprobs: list[float]
    top: list[list[int]]


def llama_servers_answer(reply: dict[str, Any]) -> Answer:
    """llama-server's /completion reply as an Answer."""
    probs = reply["completion_probabilities"]
    return Answer(
        ids=list(reply["tokens"]),
        text=reply["content"],
        prompt_tokens=reply["tokens_evaluated"],
        logprobs=[p["logprob"] for p in probs],
        top=[[t["id"] for t in p["top_logprobs"]] for p in probs],
    )


def ask_llamagrid(stub: pb_grpc.InferenceServiceStub, image: bytes | None) -> Answer:
    """The worker's greedy answer to the same prompt."""
    marker = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).info.media_marker
    sampling = pb.SamplingParams(
        temperature=0.0, max_tokens=TOKENS, ignore_eos=True, top_logprobs=TOP
    )
    if image is None:
        request = pb.GenerateRequest(prompt=PROMPT.format(marker=""), sampling=sampling)
    else:
        images = [pb.Image(data=image, mime_type="image/png")]
        prompt = PROMPT.format(marker=marker)
        request = pb.GenerateRequest(prompt=prompt, images=images, sampling=sampling)
    answer = Answer([], "", -1, [], [])
    for message in stub.Generate(request, timeout=120):
        if message.HasField("chunk"):
            answer.ids += message.chunk.token_ids
            answer.text += message.chunk.text
            for lp in message.chunk.logprobs:
                answer.logprobs.append(lp.chosen.logprob)
                answer.top.append([t.token_id for t in lp.top])
        else:
            answer.prompt_tokens = message.final.usage.prompt_tokens
    return answer


def assert_same_answer(ours: Answer, theirs: Answer) -> None:
    """The same tokens and text, and the same log-probabilities up to how each normalises the
    logits: llama-server sums the softmax over the 49,152-token vocabulary in a float32
    running sum, largest first, which comes out a little small, so its log-probabilities are
    about 1e-4 higher than the worker's (float64) at every position, text-only prompt too."""
    assert len(ours.ids) == TOKENS
    assert ours.ids == theirs.ids, f"llamagrid {ours.text!r}, llama-server {theirs.text!r}"
    assert ours.text == theirs.text
    assert ours.prompt_tokens == theirs.prompt_tokens
    assert ours.top == theirs.top
    assert ours.logprobs == pytest.approx(theirs.logprobs, abs=1e-3)


def test_the_worker_reports_vision_and_its_marker(
    vision_stub: pb_grpc.InferenceServiceStub,
) -> None:
    info = vision_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).info
    assert info.vision
    assert info.media_marker


def test_without_an_image_both_answer_the_same_tokens(
    llama_server: str, vision_stub: pb_grpc.InferenceServiceStub
) -> None:
    """The harness itself: the text-only prompt gives the same greedy answer from both."""
    theirs = llama_servers_answer(ask_llama_server(llama_server, None))
    ours = ask_llamagrid(vision_stub, None)
    assert_same_answer(ours, theirs)
    print(f"\ntext only: largest logprob difference {max_difference(ours, theirs):.2e}")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_with_an_image_both_answer_the_same_tokens(
    llama_server: str, vision_stub: pb_grpc.InferenceServiceStub, name: str
) -> None:
    image = IMAGES[name]
    theirs = llama_servers_answer(ask_llama_server(llama_server, image))
    ours = ask_llamagrid(vision_stub, image)
    assert_same_answer(ours, theirs)
    # Both count the text on each side of the marker, tokenized apart, and the image's tokens.
    before, after = PROMPT.split("{marker}")
    text_tokens = count_tokens(llama_server, before, True)
    text_tokens += count_tokens(llama_server, after, False)
    assert ours.prompt_tokens == text_tokens + IMAGE_TOKENS
    print(f"\n{name}: {ours.prompt_tokens} prompt tokens, both: {ours.ids} {ours.text!r}")
    print(f"largest logprob difference {max_difference(ours, theirs):.2e}")


def test_two_images_give_different_answers(
    llama_server: str, vision_stub: pb_grpc.InferenceServiceStub
) -> None:
    """The pixels reach the model in both: the two images' greedy answers differ."""
    ours = [ask_llamagrid(vision_stub, image).ids for image in IMAGES.values()]
    theirs = [ask_llama_server(llama_server, image)["tokens"] for image in IMAGES.values()]
    assert ours[0] != ours[1]
    assert theirs[0] != theirs[1]


def max_difference(ours: Answer, theirs: Answer) -> float:
    """The largest difference between the two servers' log-probabilities."""
    return max(abs(a - b) for a, b in zip(ours.logprobs, theirs.logprobs, strict=True))
