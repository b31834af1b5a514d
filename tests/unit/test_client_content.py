"""The Python client's builders for chat turns of text and image parts (llamagrid.content)."""

from __future__ import annotations

import pytest

from llamagrid.content import image, image_part, message, text_part
from llamagrid.v1 import inference_pb2 as pb

PNG = b"\x89PNG\r\n\x1a\n-not-a-real-image"


def test_a_message_keeps_its_parts_in_order_with_strings_as_text() -> None:
    turn = message("user", "Compare", image_part(PNG, "image/png"), text_part("with"), "this")
    assert turn.role == "user" and turn.content == ""
    assert [p.WhichOneof("part") for p in turn.parts] == ["text", "image", "text", "text"]
    assert [p.text for p in turn.parts if p.HasField("text")] == ["Compare", "with", "this"]
    assert turn.parts[1].image == pb.Image(data=PNG, mime_type="image/png")


def test_an_image_without_a_type_leaves_it_to_the_worker() -> None:
    assert image(PNG) == pb.Image(data=PNG, mime_type="")
    assert image_part(PNG).image.mime_type == ""


def test_raw_bytes_as_a_part_are_refused_rather_than_guessed() -> None:
    with pytest.raises(TypeError, match="image_part"):
        message("user", "look", PNG)  # type: ignore[arg-type]


def test_a_message_survives_the_wire() -> None:
    turn = message("user", "What is this?", image_part(PNG, "image/png"))
    assert pb.ChatMessage.FromString(turn.SerializeToString()) == turn
