"""The operator's image limits, and the strict decoding of inline (base64) images.

A ``data:`` URL must be ``data:image/<subtype>[;<parameter>]*;base64,<payload>``: the media
type an image type, the payload standard base64 (RFC 4648 alphabet, padded, no whitespace), and
its decoded size at most ``max_bytes``; anything else is a 400 that says which rule it broke (a
payload over the cap is a 413, as an over-size body is). Whether the bytes really are an image
of that type, and how many pixels it has, is the worker's to judge.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from dataclasses import dataclass

from llamagrid.gateway.errors import TOO_LARGE_CODE, OpenAIError, invalid_request
from llamagrid.gateway.images.loaded import LoadedImage

#: An image media type: ``image/`` and an RFC 6838 subtype name.
_IMAGE_TYPE = re.compile(r"image/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
#: A base64 payload longer than this is decoded off the event loop.
_INLINE_DECODE_CHARS = 1 << 20
#: The longest part of a URL that an error message repeats.
_SHOWN_CHARS = 64


@dataclass(frozen=True)
class ImagePolicy:
    """Where images may come from and how large they may be (the gateway's settings)."""

    #: Images one request may carry at most.
    max_images: int = 8
    #: Bytes one encoded image may have at most.
    max_bytes: int = 10 * 1024 * 1024
    #: Host names (or IP literals) whose http(s) URLs may be fetched; ``*.example.com`` matches
    #: any name under example.com. Empty: nothing is fetched.
    fetch_hosts: tuple[str, ...] = ()
    #: Bytes one fetched image may have at most (and never more than max_bytes).
    fetch_max_bytes: int = 10 * 1024 * 1024
    #: Seconds one fetch may take, name resolution included.
    fetch_timeout_s: float = 10.0
    #: PEM file of the CAs an https host's certificate must chain to; empty: the public ones.
    fetch_ca_file: str = ""
    #: The directory file:// URLs are read from; empty: file:// URLs are refused.
    file_dir: str = ""

    @property
    def fetch_cap(self) -> int:
        """The most bytes a fetched image may have."""
        return min(self.fetch_max_bytes, self.max_bytes)


def shown(text: str) -> str:
    """A client's text (a URL, a type) as an error message repeats it: short, repr-quoted."""
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def too_large(what: str, limit: int, param: str) -> OpenAIError:
    """The 413 for an image over the byte cap."""
    return OpenAIError(
        413,
        f"{what} is larger than the gateway's limit of {limit} bytes per image.",
        param=param,
        code=TOO_LARGE_CODE,
    )


def image_type(value: str, param: str) -> str:
    """A media type, lower-cased, that must be an image type."""
    mime = value.strip().lower()
    if not _IMAGE_TYPE.fullmatch(mime):
        raise invalid_request(
            f"The media type {shown(value)} is not an image type (image/png, image/jpeg, ...).",
            param,
        )
    return mime


async def decode_data_url(url: str, max_bytes: int, param: str) -> LoadedImage:
    """The image of a ``data:image/...;base64,...`` URL."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise invalid_request("A data URL needs a ',' before its data.", param)
    fields = header[len("data:") :].split(";")
    if len(fields) < 2 or fields[-1].strip().lower() != "base64":
        raise invalid_request(
            "Only base64 data URLs are accepted: data:image/<type>;base64,<data>.", param
        )
    mime = image_type(fields[0], param)
    return LoadedImage(await decode_base64(payload, max_bytes, param), mime)


async def decode_base64(payload: str, max_bytes: int, param: str) -> bytes:
    """Strict base64 (standard alphabet, padding, nothing else), at most ``max_bytes`` decoded,
    never empty."""
    if not payload:
        raise invalid_request("The image is empty.", param)
    if len(payload) // 4 * 3 - payload[-2:].count("=") > max_bytes:
        raise too_large("The image", max_bytes, param)
    if len(payload) > _INLINE_DECODE_CHARS:
        data = await asyncio.to_thread(_strict_b64decode, payload, param)
    else:
        data = _strict_b64decode(payload, param)
    if not data:
        raise invalid_request("The image is empty.", param)
    if len(data) > max_bytes:
        raise too_large("The image", max_bytes, param)
    return data


def _strict_b64decode(payload: str, param: str) -> bytes:
    try:
        return base64.b64decode(payload.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise invalid_request(
            "The image data is not valid base64 (standard alphabet, padded, no whitespace).",
            param,
        ) from None
