"""A request's whole prompt: its images, and a session turn's place after its transcript.

RequestPrompts adds to PromptTokenizer (engine/prompts.py, which turns text and chat messages
into token ids with client text kept as text) what a prompt needs beyond its text:

- **Images.** Each image is decoded (engine/images.py) and tokenized by the projector; its
  tokens (engine/media.py) take the place of its media marker in the chat template's rendering,
  or of its marker in a raw prompt, one image per marker, in order. A prompt must not end with
  an image.
- **Session turns** (engine/sessions.py). A turn's prompt is the session's transcript followed
  by the turn's own tokens: the template's end of the assistant's turn, then the new messages
  as the template writes them after earlier turns. A transcript's images are read again from
  their bytes on every turn, in case its KV cache is gone and the whole of it is prefilled
  again; a transcript a client gives to resume from must hold exactly its images' tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from llamagrid.worker.engine.chat_inputs import ChatInputs, message_dict
from llamagrid.worker.engine.errors import invalid, unsupported
from llamagrid.worker.engine.images import decode as decode_image
from llamagrid.worker.engine.images import image_params
from llamagrid.worker.engine.media import Media, PlacedImage, placeholder
from llamagrid.worker.engine.prompts import PromptTokenizer
from llamagrid.worker.engine.requests import GenerationSpec, ImageInput, Message

#: Stand-ins for a session's earlier turns when a new turn is rendered: the template's glue
#: after them does not depend on their text.
_EARLIER_TURNS = (Message("user", "Hello"), Message("assistant", "Hi there"))


class RequestPrompts(PromptTokenizer):
    """PromptTokenizer with images and session turns; any thread, the model held during a call."""

    def prompt_media(self, spec: GenerationSpec) -> tuple[list[int], Media | None]:
        """The prompt of a validated request as token ids, and its images (None without): each
        image decoded (engine/images.py), tokenized by the projector, and put in its place:
        a raw prompt's media markers, or the chat template's rendering of image parts. The
        caller owns the Media and closes it."""
        images = spec.all_images
        if not images:
            return self.prompt_tokens(spec), None
        with self._use():
            media = Media([])
            try:
                self._read_images(media, images, image_params(spec))
                if spec.messages is not None:
                    ids = self.chat_tokens(spec.messages, inputs=ChatInputs.of(spec))
                else:
                    ids = self._marked_prompt(spec.prompt or "", len(images))
                return _ends_with_text(media.expand(ids)), media
            except BaseException:
                media.close()
                raise

    def turn_media(
        self, spec: GenerationSpec, transcript: Sequence[int], placed: Sequence[PlacedImage]
    ) -> tuple[list[int], Media | None]:
        """The tokens a session turn adds after ``transcript`` (as turn_tokens), and the images
        of its whole prompt, the transcript's then the turn's (None when neither has any). The
        transcript's images (``placed``) are read again from their bytes: when its KV cache is
        gone, the whole transcript is prefilled again, images included. The caller owns the
        Media and closes it."""
        if not transcript:
            return self.prompt_media(spec)
        images = spec.all_images
        if not images and not placed:
            return self.turn_tokens(spec, transcript), None
        with self._use():
            media = Media([])
            try:
                names = [f"session image {k}" for k in range(len(placed))]
                self._read_images(media, [p.image for p in placed], names)
                for k, image in enumerate(placed):
                    media.place(transcript, image.start, k)
                self._read_images(media, images, image_params(spec))
                ids = self._turn_ids(spec, transcript)
                return _ends_with_text(media.expand(ids, len(placed), len(transcript))), media
            except BaseException:
                media.close()
                raise

    def transcript_images(
        self, tokens: Sequence[int], images: Sequence[tuple[int, ImageInput]]
    ) -> tuple[list[PlacedImage], list[int]]:
        """The images of a transcript a client gives to resume from, checked: each one, read
        again, gives exactly the transcript's tokens at its start, in order of start and
        without overlapping. Returns them placed, and the transcript's other tokens (which must
        be in the vocabulary: the caller checks)."""
        with self._use():
            if self.images is None:
                raise unsupported("this model does not read images", "transcript.images")
            media = Media([])
            try:
                params = [f"transcript.images[{k}]" for k in range(len(images))]
                self._read_images(media, [image for _, image in images], params)
                end, text = 0, list[int]()
                for k, ((start, _), param) in enumerate(zip(images, params, strict=True)):
                    if start < end:
                        raise invalid(f"{param}.start overlaps the image before it", param)
                    text += tokens[end:start]
                    try:
                        end = media.place(tokens, start, k)
                    except ValueError:
                        raise invalid(
                            f"{param} does not give the transcript's tokens at its start "
                            f"({start}): not the image, or not where it was",
                            param,
                        ) from None
                text += tokens[end:]
                return media.placed([image for _, image in images], 0), text
            finally:
                media.close()

    def _read_images(
        self, media: Media, images: Sequence[ImageInput], params: Sequence[str]
    ) -> None:
        """Decode each image (engine/images.py) and add its projector chunks to ``media``."""
        if self.images is None:
            raise unsupported("this model does not read images", "messages")
        max_bytes, max_pixels = self.image_limits
        for image, param in zip(images, params, strict=True):
            pixels = decode_image(image, max_bytes, max_pixels, param)
            chunks = self.images.tokenize(pixels.width, pixels.height, pixels.rgb, pixels.digest)
            media.add(chunks, pixels.digest)

    def _marked_prompt(self, text: str, n_images: int, framed: bool = True) -> list[int]:
        """A raw prompt's ids with image k's placeholder at its k-th media marker; BOS (and
        EOS, for models that want one) around them when ``framed``."""
        assert self.images is not None
        pieces = text.split(self.images.marker)
        if len(pieces) != n_images + 1:
            raise invalid(f"the prompt holds {len(pieces) - 1} media markers", "images")
        prefix, suffix = self._frame() if framed else ([], [])
        ids = list(prefix)
        for k, piece in enumerate(pieces):
            if k:
                ids.append(placeholder(k - 1))
            if piece:
                ids += self.vocab.tokenize(piece, False, self.special_in_prompt)
        return ids + suffix

    def turn_tokens(self, spec: GenerationSpec, transcript: Sequence[int]) -> list[int]:
        """The tokens a session turn adds after ``transcript`` (engine/sessions.py), for a
        turn without images (turn_media takes those).

        The first turn of an empty session is tokenized as a request of its own (BOS
        included). Later turns: token ids as given; text without BOS; chat messages as the
        template writes them after earlier turns: the end of the assistant's turn (unless the
        transcript already ends with it), then the new messages and the assistant's header.
        """
        if spec.all_images:
            raise unsupported("a turn with images goes through turn_media", "messages")
        with self._use():
            if not transcript:
                return self.prompt_tokens(spec)
            return self._turn_ids(spec, transcript)

    def _turn_ids(self, spec: GenerationSpec, transcript: Sequence[int]) -> list[int]:
        """A later turn's tokens (turn_tokens), image k of the turn as its placeholder."""
        if spec.tokens is not None:
            tokens = list(spec.tokens)
        elif spec.messages is not None:
            closing = self._closing_ids
            ends_closed = bool(closing) and list(transcript[-len(closing) :]) == closing
            tokens = ([] if ends_closed else closing) + self.chat_tokens(
                spec.messages, after=_EARLIER_TURNS, inputs=ChatInputs.of(spec)
            )
        elif spec.images:
            tokens = self._marked_prompt(spec.prompt or "", len(spec.images), framed=False)
        else:
            tokens = self.vocab.tokenize(spec.prompt or "", False, self.special_in_prompt)
        if not tokens:
            raise invalid("the turn's input is empty", "prompt")
        return tokens

    @functools.cached_property
    def _closing_ids(self) -> list[int]:
        """What the template writes after an assistant message's content (ChatML:
        ``<|im_end|>`` and a newline), as token ids: template text only, so special tokens are
        parsed. Read in a call that holds the model."""
        text = self._render([message_dict(m) for m in _EARLIER_TURNS], add_generation_prompt=False)
        content = _EARLIER_TURNS[-1].content
        end = text.rfind(content)
        closing = text[end + len(content) :] if end >= 0 else ""
        return self.vocab.tokenize(closing, False, True) if closing else []


def _ends_with_text(prompt: list[int]) -> list[int]:
    """The prompt, refused if it ends with an image: the model answers from a text token."""
    if not prompt or prompt[-1] < 0:
        raise invalid(
            "the prompt ends with an image: put text after it (the model answers from a text "
            "token)",
            "images",
        )
    return prompt
