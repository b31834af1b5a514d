"""Images in prompts, without a model: Pillow's checks (engine/images.py), the ids that stand
for image positions (engine/media.py), and where images land in a chat or raw prompt
(engine/prompts.py with a stand-in vocabulary and projector)."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import pytest
from PIL import Image

from llamagrid.worker.engine.chat_template import ChatTemplate
from llamagrid.worker.engine.errors import EngineError
from llamagrid.worker.engine.images import decode, inspect
from llamagrid.worker.engine.limits import RequestLimits
from llamagrid.worker.engine.media import (
    ImagePiece,
    TextPiece,
    expand_tokens,
    image_boundary,
    image_token_ids,
    text_tokens,
)
from llamagrid.worker.engine.prompts import DEFAULT_MARKER, MEDIA_MARKER_ID
from llamagrid.worker.engine.request_prompts import RequestPrompts
from llamagrid.worker.engine.requests import GenerationSpec, ImageInput, Message, SessionRef
from llamagrid.worker.engine.special_texts import SpecialToken, SpecialTokens
from llamagrid.worker.engine.validation import check_generation
from tests.unit.test_prompt_tokens import CHATML, TOKENS, FakeVocab

MB, PIXELS = 1 << 20, 1 << 20


def encoded(fmt: str, size: tuple[int, int] = (8, 6), frames: int = 1) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", size, (10 * i, 20, 30)) for i in range(frames)]
    extra = {"save_all": True, "append_images": images[1:]} if frames > 1 else {}
    images[0].save(out, format=fmt, **extra)
    return out.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its few bytes of data do not hold."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body


def refused(image: ImageInput, max_pixels: int = PIXELS) -> str:
    with pytest.raises(EngineError) as caught:
        decode(image, MB, max_pixels, "images[0]")
    assert caught.value.param == "images[0]"
    return caught.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TGA", "PPM"])
def test_each_supported_format_decodes_to_rgb_rows(fmt: str) -> None:
    data = encoded(fmt)
    pixels = decode(ImageInput(data), MB, PIXELS, "images[0]")
    assert (pixels.width, pixels.height) == (8, 6) and len(pixels.rgb) == 8 * 6 * 3
    assert len(pixels.digest) == 64


def test_a_gif_gives_its_first_frame() -> None:
    data = encoded("GIF", frames=3)
    first = decode(ImageInput(data, "image/gif"), MB, PIXELS, "images[0]")
    assert first.rgb[:3] == bytes(Image.open(io.BytesIO(data)).convert("RGB").tobytes()[:3])


def test_equal_bytes_give_equal_ids_and_other_bytes_other_ids() -> None:
    a = decode(ImageInput(encoded("PNG")), MB, PIXELS, "x").digest
    b = decode(ImageInput(encoded("PNG", (8, 7))), MB, PIXELS, "x").digest
    assert a == decode(ImageInput(encoded("PNG")), MB, PIXELS, "x").digest and a != b


def test_bad_images_are_refused_with_precise_messages() -> None:
    png = encoded("PNG")
    assert "is empty" in refused(ImageInput(b""))
    assert "not an image in a supported format" in refused(ImageInput(b"hello, world"))
    assert "not an image type" in refused(ImageInput(png, "text/html"))
    assert "not a supported image type" in refused(ImageInput(png, "image/svg+xml"))
    assert "the bytes are a PNG" in refused(ImageInput(png, "image/jpeg"))
    assert "the limit is" in refused(ImageInput(png_claiming(100_000, 100_000)))
    assert "5000x5000" in refused(ImageInput(png_claiming(5000, 5000)))
    noise = io.BytesIO()
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(noise, format="PNG")
    cut = noise.getvalue()[: len(noise.getvalue()) // 2]
    assert "could not be decoded" in refused(ImageInput(cut))
    assert "the limit is 47" in refused(ImageInput(png), max_pixels=47)
    with pytest.raises(EngineError, match="the limit is 10"):
        inspect(ImageInput(png), 10, PIXELS, "images[0]")


def test_a_mime_type_may_have_parameters_and_any_case() -> None:
    assert inspect(ImageInput(encoded("PNG"), "Image/PNG; q=1"), MB, PIXELS, "x").format == "PNG"


def test_image_positions_have_negative_ids_derived_from_the_image() -> None:
    a, b = "ab" * 32, "cd" * 32
    ids = image_token_ids(a, 0, 16)
    assert all(t < 0 for t in ids) and len(set(ids)) == 16
    assert ids == image_token_ids(a, 0, 16) and ids != image_token_ids(b, 0, 16)
    assert all(t > -(1 << 31) for t in ids)
    # Every position has bits of its own: digests that agree on a long prefix still differ at
    # every position, and another chunk of the same image has other ids.
    c = "ab" * 31 + "ce"
    assert all(x != y for x, y in zip(ids, image_token_ids(c, 0, 16), strict=True))
    assert set(ids).isdisjoint(image_token_ids(a, 1, 16))


def test_a_reused_prefix_never_ends_inside_an_image() -> None:
    prompt = [5, 6, -10, -11, -12, 7, -20, -21, 8]
    assert [image_boundary(prompt, n) for n in range(10)] == [0, 1, 2, 2, 2, 5, 6, 6, 8, 9]
    assert text_tokens(prompt) == [5, 6, 7, 8]


@dataclass
class FakeChunks:
    pieces: list[TextPiece | ImagePiece]
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeProjector:
    """Each image: a begin token, 3 image positions, an end token (unless not wrapped)."""

    marker: str = DEFAULT_MARKER
    made: list[FakeChunks] = field(default_factory=list)
    wrap: bool = True

    def tokenize(self, width: int, height: int, rgb: bytes, image_id: str) -> FakeChunks:
        image = ImagePiece(1, 3, 3, False)
        pieces = [TextPiece((90,)), image, TextPiece((91,))] if self.wrap else [image]
        chunks = FakeChunks(pieces)
        self.made.append(chunks)
        return chunks


def vision_tokenizer(
    template: str = CHATML, wrap: bool = True
) -> tuple[RequestPrompts, FakeVocab, FakeProjector]:
    vocab, projector = FakeVocab(), FakeProjector(wrap=wrap)
    rows = [SpecialToken(t.id, t.text, t.kind == "control") for t in TOKENS if t.kind != "user"]
    specials = SpecialTokens([*rows, SpecialToken(MEDIA_MARKER_ID, DEFAULT_MARKER, False)])
    chat = ChatTemplate(template, bos_token="<|b|>", eos_token="<|e|>")
    return RequestPrompts(vocab, chat, specials, images=projector), vocab, projector


PNG = ImageInput(encoded("PNG"))


def test_an_image_part_lands_where_the_template_puts_the_content() -> None:
    prompts, vocab, projector = vision_tokenizer()
    spec = GenerationSpec(messages=(Message("user", "", parts=("Look", PNG, " here")),))
    ids, media = prompts.prompt_media(spec)
    assert media is not None and len(media.spans) == 1
    start = media.spans[0].start
    head = vocab.tokenize("<|s|>user\nLook", False, True)
    tail = vocab.tokenize(" here<|e|>\n<|s|>assistant", False, True)  # Jinja drops the last newline
    assert ids[: start - 1] == head and ids[start - 1] == 90 and ids[start + 3] == 91
    assert ids[start + 4 :] == tail and all(t < 0 for t in ids[start : start + 3])
    media.close()
    assert projector.made[0].closed


def test_marker_text_a_client_types_stays_text() -> None:
    prompts, vocab, _ = vision_tokenizer()
    parts = (f"a {DEFAULT_MARKER} b", PNG)
    ids, media = prompts.prompt_media(GenerationSpec(messages=(Message("user", "", parts=parts),)))
    assert media is not None and len(media.spans) == 1
    typed = vocab.tokenize(f"a {DEFAULT_MARKER} b", False, False)
    assert ids[3 : 3 + len(typed)] == typed


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{{ m.content }}{{ m.content }}{% endfor %}",
        "{% for m in messages %}{{ m.role }}{% endfor %}",
    ],
)
def test_a_template_that_repeats_or_drops_images_is_refused(template: str) -> None:
    prompts, _, projector = vision_tokenizer(template)
    spec = GenerationSpec(messages=(Message("user", "", parts=(PNG, "what?")),))
    with pytest.raises(EngineError, match="image places"):
        prompts.prompt_media(spec)
    assert projector.made and all(c.closed for c in projector.made)


def test_a_raw_prompt_takes_an_image_per_marker_and_must_not_end_with_one() -> None:
    prompts, vocab, _ = vision_tokenizer()
    spec = GenerationSpec(prompt=f"x {DEFAULT_MARKER} y", images=(PNG,))
    ids, media = prompts.prompt_media(spec)
    assert media is not None
    start = media.spans[0].start
    assert start == len(vocab.tokenize("x ", False, False)) + 1 and ids[start - 1] == 90
    bare, _, projector = vision_tokenizer(wrap=False)
    with pytest.raises(EngineError, match="ends with an image"):
        bare.prompt_media(GenerationSpec(prompt=f"x {DEFAULT_MARKER}", images=(PNG,)))
    assert projector.made[0].closed


def test_expanding_places_each_image_by_its_placeholder() -> None:
    chunks = [FakeChunks([ImagePiece(0, 2, 2, False)]), FakeChunks([ImagePiece(0, 1, 1, False)])]
    ids, spans, starts = expand_tokens([7, -2, 8, -1, 9], chunks, ["11" * 32, "22" * 32])
    assert [(s.start, s.length, s.image) for s in spans] == [(1, 1, 1), (3, 2, 0)]
    assert starts == [3, 1]  # by image
    assert ids[0] == 7 and ids[2] == 8 and ids[-1] == 9 and len(ids) == 6


def test_text_parts_are_the_content() -> None:
    prompts, _, _ = vision_tokenizer()
    parts = Message("user", "", parts=("Describe ", "this."))
    as_content = prompts.chat_tokens([Message("user", "Describe this.")])
    assert prompts.chat_tokens([parts]) == as_content
    assert prompts.prompt_media(GenerationSpec(messages=(parts,))) == (as_content, None)


def validation_error(spec: GenerationSpec, marker: str | None = DEFAULT_MARKER) -> EngineError:
    with pytest.raises(EngineError) as caught:
        check_generation(spec, 1000, RequestLimits(max_images=2), media_marker=marker, model="m")
    return caught.value


def test_images_are_validated_before_any_work() -> None:
    image = Message("user", "", parts=("Look", PNG))
    no_vision = validation_error(GenerationSpec(messages=(image,)), marker=None)
    assert no_vision.param == "messages[0].parts" and "model m does not read images" in str(
        no_vision
    )
    both = validation_error(GenerationSpec(messages=(Message("user", "x", parts=(PNG,)),)))
    assert both.param == "messages[0].parts"
    many = validation_error(GenerationSpec(messages=(Message("user", "", parts=(PNG,) * 3),)))
    assert "3 images given" in str(many)
    logprobs = GenerationSpec(prompt=f"{DEFAULT_MARKER} x", images=(PNG,), prompt_logprobs=1)
    assert validation_error(logprobs).param == "prompt_logprobs"
    markers = GenerationSpec(prompt="no marker", images=(PNG,))
    assert "0 media markers" in str(validation_error(markers))
    chat_images = GenerationSpec(messages=(Message("user", "hi"),), images=(PNG,))
    assert validation_error(chat_images).param == "images"
    bad = GenerationSpec(prompt=f"{DEFAULT_MARKER} x", images=(ImageInput(b"GIF89a"),))
    assert validation_error(bad).param == "images[0]"
    fine = GenerationSpec(prompt=f"{DEFAULT_MARKER} x", images=(PNG,))
    check_generation(fine, 1000, media_marker=DEFAULT_MARKER)
    turn = GenerationSpec(messages=(image,), session=SessionRef("s" * 16))
    check_generation(turn, 1000, media_marker=DEFAULT_MARKER)  # the session's limit: the engine's
