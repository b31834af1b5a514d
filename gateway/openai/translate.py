"""Translation of OpenAI requests into llamagrid.v1 messages (rendering.py goes the other way).

Every field is either honoured or refused with a 400 ``unsupported_parameter`` naming it, except
``user`` (it only labels the caller) and fields this module has never heard of, which are
ignored (and logged by the router).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from llamagrid.gateway.errors import invalid_request, unsupported
from llamagrid.gateway.openai.schemas import (
    INT32_MAX,
    INT32_MIN,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    EmbeddingRequest,
    JsonObjectFormat,
    JsonSchemaFormat,
    SamplingFields,
)
from llamagrid.v1 import inference_pb2 as pb

#: Fields whose value is copied as is onto SamplingParams.
_PLAIN_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "presence_penalty",
    "frequency_penalty",
    "ignore_eos",
)
#: Chat fields that the gateway cannot honour: any value other than null is refused.
_CHAT_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "prediction",
    "web_search_options",
)
#: Message fields that the gateway cannot honour.
_MESSAGE_UNSUPPORTED = ("tool_calls", "function_call", "audio")
_UINT64_MASK = (1 << 64) - 1
_Body = TypeVar("_Body")
_Proto = TypeVar("_Proto")


def _unicode_only(translate: Callable[[_Body], _Proto]) -> Callable[[_Body], _Proto]:
    """JSON may escape a lone UTF-16 surrogate (\\ud800), which no UTF-8 protobuf string can
    hold: such a request is a 400, not a 500 from the proto encoder."""

    @functools.wraps(translate)
    def checked(request: _Body) -> _Proto:
        try:
            return translate(request)
        except UnicodeEncodeError as exc:
            raise invalid_request(
                "The request holds text that is not valid Unicode "
                f"(a lone UTF-16 surrogate, {exc.object[exc.start]!r}).",
            ) from None

    return checked


def new_id(prefix: str) -> str:
    """A response id such as ``chatcmpl-<32 hex digits>``."""
    return f"{prefix}-{uuid.uuid4().hex}"


@_unicode_only
def chat_request(request: ChatCompletionRequest) -> pb.GenerateRequest:
    """The Generate call for a chat completion; its request_id is the response id."""
    _check_common(request)
    for name in _CHAT_UNSUPPORTED:
        if getattr(request, name) is not None:
            raise unsupported(name)
    if request.modalities is not None and set(request.modalities) - {"text"}:
        raise unsupported("modalities", "Only the 'text' modality is supported.")
    if request.top_logprobs is not None and not request.logprobs:
        raise invalid_request("top_logprobs requires logprobs to be true.", "top_logprobs")
    max_tokens = request.max_completion_tokens or request.max_tokens
    sampling = sampling_params(request, max_tokens)
    if request.logprobs:
        sampling.top_logprobs = request.top_logprobs or 0
    schema = response_schema(request)
    if schema is not None:
        if request.grammar is not None:
            raise invalid_request("grammar and response_format exclude each other.", "grammar")
        sampling.json_schema = schema
    chat = pb.ChatConversation(messages=[_message(m, i) for i, m in enumerate(request.messages)])
    return pb.GenerateRequest(
        model=request.model, chat=chat, sampling=sampling, request_id=new_id("chatcmpl")
    )


@_unicode_only
def completion_request(request: CompletionRequest) -> pb.GenerateRequest:
    """The Generate call for a text completion; its request_id is the response id."""
    _check_common(request)
    if request.echo:
        raise unsupported("echo")
    if request.best_of not in (None, 1):
        raise unsupported("best_of", "Only best_of=1 is supported.")
    if request.suffix:
        raise unsupported("suffix")
    sampling = sampling_params(request, request.max_tokens)
    if request.logprobs is not None:
        sampling.top_logprobs = request.logprobs
    proto = pb.GenerateRequest(model=request.model, sampling=sampling, request_id=new_id("cmpl"))
    prompt = single_input(request.prompt, "prompt")
    if isinstance(prompt, str):
        proto.prompt = prompt
    else:
        proto.tokens.SetInParent()  # an empty list is still a (token) prompt: the worker decides
        proto.tokens.ids.extend(prompt)
    return proto


@_unicode_only
def embed_request(request: EmbeddingRequest) -> pb.EmbedRequest:
    """The Embed call for an embeddings request; vectors are normalised as OpenAI's are."""
    if request.dimensions is not None:
        raise unsupported("dimensions")
    values: Sequence[str | list[int]]
    if isinstance(request.input, str):
        values = [request.input]
    elif request.input and all(isinstance(item, int) for item in request.input):
        values = [[item for item in request.input if isinstance(item, int)]]
    else:
        values = [item for item in request.input if not isinstance(item, int)]
    inputs = [
        pb.EmbedInput(text=value) if isinstance(value, str) else pb.EmbedInput(tokens=_ids(value))
        for value in values
    ]
    return pb.EmbedRequest(model=request.model, inputs=inputs, normalize=True)


def sampling_params(request: SamplingFields, max_tokens: int | None) -> pb.SamplingParams:
    """The sampling fields common to chat and text completions."""
    sampling = pb.SamplingParams()
    for name in _PLAIN_SAMPLING_FIELDS:
        value = getattr(request, name)
        if value is not None:
            setattr(sampling, name, value)
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if request.seed is not None:
        sampling.seed = request.seed & _UINT64_MASK
    sampling.stop.extend(stop_strings(request.stop))
    sampling.logit_bias.update(logit_bias(request.logit_bias))
    if request.grammar is not None:
        sampling.grammar = request.grammar
    return sampling


def stop_strings(stop: str | list[str] | None) -> list[str]:
    """The stop strings as a list (the worker refuses empty ones)."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def logit_bias(bias: dict[str, float] | None) -> dict[int, float]:
    """Logit bias keyed by token id (OpenAI sends the ids as JSON object keys)."""
    result: dict[int, float] = {}
    for key, value in (bias or {}).items():
        try:
            token = int(key)
            if not INT32_MIN <= token <= INT32_MAX:
                raise ValueError(key)
            result[token] = value
        except ValueError:
            raise invalid_request(
                f"logit_bias key {key!r} is not a token id.", "logit_bias"
            ) from None
    return result


def response_schema(request: ChatCompletionRequest) -> str | None:
    """The JSON Schema (as JSON text) that response_format asks for, or None for free text."""
    fmt = request.response_format
    schema: dict[str, Any]
    if isinstance(fmt, JsonObjectFormat):
        schema = {"type": "object"}
    elif isinstance(fmt, JsonSchemaFormat):
        schema = fmt.json_schema.schema_ or {}
    else:
        return None
    return json.dumps(schema, separators=(",", ":"))


def single_input(
    value: str | list[str] | list[int] | list[list[int]], param: str
) -> str | list[int]:
    """The one prompt of a request: a string, a token list, or a list holding one of them."""
    if isinstance(value, str):
        return value
    if all(isinstance(item, int) for item in value):
        return [int(item) for item in value if isinstance(item, int)]
    if len(value) != 1:
        raise unsupported(param, f"Only one {param} per request is supported.")
    item = value[0]
    if isinstance(item, int):  # unreachable: mixed lists fail validation
        raise invalid_request(f"{param} mixes token ids and texts.", param)
    return item


def _check_common(request: SamplingFields) -> None:
    if request.n not in (None, 1):
        raise unsupported("n", "Only n=1 is supported.")
    if request.stream_options is not None and not request.stream:
        raise invalid_request(
            "stream_options is only allowed when stream is true.", "stream_options"
        )


def _message(message: ChatMessage, index: int) -> pb.ChatMessage:
    extra = message.model_extra or {}
    for name in _MESSAGE_UNSUPPORTED:
        if extra.get(name) is not None:
            raise unsupported(f"messages[{index}].{name}")
    role = "system" if message.role == "developer" else message.role
    proto = pb.ChatMessage(role=role, content=_content(message.content, index))
    if message.name is not None:
        proto.name = message.name
    return proto


def _content(content: str | list[ContentPart] | None, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts: list[str] = []
    for number, part in enumerate(content):
        param = f"messages[{index}].content[{number}]"
        if part.type != "text":
            raise unsupported(
                f"{param}.type", f"Content parts of type '{part.type}' are not supported."
            )
        if part.text is None:
            raise invalid_request("A text content part needs a 'text' field.", f"{param}.text")
        texts.append(part.text)
    return "\n".join(texts)


def _ids(ids: list[int]) -> pb.TokenList:
    return pb.TokenList(ids=ids)
