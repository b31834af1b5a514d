"""llama-cpp-python's server routes on the gateway: its tokenizer routes, and the route GitHub
Copilot's proxy setting calls.

- ``POST /extras/tokenize`` ``{"input", "model"?}`` -> ``{"tokens": [...]}``,
  ``/extras/tokenize/count`` -> ``{"count": n}`` and ``/extras/detokenize``
  ``{"tokens", "model"?}`` -> ``{"text": ...}``: as llama-cpp-python's server, the BOS token is
  added and special-token text is parsed (a count matches what a prompt costs).
- ``POST /v1/engines/copilot-codex/completions``: a text completion request (streamed as
  /v1/completions streams), with Copilot's ``extra`` and ``nwo`` accepted as no-ops; it runs on
  the model named ``copilot-codex``, or the gateway's single model.

Errors are OpenAI-shaped, as llama-cpp-python's server's are. README: "llama-cpp-python's
server".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response

from llamagrid.gateway.fields import refuse_undeclared
from llamagrid.gateway.llamacpp_python import service
from llamagrid.gateway.llamacpp_python.schemas import (
    DetokenizeInputRequest,
    DetokenizeInputResponse,
    TokenizeInputCountResponse,
    TokenizeInputRequest,
    TokenizeInputResponse,
)
from llamagrid.gateway.openai.router import ERROR_RESPONSES, Dispatch, completion_responses
from llamagrid.gateway.openai.router import completions as openai_completions
from llamagrid.gateway.openai.schemas import Completion
from llamagrid.gateway.sse import EventStreamResponse

#: Out of the OpenAPI schema, as llama-server's routes (gateway/llamacpp/) are: the schema
#: documents llamagrid's own API, and the HTTP fuzzing covers what it documents.
router = APIRouter(tags=["llama-cpp-python"], responses=ERROR_RESPONSES, include_in_schema=False)


@router.post("/extras/tokenize")
async def tokenize(
    body: TokenizeInputRequest, request: Request, dispatcher: Dispatch
) -> TokenizeInputResponse:
    """The token ids of ``input``."""
    refuse_undeclared(body)
    tokens = await service.tokenize(dispatcher, request, body.model, body.input)
    return TokenizeInputResponse(tokens=tokens)


@router.post("/extras/tokenize/count")
async def tokenize_count(
    body: TokenizeInputRequest, request: Request, dispatcher: Dispatch
) -> TokenizeInputCountResponse:
    """How many tokens ``input`` has."""
    refuse_undeclared(body)
    tokens = await service.tokenize(dispatcher, request, body.model, body.input)
    return TokenizeInputCountResponse(count=len(tokens))


@router.post("/extras/detokenize")
async def detokenize(
    body: DetokenizeInputRequest, request: Request, dispatcher: Dispatch
) -> DetokenizeInputResponse:
    """The text of ``tokens``."""
    refuse_undeclared(body)
    text = await service.detokenize(dispatcher, request, body.model, body.tokens)
    return DetokenizeInputResponse(text=text)


@router.post(
    "/v1/engines/copilot-codex/completions",
    response_model=None,
    responses=completion_responses(Completion),
)
async def copilot_completions(
    body: Annotated[Any, Body()], request: Request, response: Response, dispatcher: Dispatch
) -> Completion | EventStreamResponse:
    """GitHub Copilot's completion request: a text completion, streamed when asked."""
    completion = service.copilot_request(request, body)
    return await openai_completions(completion, request, response, dispatcher)
