"""The llamagrid.v1.InferenceService implementation: validation, translation, error statuses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.engine.errors import EngineError, Reason, unsupported
from llamagrid.worker.engine.events import Admitted
from llamagrid.worker.engine.llama_engine import Engine
from llamagrid.worker.rpc.relay import serve_relay
from llamagrid.worker.rpc.slots import restored_to_proto, saved_to_proto, slot_to_proto
from llamagrid.worker.rpc.status import to_status
from llamagrid.worker.rpc.translate import (
    adapters_to_proto,
    batch_to_proto,
    generation_from_proto,
    load_to_proto,
    lora_from_proto,
    messages_from_proto,
    model_info_to_proto,
)

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class InferenceService(pb_grpc.InferenceServiceServicer):
    """Serves one engine's model over gRPC."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_relay_calls: int = 1024,
        count_call: Callable[[str, grpc.StatusCode], None] = lambda method, code: None,
    ) -> None:
        self.engine = engine
        #: The most calls one Relay stream may run at once.
        self.max_relay_calls = max_relay_calls
        #: Counts a finished call inside a Relay stream (the server counts the other calls).
        self.count_call = count_call

    def _check_model(self, model: str) -> None:
        check_model(self.engine, model)

    async def Generate(
        self, request: pb.GenerateRequest, context: Context
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Stream chunks, then the final message; errors end the call with their status."""
        try:
            self._check_model(request.model)
            if not self.engine.description().can_generate:
                raise unsupported("this model cannot generate text", "model")
            batches = self.engine.generate(generation_from_proto(request))
            async with contextlib.aclosing(batches):  # type: ignore[type-var]
                async for batch in batches:
                    if isinstance(batch[0], Admitted):
                        # Headers now tell the caller the request was accepted: errors before
                        # this point are plain statuses, after it they end a started stream.
                        await context.send_initial_metadata(())
                    for response in batch_to_proto(batch):
                        yield response
        except EngineError as exc:
            await abort(context, exc)

    async def Relay(
        self, request_iterator: AsyncIterator[pb.RelayRequest], context: Context
    ) -> AsyncIterator[pb.RelayResponse]:
        """Many Generate calls over one stream (see worker.rpc.relay)."""

        def ended(code: grpc.StatusCode) -> None:
            self.count_call("Generate", code)

        relay = serve_relay(self.Generate, request_iterator, context, self.max_relay_calls, ended)
        async with contextlib.aclosing(relay):  # type: ignore[type-var]
            async for message in relay:
                yield message

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        """One embedding per input."""
        try:
            self._check_model(request.model)
            inputs: list[str | list[int]] = [
                list(i.tokens.ids) if i.WhichOneof("input") == "tokens" else i.text
                for i in request.inputs
            ]
            dimensions = request.dimensions if request.HasField("dimensions") else None
            result = await self.engine.embed(inputs, request.normalize, dimensions)
        except EngineError as exc:
            await abort(context, exc)
        return pb.EmbedResponse(
            embeddings=[
                pb.Embedding(values=v, token_count=n)
                for v, n in zip(result.vectors, result.token_counts, strict=True)
            ],
            total_tokens=sum(result.token_counts),
        )

    async def Tokenize(self, request: pb.TokenizeRequest, context: Context) -> pb.TokenizeResponse:
        """Token ids, and pieces when asked: text when valid UTF-8 on its own, else bytes."""
        try:
            self._check_model(request.model)
            pieces = await self.engine.tokenize(
                request.text, request.add_special, request.parse_special
            )
        except EngineError as exc:
            await abort(context, exc)
        out = pb.TokenizeResponse(token_ids=[p.token_id for p in pieces])
        if request.with_pieces:
            out.pieces.extend(_piece(p.token_id, p.data) for p in pieces)
        return out

    async def Detokenize(
        self, request: pb.DetokenizeRequest, context: Context
    ) -> pb.DetokenizeResponse:
        """The text of token ids."""
        try:
            self._check_model(request.model)
            text = await self.engine.detokenize(list(request.token_ids), request.render_special)
        except EngineError as exc:
            await abort(context, exc)
        return pb.DetokenizeResponse(text=text)

    async def ApplyChatTemplate(
        self, request: pb.ApplyChatTemplateRequest, context: Context
    ) -> pb.ApplyChatTemplateResponse:
        """The prompt text of a conversation, without generating."""
        try:
            self._check_model(request.model)
            prompt = await self.engine.apply_template(messages_from_proto(request.chat))
        except EngineError as exc:
            await abort(context, exc)
        return pb.ApplyChatTemplateResponse(prompt=prompt)

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: Context
    ) -> pb.GetModelInfoResponse:
        """The model served under the requested alias."""
        try:
            self._check_model(request.model)
            desc = self.engine.description()
        except EngineError as exc:
            await abort(context, exc)
        info = model_info_to_proto(desc, self.engine.placement(), self.engine.lora_adapters())
        return pb.GetModelInfoResponse(info=info)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        """Every model served (one per worker)."""
        try:
            desc = self.engine.description()
        except EngineError as exc:
            await abort(context, exc)
        info = model_info_to_proto(desc, self.engine.placement(), self.engine.lora_adapters())
        return pb.ListModelsResponse(models=[info])

    async def GetLoad(self, request: pb.GetLoadRequest, context: Context) -> pb.GetLoadResponse:
        """Work in progress and KV cache occupancy."""
        try:
            load = await self.engine.load()
        except EngineError as exc:
            await abort(context, exc)
        return load_to_proto(load)

    async def GetSlots(self, request: pb.GetSlotsRequest, context: Context) -> pb.GetSlotsResponse:
        """Every slot's state, read between two engine steps."""
        try:
            self._check_model(request.model)
            reports = await self.engine.slot_control.slots()
        except EngineError as exc:
            await abort(context, exc)
        return pb.GetSlotsResponse(slots=[slot_to_proto(r) for r in reports])

    async def SaveSlot(self, request: pb.SaveSlotRequest, context: Context) -> pb.SaveSlotResponse:
        """An idle slot's tokens and KV state, written to a file of --slot-save-path."""
        try:
            self._check_model(request.model)
            saved = await self.engine.slot_control.save(request.id, request.filename)
        except EngineError as exc:
            await abort(context, exc)
        return saved_to_proto(saved)

    async def RestoreSlot(
        self, request: pb.RestoreSlotRequest, context: Context
    ) -> pb.RestoreSlotResponse:
        """A slot file, checked against this worker's model and settings, loaded into an idle
        slot."""
        try:
            self._check_model(request.model)
            restored = await self.engine.slot_control.restore(request.id, request.filename)
        except EngineError as exc:
            await abort(context, exc)
        return restored_to_proto(restored)

    async def EraseSlot(
        self, request: pb.EraseSlotRequest, context: Context
    ) -> pb.EraseSlotResponse:
        """An idle slot's cached tokens, dropped."""
        try:
            self._check_model(request.model)
            erased = await self.engine.slot_control.erase(request.id)
        except EngineError as exc:
            await abort(context, exc)
        return pb.EraseSlotResponse(id=request.id, tokens_erased=erased)

    async def ListLoraAdapters(
        self, request: pb.ListLoraAdaptersRequest, context: Context
    ) -> pb.ListLoraAdaptersResponse:
        """The LoRA adapters and their scales."""
        try:
            self._check_model(request.model)
            adapters = self.engine.lora_adapters()
        except EngineError as exc:
            await abort(context, exc)
        return pb.ListLoraAdaptersResponse(adapters=adapters_to_proto(adapters))

    async def SetLoraAdapters(
        self, request: pb.SetLoraAdaptersRequest, context: Context
    ) -> pb.SetLoraAdaptersResponse:
        """Set the LoRA adapters' scales; answers them all."""
        try:
            self._check_model(request.model)
            adapters = await self.engine.set_lora_adapters(lora_from_proto(request.adapters))
        except EngineError as exc:
            await abort(context, exc)
        return pb.SetLoraAdaptersResponse(adapters=adapters_to_proto(adapters))


def check_model(engine: Engine, model: str) -> None:
    """A request's model must be empty or the alias this worker serves."""
    alias = engine.description().alias
    if model and model != alias:
        raise EngineError(
            Reason.MODEL_NOT_FOUND,
            f"model '{model}' is not served here (this worker serves '{alias}')",
            "model",
        )


async def abort(context: Context, exc: EngineError) -> NoReturn:
    """End the call with the error's rich status (ErrorInfo, RetryInfo).

    Trailing metadata set before (the worker's name, see server.CallObserver) is kept: abort
    would otherwise replace it with the status details.
    """
    status = to_status(exc)
    metadata = (*(context.trailing_metadata() or ()), *status.trailing_metadata)
    await context.abort(status.code, status.details, metadata)
    raise AssertionError("abort returned")


def _piece(token_id: int, data: bytes) -> pb.TokenPiece:
    try:
        return pb.TokenPiece(id=token_id, text=data.decode("utf-8"))
    except UnicodeDecodeError:
        return pb.TokenPiece(id=token_id, raw=data)
