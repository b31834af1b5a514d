"""Images a client sends: checked from their header, then decoded to RGB pixels with Pillow.

Untrusted bytes never reach stb_image (llama.cpp's decoder): Pillow reads them. ``inspect``
opens an image lazily (Pillow reads only the header), so a file whose header claims more than
the pixel limit is refused before any pixel is decoded; it also checks the format against the
list accepted and the MIME type the client gave against the bytes. ``decode`` then decodes the
first frame (GIF, animated PNG or WebP) and converts it to 8-bit RGB rows, which the projector
tokenizes (native/mtmd.py). An image's id is the SHA-256 of its encoded bytes: equal bytes, equal
id, so only the same image shares KV cache (engine/media.py).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from llamagrid.worker.engine.errors import EngineError, invalid
from llamagrid.worker.engine.requests import GenerationSpec, ImageInput

#: Pillow's format names accepted, and the MIME types that name each.
FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": ("image/png", "image/apng"),
    "JPEG": ("image/jpeg", "image/jpg", "image/pjpeg"),
    "GIF": ("image/gif",),
    "BMP": ("image/bmp", "image/x-bmp", "image/x-ms-bmp"),
    "WEBP": ("image/webp",),
    "TGA": ("image/tga", "image/x-tga", "image/x-targa"),
    "PPM": (
        "image/x-portable-anymap",
        "image/x-portable-bitmap",
        "image/x-portable-graymap",
        "image/x-portable-pixmap",
    ),
}
_FORMAT_OF_MIME = {mime: fmt for fmt, mimes in FORMATS.items() for mime in mimes}


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says."""

    format: str
    width: int
    height: int


@dataclass(frozen=True)
class DecodedImage:
    """An image's pixels as packed 8-bit RGB rows, and its id (SHA-256 of the encoded bytes)."""

    width: int
    height: int
    rgb: bytes
    digest: str


def _formats() -> tuple[str, ...]:
    """The accepted formats this Pillow can read (WebP needs libwebp)."""
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _mime_format(mime_type: str, param: str) -> str | None:
    """The format a MIME type names (None for none given); parameters and case are ignored."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    if not mime:
        return None
    if not mime.startswith("image/"):
        raise invalid(f"{param}.mime_type '{mime[:64]}' is not an image type", param)
    fmt = _FORMAT_OF_MIME.get(mime)
    if fmt is None or fmt not in _formats():
        raise invalid(
            f"{param}.mime_type '{mime[:64]}' is not a supported image type; supported: "
            + ", ".join(FORMATS[f][0] for f in _formats()),
            param,
        )
    return fmt


def _open(image: ImageInput, param: str, max_pixels: int) -> Image.Image:
    """The image opened lazily (only its header read), or a precise refusal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(image.data), formats=_formats())
    except Image.DecompressionBombError:  # Pillow's own bound, far above ours: refused anyway
        raise invalid(
            f"{param} declares more pixels than Pillow decodes; the limit is {max_pixels} pixels",
            param,
        ) from None
    except UnidentifiedImageError:
        raise invalid(
            f"{param} is not an image in a supported format (" + ", ".join(_formats()) + ")",
            param,
        ) from None
    except Exception as exc:  # a malformed header Pillow could not read
        raise invalid(f"{param} has a malformed image header: {str(exc)[:120]}", param) from None


def inspect(image: ImageInput, max_bytes: int, max_pixels: int, param: str) -> ImageHeader:
    """Check an image without decoding its pixels: not empty, at most max_bytes, a supported
    format that its MIME type (if given) agrees with, and at most max_pixels pixels."""
    if not image.data:
        raise invalid(f"{param} is empty", param)
    if len(image.data) > max_bytes:
        raise invalid(f"{param} is {len(image.data)} bytes; the limit is {max_bytes}", param)
    claimed = _mime_format(image.mime_type, param)
    with _open(image, param, max_pixels) as im:
        fmt, (width, height) = str(im.format), im.size
    if claimed is not None and claimed != fmt:
        raise invalid(
            f"{param}.mime_type says {FORMATS[claimed][0]}, but the bytes are a {fmt} image", param
        )
    if width <= 0 or height <= 0:
        raise invalid(f"{param} has no pixels ({width}x{height})", param)
    if width * height > max_pixels:
        raise invalid(
            f"{param} is {width}x{height} pixels; the limit is {max_pixels} pixels", param
        )
    return ImageHeader(fmt, width, height)


def decode(image: ImageInput, max_bytes: int, max_pixels: int, param: str) -> DecodedImage:
    """The first frame of a checked image as RGB rows; bytes that do not decode (truncated,
    corrupt) are refused."""
    header = inspect(image, max_bytes, max_pixels, param)
    try:
        with _open(image, param, max_pixels) as im:
            im.seek(0)
            rgb = im.convert("RGB")
            data = rgb.tobytes()
            width, height = rgb.size
    except EngineError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise invalid(
            f"{param} could not be decoded as {header.format}: {str(exc)[:120]}", param
        ) from None
    if (width, height) != (header.width, header.height):
        raise invalid(f"{param} decoded to another size than its header says", param)
    return DecodedImage(width, height, data, hashlib.sha256(image.data).hexdigest())


def image_params(spec: GenerationSpec) -> list[str]:
    """The field name of each image of a request, in prompt order (as spec.all_images)."""
    if spec.messages is None:
        return [f"images[{i}]" for i in range(len(spec.images))]
    return [
        f"messages[{i}].parts[{j}].image"
        for i, m in enumerate(spec.messages)
        for j, part in enumerate(m.parts)
        if isinstance(part, ImageInput)
    ]
