"""llama-server's POST /infill: code infilling, answered like /completion.

The body is /completion's with the code around the cursor (llamacpp.infill_schemas). The
sampling options are translated as /completion's are (llamacpp.translate); the code becomes
the Generate call's ``infill`` input, from which the worker builds the prompt with the model's
fill-in-the-middle tokens, trimming it as llama-server does (worker/engine/infill.py). A model
without FIM tokens refuses it with a 400. The answer and the stream are /completion's
(llamacpp.rendering).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import invalid_request
from llamagrid.gateway.llamacpp import generation, rendering, translate
from llamagrid.gateway.llamacpp.errors import LlamaRoute
from llamagrid.gateway.llamacpp.infill_schemas import InfillRequest
from llamagrid.gateway.llamacpp.router import Dispatch, LlamaEventStream
from llamagrid.gateway.model_names import resolve_for
from llamagrid.gateway.openai.rendering import Generated
from llamagrid.gateway.openai.streaming import stream_events
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.routing import generate_route
from llamagrid.gateway.sse import EventStreamResponse
from llamagrid.v1 import inference_pb2 as pb

router = APIRouter(tags=["llama-server"], route_class=LlamaRoute, include_in_schema=False)


def infill_input(body: InfillRequest) -> pb.Infill:
    """The ``infill`` input of the Generate call."""
    return pb.Infill(
        prefix=body.input_prefix,
        suffix=body.input_suffix,
        extra=[pb.InfillChunk(filename=c.filename, text=c.text) for c in body.input_extra],
        prompt=body.prompt,
    )


async def infill_request(body: InfillRequest, tokenize: translate.Tokenizer) -> pb.GenerateRequest:
    """The Generate call for an /infill body: /completion's options, the code as infill."""
    if body.n_predict == 0:
        raise invalid_request(
            "n_predict must not be 0 on /infill: infilling generates the middle.", "n_predict"
        )
    proto = await translate.completion_request(body, tokenize)
    proto.infill.CopyFrom(infill_input(body))
    return proto


@router.post("/infill", response_model=None)
async def infill(
    body: InfillRequest, request: Request, dispatcher: Dispatch
) -> dict[str, Any] | EventStreamResponse:
    """Fill in the code between ``input_prefix`` and ``input_suffix``: the whole answer, or
    server-sent events when streaming."""
    body.model = resolve_for(request, body.model)
    try:
        proto = await infill_request(body, _tokenizer(request, dispatcher, body.model))
        route = generate_route(proto, request, None, dispatcher.prefix_chars)
        proto.SerializeToString()  # a lone surrogate fails here, as a 400
    except UnicodeEncodeError:
        raise invalid_request("The request holds text that is not valid Unicode.") from None
    routed = Routed()
    request.state.model, request.state.routed = proto.model, routed
    served = dispatcher.pool.models().get(body.model)
    info = served[0] if served is not None else None
    settings = generation.request_settings(proto, info, body.model, body.stream)
    if body.stream:
        events = rendering.CompletionEvents(body.model, settings, body.prompt, body.n_probs)
        messages = stream_events(dispatcher.stream(proto, route, routed), events)
        return LlamaEventStream(messages, routed.headers)
    responses = await dispatcher.generate(request, proto, route, routed)
    generated = Generated.gather(responses)
    return rendering.completion(generated, body.model, settings, body.prompt, body.n_probs)


def _tokenizer(request: Request, dispatcher: Dispatcher, model: str) -> translate.Tokenizer:
    """Tokenize calls on a worker of the model (for logit_bias texts)."""

    async def tokenize(text: str, add_special: bool) -> list[int]:
        proto = pb.TokenizeRequest(model=model, text=text, add_special=add_special)

        async def call(client: AsyncInferenceClient, timeout: float) -> pb.TokenizeResponse:
            return await client.tokenize(proto, timeout=timeout)

        result = await dispatcher.unary(request, RouteRequest(model), call, Routed())
        return list(result.token_ids)

    return tokenize
