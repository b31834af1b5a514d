"""llama-server's native routes: /completion, /tokenize, /detokenize, /apply-template,
/embedding(s) and /props.

They take llama-server's bodies and answer in its shapes, errors included
(llamacpp.errors); ``model`` (not llama-server's: it serves one model) routes them like the
OpenAI routes, and any name reaches a gateway's single model (gateway.model_names).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, Routed
from llamagrid.gateway.errors import OpenAIError, invalid_request, model_not_found, unsupported
from llamagrid.gateway.fields import refuse_undeclared
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.images.loader import ImageLoader, ImageRef
from llamagrid.gateway.images.naming import prompt_param, renamed, renamed_stream
from llamagrid.gateway.llamacpp import generation, rendering, translate
from llamagrid.gateway.llamacpp.errors import LlamaRoute, error_body
from llamagrid.gateway.llamacpp.errors import error_response as llama_error_response
from llamagrid.gateway.llamacpp.schemas import (
    ApplyTemplateRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    MultimodalPrompt,
    TokenizeRequest,
)
from llamagrid.gateway.model_names import resolve_for
from llamagrid.gateway.openai.rendering import Generated
from llamagrid.gateway.openai.streaming import stream_events
from llamagrid.gateway.policies import RouteRequest
from llamagrid.gateway.routing import generate_route
from llamagrid.gateway.sse import EventStreamResponse, frame
from llamagrid.v1 import inference_pb2 as pb

#: The most texts one /embedding request may hold.
MAX_EMBED_INPUTS = 64

router = APIRouter(tags=["llama-server"], route_class=LlamaRoute, include_in_schema=False)


class LlamaEventStream(EventStreamResponse):
    """llama-server's event stream: ``data: {json}`` events with no closing ``[DONE]``, and
    errors in llama-server's shape."""

    closing = b""

    def error_event(self, error: OpenAIError) -> bytes:
        return frame(error_body(error))

    def refusal(self, error: OpenAIError) -> JSONResponse:
        return llama_error_response(error)


async def get_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher (set by create_app)."""
    dispatcher = request.app.state.dispatcher
    assert isinstance(dispatcher, Dispatcher)
    return dispatcher


Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]


def _route(request: Request, model: str) -> tuple[RouteRequest, Routed]:
    routed = Routed()
    request.state.model, request.state.routed = model, routed
    return RouteRequest(model), routed


def _text_only() -> OpenAIError:
    return invalid_request("The request holds text that is not valid Unicode.")


def _tokenizer(request: Request, dispatcher: Dispatcher, model: str) -> translate.Tokenizer:
    async def tokenize(text: str, add_special: bool) -> list[int]:
        proto = pb.TokenizeRequest(model=model, text=text, add_special=add_special)
        route, routed = RouteRequest(model), Routed()

        async def call(client: AsyncInferenceClient, timeout: float) -> pb.TokenizeResponse:
            return await client.tokenize(proto, timeout=timeout)

        return list((await dispatcher.unary(request, route, call, routed)).token_ids)

    return tokenize


def _model_info(dispatcher: Dispatcher, model: str) -> pb.ModelInfo | None:
    served = dispatcher.pool.models().get(model)
    return served[0] if served is not None else None


@router.post("/completion", response_model=None)
@router.post("/completions", response_model=None)
async def completion(
    body: CompletionRequest, request: Request, dispatcher: Dispatch
) -> dict[str, Any] | EventStreamResponse:
    """llama-server's completion: the whole answer, or server-sent events when streaming."""
    body.model = resolve_for(request, body.model)
    images = await _prompt_images(body, request, dispatcher)
    try:
        proto = await translate.completion_request(
            body, _tokenizer(request, dispatcher, body.model), images
        )
        route = generate_route(proto, request, None, dispatcher.prefix_chars)
        proto.SerializeToString()  # a lone surrogate fails here, as a 400
    except UnicodeEncodeError:
        raise _text_only() from None
    routed = Routed()
    request.state.model, request.state.routed = proto.model, routed
    info = _model_info(dispatcher, body.model)
    settings = generation.request_settings(proto, info, body.model, body.stream)
    prompt = body.prompt.prompt_string if isinstance(body.prompt, MultimodalPrompt) else body.prompt
    if body.stream:
        events = rendering.CompletionEvents(body.model, settings, prompt, body.n_probs)
        stream = renamed_stream(dispatcher.stream(proto, route, routed), prompt_param)
        messages = stream_events(stream, events)
        return LlamaEventStream(messages, routed.headers)
    with renamed(prompt_param):
        responses = await dispatcher.generate(request, proto, route, routed)
    generated = Generated.gather(responses)
    return rendering.completion(generated, body.model, settings, prompt, body.n_probs)


async def _prompt_images(
    body: CompletionRequest, request: Request, dispatcher: Dispatcher
) -> list[LoadedImage]:
    """The decoded ``multimodal_data`` of a prompt object (bare base64, as llama-server's)."""
    if not isinstance(body.prompt, MultimodalPrompt) or body.prompt.multimodal_data is None:
        return []
    refs = [
        ImageRef(data, f"prompt.multimodal_data[{index}]")
        for index, data in enumerate(body.prompt.multimodal_data)
    ]
    info = _model_info(dispatcher, body.model)
    loader = request.app.state.images
    assert isinstance(loader, ImageLoader)
    return await loader.load_base64(refs, body.model, info.vision if info is not None else None)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request, dispatcher: Dispatch) -> dict[str, Any]:
    """Token ids of ``content``; with ``with_pieces``, each with its piece (a byte array when
    it is not valid UTF-8 on its own)."""
    refuse_undeclared(body)
    model = resolve_for(request, body.model)
    proto = pb.TokenizeRequest(
        model=model, text=body.content, add_special=body.add_special, with_pieces=body.with_pieces
    )
    route, routed = _route(request, model)

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.TokenizeResponse:
        return await client.tokenize(proto, timeout=timeout)

    result = await dispatcher.unary(request, route, call, routed)
    if not body.with_pieces:
        return {"tokens": list(result.token_ids)}
    return {"tokens": [{"id": piece.id, "piece": _piece(piece)} for piece in result.pieces]}


def _piece(piece: pb.TokenPiece) -> str | list[int]:
    return piece.text if piece.WhichOneof("piece") == "text" else list(piece.raw)


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeRequest, request: Request, dispatcher: Dispatch
) -> dict[str, str]:
    """The text of ``tokens``."""
    refuse_undeclared(body)
    model = resolve_for(request, body.model)
    proto = pb.DetokenizeRequest(model=model, token_ids=body.tokens)
    route, routed = _route(request, model)

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.DetokenizeResponse:
        return await client.detokenize(proto, timeout=timeout)

    return {"content": (await dispatcher.unary(request, route, call, routed)).text}


@router.post("/apply-template")
async def apply_template(
    body: ApplyTemplateRequest, request: Request, dispatcher: Dispatch
) -> dict[str, str]:
    """The prompt the model's chat template makes of ``messages``: ``{"prompt": text}``."""
    refuse_undeclared(body)
    model = resolve_for(request, body.model)
    chat = pb.ChatConversation(
        messages=[pb.ChatMessage(role=m.role, content=m.content or "") for m in body.messages]
    )
    proto = pb.ApplyChatTemplateRequest(model=model, chat=chat)
    try:
        proto.SerializeToString()
    except UnicodeEncodeError:
        raise _text_only() from None
    route, routed = _route(request, model)

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.ApplyChatTemplateResponse:
        return await client.apply_chat_template(proto, timeout=timeout)

    return {"prompt": (await dispatcher.unary(request, route, call, routed)).prompt}


@router.post("/embedding")
async def embedding(
    body: EmbeddingRequest, request: Request, dispatcher: Dispatch
) -> dict[str, Any] | list[dict[str, Any]]:
    """The README's /embedding: ``{"embedding": [...]}`` for one text (``content`` a string);
    for a list of texts, /embeddings' answer."""
    entries = await _embed(body, request, dispatcher)
    if isinstance(body.content if body.content is not None else body.input, str):
        return {"embedding": entries[0]["embedding"][0]}
    return entries


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, request: Request, dispatcher: Dispatch
) -> list[dict[str, Any]]:
    """Newer llama-server's /embeddings: ``[{"index", "embedding": [[...]]}]``, one entry per
    text, the vector normalized (as llama-server's are, for a pooling model)."""
    return await _embed(body, request, dispatcher)


async def _embed(
    body: EmbeddingRequest, request: Request, dispatcher: Dispatcher
) -> list[dict[str, Any]]:
    refuse_undeclared(body)
    if body.image_data:
        raise unsupported("image_data", "image_data is not supported: /embedding reads text only.")
    if body.content is not None and body.input is not None:
        raise invalid_request("Give content or input, not both.", "input")
    value = body.content if body.content is not None else body.input
    if value is None:
        raise invalid_request("content is required.", "content")
    texts = [value] if isinstance(value, str) else value
    if not texts or len(texts) > MAX_EMBED_INPUTS:
        raise invalid_request(f"Give 1 to {MAX_EMBED_INPUTS} texts.", "content")
    model = resolve_for(request, body.model)
    proto = pb.EmbedRequest(
        model=model, inputs=[pb.EmbedInput(text=text) for text in texts], normalize=True
    )
    try:
        proto.SerializeToString()
    except UnicodeEncodeError:
        raise _text_only() from None
    route, routed = _route(request, model)

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.EmbedResponse:
        return await client.embed(proto, timeout=timeout)

    result = await dispatcher.unary(request, route, call, routed)
    dispatcher.metrics.prompt_tokens.labels(model).inc(result.total_tokens)
    return [
        {"index": index, "embedding": [list(item.values)]}
        for index, item in enumerate(result.embeddings)
    ]


@router.get("/props")
async def props(
    request: Request, dispatcher: Dispatch, model: Annotated[str, Query(max_length=256)] = ""
) -> dict[str, Any]:
    """A model's settings: default generation settings, slots, chat template, model file and
    build. ``model`` may be left out when the gateway serves one model."""
    name = resolve_for(request, model)
    info = _model_info(dispatcher, name)
    if info is None:
        if not model and len(dispatcher.pool.models()) > 1:
            raise invalid_request("Name the model: ?model=<alias>.", "model")
        raise model_not_found(name)
    return {
        "default_generation_settings": generation.default_settings(info, name),
        "total_slots": info.slots,
        "chat_template": info.chat_template,
        "model_alias": name,
        "model_path": info.file,
        "modalities": {"vision": info.vision, "audio": False, "video": False},
        "media_marker": info.media_marker,
        "build_info": _build_info(),
        "assistant_name": "",
        "user_name": "",
    }


def _build_info() -> str:
    try:
        return f"llamagrid {version('llamagrid')}"
    except PackageNotFoundError:
        return "llamagrid"
