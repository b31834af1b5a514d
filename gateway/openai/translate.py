"""Translation of OpenAI requests into llamagrid.v1 messages (rendering.py goes the other way).

Every field is either honoured or refused with a 400 ``unsupported_parameter`` naming it, except
``user`` (it keys routing affinity and labels the caller) and the accepted no-ops of
llamagrid.gateway.fields (``metadata``, ``store``, ...), which cannot change the output. Fields
the schemas do not declare are refused there too, at any depth, unless they hold nothing.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

from llamagrid.gateway.errors import invalid_request, unsupported
from llamagrid.gateway.fields import OPENAI_NO_OPS, refuse_undeclared
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.lora.translate import request_lora
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
    PromptObject,
    SamplingFields,
)
from llamagrid.gateway.sampling import copy_plain
from llamagrid.v1 import inference_pb2 as pb

#: Chat fields that the gateway cannot honour: any value other than null is refused. The
#: legacy ``functions``/``function_call`` are refused rather than mapped: their answers have a
#: shape of their own (``message.function_call``); ``tools``/``tool_choice`` replace them.
_CHAT_UNSUPPORTED = (
    "functions",
    "function_call",
    "audio",
    "prediction",
    "web_search_options",
)
#: ``tool_choice`` strings as the contract's modes.
_TOOL_CHOICE_MODES = {
    "auto": pb.TOOL_CHOICE_MODE_AUTO,
    "none": pb.TOOL_CHOICE_MODE_NONE,
    "required": pb.TOOL_CHOICE_MODE_REQUIRED,
}
#: The ``reasoning_effort`` values the contract carries (to the chat template, as given).
_REASONING_EFFORTS = ("low", "medium", "high")
#: llama-server's ``reasoning_format`` names as the contract's formats: ``auto`` is llama.cpp's
#: "same as deepseek" (split the thinking out where the template has thinking markup).
#: ``deepseek-legacy`` (thinking both split out and left in the content) has no contract form.
_REASONING_FORMATS = {
    "none": pb.REASONING_FORMAT_NONE,
    "auto": pb.REASONING_FORMAT_SPLIT,
    "deepseek": pb.REASONING_FORMAT_SPLIT,
}
_UINT64_MASK = (1 << 64) - 1
#: The most prompts one /v1/completions request may list.
MAX_PROMPTS = 64
_Params = ParamSpec("_Params")
_Proto = TypeVar("_Proto")


def _unicode_only(translate: Callable[_Params, _Proto]) -> Callable[_Params, _Proto]:
    """JSON may escape a lone UTF-16 surrogate (\\ud800), which no UTF-8 protobuf string can
    hold: such a request is a 400, not a 500 from the proto encoder."""

    @functools.wraps(translate)
    def checked(*args: _Params.args, **kwargs: _Params.kwargs) -> _Proto:
        try:
            return translate(*args, **kwargs)
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
    proto = pb.GenerateRequest(
        model=request.model, chat=chat, sampling=sampling, request_id=new_id("chatcmpl")
    )
    _tools(request, proto)
    _reasoning(request, proto)
    _choices(request, proto)
    request_lora(request.lora, proto)
    # After the checks of declared fields, which name what they refuse more precisely.
    refuse_undeclared(request, OPENAI_NO_OPS)
    return proto


def _tools(request: ChatCompletionRequest, proto: pb.GenerateRequest) -> None:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``; the worker judges the values
    (names, schemas, a choice naming no tool, a choice without tools)."""
    for index, tool in enumerate(request.tools or ()):
        param = f"tools[{index}]"
        if tool.type != "function":
            raise unsupported(
                f"{param}.type", f"Tools of type '{tool.type}' are not supported: only 'function'."
            )
        if tool.function is None:
            raise invalid_request("A function tool needs a 'function' object.", f"{param}.function")
        function = tool.function
        entry = pb.Tool(name=function.name, strict=bool(function.strict))
        if function.description is not None:
            entry.description = function.description
        if function.parameters is not None:
            entry.parameters_json = _json(function.parameters, f"{param}.function.parameters")
        proto.tools.append(entry)
    choice = request.tool_choice
    if isinstance(choice, str):
        proto.tool_choice.mode = _TOOL_CHOICE_MODES[choice]
    elif choice is not None:
        if choice.type != "function":
            raise unsupported(
                "tool_choice.type", f"A tool_choice of type '{choice.type}' is not supported."
            )
        if choice.function is None:
            raise invalid_request(
                "A function tool_choice needs a 'function' object.", "tool_choice.function"
            )
        proto.tool_choice.function = choice.function.name
    if request.parallel_tool_calls is not None:
        proto.parallel_tool_calls = request.parallel_tool_calls


def _reasoning(request: ChatCompletionRequest, proto: pb.GenerateRequest) -> None:
    """``chat_template_kwargs``, ``reasoning_effort`` and ``reasoning_format``."""
    if request.chat_template_kwargs is not None:
        proto.chat_template_kwargs = _json(request.chat_template_kwargs, "chat_template_kwargs")
    effort = request.reasoning_effort
    if effort is not None:
        if effort not in _REASONING_EFFORTS:
            raise unsupported(
                "reasoning_effort",
                f"reasoning_effort '{effort}' is not supported: use low, medium or high.",
            )
        proto.reasoning_effort = effort
    if request.reasoning_format is not None:
        if request.reasoning_format not in _REASONING_FORMATS:
            raise unsupported(
                "reasoning_format",
                f"reasoning_format '{request.reasoning_format}' is not supported: use none, "
                "auto or deepseek.",
            )
        proto.reasoning_format = _REASONING_FORMATS[request.reasoning_format]


def _json(value: dict[str, Any], param: str) -> str:
    """A JSON object as compact JSON text. Python's JSON reader takes NaN and Infinity, which no
    JSON text may hold: such a value is a 400."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise invalid_request(f"{param} holds a number that JSON cannot carry.", param) from None


@_unicode_only
def completion_requests(
    request: CompletionRequest, images: Sequence[LoadedImage] = ()
) -> list[pb.GenerateRequest]:
    """The Generate calls for a text completion: one per prompt, each for n choices (prompt i's
    choice j is the response's choice i * n + j). Their request_id is the response id.

    ``echo`` asks the worker for the prompt's text; with ``logprobs`` it also asks for the
    prompt tokens' log-probabilities (``prompt_logprobs``), as lm-eval-harness's log-likelihood
    requests do (``max_tokens`` 0 or 1, ``echo``, ``logprobs``). A non-empty ``suffix`` makes
    each text prompt an infill input: the worker fills in between prompt and suffix with the
    model's fill-in-the-middle tokens, or refuses when the model has none. A prompt object
    (llama-server's) is its ``prompt_string``, with ``images``, its ``multimodal_data`` as the
    route loaded them (gateway.openai.images).
    """
    _check_common(request)
    if request.best_of not in (None, 1):
        raise unsupported("best_of", "Only best_of=1 is supported.")
    sampling = sampling_params(request, request.max_tokens)
    if request.logprobs is not None:
        sampling.top_logprobs = request.logprobs
    template = pb.GenerateRequest(model=request.model, sampling=sampling, request_id=new_id("cmpl"))
    _choices(request, template)
    request_lora(request.lora, template)
    if request.echo:
        template.echo = True
        if request.logprobs is not None:
            template.prompt_logprobs = request.logprobs
    protos = []
    for prompt in _prompts(request.prompt, images):
        proto = pb.GenerateRequest()
        proto.CopyFrom(template)
        if request.suffix:  # fill in the middle, between the prompt and the suffix
            if not isinstance(prompt, str):
                raise unsupported("suffix", "suffix needs a text prompt, not token ids.")
            proto.infill.CopyFrom(pb.Infill(prefix=prompt, suffix=request.suffix))
        elif isinstance(prompt, str):
            proto.prompt = prompt
        else:
            proto.tokens.SetInParent()  # an empty list is a (token) prompt: the worker decides
            proto.tokens.ids.extend(prompt)
        proto.images.extend(pb.Image(data=i.data, mime_type=i.mime_type) for i in images)
        protos.append(proto)
    refuse_undeclared(request, OPENAI_NO_OPS)
    return protos


def _prompts(
    prompt: str | list[str] | list[int] | list[list[int]] | PromptObject,
    images: Sequence[LoadedImage],
) -> list[str | list[int]]:
    """The prompts of a request; a prompt object's images must have been loaded."""
    if not isinstance(prompt, PromptObject):
        return prompt_inputs(prompt, "prompt")
    if len(images) != len(prompt.multimodal_data or ()):
        raise unsupported(
            "prompt.multimodal_data", "multimodal_data is not supported on this route."
        )
    return [prompt.prompt_string]


def _choices(request: SamplingFields, proto: pb.GenerateRequest) -> None:
    """``n``: the worker judges the value (1 to 16, at most its slots)."""
    if request.n is not None:
        proto.n = request.n


@_unicode_only
def embed_request(request: EmbeddingRequest) -> pb.EmbedRequest:
    """The Embed call for an embeddings request; vectors are normalised as OpenAI's are.
    ``dimensions`` goes to the worker, which alone knows whether its model allows it."""
    refuse_undeclared(request)
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
    proto = pb.EmbedRequest(model=request.model, inputs=inputs, normalize=True)
    if request.dimensions is not None:
        proto.dimensions = request.dimensions
    return proto


def sampling_params(request: SamplingFields, max_tokens: int | None) -> pb.SamplingParams:
    """The sampling fields common to chat and text completions."""
    sampling = pb.SamplingParams()
    copy_plain(request, sampling)
    if max_tokens is not None:
        sampling.max_tokens = max_tokens
    if request.seed is not None:
        sampling.seed = request.seed & _UINT64_MASK
    sampling.stop.extend(stop_strings(request.stop))
    sampling.logit_bias.update(logit_bias(request.logit_bias))
    if request.grammar is not None:
        sampling.grammar = request.grammar
    if request.json_schema is not None:
        if request.grammar is not None:
            raise invalid_request("grammar and json_schema exclude each other.", "json_schema")
        sampling.json_schema = _json(request.json_schema, "json_schema")
    sampling.samplers.extend(sampler_order(request.samplers))
    if request.dry_sequence_breakers is not None:
        if not request.dry_sequence_breakers:  # as llama-server says; the wire has no "none"
            raise invalid_request(
                "dry_sequence_breakers must be a non-empty array of strings.",
                "dry_sequence_breakers",
            )
        sampling.dry_sequence_breakers.extend(request.dry_sequence_breakers)
    return sampling


def sampler_order(samplers: str | list[str] | None) -> list[str]:
    """llama-server's ``samplers``, a list of names or a string of one-letter codes, as a list
    (the worker knows the names and letters). An empty one would leave only the final draw:
    the wire has no form for it (empty means the default order), so it is refused."""
    if samplers is None:
        return []
    if not samplers:
        raise invalid_request("samplers must name at least one sampler.", "samplers")
    return list(samplers)


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
        schema = {"type": "object"} if fmt.schema_ is None else fmt.schema_
    elif isinstance(fmt, JsonSchemaFormat):
        schema = fmt.json_schema.schema_ or {}
    else:
        return None
    if request.json_schema is not None:
        raise invalid_request("response_format and json_schema exclude each other.", "json_schema")
    return _json(schema, "response_format")


def prompt_inputs(
    value: str | list[str] | list[int] | list[list[int]], param: str
) -> list[str | list[int]]:
    """The prompts of a request: a string, a token list, or a list of either (at most
    MAX_PROMPTS, each a Generate call of its own)."""
    if isinstance(value, str):
        return [value]
    if all(isinstance(item, int) for item in value):
        return [[int(item) for item in value if isinstance(item, int)]]
    if len(value) > MAX_PROMPTS:
        raise invalid_request(
            f"{param} lists {len(value)} prompts; at most {MAX_PROMPTS} are allowed.", param
        )
    prompts: list[str | list[int]] = []
    for item in value:
        if isinstance(item, int):  # unreachable: mixed lists fail validation
            raise invalid_request(f"{param} mixes token ids and texts.", param)
        prompts.append(item)
    return prompts


def _check_common(request: SamplingFields) -> None:
    if request.stream_options is not None and not request.stream:
        raise invalid_request(
            "stream_options is only allowed when stream is true.", "stream_options"
        )


def _message(message: ChatMessage, index: int) -> pb.ChatMessage:
    role = "system" if message.role == "developer" else message.role
    proto = pb.ChatMessage(role=role)
    _content(message.content, index, proto)
    if message.name is not None:
        proto.name = message.name
    _message_tool_fields(message, index, proto)
    return proto


def _message_tool_fields(message: ChatMessage, index: int, proto: pb.ChatMessage) -> None:
    """An assistant's ``tool_calls`` and ``reasoning_content``, a tool message's
    ``tool_call_id`` (which OpenAI requires); each only on its own role."""
    param = f"messages[{index}]"
    if message.role != "assistant":
        for name in ("tool_calls", "reasoning_content"):
            if getattr(message, name) is not None:
                raise invalid_request(
                    f"Only assistant messages may have '{name}'.", f"{param}.{name}"
                )
    if message.role != "tool" and message.tool_call_id is not None:
        raise invalid_request(
            "Only tool messages may have 'tool_call_id'.", f"{param}.tool_call_id"
        )
    if message.role == "tool" and message.tool_call_id is None:
        raise invalid_request(
            "A tool message needs the 'tool_call_id' of the call it answers.",
            f"{param}.tool_call_id",
        )
    for number, call in enumerate(message.tool_calls or ()):
        if call.type != "function":
            raise unsupported(
                f"{param}.tool_calls[{number}].type",
                f"Tool calls of type '{call.type}' are not supported: only 'function'.",
            )
        proto.tool_calls.append(
            pb.ToolCall(id=call.id, name=call.function.name, arguments=call.function.arguments)
        )
    if message.tool_call_id is not None:
        proto.tool_call_id = message.tool_call_id
    if message.reasoning_content is not None:
        proto.reasoning_content = message.reasoning_content


def _content(content: str | list[ContentPart] | None, index: int, proto: pb.ChatMessage) -> None:
    """Text parts alone are joined into ``content``; with an image among them, every part
    becomes one of ``parts``, in order. An image part must have been loaded by the route
    (gateway.openai.images): on a route that loads none, it is refused."""
    if content is None or isinstance(content, str):
        proto.content = content or ""
        return
    texts: list[str] = []
    parts: list[pb.ContentPart] = []
    for number, part in enumerate(content):
        param = f"messages[{index}].content[{number}]"
        if part.type == "text":
            if part.text is None:
                raise invalid_request("A text content part needs a 'text' field.", f"{param}.text")
            if part.image_url is not None:
                raise unsupported(f"{param}.image_url", "A text part holds no 'image_url'.")
            texts.append(part.text)
            parts.append(pb.ContentPart(text=part.text))
        elif part.type == "image_url":
            if part.text is not None:
                raise unsupported(f"{param}.text", "An image_url part holds no 'text'.")
            loaded = part.loaded_image
            if loaded is None:
                raise unsupported(f"{param}.type", "image_url is not supported on this route.")
            image = pb.Image(data=loaded.data, mime_type=loaded.mime_type)
            parts.append(pb.ContentPart(image=image))
        else:
            raise unsupported(
                f"{param}.type", f"Content parts of type '{part.type}' are not supported."
            )
    if len(parts) > len(texts):
        proto.parts.extend(parts)
    else:
        proto.content = "\n".join(texts)


def _ids(ids: list[int]) -> pb.TokenList:
    return pb.TokenList(ids=ids)
