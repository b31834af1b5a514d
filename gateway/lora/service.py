"""Reading and setting a model's LoRA adapter scales across its workers.

GET asks one worker serving the model (failing over like any call). POST sets the scales on
every available worker of the model at once, so that the model answers the same wherever a
request lands: a worker that refuses the list refuses it everywhere (the rule is the worker's,
engine/lora.py), and the first error is the answer. A worker that joins later starts with the
scales of its own command line.
"""

from __future__ import annotations

import asyncio

import grpc
from fastapi import Request

from llamagrid.client import AsyncInferenceClient
from llamagrid.gateway.dispatch import Dispatcher, until_disconnected
from llamagrid.gateway.errors import OpenAIError, from_rpc_error, model_not_found
from llamagrid.gateway.lora.schemas import LoraAdapterOut, LoraScaleIn
from llamagrid.gateway.lora.translate import adapters_json, lora_to_proto
from llamagrid.gateway.policies import RouteRequest
from llamagrid.v1 import inference_pb2 as pb


async def list_adapters(
    request: Request, dispatcher: Dispatcher, model: str
) -> list[LoraAdapterOut]:
    """The model's adapters and scales, as one of its workers reports them."""

    async def call(client: AsyncInferenceClient, timeout: float) -> pb.ListLoraAdaptersResponse:
        return await client.list_lora_adapters(
            pb.ListLoraAdaptersRequest(model=model), timeout=timeout
        )

    response = await dispatcher.unary(request, RouteRequest(model), call)
    return adapters_json(list(response.adapters))


async def set_adapters(
    request: Request, dispatcher: Dispatcher, model: str, entries: list[LoraScaleIn]
) -> list[LoraAdapterOut]:
    """Set the scales on every available worker of the model; their new adapters."""
    pool = dispatcher.pool
    workers = [w for w in pool.workers if model in w.models and w.available]
    if not workers:
        if any(model in w.models for w in pool.workers):
            raise OpenAIError(
                503, f"No worker serving '{model}' is available.", "service_unavailable_error"
            )
        raise model_not_found(model)
    proto = pb.SetLoraAdaptersRequest(model=model, adapters=lora_to_proto(entries))

    async def one(client: AsyncInferenceClient) -> pb.SetLoraAdaptersResponse:
        return await client.set_lora_adapters(proto, timeout=dispatcher.timeout_s)

    calls = asyncio.gather(*(one(w.client) for w in workers))
    try:
        responses = await until_disconnected(request, calls)
    except grpc.aio.AioRpcError as error:
        raise from_rpc_error(error) from error
    return adapters_json(list(responses[0].adapters))
