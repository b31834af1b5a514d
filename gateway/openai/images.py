"""The ``image_url`` parts of a chat request, loaded before it is translated.

Only ``detail: "auto"`` (or none) is accepted: llama.cpp's projectors read an image at one
resolution, so "low" and "high" could not be honoured. Every part is checked (its shape, its
``detail``, the count, whether the model reads images) before any image is loaded; then each is
loaded in order under the operator's policy (gateway.images) and kept on its part for
translate.py, which refuses an image part that no route loaded.
"""

from __future__ import annotations

from fastapi import Request

from llamagrid.gateway.dispatch import Dispatcher
from llamagrid.gateway.errors import invalid_request, unsupported
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.images.loader import ImageLoader, ImageRef
from llamagrid.gateway.openai.schemas import ChatMessage, ContentPart, ImageUrl, PromptObject

#: The ``detail`` values that can be honoured.
DETAILS = (None, "auto")


def image_parts(messages: list[ChatMessage]) -> list[tuple[ContentPart, ImageRef]]:
    """Every ``image_url`` part, with its URL and where it is; a 400 for a malformed one."""
    found: list[tuple[ContentPart, ImageRef]] = []
    for index, message in enumerate(messages):
        if isinstance(message.content, str) or message.content is None:
            continue
        for number, part in enumerate(message.content):
            if part.type != "image_url":
                continue
            param = f"messages[{index}].content[{number}].image_url"
            found.append((part, ImageRef(_url(part.image_url, param), param)))
    return found


def _url(image: str | ImageUrl | None, param: str) -> str:
    if image is None:
        raise invalid_request("An image_url part needs an 'image_url' object.", param)
    if isinstance(image, str):
        return image
    if image.detail not in DETAILS:
        raise unsupported(
            f"{param}.detail",
            f"detail '{image.detail}' is not supported: the projector reads every image at its "
            "own resolution, so only 'auto' can be honoured.",
        )
    return image.url


def _loader(request: Request, model: str) -> tuple[ImageLoader, bool | None]:
    """The app's image loader, and whether ``model`` reads images (None: no worker known)."""
    loader = request.app.state.images
    assert isinstance(loader, ImageLoader)
    dispatcher = request.app.state.dispatcher
    assert isinstance(dispatcher, Dispatcher)
    served = dispatcher.pool.models().get(model)
    return loader, served[0].vision if served is not None else None


async def load_images(request: Request, messages: list[ChatMessage], model: str) -> None:
    """Load every image of ``messages`` for ``model`` (kept on its part)."""
    found = image_parts(messages)
    if not found:
        return
    loader, vision = _loader(request, model)
    refs = [ref for _, ref in found]
    for (part, _), image in zip(found, await loader.load_urls(refs, model, vision), strict=True):
        part.attach(image)


async def load_prompt_images(request: Request, prompt: object, model: str) -> list[LoadedImage]:
    """The images of a completion's prompt object (``multimodal_data``, bare base64)."""
    if not isinstance(prompt, PromptObject) or not prompt.multimodal_data:
        return []
    loader, vision = _loader(request, model)
    refs = [
        ImageRef(data, f"prompt.multimodal_data[{index}]")
        for index, data in enumerate(prompt.multimodal_data)
    ]
    return await loader.load_base64(refs, model, vision)
