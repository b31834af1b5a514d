"""The OpenAI routes: chat and text completions, embeddings and models."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import OpenAIError, model_not_found
from llamagrid.gateway.images.naming import chat_param, prompt_param, renamed, renamed_stream
from llamagrid.gateway.model_names import resolve_for
from llamagrid.gateway.openai import rendering, streaming, translate
from llamagrid.gateway.openai.fanout import merged_streams
from llamagrid.gateway.openai.images import load_images, load_prompt_images
from llamagrid.gateway.openai.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    EmbeddingList,
    EmbeddingRequest,
    ErrorResponse,
    Model,
    ModelList,
    StreamOptions,
)
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.routing import generate_route, session_key
from llamagrid.gateway.sse import EventStreamResponse
from llamagrid.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)


#: What the OpenAPI schema says every /v1 route may answer besides its success: an error in
#: OpenAI's shape (the gateway never answers FastAPI's own 422).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request was refused."},
    "5XX": {"model": ErrorResponse, "description": "No worker could serve the request."},
}


#: One event of a completion stream (OpenAPI 3.2's itemSchema, as FastAPI writes it).
STREAM_EVENT = {
    "type": "object",
    "properties": {
        "data": {
            "type": "string",
            "description": "A chunk object as JSON, then [DONE]; or an error object as JSON, "
            "which ends the stream.",
        }
    },
    "required": ["data"],
}


def completion_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The documented 200 of a completion route: ``model`` as JSON, or an event stream."""
    description = f"A {model.__name__} object, or server-sent events when stream is true."
    stream = {"text/event-stream": {"itemSchema": STREAM_EVENT}}
    return {200: {"model": model, "description": description, "content": stream}}


router = APIRouter(prefix="/v1", tags=["openai"], responses=ERROR_RESPONSES)


async def get_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher (set by create_app); async, so that FastAPI calls it in the event
    loop rather than in its thread pool."""
    dispatcher = request.app.state.dispatcher
    assert isinstance(dispatcher, Dispatcher)
    return dispatcher


Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]


@router.post(
    "/chat/completions", response_model=None, responses=completion_responses(ChatCompletion)
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, response: Response, dispatcher: Dispatch
) -> ChatCompletion | EventStreamResponse:
    """Chat completion, streamed as server-sent events when ``stream`` is true."""
    body.model = resolve_for(request, body.model)
    await load_images(request, body.messages, body.model)
    proto = translate.chat_request(body)
    route, routed = _route(dispatcher, proto, request, body.user)
    return await run_chat(body, proto, route, routed, request, response, dispatcher)


async def run_chat(
    body: ChatCompletionRequest,
    proto: pb.GenerateRequest,
    route: RouteRequest,
    routed: Routed,
    request: Request,
    response: Response,
    dispatcher: Dispatcher,
) -> ChatCompletion | EventStreamResponse:
    """Run a translated chat request where ``route`` says: a stream, or the whole answer."""
    request.state.model, request.state.routed = proto.model, routed
    logprobs = bool(body.logprobs)
    n = max(1, proto.n)
    if body.stream:
        include_usage = _include_usage(body.stream_options)
        chunks = streaming.ChatChunks(proto.request_id, body.model, include_usage, logprobs, n)
        messages = renamed_stream(dispatcher.stream(proto, route, routed), chat_param)
        events = streaming.stream_events(messages, chunks)
        return EventStreamResponse(events, routed.headers)
    with renamed(chat_param):
        responses = await dispatcher.generate(request, proto, route, routed)
    generated = rendering.Generated.gather_choices(responses, n)
    response.headers.update(routed.headers())
    return rendering.chat_completion(
        proto.request_id, body.model, generated, logprobs, bool(body.return_token_ids)
    )


@router.post("/completions", response_model=None, responses=completion_responses(Completion))
async def completions(
    body: CompletionRequest, request: Request, response: Response, dispatcher: Dispatch
) -> Completion | EventStreamResponse:
    """Text completion, streamed as server-sent events when ``stream`` is true. A list of
    prompts is a Generate call per prompt, run at once (prompt i's choice j is index i * n + j)."""
    body.model = resolve_for(request, body.model)
    images = await load_prompt_images(request, body.prompt, body.model)
    protos = translate.completion_requests(body, images)
    calls = [(proto, *_route(dispatcher, proto, request, body.user)) for proto in protos]
    first, _, routed = calls[0]
    request.state.routed = routed  # the first call's worker answers for all in the headers
    logprobs = body.logprobs is not None
    n = max(1, first.n)
    offsets = [len(p.prompt) if p.WhichOneof("input") == "prompt" else 0 for p in protos]
    if body.stream:
        include_usage = _include_usage(body.stream_options)
        chunks = streaming.CompletionChunks(
            first.request_id, body.model, include_usage, logprobs, offsets, n
        )
        streams = [dispatcher.stream(*call) for call in calls]
        messages = streams[0] if len(streams) == 1 else merged_streams(streams, n)
        named = renamed_stream(_suffix_named(messages), prompt_param)
        events = streaming.stream_events(named, chunks)
        return EventStreamResponse(events, routed.headers)
    with _suffix_naming(), renamed(prompt_param):
        results = await dispatcher.generate_all(request, calls)
    generated = [
        choice
        for responses in results
        for choice in rendering.Generated.gather_choices(responses, n)
    ]
    response.headers.update(routed.headers())
    choice_offsets = [offset for offset in offsets for _ in range(n)]
    return rendering.completion(first.request_id, body.model, generated, logprobs, choice_offsets)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, request: Request, response: Response, dispatcher: Dispatch
) -> EmbeddingList:
    """Embeddings of one or more inputs, as floats or base64."""
    body.model = resolve_for(request, body.model)
    proto = translate.embed_request(body)
    route = RouteRequest(body.model, None, session_key(request, body.user))
    routed = Routed()
    request.state.model, request.state.routed = body.model, routed

    async def embed(client: AsyncInferenceClient, timeout: float) -> pb.EmbedResponse:
        return await client.embed(proto, timeout=timeout)

    result = await dispatcher.unary(request, route, embed, routed)
    dispatcher.metrics.prompt_tokens.labels(body.model).inc(result.total_tokens)
    response.headers.update(routed.headers())
    return rendering.embedding_list(body.model, result, body.encoding_format)


@router.get("/models")
async def list_models(dispatcher: Dispatch) -> ModelList:
    """The models served by healthy workers."""
    served = dispatcher.pool.models()
    return ModelList(data=[Model(id=alias, created=seen) for alias, (_, seen) in served.items()])


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, dispatcher: Dispatch) -> Model:
    """One model served by a healthy worker."""
    served = dispatcher.pool.models()
    if model_id not in served:
        raise model_not_found(model_id)
    return Model(id=model_id, created=served[model_id][1])


def _route(
    dispatcher: Dispatcher, proto: pb.GenerateRequest, request: Request, user: str | None
) -> tuple[RouteRequest, Routed]:
    """The routing facts of a Generate call, and where it went (kept on request.state for the
    error handlers and the metrics)."""
    route = generate_route(proto, request, user, dispatcher.prefix_chars)
    routed = Routed()
    request.state.model, request.state.routed = proto.model, routed
    return route, routed


@contextlib.contextmanager
def _suffix_naming() -> Iterator[None]:
    """A worker's errors about a completion's infill input (what ``suffix`` becomes) name
    this route's fields: ``suffix`` for a model that cannot infill, else ``prompt``."""
    try:
        yield
    except OpenAIError as error:
        param = error.param or ""
        no_fim = param == "infill" and error.code == "unsupported_parameter"
        if no_fim or param == "infill.suffix":
            error.param = "suffix"
        elif param == "infill" or param.startswith("infill."):
            error.param = "prompt"
        raise


async def _suffix_named(
    messages: AsyncGenerator[streaming.Message, None],
) -> AsyncGenerator[streaming.Message, None]:
    """The messages of a completion stream, its errors named as _suffix_naming says; closing
    it closes the stream."""
    async with contextlib.aclosing(messages):
        with _suffix_naming():
            async for message in messages:
                yield message


def _include_usage(options: StreamOptions | None) -> bool:
    return options is not None and options.include_usage
