"""A prompt's images: their chunks, where their tokens sit in the prompt, and their cache ids.

An image takes ``n_tokens`` positions of the prompt (llava-style projectors: one position per
token; projectors that place tokens in 2D are refused at load, native/mtmd.py). In the prompt's
token list, which the prefix cache, the host tier and the slots compare, each of those
positions holds a negative id derived from the image's SHA-256 (``image_token_ids``): negative,
so it never equals a real token, and derived from the bytes, so a later request with the same
image reuses its KV cells while a different image of the same size does not. A reused prefix
never ends inside an image (``image_boundary``): an image's cells are reused whole or not at
all.

While a prompt is tokenized (engine/request_prompts.py), image k stands as the placeholder id
``-1 - k``; ``expand_tokens`` puts the image's tokens in its place. A session's transcript
keeps its images as ``PlacedImage``s (where each one's tokens begin, and its bytes), so that a
later turn can read them again and ``Media.place`` them where they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from llamagrid.worker.engine.chat_inputs import Conversation
from llamagrid.worker.engine.requests import ImageInput, Message

#: Ids of image positions stay within int32 (KV bookkeeping may hold them in int32 arrays).
_ID_RANGE = (1 << 31) - 1


@dataclass(frozen=True)
class TextPiece:
    """Text tokens an image brings with it (a model's image begin and end tokens)."""

    tokens: tuple[int, ...]


@dataclass(frozen=True)
class ImagePiece:
    """One image chunk: ``index`` is its place among the image's chunks."""

    index: int
    n_tokens: int
    n_pos: int
    #: Its tokens attend to each other both ways (the decode runs without the causal mask).
    non_causal: bool


class Chunks(Protocol):
    """What media needs of an image's chunks (native/mtmd.py's ImageChunks)."""

    pieces: list[TextPiece | ImagePiece]

    def close(self) -> None:
        """Free the native chunks."""


@dataclass(frozen=True)
class MediaSpan:
    """An image chunk's positions in the prompt: [start, start + length)."""

    start: int
    length: int
    #: The image (index into Media.images) and its chunk.
    image: int
    piece: ImagePiece


@dataclass(frozen=True)
class PlacedImage:
    """An image of a session's transcript: where its tokens begin (the text tokens the projector
    puts before it, then its positions), its id and its encoded bytes."""

    start: int
    #: The SHA-256 of its bytes (hex): the id its positions' ids derive from.
    digest: str
    image: ImageInput


@dataclass(eq=False)
class Media:
    """The images of one prompt, owned until ``close``: their chunks, their ids (SHA-256 of
    their bytes), where each one's tokens begin, and their chunks' spans."""

    images: list[Chunks]
    spans: list[MediaSpan] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    #: Where image k's tokens begin in the prompt (its text tokens first, then its positions).
    starts: list[int] = field(default_factory=list)

    def add(self, chunks: Chunks, digest: str) -> None:
        """Own one more image's chunks (placed later, by ``expand`` or ``place``)."""
        self.images.append(chunks)
        self.digests.append(digest)

    def expand(self, ids: Sequence[int], first: int = 0, offset: int = 0) -> list[int]:
        """``ids`` with each placeholder replaced by its image's tokens (``expand_tokens``):
        placeholder j stands for image ``first + j``, and ``ids`` begin at prompt position
        ``offset``; the images' spans and starts are recorded."""
        out, spans, starts = expand_tokens(ids, self.images[first:], self.digests[first:])
        self.spans += [
            dataclasses.replace(s, start=s.start + offset, image=s.image + first) for s in spans
        ]
        self.starts += [offset + start for start in starts]
        return out

    def place(self, tokens: Sequence[int], start: int, k: int) -> int:
        """Record image k as beginning at ``start`` in ``tokens`` (an expanded prompt, such as
        a session's transcript), which must hold exactly the tokens the image gives there;
        returns where they end. Raises ValueError when they are not there."""
        pos = start
        for piece in self.images[k].pieces:
            if isinstance(piece, TextPiece):
                if list(tokens[pos : pos + len(piece.tokens)]) != list(piece.tokens):
                    raise ValueError(f"the image's text tokens are not at {pos}")
                pos += len(piece.tokens)
                continue
            if piece.n_pos != piece.n_tokens:
                raise ValueError("an image chunk whose positions differ from its tokens")
            ids = image_token_ids(self.digests[k], piece.index, piece.n_tokens)
            if list(tokens[pos : pos + piece.n_tokens]) != ids:
                raise ValueError(f"the image's positions are not at {pos}")
            self.spans.append(MediaSpan(pos, piece.n_tokens, k, piece))
            pos += piece.n_tokens
        self.starts.append(start)
        return pos

    def placed(self, images: Sequence[ImageInput], first: int) -> list[PlacedImage]:
        """Images ``first``, ``first + 1``, ... as placed images, given their bytes."""
        return [
            PlacedImage(self.starts[first + j], self.digests[first + j], image)
            for j, image in enumerate(images)
        ]

    def span_at(self, pos: int) -> MediaSpan | None:
        """The image chunk that starts at a prompt position, if one does."""
        for span in self.spans:
            if span.start == pos:
                return span
        return None

    def next_start(self, pos: int) -> int | None:
        """The first image position at or after pos, if any."""
        starts = [s.start for s in self.spans if s.start >= pos]
        return min(starts) if starts else None

    @property
    def image_tokens(self) -> int:
        """Positions the images take."""
        return sum(s.length for s in self.spans)

    def close(self) -> None:
        """Free every image's native chunks (idempotent)."""
        images, self.images = self.images, []
        for chunks in images:
            chunks.close()


def placeholder(k: int) -> int:
    """The id that stands for image k while the prompt's text is tokenized."""
    return -1 - k


def image_token_ids(digest: str, chunk: int, n: int) -> list[int]:
    """The ids of an image chunk's n positions: negative, derived from the image's SHA-256.

    Each position takes its own 31 bits of SHAKE-256 over the digest and the chunk, so two
    different images share a prefix of cells only if they agree on every position's bits: no
    one can craft an image that reuses another image's cells (31 bits for one id alone could
    be found by brute force; 31 bits per position, for every one of an image's positions,
    cannot, up to SHA-256's own strength)."""
    stream = hashlib.shake_256(f"{digest}:{chunk}".encode()).digest(4 * n)
    words = (int.from_bytes(stream[4 * j : 4 * j + 4], "big") for j in range(n))
    return [-1 - word % _ID_RANGE for word in words]


def expand_tokens(
    ids: Sequence[int], images: Sequence[Chunks], digests: Sequence[str]
) -> tuple[list[int], list[MediaSpan], list[int]]:
    """The prompt with each placeholder replaced by its image's tokens (text tokens the model
    puts around an image, then one id per image position), the images' spans, and where each
    image's tokens begin (by image)."""
    out: list[int] = []
    spans: list[MediaSpan] = []
    starts = [0] * len(images)
    for token in ids:
        if token >= 0:
            out.append(token)
            continue
        k = -1 - token
        starts[k] = len(out)
        for piece in images[k].pieces:
            if isinstance(piece, TextPiece):
                out.extend(piece.tokens)
                continue
            if piece.n_pos != piece.n_tokens:
                raise ValueError("an image chunk whose positions differ from its tokens")
            spans.append(MediaSpan(len(out), piece.n_tokens, k, piece))
            out.extend(image_token_ids(digests[k], piece.index, piece.n_tokens))
    return out, spans, starts


def image_boundary(prompt: Sequence[int], length: int) -> int:
    """The longest reusable prefix of at most ``length`` tokens that does not end inside an
    image: cut back to the start of the image positions it would end in."""
    while 0 < length < len(prompt) and prompt[length] < 0 and prompt[length - 1] < 0:
        length -= 1
    return length


def text_tokens(prompt: Sequence[int]) -> list[int]:
    """The prompt's real tokens (image positions left out): what samplers and detokenizing
    may see."""
    return [t for t in prompt if t >= 0]


class MediaMarkers:
    """Private markers that stand for a chat request's images while its template renders.

    A marker is ``<d><nonce><d>i<k><d>``: d is the delimiter no special token contains
    (engine/prompts.py), the nonce a random number found in no client string. Client text is
    escaped with these markers in place (the model's media marker is escaped as special-token
    text is), then each one becomes the model's media marker: so only the parts a client sent
    as images become markers in the template's rendering, never a marker a client typed.
    """

    def __init__(self, delimiter: str, strings: Sequence[str]) -> None:
        d = delimiter
        while True:
            head = f"{d}{secrets.randbits(64)}{d}i"
            if not any(head in s for s in strings):
                break
        self._head, self._delimiter = head, d
        self._pattern = re.compile(re.escape(head) + r"(\d+)" + re.escape(d))

    def marker(self, k: int) -> str:
        """The marker of image k."""
        return f"{self._head}{k}{self._delimiter}"

    def with_markers(self, messages: Sequence[Message]) -> tuple[Message, ...]:
        """The messages with each parts message's content made of its text parts and a marker
        for each image, numbered in order across the conversation."""
        return parts_as_content(messages, self.marker)

    def to_marker(self, conversation: Conversation, marker: str) -> Conversation:
        """The conversation with every image's private marker replaced by ``marker``."""
        return conversation.mapped(lambda text: self._pattern.sub(lambda _: marker, text))


def parts_as_content(
    messages: Sequence[Message], image_text: Callable[[int], str]
) -> tuple[Message, ...]:
    """The messages with each parts message's content made of its text parts, and of
    ``image_text(k)`` in place of the conversation's k-th image."""
    out: list[Message] = []
    k = 0
    for m in messages:
        if not m.parts:
            out.append(m)
            continue
        texts: list[str] = []
        for part in m.parts:
            if isinstance(part, str):
                texts.append(part)
            else:
                texts.append(image_text(k))
                k += 1
        out.append(dataclasses.replace(m, content="".join(texts), parts=()))
    return tuple(out)
