"""The work behind llama-cpp-python's extra routes: a Tokenize or Detokenize call on a worker
serving the model, and Copilot's request as a text completion request."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import unsupported
from llamagrid.gateway.fields import NoOp, unset
from llamagrid.gateway.llamacpp_python.schemas import copilot_extra, copilot_label
from llamagrid.gateway.model_names import resolve_for
from llamagrid.gateway.openai.schemas import CompletionRequest
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.routing import session_key
from llamagrid.v1 import inference_pb2 as pb

#: The model llama-cpp-python's server runs Copilot's requests on: its alias in a config file.
COPILOT_MODEL = "copilot-codex"
#: Copilot's fields that cannot change the completion, and the values each is accepted at.
COPILOT_NO_OPS: dict[str, NoOp] = {"extra": copilot_extra, "nwo": copilot_label}


def _route(request: Request, model: str | None) -> tuple[RouteRequest, Routed]:
    """Where a tokenizer call goes: the model named (any name reaches a single model)."""
    alias = resolve_for(request, model or "")
    routed = Routed()
    request.state.model, request.state.routed = alias, routed
    return RouteRequest(alias, None, session_key(request, None)), routed


async def tokenize(
    dispatcher: Dispatcher, request: Request, model: str | None, text: str
) -> list[int]:
    """The token ids of ``text``, as llama-cpp-python's server counts them: with the model's
    special tokens added (BOS) and special-token text in ``text`` parsed as such."""
    route, routed = _route(request, model)
    proto = pb.TokenizeRequest(model=route.model, text=text, add_special=True, parse_special=True)

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.TokenizeResponse:
        return await client.tokenize(proto, timeout=timeout)

    return list((await dispatcher.unary(request, route, call, routed)).token_ids)


async def detokenize(
    dispatcher: Dispatcher, request: Request, model: str | None, tokens: list[int]
) -> str:
    """The text of ``tokens`` (special tokens dropped, invalid UTF-8 replaced)."""
    route, routed = _route(request, model)
    proto = pb.DetokenizeRequest(model=route.model, token_ids=tokens)

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.DetokenizeResponse:
        return await client.detokenize(proto, timeout=timeout)

    return (await dispatcher.unary(request, route, call, routed)).text


def copilot_request(request: Request, body: Any) -> CompletionRequest:
    """Copilot's body as a text completion request: its no-op fields checked and dropped, and
    ``model`` (which Copilot does not send) the model serving ``copilot-codex``."""
    if not isinstance(body, dict):
        raise RequestValidationError(
            [{"type": "model_type", "loc": ("body",), "msg": "expected a JSON object"}]
        )
    fields = dict(body)
    for name, accept in COPILOT_NO_OPS.items():
        value = fields.pop(name, None)
        if not unset(value) and not accept(value):
            raise unsupported(name, f"The parameter '{name}' is not supported at this value.")
    model = fields.get("model")
    if model is None or model == "":
        fields["model"] = resolve_for(request, COPILOT_MODEL)
    elif isinstance(model, str):
        fields["model"] = resolve_for(request, model)
    try:
        return CompletionRequest.model_validate(fields)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc
