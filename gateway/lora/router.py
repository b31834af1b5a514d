"""llama-server's LoRA routes: GET /lora-adapters lists a model's adapters and scales, POST
sets the scales (``[{"id": 0, "scale": 0.5}, ...]``; adapters left out get 0).

``?model=`` names the model; with one model served it may be left out (any name reaches it, as
on the other llama-server routes). The routes take the same API keys as the rest of the API
(llama-server has no separate admin key): any client with a key can change the scales. Errors
come in llama-server's shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from llamagrid.gateway.dispatch import Dispatcher
from llamagrid.gateway.errors import invalid_request
from llamagrid.gateway.llamacpp.errors import LlamaRoute
from llamagrid.gateway.lora.schemas import LoraAdapterOut, LoraScaleIn
from llamagrid.gateway.lora.service import list_adapters, set_adapters
from llamagrid.gateway.model_names import resolve_for

router = APIRouter(tags=["llama-server"], route_class=LlamaRoute, include_in_schema=False)


async def get_dispatcher(request: Request) -> Dispatcher:
    """The app's dispatcher (set by create_app)."""
    dispatcher = request.app.state.dispatcher
    assert isinstance(dispatcher, Dispatcher)
    return dispatcher


Dispatch = Annotated[Dispatcher, Depends(get_dispatcher)]
ModelQuery = Annotated[
    str, Query(max_length=256, description="The model; may be left out when one is served.")
]


def _model(request: Request, model: str) -> str:
    """The model a call is for (400 when several are served and none is named)."""
    alias = resolve_for(request, model)
    if not alias:
        raise invalid_request("Several models are served: name one with ?model=.", "model")
    request.state.model = alias
    return alias


@router.get("/lora-adapters")
async def get_lora_adapters(
    request: Request, dispatcher: Dispatch, model: ModelQuery = ""
) -> list[LoraAdapterOut]:
    """The model's LoRA adapters with their current scales."""
    return await list_adapters(request, dispatcher, _model(request, model))


@router.post("/lora-adapters")
async def post_lora_adapters(
    body: list[LoraScaleIn], request: Request, dispatcher: Dispatch, model: ModelQuery = ""
) -> list[LoraAdapterOut]:
    """Set the scales of the model's LoRA adapters on every worker serving it; answers the
    adapters with their new scales."""
    return await set_adapters(request, dispatcher, _model(request, model), body)
