"""Images over HTTP against the fake worker: OpenAI ``image_url`` parts, llama-server's
``multimodal_data`` and /props, the gateway's caps, and the routes that take no images."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.session_directory import (
    public_id,
)
from llamagrid.gateway.settings import GatewaySettings
from llamagrid.v1 import inference_pb2 as pb
from tests.contract.conftest import API_KEY, Gateway, eventually, serve
from tests.contract.fake_worker import MEDIA_MARKER, MODEL, FakeWorker
from tests.mmproj_model import png_image

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PNG = png_image(8, 8, 1)
PNG_URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


@contextlib.asynccontextmanager
async def image_gateway(worker: FakeWorker, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway with these image settings, once it knows the worker's models."""
    config = GatewaySettings(
        workers=[worker.address], api_key=API_KEY, health_retry_s=0.05, **settings
    )
    pool = create_pool(config)
    async with serve(create_app(config, pool)) as url:
        gateway = Gateway(url, pool, worker)
        await eventually(lambda: MODEL in gateway.pool.models())
        yield gateway


@pytest.fixture
async def vision(vision_worker: FakeWorker) -> AsyncIterator[Gateway]:
    """A gateway in front of a model that reads images, with two images and 1 KiB at most."""
    async with image_gateway(vision_worker, max_images=2, max_image_bytes=1024) as gateway:
        yield gateway


def image_part(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def user(*parts: dict[str, Any]) -> list[Any]:
    return [{"role": "user", "content": list(parts)}]


async def chat_error(gateway: Gateway, url: str) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.openai().chat.completions.create(model=MODEL, messages=user(image_part(url)))
    assert gateway.worker.generate_requests() == []
    return caught.value


async def refused(gateway: Gateway, messages: list[Any]) -> openai.APIStatusError:
    """The error of a chat request that must fail before reaching the worker."""
    with pytest.raises(openai.APIStatusError) as caught:
        await gateway.openai().chat.completions.create(model=MODEL, messages=messages)
    assert gateway.worker.generate_requests() == []
    return caught.value


async def test_an_image_and_its_text_reach_the_worker_as_parts_in_order(vision: Gateway) -> None:
    messages = user(
        {"type": "text", "text": "Describe"}, image_part(PNG_URL), {"type": "text", "text": "now"}
    )
    out = await vision.openai().chat.completions.create(model=MODEL, messages=messages)
    assert out.choices[0].message.content == "Hello, world!"
    (sent,) = vision.worker.generate_requests()
    (message,) = sent.chat.messages
    assert message.content == "" and message.role == "user"
    assert [part.WhichOneof("part") for part in message.parts] == ["text", "image", "text"]
    assert (message.parts[0].text, message.parts[2].text) == ("Describe", "now")
    assert message.parts[1].image == pb.Image(data=PNG, mime_type="image/png")


async def test_text_parts_alone_are_still_joined_into_content(vision: Gateway) -> None:
    messages = user({"type": "text", "text": "a"}, {"type": "text", "text": "b"})
    await vision.openai().chat.completions.create(model=MODEL, messages=messages)
    (message,) = vision.worker.generate_requests()[-1].chat.messages
    assert message.content == "a\nb" and not message.parts


async def test_a_bare_url_string_and_detail_auto_are_accepted(vision: Gateway) -> None:
    client = vision.openai()
    await client.chat.completions.create(
        model=MODEL, messages=user({"type": "image_url", "image_url": PNG_URL})
    )
    await client.chat.completions.create(
        model=MODEL, messages=user(image_part(PNG_URL, detail="auto"))
    )
    sent = vision.worker.generate_requests()
    assert [r.chat.messages[0].parts[0].image.data for r in sent] == [PNG, PNG]


@pytest.mark.parametrize("detail", ["low", "high", "original"])
async def test_a_detail_other_than_auto_is_refused(vision: Gateway, detail: str) -> None:
    error = await refused(vision, user(image_part(PNG_URL, detail=detail)))
    assert error.status_code == 400 and error.code == "unsupported_parameter"
    assert error.param == "messages[0].content[0].image_url.detail"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:image/png;base64,iVBO@@==", "not valid base64"),
        ("data:image/png;base64,iVBO Rw0K", "not valid base64"),
        ("data:image/png;base64,iVBORw0K\n", "not valid base64"),
        ("data:image/png;base64,_-8=", "not valid base64"),
        ("data:image/png;base64,iVBORw0", "not valid base64"),  # padding missing
        ("data:image/png;base64,", "empty"),
        ("data:image/png,iVBORw0K", "Only base64 data URLs"),
        ("data:image/png;base64", "needs a ','"),
        ("data:text/plain;base64,aGVsbG8=", "not an image type"),
        ("data:;base64,aGVsbG8=", "not an image type"),
        ("data:image/;base64,aGVsbG8=", "not an image type"),
        ("ftp://example.com/cat.png", "not a data:, http(s):// or file:// URL"),
        ("cat.png", "not a data:, http(s):// or file:// URL"),
    ],
)
async def test_a_bad_image_url_is_a_400_naming_the_part(
    vision: Gateway, url: str, says: str
) -> None:
    error = await refused(vision, user({"type": "text", "text": "x"}, image_part(url)))
    assert error.status_code == 400 and says in error.message
    assert error.param == "messages[0].content[1].image_url"


async def test_a_malformed_image_part_is_a_400(vision: Gateway) -> None:
    error = await refused(vision, user({"type": "image_url"}))
    assert error.status_code == 400 and error.param == "messages[0].content[0].image_url"
    error = await refused(vision, user(image_part(PNG_URL, frobnicate=1)))
    assert error.code == "unsupported_parameter"
    assert error.param == "messages[0].content[0].image_url.frobnicate"


async def test_an_image_over_the_byte_cap_is_a_413(vision: Gateway) -> None:
    big = "data:image/png;base64," + base64.b64encode(bytes(1025)).decode()
    error = await refused(vision, user(image_part(big)))
    assert error.status_code == 413 and error.code == "request_entity_too_large"
    assert "1024 bytes" in error.message


async def test_more_images_than_the_cap_is_a_400_naming_the_first_extra(vision: Gateway) -> None:
    messages = [*user(image_part(PNG_URL)), *user(image_part(PNG_URL), image_part(PNG_URL))]
    error = await refused(vision, messages)
    assert error.status_code == 400 and "3 images; at most 2" in error.message
    assert error.param == "messages[1].content[1].image_url"


async def test_an_image_for_a_model_without_a_projector_is_refused_at_the_gateway(
    gateway: Gateway,
) -> None:
    error = await refused(gateway, user(image_part(PNG_URL)))
    assert error.status_code == 400 and error.code == "model_not_multimodal"
    assert "--mmproj" in error.message and f"'{MODEL}'" in error.message


@pytest.mark.parametrize("stream", [False, True])
async def test_the_workers_refusal_of_an_image_names_the_content_part(
    vision: Gateway, stream: bool
) -> None:
    vision.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "not an image",
        reason="INVALID_ARGUMENT",
        param="messages[0].parts[1].image",
    )
    messages = user({"type": "text", "text": "x"}, image_part(PNG_URL))
    with pytest.raises(openai.BadRequestError) as caught:
        await vision.openai().chat.completions.create(model=MODEL, messages=messages, stream=stream)
    assert "not an image" in caught.value.message
    assert caught.value.param == "messages[0].content[1].image_url"


async def test_an_http_url_is_not_fetched_by_default(vision: Gateway) -> None:
    error = await refused(vision, user(image_part("https://example.com/cat.png")))
    assert error.status_code == 400 and "fetching images is off" in error.message
    assert "--image-fetch-allow-hosts" in error.message and "data:image/png;base64" in error.message


async def test_a_file_url_is_not_read_by_default(vision: Gateway) -> None:
    error = await refused(vision, user(image_part("file:///etc/hostname")))
    assert error.status_code == 400 and "--image-file-dir" in error.message


async def test_routes_that_take_no_images_say_so(vision: Gateway) -> None:
    image = {"type": "input_image", "image_url": PNG_URL}
    body = {"model": MODEL, "input": [{"role": "user", "content": [image]}]}
    async with vision.http(headers=AUTH) as http:
        responses = await http.post("/v1/responses", json=body)
    assert responses.status_code == 400, responses.text
    assert "input_image is not supported on this route" in responses.json()["error"]["message"]
    assert vision.worker.generate_requests() == []


async def session_turn(gateway: Gateway, url: str, model: str = "") -> httpx.Response:
    """A session turn with one image, on a session of the gateway's worker (which the gateway's
    store does not know: the id alone names the worker)."""
    session_id = public_id(gateway.worker.address, "ses_1")
    body = {"model": model, "messages": user(image_part(url), {"type": "text", "text": "And?"})}
    async with gateway.http(headers=AUTH) as http:
        return await http.post(f"/v1/sessions/{session_id}/chat/completions", json=body)


@pytest.mark.parametrize("model", ["", MODEL, "gpt-4o"])
async def test_a_session_turns_image_reaches_the_worker_whatever_model_the_body_names(
    vision: Gateway, model: str
) -> None:
    reply = await session_turn(vision, PNG_URL, model)
    # The image is loaded for the session's model whatever the body names; the name itself is
    # the worker's to judge (a real worker takes "" as its only model).
    assert reply.status_code == 200 or model != MODEL, reply.text
    (sent,) = vision.worker.generate_requests()
    assert sent.session.session_id == "ses_1"
    (message,) = sent.chat.messages
    assert message.parts[0].image == pb.Image(data=PNG, mime_type="image/png")


async def test_a_session_turns_image_is_refused_as_a_chats_is(
    vision: Gateway, gateway: Gateway
) -> None:
    no_projector = await session_turn(gateway, PNG_URL)
    assert no_projector.status_code == 400, no_projector.text
    assert no_projector.json()["error"]["code"] == "model_not_multimodal"
    fetched = await session_turn(vision, "https://example.com/cat.png")
    assert fetched.status_code == 400 and "fetching images is off" in fetched.text
    malformed = await session_turn(vision, "data:image/png;base64,iVBO@@==")
    assert malformed.status_code == 400 and "not valid base64" in malformed.text
    assert malformed.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert vision.worker.generate_requests() == gateway.worker.generate_requests() == []


async def test_a_text_completion_takes_llama_servers_prompt_object(vision: Gateway) -> None:
    prompt = {"prompt_string": f"{MEDIA_MARKER} What?", "multimodal_data": ["aGk="]}
    async with vision.http(headers=AUTH) as http:
        reply = await http.post("/v1/completions", json={"model": MODEL, "prompt": prompt})
        bad = await http.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": {**prompt, "multimodal_data": ["a"]}},
        )
    assert reply.status_code == 200, reply.text
    (sent,) = vision.worker.generate_requests()
    assert sent.prompt == f"{MEDIA_MARKER} What?" and list(sent.images) == [pb.Image(data=b"hi")]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt.multimodal_data[0]"


# ---------------------------------------------------------------------------------------------
# llama-server's /completion and /props


def completion_body(*images: str, marker: str = MEDIA_MARKER) -> dict[str, Any]:
    prompt = {
        "prompt_string": f"{marker * len(images)} What is it?",
        "multimodal_data": list(images),
    }
    return {"prompt": prompt, "n_predict": 4}


async def test_multimodal_data_becomes_the_prompt_and_its_images(vision: Gateway) -> None:
    body = completion_body(base64.b64encode(PNG).decode(), base64.b64encode(b"GIF89a").decode())
    async with vision.http(headers=AUTH) as http:
        reply = await http.post("/completion", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["content"] == "Hello, world!"
    (sent,) = vision.worker.generate_requests()
    assert sent.prompt == f"{MEDIA_MARKER * 2} What is it?"
    assert list(sent.images) == [pb.Image(data=PNG), pb.Image(data=b"GIF89a")]


async def test_a_prompt_object_without_images_is_a_plain_prompt(vision: Gateway) -> None:
    async with vision.http(headers=AUTH) as http:
        reply = await http.post("/completion", json={"prompt": {"prompt_string": "Hi"}})
    assert reply.status_code == 200, reply.text
    (sent,) = vision.worker.generate_requests()
    assert sent.prompt == "Hi" and not sent.images


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        ("not base64!", 400, "not valid base64"),
        ("", 400, "empty"),
        (base64.b64encode(bytes(2000)).decode(), 413, "1024 bytes"),
    ],
)
async def test_bad_multimodal_data_is_refused_in_llama_servers_shape(
    vision: Gateway, data: str, status: int, says: str
) -> None:
    async with vision.http(headers=AUTH) as http:
        reply = await http.post("/completion", json=completion_body(data))
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == status and says in error["message"]
    assert error["param"] == "prompt.multimodal_data[0]"
    assert vision.worker.generate_requests() == []


async def test_the_workers_refusal_of_an_image_names_multimodal_data(vision: Gateway) -> None:
    vision.worker.fail_with(
        grpc.StatusCode.INVALID_ARGUMENT,
        "not an image",
        reason="INVALID_ARGUMENT",
        param="images[0]",
    )
    async with vision.http(headers=AUTH) as http:
        reply = await http.post("/completion", json=completion_body(base64.b64encode(PNG).decode()))
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "prompt.multimodal_data[0]"


async def test_the_old_image_data_form_is_refused_not_ignored(vision: Gateway) -> None:
    body = {"prompt": "[img-12] What is it?", "image_data": [{"data": "aGk=", "id": 12}]}
    async with vision.http(headers=AUTH) as http:
        reply = await http.post("/completion", json=body)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["param"], error["reason"]) == ("image_data", "unsupported_parameter")
    assert "multimodal_data" in error["message"] and "/props" in error["message"]
    assert vision.worker.generate_requests() == []


async def test_multimodal_data_for_a_model_without_a_projector_is_refused(gateway: Gateway) -> None:
    async with gateway.http(headers=AUTH) as http:
        reply = await http.post("/completion", json=completion_body(base64.b64encode(PNG).decode()))
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "prompt.multimodal_data[0]"
    assert gateway.worker.generate_requests() == []


async def test_props_report_vision_and_the_media_marker(vision: Gateway, gateway: Gateway) -> None:
    async with vision.http(headers=AUTH) as http:
        seeing = (await http.get("/props")).json()
    async with gateway.http(headers=AUTH) as http:
        blind = (await http.get("/props")).json()
    assert seeing["modalities"] == {"vision": True, "audio": False, "video": False}
    assert seeing["media_marker"] == MEDIA_MARKER
    assert blind["modalities"] == {"vision": False, "audio": False, "video": False}
    assert blind["media_marker"] == ""


async def test_http_error_bodies_stay_openai_shaped(vision: Gateway) -> None:
    async with vision.http(headers=AUTH) as http:
        reply = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": user(image_part("data:image/png;base64,@"))},
        )
    assert reply.status_code == 400
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
