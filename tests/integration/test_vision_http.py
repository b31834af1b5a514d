"""Images over HTTP end to end: a real gateway in front of a SmolLM2 worker with a vision
projector (tests/mmproj_model.py: 16 tokens per 56x56 image) and the shared text-only worker.

The answers are meaningless (the projector's weights are random); what is shown is that the
pixels reach the model: an image adds exactly its tokens to the prompt, the same image gives
the same greedy answer, two images give different answers, and bad images are 400s after which
the worker answers as before.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llamagrid.worker.model_source import default_model_path
from tests.integration.test_compat_cli import started
from tests.mmproj_model import png_image
from tests.procs import (
    Proc,
    free_port,
    running,
    spawn_gateway,
    spawn_worker,
    wait_http_ok,
    wait_serving,
)

VISION = "smollm2-vision"
TEXT_MODEL = "smollm2"
#: Tokens one 56x56 image takes with the test projector.
IMAGE_TOKENS = 16
QUESTION = "What is in this picture?"


def data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(image).decode()}"


def huge_png_header() -> bytes:
    """A PNG whose header claims 100000x100000 pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def vision_worker(run_dir: Path, vision_projector: Path) -> Iterator[Proc]:
    args = ["--mmproj", str(vision_projector), "--alias", VISION, "--parallel", "2"]
    with running(spawn_worker(run_dir, *args, "--n-ctx", "4096")) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def vision_url(run_dir: Path, vision_worker: Proc, worker: Proc) -> Iterator[str]:
    """A gateway in front of the vision worker and the shared text-only one."""
    with running(spawn_gateway(run_dir, vision_worker.target, worker.target)) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        for model in (VISION, TEXT_MODEL):
            wait_http_ok(f"{url}/v1/models/{model}")
        yield url


@pytest.fixture(scope="module")
def client(vision_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vision_url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, *images: bytes, model: str = VISION) -> Any:
    parts: list[Any] = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    parts.append({"type": "text", "text": QUESTION})
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": parts}],
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=5,
    )


def first_logprobs(reply: Any) -> dict[str, float]:
    return {top.token: top.logprob for top in reply.choices[0].logprobs.content[0].top_logprobs}


def test_an_image_adds_exactly_its_tokens_to_the_prompt(client: openai.OpenAI) -> None:
    text_only = client.chat.completions.create(
        model=VISION, messages=[{"role": "user", "content": QUESTION}], max_tokens=1
    )
    one = ask(client, png_image(56, 56, 1))
    two = ask(client, png_image(56, 56, 1), png_image(56, 56, 2))
    assert text_only.usage is not None and one.usage is not None and two.usage is not None
    assert one.usage.prompt_tokens == text_only.usage.prompt_tokens + IMAGE_TOKENS
    assert two.usage.prompt_tokens == text_only.usage.prompt_tokens + 2 * IMAGE_TOKENS


def test_the_same_image_gives_the_same_answer_and_another_image_another(
    client: openai.OpenAI,
) -> None:
    first, again = ask(client, png_image(56, 56, 3)), ask(client, png_image(56, 56, 3))
    other = ask(client, png_image(56, 56, (255, 0, 0)))
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first_logprobs(first) == pytest.approx(first_logprobs(again))
    assert first_logprobs(first) != pytest.approx(first_logprobs(other), abs=1e-4)


def test_a_plain_http_client_and_a_stream_carry_images_too(vision_url: str) -> None:
    url = data_url(png_image(56, 56, 4))
    body = {
        "model": VISION,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        "temperature": 0,
        "max_tokens": 8,
    }
    whole = httpx.post(f"{vision_url}/v1/chat/completions", json=body, timeout=120)
    assert whole.status_code == 200, whole.text
    streamed = httpx.post(
        f"{vision_url}/v1/chat/completions", json={**body, "stream": True}, timeout=120
    )
    assert streamed.status_code == 200, streamed.text
    events = [
        json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")
    ]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole.json()["choices"][0]["message"]["content"]


def test_lmdeploys_interactive_route_takes_image_url(
    client: openai.OpenAI, vision_url: str
) -> None:
    """LMDeploy's image_url: the images before the string prompt's text, kept in the session
    for its later turns."""
    picture = png_image(56, 56, 5)

    def interactive(session_id: int, **fields: Any) -> dict[str, Any]:
        body = {"model": VISION, "session_id": session_id, "request_output_len": 8, **fields}
        body = {"interactive_mode": True, "temperature": 0, **body}
        reply = httpx.post(f"{vision_url}/v1/chat/interactive", json=body, timeout=120)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    text_only = interactive(40, prompt=QUESTION)
    seen = interactive(41, prompt=QUESTION, image_url=data_url(picture))
    assert seen["input_tokens"] == text_only["input_tokens"] + IMAGE_TOKENS
    assert seen["text"] == ask(client, picture).choices[0].message.content
    later = interactive(41, prompt="And what colour is it?")
    assert later["history_tokens"] >= seen["input_tokens"] and later["finish_reason"]
    for session_id in (40, 41):
        interactive(session_id, prompt="", interactive_mode=False)


def test_completion_takes_multimodal_data_at_the_media_marker(vision_url: str) -> None:
    props = httpx.get(f"{vision_url}/props", params={"model": VISION}, timeout=30).json()
    assert props["modalities"]["vision"] is True
    marker = props["media_marker"]
    assert marker
    text_props = httpx.get(f"{vision_url}/props", params={"model": TEXT_MODEL}, timeout=30).json()
    assert text_props["modalities"]["vision"] is False
    image = base64.b64encode(png_image(56, 56, 5)).decode()
    with_image = {
        "model": VISION,
        "prompt": {"prompt_string": f"{marker}{QUESTION}", "multimodal_data": [image]},
        "n_predict": 4,
        "temperature": 0,
    }
    without = {"model": VISION, "prompt": QUESTION, "n_predict": 4, "temperature": 0}
    a = httpx.post(f"{vision_url}/completion", json=with_image, timeout=120)
    b = httpx.post(f"{vision_url}/completion", json=without, timeout=120)
    assert a.status_code == 200 and b.status_code == 200, (a.text, b.text)
    assert a.json()["tokens_evaluated"] == b.json()["tokens_evaluated"] + IMAGE_TOKENS
    # One marker, two images: the worker refuses the mismatch.
    mismatch = {**with_image, "prompt": {**with_image["prompt"], "multimodal_data": [image] * 2}}
    refused = httpx.post(f"{vision_url}/completion", json=mismatch, timeout=120)
    assert refused.status_code == 400, refused.text


def test_a_model_without_a_projector_refuses_images(client: openai.OpenAI, vision_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, png_image(56, 56, 1), model=TEXT_MODEL)
    assert caught.value.code == "model_not_multimodal"
    body = {
        "model": TEXT_MODEL,
        "prompt": {"prompt_string": "<__media__> hi", "multimodal_data": ["aGk="]},
    }
    reply = httpx.post(f"{vision_url}/completion", json=body, timeout=60)
    assert reply.status_code == 400, reply.text


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (data_url(b"not an image at all"), ""),
        (data_url(huge_png_header()), ""),
        (data_url(png_image(56, 56, 1), "image/jpeg"), ""),
        (data_url(png_image(56, 56, 1)[:40]), ""),
        ("data:image/png;base64,!!!!", "base64"),
    ],
)
def test_a_bad_image_is_a_400_and_the_worker_answers_as_before(
    client: openai.OpenAI, url: str, says: str
) -> None:
    before = ask(client, png_image(56, 56, 6))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=VISION,
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ],
            max_tokens=4,
        )
    assert says in caught.value.message
    after = ask(client, png_image(56, 56, 6))
    assert after.choices[0].message.content == before.choices[0].message.content


def test_llama_cpp_pythons_llava_command_line_serves_images(
    tmp_path: Path, vision_projector: Path
) -> None:
    """`llamagrid llama-cpp-python --clip_model_path P --chat_format llava-1-5`: the projector
    loads, and the LLaVA-1.5 template puts a turn's images before its text, as
    llama-cpp-python's handler does: the image before or after the text is the same prompt."""
    port = free_port()
    argv = ["llama-cpp-python", "--model", str(default_model_path()), "--model_alias", "llava"]
    argv += ["--clip_model_path", str(vision_projector), "--chat_format", "llava-1-5"]
    argv += ["--n_threads", "1", "--host", "127.0.0.1", "--port", str(port)]
    with started(tmp_path, [*argv, "--worker-port", str(free_port())]):
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/health", timeout=180)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        image = {"type": "image_url", "image_url": {"url": data_url(png_image(56, 56, 8))}}
        text = {"type": "text", "text": QUESTION}
        replies = [
            client.chat.completions.create(
                model="llava",
                messages=[{"role": "user", "content": parts}],
                temperature=0,
                max_tokens=4,
                logprobs=True,
                top_logprobs=5,
            )
            for parts in ([image, text], [text, image], [image, image, text])
        ]
    first, swapped, two = (reply.usage.prompt_tokens for reply in replies if reply.usage)
    assert first == swapped and two == first + IMAGE_TOKENS
    assert first_logprobs(replies[0]) == pytest.approx(first_logprobs(replies[1]))
