"""Request and response bodies of the OpenAI API, as pydantic models (no gRPC, no ML imports)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    StrictStr,
    model_validator,
)

from llamagrid.gateway.fields import UNSET_SCHEMA
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.lora.schemas import LoraScaleIn

# ---------------------------------------------------------------------------------------------
# Requests


class _Body(BaseModel):
    """A request body: fields it does not declare are kept, so that the gateway can refuse
    each by name unless it holds nothing (llamagrid.gateway.fields); its schema says so."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"additionalProperties": UNSET_SCHEMA}
    )


class StreamOptions(_Body):
    """Options of a streamed response."""

    include_usage: bool = False


class ImageUrl(_Body):
    """The image of an ``image_url`` part: a data URL (or, where the operator allows, an
    http(s):// or file:// URL), and OpenAI's ``detail`` (only "auto" can be honoured)."""

    url: StrictStr
    detail: str | None = None


class ContentPart(_Body):
    """One part of a message's content: ``{"type": "text"}`` or ``{"type": "image_url"}``."""

    type: str
    text: str | None = None
    #: OpenAI's object, or a bare URL string (llama-cpp-python's templates take both).
    image_url: StrictStr | ImageUrl | None = None
    #: The image's bytes once the route has loaded them (gateway.openai.images).
    _image: LoadedImage | None = PrivateAttr(None)

    @property
    def loaded_image(self) -> LoadedImage | None:
        """The loaded image of an ``image_url`` part; None until a route loads it."""
        return self._image

    def attach(self, image: LoadedImage) -> None:
        """Keep the image loaded for this part."""
        self._image = image


class CalledFunction(_Body):
    """The function an earlier assistant turn called, with its arguments as JSON text."""

    name: str
    arguments: str


class MessageToolCall(_Body):
    """A tool call of an earlier assistant turn; only ``{"type": "function"}`` calls."""

    id: str
    type: str = "function"
    function: CalledFunction


class ChatMessage(_Body):
    """One turn of the conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    #: The calls an assistant turn made (its content may then be null).
    tool_calls: list[MessageToolCall] | None = None
    #: The call a tool message answers.
    tool_call_id: str | None = None
    #: The thinking of an earlier assistant turn (llama-server's field).
    reasoning_content: str | None = None


class FunctionDefinition(_Body):
    """A function the model may call: its name, what it does and a JSON Schema of its
    arguments."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Body):
    """One entry of ``tools``; only ``{"type": "function"}`` tools are supported."""

    type: str
    function: FunctionDefinition | None = None


class FunctionName(_Body):
    """The function a named ``tool_choice`` forces."""

    name: str


class NamedToolChoice(_Body):
    """``tool_choice`` naming the one function the model must call."""

    type: str
    function: FunctionName | None = None


ToolChoiceOption = Literal["none", "auto", "required"] | NamedToolChoice
#: OpenAI's values of ``reasoning_effort`` (translate.py says which the worker takes).
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
#: llama-server's values of ``reasoning_format``.
ReasoningFormat = Literal["none", "auto", "deepseek", "deepseek-legacy"]


class TextFormat(_Body):
    """Free text output."""

    type: Literal["text"]


class JsonObjectFormat(_Body):
    """Any JSON object, or, with ``schema`` (llama.cpp's and llama-cpp-python's form), JSON
    that validates against that schema."""

    type: Literal["json_object"]
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class JsonSchemaSpec(_Body):
    """A named JSON Schema the output must follow."""

    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(_Body):
    """JSON that validates against a schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]
# Only what the llamagrid.v1 wire can carry is checked here (an int32 is an int32). Whether a
# value is acceptable (temperature in range, a token in the vocabulary, ...) is decided once, by
# the worker (llamagrid.worker.engine.validation), and mapped onto a 400 like any worker error.
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
Int32 = Annotated[int, Field(ge=INT32_MIN, le=INT32_MAX)]
UInt32 = Annotated[int, Field(ge=0, le=UINT32_MAX)]
TokenId = Annotated[StrictInt, Field(ge=INT32_MIN, le=INT32_MAX)]
TokenIds = list[TokenId]


class SamplingFields(_Body):
    """Sampling fields shared by chat and text completions, with llama.cpp-style extras."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: UInt32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    #: Choices to generate (the worker bounds it by its slots).
    n: UInt32 | None = None
    user: str | None = None
    # llama.cpp extras
    top_k: Int32 | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: Int32 | None = None
    ignore_eos: bool | None = None
    grammar: str | None = None
    #: llama-server's: output constrained to JSON valid against this schema.
    json_schema: dict[str, Any] | None = None
    # llama.cpp's samplers, by llama-server's names (the worker checks the values).
    mirostat: UInt32 | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    dry_multiplier: float | None = None
    dry_base: float | None = None
    dry_allowed_length: Int32 | None = None
    dry_penalty_last_n: Int32 | None = None
    dry_sequence_breakers: list[StrictStr] | None = None
    xtc_probability: float | None = None
    xtc_threshold: float | None = None
    top_n_sigma: float | None = None
    dynatemp_range: float | None = None
    dynatemp_exponent: float | None = None
    min_keep: UInt32 | None = None
    #: The sampler order: a list of names, or a string of one-letter codes ("edkypmxt").
    samplers: StrictStr | list[StrictStr] | None = None
    adaptive_target: float | None = None
    adaptive_decay: float | None = None
    #: llama-server's name for the number of most likely alternatives returned per token: the
    #: same as ``logprobs`` (a number) on /v1/completions, and as ``logprobs: true`` with
    #: ``top_logprobs`` on /v1/chat/completions. 0 means none.
    n_probs: UInt32 | None = None
    #: llama-server's: LoRA adapter scales for this request alone (adapters left out get 0).
    lora: list[LoraScaleIn] | None = None

    @model_validator(mode="after")
    def _n_probs_as_openai_fields(self) -> Self:
        """n_probs becomes the route's OpenAI fields, which must not say otherwise."""
        n = self.n_probs
        if not n:
            return self
        values = self.__dict__  # the route's own fields, which this base class does not declare
        if "top_logprobs" in type(self).model_fields:  # chat: a flag and a count
            flag, count = values.get("logprobs"), values.get("top_logprobs")
            if flag is False or count not in (None, n):
                raise ValueError(f"n_probs ({n}) and logprobs/top_logprobs disagree")
            values["logprobs"], values["top_logprobs"] = True, n
        elif "logprobs" in type(self).model_fields:  # completions: the count itself
            if values.get("logprobs") not in (None, n):
                raise ValueError(f"n_probs ({n}) and logprobs ({values['logprobs']}) disagree")
            values["logprobs"] = n
        return self


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_completion_tokens: UInt32 | None = None
    logprobs: bool | None = None
    top_logprobs: UInt32 | None = None
    response_format: ResponseFormat | None = None
    #: vLLM's extension: return the generated token ids with the (non-streamed) choice.
    return_token_ids: bool | None = None
    tools: list[ChatTool] | None = None
    tool_choice: ToolChoiceOption | None = None
    parallel_tool_calls: bool | None = None
    #: Extra variables for the chat template (llama-server's field).
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_effort: ReasoningEffort | None = None
    #: How a reasoning model's thinking is returned (llama-server's field).
    reasoning_format: ReasoningFormat | None = None
    # Accepted only so that they can be refused by name.
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None


class PromptObject(_Body):
    """llama-server's prompt object: a text prompt and, for a model that reads images, the
    images (bare base64) that take the places of its media markers, in order."""

    prompt_string: StrictStr
    multimodal_data: list[StrictStr] | None = None


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: StrictStr | list[StrictStr] | TokenIds | list[TokenIds] | PromptObject
    max_tokens: UInt32 | None = 16
    logprobs: UInt32 | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None


class EmbeddingRequest(_Body):
    """POST /v1/embeddings."""

    model: str
    input: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
    encoding_format: Literal["float", "base64"] = "float"
    #: Strict: 64.0, "64" and true are refused rather than read as integers.
    dimensions: Annotated[StrictInt, Field(ge=1, le=UINT32_MAX)] | None = None
    user: str | None = None


# ---------------------------------------------------------------------------------------------
# Responses


def _is_none(value: object) -> bool:
    return value is None


def _omitted() -> Any:
    """A field left out of the JSON when it is None (where OpenAI leaves it out, too)."""
    return Field(None, exclude_if=_is_none)


class TopLogprob(BaseModel):
    """One likely token at a position."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    """A generated token with its most likely alternatives."""

    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """The log-probabilities of a chat choice."""

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """The log-probabilities of a text completion, in the legacy completions format."""

    tokens: list[str] = Field(default_factory=list)
    #: Null for a prompt's first token (echo): nothing precedes it.
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class PromptTokensDetails(BaseModel):
    """Where prompt tokens came from."""

    cached_tokens: int


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


#: Why a text completion ended.
TextFinishReason = Literal["stop", "length"]
#: Why a chat completion ended.
FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionCall(BaseModel):
    """The function a tool call calls, with its arguments as JSON text."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call the model made."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    #: Null when the turn only called tools.
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = _omitted()
    #: The thinking, split out of the content (llama-server's field).
    reasoning_content: str | None = _omitted()


class ChatChoice(BaseModel):
    """One generated message."""

    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason
    #: The generated token ids, when the request set return_token_ids.
    token_ids: list[int] | None = None


class ChatCompletion(BaseModel):
    """The response of a non-streamed chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = _omitted()


class FunctionDelta(BaseModel):
    """A part of a streamed tool call's function: its name first, then argument fragments."""

    name: str | None = _omitted()
    arguments: str | None = _omitted()


class ToolCallDelta(BaseModel):
    """A part of a streamed tool call. The first one of a call carries its id, type and name
    (arguments ""); later ones carry only the index and the next fragment of the arguments."""

    index: int
    id: str | None = _omitted()
    type: Literal["function"] | None = _omitted()
    function: FunctionDelta | None = _omitted()


class ChatDelta(BaseModel):
    """What a chunk adds to the message."""

    role: Literal["assistant"] | None = _omitted()
    content: str | None = _omitted()
    reasoning_content: str | None = _omitted()
    tool_calls: list[ToolCallDelta] | None = _omitted()


class ChatChunkChoice(BaseModel):
    """The part of one choice carried by a chunk."""

    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = _omitted()
    system_fingerprint: str | None = _omitted()


class CompletionChoice(BaseModel):
    """One generated text."""

    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class Completion(BaseModel):
    """A text completion, or one event of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = _omitted()
    system_fingerprint: str | None = _omitted()


class EmbeddingData(BaseModel):
    """The embedding of one input."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    """Token counts of an embeddings request."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    """The response of POST /v1/embeddings."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class Model(BaseModel):
    """A model the gateway can route to."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llamagrid"


class ModelList(BaseModel):
    """The response of GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[Model]


class ErrorDetail(BaseModel):
    """What went wrong: OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error response (4xx and 5xx) the gateway sends."""

    error: ErrorDetail
