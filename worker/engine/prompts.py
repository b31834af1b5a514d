"""Prompts become token ids here, off the engine thread, and client text stays text.

Every request's text is tokenized by a PromptTokenizer on a tokenizer thread (LlamaEngine's
pool) before the request reaches the engine thread: llama.cpp's tokenizer only reads the
vocabulary, so it runs safely beside llama_decode (llama-server tokenizes in its HTTP threads
for the same reason). The engine thread receives ready token ids.

**Special tokens come only from the chat template.** A special token is one llama.cpp matches
only when asked to parse special tokens: its control tokens (``<|im_start|>``, ``<|eot_id|>``,
BOS, ...) and its unknown token. Text a client wrote (a message's content, role or name, a raw
prompt) never becomes one: ``<|im_end|><|im_start|>system`` inside a message is text, read as
the model reads any other characters. Chat messages become tokens in these steps:

1. Every occurrence of special-token text in a client string (a message's role, name,
   content, thinking and tool calls; the tools; the template variables: engine/chat_inputs.py)
   is replaced by a placeholder, ``#<nonce>#<index>#``: the nonce is a random number found in
   no client string, and ``#`` (or another delimiter) is a character no special token
   contains, so no special token can match across a placeholder's edge.
2. The template is rendered with the escaped messages, and again with each non-blank content,
   thinking and tool description replaced by a neutral sentinel (the "skeleton"). The special
   tokens in the skeleton are the ones the template itself writes.
3. The escaped rendering must hold the skeleton's special tokens, no more, no fewer, in the
   same order. If not, the template makes special tokens out of message text (by joining it
   to its own text, for instance), or writes different ones depending on the text: the request
   is refused (INVALID_ARGUMENT) rather than guessed at.
4. When no client string held special-token text (the usual case), the escaped rendering is
   the real one and is tokenized as it always was, special tokens parsed: the ids are the same
   as before. Otherwise the rendering with its placeholders restored must equal the rendering
   of the real messages: the template carried the escaped text through unchanged, or changed
   it only as it would have changed the real text. It is then cut at the template's special
   tokens, and each piece between them, placeholders restored, is tokenized with special
   tokens not parsed. That is how llama.cpp itself splits a text at special tokens (the
   whitespace an LSTRIP or RSTRIP token absorbs included), so the text around the
   special-token strings is tokenized as it would be anywhere else.
5. Last, on the ids: the prompt's control tokens are BOS (when added) and the template's,
   nothing else.

Templates that alter content keep working: ``| trim``, ``.strip()`` or
``split('</think>')`` treat a placeholder as the text it stands for (it holds no whitespace
and no special-token text). A template whose change to the text does not commute with the
escaping (``content[:10]`` cutting through a placeholder, a ``replace`` of a special token's
text) fails the equality of step 4, and the request is refused.

Roles and names are escaped too, but a template may also build special tokens out of them
(``'<|' + role + '|>'``), which step 3 cannot see (the skeleton holds the same role). So
engine/validation.py restricts both to letters, digits, ``_`` and ``-``: a role can name the
token the template builds, never close it and open another.

**Images** (a vision model's): a chat message's image parts become the model's media marker
in its content, where the template sees them, as llama-server does. The marker is one of the
special texts, so a marker a client types in a text part is escaped like special-token text
and stays text; only the parts sent as images become markers. The rendering is cut at the
markers as at special tokens, and each image's tokens (engine/media.py) take its marker's
place; the template must write each image's marker once, else the request is refused. The
images themselves, raw prompts with images and session turns are engine/request_prompts.py's.

The special-token matcher and the escaping live in engine/special_texts.py.

Raw prompts (``prompt``) follow the same rule: tokenized with special tokens not parsed.
Token-id prompts are used as given. ``--special-tokens-in-content`` and
``--special-tokens-in-prompt`` restore the old, unsafe parsing for operators who need it.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from llamagrid.worker.engine.chat_inputs import (
    ChatInputs,
    Conversation,
    message_dict,
    skeleton_turn,
)
from llamagrid.worker.engine.chat_template import OBJECT_CALLS, ChatTemplate
from llamagrid.worker.engine.errors import context_exceeded, invalid, not_ready, unsupported
from llamagrid.worker.engine.infill import FimTokens, infill_tokens
from llamagrid.worker.engine.media import (
    Chunks,
    MediaMarkers,
    parts_as_content,
    placeholder,
)
from llamagrid.worker.engine.reports import TokenPiece
from llamagrid.worker.engine.requests import GenerationSpec, Infill, Message
from llamagrid.worker.engine.special_texts import Escaper, SpecialToken, SpecialTokens
from llamagrid.worker.engine.tool_prompt import with_tools_described

#: The whitespace C's isspace() knows, which llama.cpp strips beside LSTRIP/RSTRIP tokens.
_ASCII_SPACE = " \t\n\v\f\r"


class Vocab(Protocol):
    """What the tokenizer needs of a model (llama_backend.Model; tests use a fake)."""

    @property
    def bos_text(self) -> str:
        """BOS as text."""

    @property
    def adds_bos(self) -> bool:
        """Whether tokenizing with add_special prepends BOS."""

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        """Token ids of text."""

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes of one token."""

    def detokenize(self, tokens: list[int], render_special: bool) -> str:
        """The text of token ids."""


#: The text that stands for an image when a model has no projector to say its own.
DEFAULT_MARKER = "<__media__>"
#: The id of the media marker among a vision model's special tokens (runtime.py adds it there
#: so that client text escapes it); no real token, nor an image's placeholder, has it.
MEDIA_MARKER_ID = -(1 << 31)


class ImageTokenizer(Protocol):
    """What prompts need of a vision projector (native/mtmd.py's Projector)."""

    @property
    def marker(self) -> str:
        """The text that stands for an image in a raw prompt."""

    def tokenize(self, width: int, height: int, rgb: bytes, image_id: str) -> Chunks:
        """One image's chunks, from packed 8-bit RGB rows."""


#: What holding_model's function returns.
_Result = TypeVar("_Result")


class PromptTokenizer:
    """Templates and tokenization for any thread; the model stays loaded while a call runs.

    special_in_content and special_in_prompt restore the old, unsafe behaviour: special-token
    text in chat messages, or in raw prompts, is parsed as special tokens. fim holds the
    model's fill-in-the-middle tokens (None: it cannot infill), and infill_window the batch
    size and per-request context an infill prompt is trimmed to (engine/infill.py).
    """

    def __init__(
        self,
        vocab: Vocab,
        template: ChatTemplate,
        specials: SpecialTokens,
        special_in_content: bool = False,
        special_in_prompt: bool = False,
        fim: FimTokens | None = None,
        infill_window: tuple[int, int] = (512, 2048),
        images: ImageTokenizer | None = None,
        image_limits: tuple[int, int] = (10 << 20, 4096 * 4096),
        tool_format: str = "generic",
    ) -> None:
        self.vocab = vocab
        #: The tool-call format answers are read in (--tool-call-format, else the template's).
        self.tool_format = tool_format
        #: The vision projector's tokenizer (None: the model reads no images), and the bytes and
        #: pixels an image may have.
        self.images = images
        self.image_limits = image_limits
        self.fim = fim
        self.infill_window = infill_window
        self.template = template
        self.specials = specials
        self.special_in_content = special_in_content
        self.special_in_prompt = special_in_prompt
        self._cond = threading.Condition()
        self._users = 0
        self._closed = False

    # Life cycle: the model must not be freed under a running call.
    @contextlib.contextmanager
    def _use(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise not_ready("the worker is shutting down")
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def holding_model(self, fn: Callable[[], _Result]) -> _Result:
        """fn() while the model stays loaded: other work on a tokenizer thread that reads the
        vocabulary (a request's DRY sampler, engine/sampling.py)."""
        with self._use():
            return fn()

    def close(self) -> None:
        """Refuse new calls and wait for running ones (each is bounded by the size limits)."""
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._users == 0)

    # Work, on any thread.
    def prompt_tokens(self, spec: GenerationSpec) -> list[int]:
        """The prompt of a validated request as token ids (one without images: prompt_media
        takes those)."""
        if spec.all_images:
            raise unsupported("images are not supported in this kind of request", "messages")
        with self._use():
            if spec.tokens is not None:
                tokens = list(spec.tokens)
            elif spec.messages is not None:
                tokens = self.chat_tokens(spec.messages, inputs=ChatInputs.of(spec))
            elif spec.infill is not None:
                tokens = self._infill_prompt(spec.infill, spec.sampling.max_tokens or 0)
            else:
                text = spec.prompt or ""
                tokens = self.vocab.tokenize(text, True, self.special_in_prompt)
        if not tokens:
            raise invalid("the prompt is empty", "prompt")
        return tokens

    def _infill_prompt(self, infill: Infill, n_predict: int) -> list[int]:
        """A fill-in-the-middle prompt with the model's FIM tokens (engine/infill.py); its
        texts are plain text, special-token text included."""
        n_batch, n_ctx = self.infill_window
        bos = self._frame()[0]
        return infill_tokens(
            infill,
            self.fim,
            lambda text: self.vocab.tokenize(text, False, False),
            bos[0] if bos else None,
            n_batch,
            n_ctx,
            n_predict,
        )

    def embed_tokens(self, inputs: Sequence[str | list[int]]) -> list[list[int]]:
        """Token ids of embedding inputs (texts are tokenized as they always were)."""
        with self._use():
            return [self.vocab.tokenize(i, True, True) if isinstance(i, str) else i for i in inputs]

    def pieces(self, text: str, add_special: bool, parse_special: bool) -> list[TokenPiece]:
        """Token ids of text, with their bytes (the Tokenize RPC)."""
        with self._use():
            ids = self.vocab.tokenize(text, add_special, parse_special)
            return [TokenPiece(t, self.vocab.piece(t, special=True)) for t in ids]

    def detokenize(self, tokens: list[int], render_special: bool) -> str:
        """Text of token ids (the Detokenize RPC)."""
        with self._use():
            return self.vocab.detokenize(tokens, render_special)

    def chat_text(self, messages: Sequence[Message]) -> str:
        """The template's rendering of messages, then the opening of the assistant's turn, as
        text: what chat_tokens tokenizes (BOS aside)."""
        calls = any(m.tool_calls for m in messages)
        style = self.template.call_style if calls else OBJECT_CALLS
        marker = self.media_marker
        plain = parts_as_content(messages, lambda k: marker)
        return self._render([message_dict(m, style) for m in plain])

    def chat_tokens(
        self,
        messages: Sequence[Message],
        after: Sequence[Message] = (),
        inputs: ChatInputs | None = None,
    ) -> list[int]:
        """The template's rendering of messages, then the assistant's turn, as token ids: the
        template's special tokens parsed, the messages' text as text (module docstring).
        ``inputs`` are the tools and extra variables the template also receives; their strings
        are client text too, escaped like the messages'.

        With ``after`` (earlier turns, whose text holds no special-token text), only what the
        template writes after those turns is tokenized, without BOS: a session's next turn.
        """
        if inputs is not None and inputs.callable_tools and self.describes_tools:
            messages = with_tools_described(messages, inputs.tools)
        calls = any(m.tool_calls for m in messages)
        style = self.template.call_style if calls else OBJECT_CALLS
        n_images = sum(len(m.images) for m in messages)
        plain = parts_as_content(messages, lambda k: "")  # images left out: client text only
        conversation = Conversation(
            tuple(message_dict(m, style) for m in plain), inputs or ChatInputs()
        )
        markers = None
        if n_images:  # each image's place: a private marker until client text is escaped
            markers = MediaMarkers(self.specials.delimiter, list(conversation.strings()))
            marked = markers.with_markers(messages)
            conversation = Conversation(
                tuple(message_dict(m, style) for m in marked), conversation.inputs
            )
        history = tuple(message_dict(m) for m in parts_as_content(after, lambda k: ""))
        if self.special_in_content:
            if markers is not None:
                conversation = markers.to_marker(conversation, self.media_marker)
            text = self._rendered(history, conversation)
            media = self._media(text, n_images)
            add_bos = not history and self._adds_bos(text)
            if not media:
                return self.vocab.tokenize(text, add_bos, True)
            return self._split_at_media(text, media, add_bos)
        # The media marker is one of specials' texts: a client's marker text is escaped as
        # special-token text is, and only image parts become the marker the template sees.
        esc = Escaper(self.specials, list(conversation.strings()))
        escaped = conversation.mapped(esc.escape)
        if markers is not None:
            conversation = markers.to_marker(conversation, self.media_marker)
            escaped = markers.to_marker(escaped, self.media_marker)
        text = self._rendered(history, escaped)
        skeleton_history = tuple(skeleton_turn(t, esc.sentinel) for t in history)
        skeleton = self._rendered(skeleton_history, escaped.skeleton(esc.sentinel))
        found = [f for f in self.specials.find(text) if f[2].id != MEDIA_MARKER_ID]
        written = [t.id for _, _, t in self.specials.find(skeleton) if t.id != MEDIA_MARKER_ID]
        if [token.id for _, _, token in found] != written:
            raise invalid(
                "the chat template makes special tokens out of message text, or writes "
                "different special tokens depending on it: these messages cannot be tokenized "
                "safely",
                "messages",
            )
        add_bos = not history and self._adds_bos(text)
        media = self._media(text, n_images)
        if not esc.escaped and not media:  # the ids a plain tokenization has always given
            ids = self.vocab.tokenize(text, add_bos, True)
        elif esc.escaped and esc.restore(text) != self._rendered(history, conversation):
            raise invalid(
                "the chat template alters message text that holds special-token text (such as "
                "a cut or a replacement): these messages cannot be tokenized safely",
                "messages",
            )
        else:  # images are cut out as llama.cpp cuts special tokens out: placeholders
            ids = self._assemble(text, sorted([*found, *media], key=lambda f: f[0]), esc, add_bos)
        self._check_controls(ids, written, add_bos)
        return ids

    @property
    def describes_tools(self) -> bool:
        """Whether a request's tools are described in a system message (engine/tool_prompt.py):
        the template does not show them, and answers are read in the generic format."""
        return self.tool_format == "generic" and not self.template.shows_tools

    @property
    def media_marker(self) -> str:
        """The text that stands for an image in a prompt or a chat template's rendering."""
        return self.images.marker if self.images is not None else DEFAULT_MARKER

    def _media(self, text: str, n_images: int) -> list[tuple[int, int, SpecialToken]]:
        """The images' places in a rendering (its media markers, in text order), as pseudo
        special tokens whose ids are the images' placeholders. Without images, a marker the
        template writes is text."""
        if not n_images:
            return []
        marker = self.media_marker
        places = [m.start() for m in re.finditer(re.escape(marker), text)]
        if len(places) != n_images:
            raise invalid(
                f"the chat template wrote {len(places)} image places for {n_images} images "
                "(it drops or repeats message content): these messages cannot carry images",
                "messages",
            )
        return [
            (start, start + len(marker), SpecialToken(placeholder(k), marker, control=False))
            for k, start in enumerate(places)
        ]

    def _split_at_media(
        self, text: str, media: list[tuple[int, int, SpecialToken]], add_bos: bool
    ) -> list[int]:
        """Ids of a rendering whose special-token text is parsed (--special-tokens-in-content),
        with the images' placeholders at their places."""
        prefix, suffix = self._frame() if add_bos else ([], [])
        ids, start = list(prefix), 0
        for begin, end, token in media:
            ids += self.vocab.tokenize(text[start:begin], False, True) if begin > start else []
            ids.append(token.id)
            start = end
        ids += self.vocab.tokenize(text[start:], False, True) if start < len(text) else []
        return ids + suffix

    def opens_thinking(self, tokens: Sequence[int], opener: str) -> bool:
        """Whether a prompt ends inside an open thinking block: its text, special tokens
        rendered, ends with ``opener`` (such as ``<think>``) and whitespace."""
        with self._use():
            tail = self.vocab.detokenize(list(tokens[-_THINK_TAIL_TOKENS:]), True)
        return tail.rstrip().endswith(opener)

    # The steps of chat_tokens.
    def _rendered(self, history: Sequence[Mapping[str, Any]], conversation: Conversation) -> str:
        """What the template writes for the conversation after the history (all of it, when
        there is no history), with the generation prompt."""
        turns = [*history, *conversation.turns]
        text = self._render(turns, conversation.inputs)
        return self._cut(text, history, conversation.inputs)

    def _render(
        self,
        turns: Sequence[Mapping[str, Any]],
        inputs: ChatInputs | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        inputs = inputs or ChatInputs()
        return self.template.render(
            turns, add_generation_prompt, inputs.tools or None, inputs.variables
        )

    def _cut(self, text: str, history: Sequence[Mapping[str, Any]], inputs: ChatInputs) -> str:
        """What ``text`` (a rendering of history and more) adds after the rendering of history
        alone; raises when the template renders history differently once more follows."""
        if not history:
            return text
        before = self._render(history, inputs, add_generation_prompt=False)
        if not text.startswith(before):
            raise invalid(
                "this chat template renders earlier turns differently once a later turn "
                "follows, so a session cannot add a turn to them: send the whole conversation "
                "without a session",
                "messages",
            )
        return text[len(before) :]

    def _adds_bos(self, text: str) -> bool:
        """Whether to add BOS: the model wants one and the template did not write it."""
        bos = self.vocab.bos_text
        return self.vocab.adds_bos and not (bos and text.startswith(bos))

    def _assemble(
        self,
        text: str,
        found: list[tuple[int, int, SpecialToken]],
        esc: Escaper,
        add_special: bool,
    ) -> list[int]:
        """Token ids of a rendering with placeholders: its special tokens, and the text between
        them (placeholders restored) tokenized with special tokens not parsed, as llama.cpp
        tokenizes the text between special tokens."""
        prefix, suffix = self._frame() if add_special else ([], [])
        ids = list(prefix)
        start, strip_left = 0, False
        for begin, end, token in found:
            ids += self._text_ids(esc.restore(text[start:begin]), strip_left, token.lstrip)
            ids.append(token.id)
            start, strip_left = end, token.rstrip
        ids += self._text_ids(esc.restore(text[start:]), strip_left, False)
        return ids + suffix

    def _text_ids(self, piece: str, strip_left: bool, strip_right: bool) -> list[int]:
        if strip_left:
            piece = piece.lstrip(_ASCII_SPACE)
        if strip_right:
            piece = piece.rstrip(_ASCII_SPACE)
        return self.vocab.tokenize(piece, False, False) if piece else []

    def _frame(self) -> tuple[list[int], list[int]]:
        """What tokenizing with add_special puts before the text (BOS) and after it (EOS, for
        models that want one)."""
        frame = self.vocab.tokenize("", True, False)
        n_bos = 1 if self.vocab.adds_bos and frame else 0
        return frame[:n_bos], frame[n_bos:]

    def _check_controls(self, ids: list[int], written: list[int], add_special: bool) -> None:
        """The prompt's control tokens are the template's (and BOS if added), nothing else."""
        control = self.specials.control_ids
        prefix, suffix = self._frame() if add_special else ([], [])
        expected = [t for t in (*prefix, *written, *suffix) if t in control]
        if [t for t in ids if t in control] != expected:
            raise invalid(
                "the messages would hold special tokens the chat template did not write: "
                "they cannot be tokenized safely",
                "messages",
            )


#: Tokens at the end of a prompt searched for an open thinking block.
_THINK_TAIL_TOKENS = 8


def check_fits(spec: GenerationSpec, prompt_tokens: int, seq_ctx: int) -> None:
    """The prompt and the tokens to generate fit one request's context."""
    max_tokens = spec.sampling.max_tokens
    room = seq_ctx - prompt_tokens
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        asked = prompt_tokens + (max_tokens or 1)
        raise context_exceeded(
            f"this model's context is {seq_ctx} tokens per request, but the request needs "
            f"{asked} ({prompt_tokens} in the prompt, {max_tokens or 1} to generate)",
            "messages" if spec.messages is not None else "infill" if spec.infill else "prompt",
        )
