"""What a client asks the engine to generate: messages or a prompt, and sampling options."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from llamagrid.worker.engine.lora import LoraScale


@dataclass(frozen=True)
class ToolCall:
    """A function call an assistant turn made."""

    #: The call's id ("" when the client gave none).
    id: str
    name: str
    #: The arguments as JSON text (an object; "" means no arguments).
    arguments: str


@dataclass(frozen=True)
class ImageInput:
    """An encoded image a client sent (engine/images.py decodes it)."""

    data: bytes
    #: Its MIME type as given ("" means detect it from the bytes).
    mime_type: str = ""


#: One part of a chat message: text, or an image where the template puts the media marker.
ContentPart = str | ImageInput


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str
    name: str | None = None
    #: The calls an assistant turn made.
    tool_calls: tuple[ToolCall, ...] = ()
    #: The call a tool result answers (role "tool").
    tool_call_id: str = ""
    #: The thinking of an earlier assistant turn.
    reasoning_content: str = ""
    #: The turn as text and image parts, in order (content is then empty).
    parts: tuple[ContentPart, ...] = ()

    @property
    def images(self) -> tuple[ImageInput, ...]:
        """The message's images, in order."""
        return tuple(p for p in self.parts if isinstance(p, ImageInput))


@dataclass(frozen=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str = ""
    #: A JSON Schema of the arguments, as JSON text; "" means no arguments.
    parameters: str = ""
    #: The arguments must validate against the schema (OpenAI's "strict").
    strict: bool = False


class ToolChoice(enum.Enum):
    """Whether the model may, must or must not call tools (a named function is ToolChoice's
    alternative: GenerationSpec.tool_function)."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class ReasoningFormat(enum.Enum):
    """How a reasoning model's thinking is returned."""

    #: Thinking stays in the text, markup included.
    NONE = "none"
    #: Thinking is taken out of the text and returned as reasoning.
    SPLIT = "split"


@dataclass(frozen=True)
class Grammar:
    """Output constrained by a GBNF grammar."""

    text: str


@dataclass(frozen=True)
class JsonSchema:
    """Output constrained to JSON valid against a schema (JSON text)."""

    text: str


@dataclass(frozen=True)
class ToolGrammar:
    """Output held to a tool-call format's markup, with arguments valid against the tools'
    schemas: what the engine puts in place of a grammar for tool_choice required or a named
    function (clients send tools, never this)."""

    tool_format: str
    tools: tuple[Tool, ...]
    #: The function every call names, or None for any of tools.
    name: str | None
    #: Whether several calls may follow each other.
    parallel: bool
    #: The template's thinking format ("think", "gpt-oss"): the model may think first.
    reasoning: str | None = None
    #: The prompt opened a thinking block: the output starts inside it.
    thinking_open: bool = False


@dataclass(frozen=True)
class Sampling:
    """Sampling options as the client gave them; None means "the worker's default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int | None = None
    #: What the output must match, if anything: one grammar or one JSON schema, never both.
    constraint: Grammar | JsonSchema | ToolGrammar | None = None
    mirostat: int | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: int | None = None
    dry_penalty_last_n: int | None = None
    #: Empty means llama.cpp's default breakers.
    dry_sequence_breakers: tuple[str, ...] = ()
    xtc_probability: float | None = None
    xtc_threshold: float | None = None
    top_n_sigma: float | None = None
    dynatemp_range: float | None = None
    dynatemp_exponent: float | None = None
    min_keep: int | None = None
    #: The sampler order, by llama-server's names or letters; empty means the default order.
    samplers: tuple[str, ...] = ()
    adaptive_target: float | None = None
    adaptive_decay: float | None = None


@dataclass(frozen=True)
class InfillChunk:
    """One file of extra context for code infilling."""

    filename: str
    text: str


@dataclass(frozen=True)
class Infill:
    """A fill-in-the-middle input: the text around the cursor and other files as context
    (engine/infill.py builds the prompt with the model's FIM tokens)."""

    prefix: str = ""
    suffix: str = ""
    extra: tuple[InfillChunk, ...] = ()
    #: Text the completion starts with, put right after the prefix.
    prompt: str = ""


@dataclass(frozen=True)
class SessionRef:
    """The session a generation is the next turn of."""

    session_id: str
    #: Run only if the session has exactly this many committed turns.
    expected_turns: int | None = None


@dataclass(frozen=True)
class GenerationSpec:
    """One generation to run: exactly one of prompt, tokens, messages or infill is set. With
    a session, the input is only the new turn, put after the session's transcript."""

    prompt: str | None = None
    tokens: tuple[int, ...] | None = None
    messages: tuple[Message, ...] | None = None
    #: Code to fill in between a prefix and a suffix.
    infill: Infill | None = None
    sampling: Sampling = field(default_factory=Sampling)
    request_id: str = ""
    session: SessionRef | None = None
    #: Functions the model may call (chat input only); the template receives them.
    tools: tuple[Tool, ...] = ()
    #: Auto, none or required; None: auto (the default when tools are given).
    tool_choice: ToolChoice | None = None
    #: The function the model must call (instead of tool_choice).
    tool_function: str | None = None
    #: Whether the model may make several calls in one turn.
    parallel_tool_calls: bool = True
    #: Extra chat template variables, as the JSON text of an object ("" for none).
    chat_template_kwargs: str = ""
    #: How hard a reasoning model should think, passed to the template ("" for unset).
    reasoning_effort: str = ""
    #: How thinking is returned; None: the worker's default (--reasoning-format).
    reasoning_format: ReasoningFormat | None = None
    #: How many choices to generate from the input; None: one.
    n: int | None = None
    #: Alternatives to return with each prompt token's log-probability; None: no prompt
    #: log-probabilities.
    prompt_logprobs: int | None = None
    #: Send the prompt's text back before the output.
    echo: bool = False
    #: The LoRA adapter scales for this request alone (adapters it leaves out get 0); None:
    #: the worker's scales.
    lora: tuple[LoraScale, ...] | None = None
    #: Images for a raw prompt, each in place of one media marker of the prompt, in order.
    images: tuple[ImageInput, ...] = ()

    @property
    def all_images(self) -> tuple[ImageInput, ...]:
        """Every image of the request, in prompt order: the prompt's, or the messages'."""
        if self.messages is not None:
            return tuple(i for m in self.messages for i in m.images)
        return self.images

    @property
    def choices(self) -> int:
        """How many choices the request generates."""
        return self.n or 1
