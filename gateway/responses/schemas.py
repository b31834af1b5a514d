"""Request and response bodies of OpenAI's Responses API (no gRPC, no ML imports).

The response models follow the ``openai`` SDK's types (``openai.types.responses``): every field
the SDK requires is present, with the value that means "nothing of that kind" where llamagrid has
nothing to say (no tools, no reasoning tokens, no annotations).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from llamagrid.gateway.openai.schemas import UInt32

#: The most items in ``input`` (the worker's default ``--max-messages``).
MAX_INPUT_ITEMS = 4096
#: The most content parts in one input message.
MAX_CONTENT_PARTS = 64
#: The longest response id accepted (``previous_response_id``, and in a path).
MAX_ID_CHARS = 640
#: The longest model alias.
MAX_MODEL_CHARS = 256
#: The longest label (``user``, ``safety_identifier``, ``prompt_cache_key``).
MAX_LABEL_CHARS = 256
#: OpenAI's limits on ``metadata``: pairs, key length, value length.
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class _Strict(BaseModel):
    """A nested object of the request: an unknown field is a 400."""

    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """An input item or part: fields beyond those read here (ids and statuses of earlier output
    items, annotations, cache hints) cannot change the output and are accepted unused."""

    model_config = ConfigDict(extra="allow")


class InputPart(_Open):
    """One part of an input message's content; only text parts are supported."""

    type: str = Field(max_length=64)
    text: str | None = None


class InputItem(_Open):
    """One item of ``input``; only messages are supported."""

    type: str | None = Field(None, max_length=64)
    role: str | None = Field(None, max_length=64)
    content: str | Annotated[list[InputPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None


class TextFormat(_Strict):
    """``text.format``: plain text, any JSON object, or JSON that follows a schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Strict):
    """``text``: the output's format."""

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(_Strict):
    """``stream_options``. The stream is never padded, so both values mean the same."""

    include_obfuscation: bool | None = None


class ResponseCreateRequest(BaseModel):
    """``POST /v1/responses``. Fields not declared here are refused unless they hold their
    default (responses/translate.py)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    input: str | Annotated[list[InputItem], Field(max_length=MAX_INPUT_ITEMS)]
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    store: bool | None = True
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_output_tokens: UInt32 | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] | None = None
    text: TextConfig | None = None
    user: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    safety_identifier: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    prompt_cache_key: str | None = Field(None, max_length=MAX_LABEL_CHARS)

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS or len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(
                    f"keys are at most {MAX_METADATA_KEY_CHARS} characters and values at most "
                    f"{MAX_METADATA_VALUE_CHARS}"
                )
        return value


# ---------------------------------------------------------------------------------------------
# Responses


class OutputText(BaseModel):
    """Generated text: the one content part of the output message."""

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class OutputMessage(BaseModel):
    """The assistant's message."""

    id: str
    type: Literal["message"] = "message"
    status: ItemStatus
    role: Literal["assistant"] = "assistant"
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    """Where input tokens came from."""

    #: Input tokens whose KV cache was reused (the earlier turns of a conversation, a shared
    #: prefix) rather than computed.
    cached_tokens: int
    #: Always 0: llamagrid has no prompt-cache writes to report apart.
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    """What output tokens were."""

    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    """Token counts: the input is the whole context, earlier turns included."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    """Why a response is incomplete."""

    reason: Literal["max_output_tokens"]


ResponseStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseObject(BaseModel):
    """A response, as created, streamed and retrieved."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: ResponseStatus
    completed_at: int | None = None
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Literal["auto"] = "auto"
    tools: list[Any] = Field(default_factory=list)
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class ResponseDeleted(BaseModel):
    """The answer to ``DELETE /v1/responses/{id}``."""

    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
