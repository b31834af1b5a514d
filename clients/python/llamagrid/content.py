"""Chat turns made of parts, text and images in order (``ChatMessage.parts``).

Images are for a model that reads them (``ModelInfo.vision``: the worker loaded a projector); a
model without one refuses them with ``INVALID_ARGUMENT``::

    from llamagrid.content import image_part, message

    turn = message("user", "What is in this picture?", image_part(png, "image/png"))
    request = pb.GenerateRequest(chat=pb.ChatConversation(messages=[turn]))
"""

from __future__ import annotations

from llamagrid.v1 import inference_pb2 as pb


def image(data: bytes, mime_type: str = "") -> pb.Image:
    """An encoded image (PNG, JPEG, GIF, BMP, TGA or PNM), for :func:`image_part` or for
    ``GenerateRequest.images`` with a raw prompt, where each takes the place of one
    ``ModelInfo.media_marker``. ``mime_type`` is its type, such as ``"image/png"``; empty lets
    the worker detect it from the bytes."""
    return pb.Image(data=data, mime_type=mime_type)


def image_part(data: bytes, mime_type: str = "") -> pb.ContentPart:
    """An image part of a chat turn; see :func:`image`."""
    return pb.ContentPart(image=image(data, mime_type))


def text_part(text: str) -> pb.ContentPart:
    """A text part of a chat turn."""
    return pb.ContentPart(text=text)


def message(role: str, *parts: str | pb.ContentPart) -> pb.ChatMessage:
    """A chat turn with this role made of these parts, in order; a ``str`` is a text part.

    Raises TypeError for anything else (raw ``bytes`` among them: wrap an image with
    :func:`image_part`)."""
    built: list[pb.ContentPart] = []
    for part in parts:
        if isinstance(part, str):
            built.append(text_part(part))
        elif isinstance(part, pb.ContentPart):
            built.append(part)
        else:
            raise TypeError(
                f"a message part is a str or a ContentPart (image_part(...)), not {type(part)!r}"
            )
    return pb.ChatMessage(role=role, parts=built)
