"""A Responses request as a llamagrid.v1 Generate call, and the ids of responses.

Every field is honoured or refused: a field this module does not honour is a 400
``unsupported_parameter`` naming it, unless it holds its default (null, an empty list or object,
or one of the values in ``ACCEPTED_DEFAULTS``, which ask for nothing llamagrid lacks).

A stored response's id names the session that holds its conversation and the turn it ended:
``resp.<turn>.<session id>``. Any gateway in front of the same fleet can chain on it without
shared state. A response that is not stored gets ``resp_<32 hex digits>``, which names nothing.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable

from llamagrid.gateway.errors import OpenAIError, invalid_request, unsupported
from llamagrid.gateway.fields import one_of, unset
from llamagrid.gateway.responses.schemas import (
    InputItem,
    InputPart,
    ResponseCreateRequest,
    TextConfig,
)
from llamagrid.v1 import inference_pb2 as pb

#: Fields that are not honoured but accepted at these values, which ask for nothing
#: llamagrid lacks (no tools to choose from, no truncation, one tier of service, ...).
ACCEPTED_DEFAULTS: dict[str, tuple[object, ...]] = {
    "tool_choice": ("auto", "none"),
    "parallel_tool_calls": (True,),
    "truncation": ("disabled",),
    "background": (False,),
    "service_tier": ("auto", "default"),
    "top_logprobs": (0,),
    "prompt_cache_retention": ("in_memory",),
}
#: Roles of input messages, as the chat template sees them.
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: Content parts that hold text.
TEXT_PARTS = ("input_text", "output_text")
#: The largest turn number a response id may carry (the worker counts turns in 32 bits).
MAX_TURN = 2**32 - 1

_STORED_ID = re.compile(r"resp\.([1-9][0-9]{0,9})\.(lgs\..+)")


def stored_id(turn: int, session_id: str) -> str:
    """The id of the response that ended turn ``turn`` of the session."""
    return f"resp.{turn}.{session_id}"


def unstored_id() -> str:
    """The id of a response that is not stored."""
    return f"resp_{uuid.uuid4().hex}"


def message_id() -> str:
    """The id of an output message."""
    return f"msg_{uuid.uuid4().hex}"


def previous_not_found() -> OpenAIError:
    """The 404 for a ``previous_response_id`` that names no stored conversation."""
    return OpenAIError(
        404,
        "The previous response was not found: it was never stored, it was deleted, or its "
        "conversation has expired or been deleted.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


def parse_previous(response_id: str) -> tuple[str, int]:
    """The session id and turn a stored response's id names; 404 for any other id."""
    match = _STORED_ID.fullmatch(response_id)
    if match is None or int(match.group(1)) > MAX_TURN:
        raise previous_not_found()
    return match.group(2), int(match.group(1))


def check(body: ResponseCreateRequest) -> None:
    """Refuse what the gateway cannot honour (module docstring)."""
    for name, value in (body.model_extra or {}).items():
        if not (unset(value) or one_of(*ACCEPTED_DEFAULTS.get(name, ()))(value)):
            raise unsupported(name)
    if body.stream_options is not None and not body.stream:
        raise invalid_request(
            "stream_options is only allowed when stream is true.", "stream_options"
        )
    if body.previous_response_id is not None and body.store is False:
        raise unsupported(
            "store",
            "A response chained on previous_response_id is a turn of its stored conversation: "
            "store=false is not supported with previous_response_id.",
        )
    if body.text is not None and body.text.verbosity not in (None, "medium"):
        raise unsupported("text.verbosity", "Only the 'medium' verbosity is supported.")
    echoed = [body.user, body.safety_identifier, body.prompt_cache_key, body.previous_response_id]
    for key, value in (body.metadata or {}).items():
        echoed += [key, value]
    _check_unicode(echoed)


def generate_request(body: ResponseCreateRequest, request_id: str) -> pb.GenerateRequest:
    """The Generate call for the request's new messages (the session, if any, is set later)."""
    sampling = pb.SamplingParams()
    if body.temperature is not None:
        sampling.temperature = body.temperature
    if body.top_p is not None:
        sampling.top_p = body.top_p
    if body.max_output_tokens is not None:
        sampling.max_tokens = body.max_output_tokens
    schema = text_schema(body.text)
    if schema is not None:
        sampling.json_schema = schema
    try:
        chat = pb.ChatConversation(messages=messages(body))
    except UnicodeEncodeError as exc:
        raise _not_unicode(exc) from None
    return pb.GenerateRequest(model=body.model, chat=chat, sampling=sampling, request_id=request_id)


def messages(body: ResponseCreateRequest) -> list[pb.ChatMessage]:
    """``instructions`` as a system message, then the input's messages."""
    result: list[pb.ChatMessage] = []
    if body.instructions:
        result.append(pb.ChatMessage(role="system", content=body.instructions))
    if isinstance(body.input, str):
        result.append(pb.ChatMessage(role="user", content=body.input))
        return result
    for index, item in enumerate(body.input):
        result.append(_message(item, index))
    return result


def text_schema(text: TextConfig | None) -> str | None:
    """The JSON Schema (as JSON text) that ``text.format`` asks for, or None for free text."""
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    schema = {"type": "object"} if fmt.type == "json_object" else (fmt.schema_ or {})
    return json.dumps(schema, separators=(",", ":"))


def _message(item: InputItem, index: int) -> pb.ChatMessage:
    where = f"input[{index}]"
    if item.type not in (None, "message"):
        raise unsupported(f"{where}.type", f"Input items of type '{item.type}' are not supported.")
    if item.role is None or item.content is None:
        missing = "role" if item.role is None else "content"
        raise invalid_request(f"An input message needs a '{missing}'.", f"{where}.{missing}")
    role = ROLES.get(item.role)
    if role is None:
        raise invalid_request(
            f"The role of an input message is one of {', '.join(ROLES)}.", f"{where}.role"
        )
    content = item.content
    if not isinstance(content, str):
        content = "\n".join(_text(part, f"{where}.content[{n}]") for n, part in enumerate(content))
    return pb.ChatMessage(role=role, content=content)


def _text(part: InputPart, where: str) -> str:
    if part.type == "input_image":
        raise unsupported(
            f"{where}.type",
            "input_image is not supported on this route: send images to /v1/chat/completions.",
        )
    if part.type not in TEXT_PARTS:
        raise unsupported(
            f"{where}.type", f"Content parts of type '{part.type}' are not supported."
        )
    if part.text is None:
        raise invalid_request("A text content part needs a 'text' field.", f"{where}.text")
    return part.text


def _check_unicode(values: Iterable[str | None]) -> None:
    for value in values:
        if value is not None:
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                raise _not_unicode(exc) from None


def _not_unicode(exc: UnicodeEncodeError) -> OpenAIError:
    return invalid_request(
        "The request holds text that is not valid Unicode "
        f"(a lone UTF-16 surrogate, {exc.object[exc.start]!r})."
    )
