"""The worker names images by the contract's fields (``messages[i].parts[j].image``,
``images[k]``); an HTTP route's errors name its own (``messages[i].content[j].image_url``,
``prompt.multimodal_data[k]``)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TypeVar

from llamagrid.gateway.errors import OpenAIError

_PART = re.compile(r"messages\[(\d+)\]\.parts\[(\d+)\](\.image)?")
_IMAGES = re.compile(r"^images(?=\[|$)")
_Item = TypeVar("_Item")
Rename = Callable[[str], str]


def chat_param(param: str) -> str:
    """``messages[i].parts[j].image`` -> ``messages[i].content[j].image_url``: every content
    part is one of the contract's parts, in the same place."""
    return _PART.sub(
        lambda m: f"messages[{m[1]}].content[{m[2]}]" + (".image_url" if m[3] else ""), param
    )


def prompt_param(param: str) -> str:
    """``images[k]`` -> ``prompt.multimodal_data[k]`` (llama-server's prompt object)."""
    return _IMAGES.sub("prompt.multimodal_data", param)


@contextlib.contextmanager
def renamed(rename: Rename) -> Iterator[None]:
    """Errors raised inside name their field as ``rename`` says."""
    try:
        yield
    except OpenAIError as error:
        if error.param:
            error.param = rename(error.param)
        raise


async def renamed_stream(
    items: AsyncGenerator[_Item, None], rename: Rename
) -> AsyncGenerator[_Item, None]:
    """A stream whose errors are renamed; closing it closes ``items``."""
    async with contextlib.aclosing(items):
        with renamed(rename):
            async for item in items:
                yield item
