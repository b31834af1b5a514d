"""Chat image parts in translation, pure: a loaded image becomes a part in its place; an image
part no route loaded is refused; ``detail`` and malformed parts are judged before loading."""

from __future__ import annotations

from typing import Any

import pytest

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.images.naming import chat_param, prompt_param
from llamagrid.gateway.openai import translate
from llamagrid.gateway.openai.images import image_parts
from llamagrid.gateway.openai.schemas import ChatCompletionRequest
from llamagrid.v1 import inference_pb2 as pb

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}


def body(*content: dict[str, Any]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": list(content)}]}
    )


def test_a_loaded_image_becomes_a_part_between_its_texts() -> None:
    request = body({"type": "text", "text": "a"}, IMAGE, {"type": "text", "text": "b"})
    ((part, ref),) = image_parts(request.messages)
    assert (ref.source, ref.param) == (
        IMAGE["image_url"]["url"],
        "messages[0].content[1].image_url",
    )
    part.attach(LoadedImage(b"hi", "image/png"))
    (message,) = translate.chat_request(request).chat.messages
    assert message.content == ""
    assert list(message.parts) == [
        pb.ContentPart(text="a"),
        pb.ContentPart(image=pb.Image(data=b"hi", mime_type="image/png")),
        pb.ContentPart(text="b"),
    ]


def test_an_image_part_no_route_loaded_is_refused_on_that_route() -> None:
    with pytest.raises(OpenAIError) as caught:
        translate.chat_request(body(IMAGE))
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == "messages[0].content[0].type"
    assert "not supported on this route" in caught.value.message


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        ({"type": "image_url"}, "messages[0].content[0].image_url", None),
        (
            {"type": "image_url", "image_url": {"url": "x", "detail": "low"}},
            "messages[0].content[0].image_url.detail",
            "unsupported_parameter",
        ),
    ],
)
def test_a_malformed_part_or_detail_is_refused_before_loading(
    part: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(OpenAIError) as caught:
        image_parts(body(part).messages)
    assert (caught.value.param, caught.value.code) == (param, code)


def test_a_bare_url_string_is_read_as_the_url() -> None:
    ((_, ref),) = image_parts(body({"type": "image_url", "image_url": "file:///a.png"}).messages)
    assert ref.source == "file:///a.png"


@pytest.mark.parametrize(
    ("worker", "http"),
    [
        ("messages[2].parts[3].image", "messages[2].content[3].image_url"),
        ("messages[0].parts[1]", "messages[0].content[1]"),
        ("messages[0].content", "messages[0].content"),
    ],
)
def test_the_workers_part_names_become_the_requests(worker: str, http: str) -> None:
    assert chat_param(worker) == http


def test_the_workers_image_names_become_multimodal_data() -> None:
    assert prompt_param("images[1]") == "prompt.multimodal_data[1]"
    assert prompt_param("images") == "prompt.multimodal_data"
    assert prompt_param("images_x") == "images_x"


@pytest.mark.parametrize(
    ("part", "param"),
    [
        ({"type": "text", "text": "a", "image_url": "data:image/png;base64,aGk="}, "image_url"),
        ({**IMAGE, "text": "a"}, "text"),
    ],
)
def test_a_part_holding_the_other_kinds_field_is_refused_not_ignored(
    part: dict[str, Any], param: str
) -> None:
    request = body(part)
    for found, _ in image_parts(request.messages):
        found.attach(LoadedImage(b"hi", "image/png"))
    with pytest.raises(OpenAIError) as caught:
        translate.chat_request(request)
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param == f"messages[0].content[0].{param}"
