"""Request and response bodies of the OpenAI API, as pydantic models (no gRPC, no ML imports)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

# ---------------------------------------------------------------------------------------------
# Requests


class _Body(BaseModel):
    """A request body: unknown fields are kept (and logged) rather than rejected."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    """Options of a streamed response."""

    include_usage: bool = False


class ContentPart(_Body):
    """One part of a message's content; only ``{"type": "text"}`` parts are supported."""

    type: str
    text: str | None = None


class ChatMessage(_Body):
    """One turn of the conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class TextFormat(_Body):
    """Free text output."""

    type: Literal["text"]


class JsonObjectFormat(_Body):
    """Any JSON object."""

    type: Literal["json_object"]


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
    n: int | None = None
    user: str | None = None
    # llama.cpp extras
    top_k: Int32 | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: Int32 | None = None
    ignore_eos: bool | None = None
    grammar: str | None = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage]
    max_completion_tokens: UInt32 | None = None
    logprobs: bool | None = None
    top_logprobs: UInt32 | None = None
    response_format: ResponseFormat | None = None
    #: vLLM's extension: return the generated token ids with the (non-streamed) choice.
    return_token_ids: bool | None = None
    # Accepted only so that they can be refused by name.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    parallel_tool_calls: Any = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None


class CompletionRequest(SamplingFields):
    """POST /v1/completions."""

    prompt: StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
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
    dimensions: int | None = None
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
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
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


FinishReason = Literal["stop", "length"]


class AssistantMessage(BaseModel):
    """The generated message."""

    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


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


class ChatDelta(BaseModel):
    """What a chunk adds to the message."""

    role: Literal["assistant"] | None = _omitted()
    content: str | None = _omitted()


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
