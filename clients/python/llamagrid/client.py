"""A typed asyncio client for the llamagrid.v1 InferenceService and the worker's health service.

Every method raises ``grpc.aio.AioRpcError`` when the call fails; read the machine-readable
reason with :func:`llamagrid.errors.parse_details` on ``error.trailing_metadata()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagrid.grpc_options import channel_options
from llamagrid.relay import RelayCall, RelayConnection
from llamagrid.security import ChannelSecurity, PemSource, aio_channel
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc


class GenerateStream(AsyncIterator[pb.GenerateResponse]):
    """A running Generate call: iterate it for the responses.

    The call is cancelled when the task reading it is cancelled, when the stream is closed
    (``aclose()``, or leaving ``async with``) and when the stream is garbage collected.
    """

    def __init__(
        self, call: grpc.aio.UnaryStreamCall[pb.GenerateRequest, pb.GenerateResponse]
    ) -> None:
        self._call = call

    def __aiter__(self) -> GenerateStream:
        return self

    async def __anext__(self) -> pb.GenerateResponse:
        # grpc.aio cancels the call itself when the task awaiting read() is cancelled.
        message = await self._call.read()
        if isinstance(message, pb.GenerateResponse):
            return message
        raise StopAsyncIteration

    async def admitted(self) -> None:
        """Return once the worker has accepted the call (sent its initial metadata).

        Raises the call's ``grpc.aio.AioRpcError`` when the worker rejected it instead.
        """
        await self._call.initial_metadata()
        if self._call.done() and await self._call.code() != grpc.StatusCode.OK:
            await self._call.read()  # raises the call's error

    def cancel(self) -> bool:
        """Cancel the call; False when it had already finished."""
        return self._call.cancel()

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return self._call.cancelled()

    async def aclose(self) -> None:
        """Cancel the call unless it has finished."""
        self._call.cancel()

    async def __aenter__(self) -> GenerateStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._call.cancel()

    def __del__(self) -> None:
        # A running grpc.aio call is kept alive by its own tasks: dropping it does not end it.
        call = getattr(self, "_call", None)
        if call is not None and not call.done():
            call.cancel()


class AsyncInferenceClient:
    """One channel to one llamagrid worker, with typed methods for each RPC."""

    def __init__(
        self,
        target: str,
        options: Sequence[tuple[str, int]] | None = None,
        *,
        tls: bool | None = None,
        root_ca: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        token: str | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        """A channel to ``target`` (HOST:PORT) with ``options`` (default: channel_options()).

        TLS, mTLS and the token: see :mod:`llamagrid.security` (``security`` instead of the
        separate arguments, e.g. to load files once for many clients). Plaintext by default.
        """
        self.target = target
        if security is None:
            security = ChannelSecurity.create(
                tls=tls,
                root_ca=root_ca,
                client_cert=client_cert,
                client_key=client_key,
                server_name=server_name,
                token=token,
            )
        self.security = security
        self._channel = aio_channel(
            target, list(options) if options is not None else channel_options(), security
        )
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self._sessions = pb_grpc.SessionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._relay: RelayConnection | None = None

    def generate(self, request: pb.GenerateRequest, timeout: float | None = None) -> GenerateStream:
        """Start a Generate call; iterate the result for chunks and the final message."""
        return GenerateStream(self._stub.Generate(request, timeout=timeout))

    def relay(self, request: pb.GenerateRequest, timeout: float | None = None) -> RelayCall:
        """Start a Generate call on the channel's Relay stream (opened on first use): the same
        stream interface as ``generate``, for callers running many calls at once (see
        ``llamagrid.relay``)."""
        if self._relay is None:
            self._relay = RelayConnection(self._stub)
        return self._relay.generate(request, timeout)

    async def embed(
        self, request: pb.EmbedRequest, timeout: float | None = None
    ) -> pb.EmbedResponse:
        """Embed a batch of inputs."""
        return await self._stub.Embed(request, timeout=timeout)

    async def tokenize(
        self, request: pb.TokenizeRequest, timeout: float | None = None
    ) -> pb.TokenizeResponse:
        """Tokenize a text."""
        return await self._stub.Tokenize(request, timeout=timeout)

    async def detokenize(
        self, request: pb.DetokenizeRequest, timeout: float | None = None
    ) -> pb.DetokenizeResponse:
        """Turn token ids back into text."""
        return await self._stub.Detokenize(request, timeout=timeout)

    async def apply_chat_template(
        self, request: pb.ApplyChatTemplateRequest, timeout: float | None = None
    ) -> pb.ApplyChatTemplateResponse:
        """Render a conversation with the model's chat template, without generating."""
        return await self._stub.ApplyChatTemplate(request, timeout=timeout)

    async def get_model_info(
        self, request: pb.GetModelInfoRequest, timeout: float | None = None
    ) -> pb.GetModelInfoResponse:
        """Describe the model served under an alias."""
        return await self._stub.GetModelInfo(request, timeout=timeout)

    async def list_models(
        self, request: pb.ListModelsRequest | None = None, timeout: float | None = None
    ) -> pb.ListModelsResponse:
        """Describe every model the worker serves."""
        return await self._stub.ListModels(request or pb.ListModelsRequest(), timeout=timeout)

    async def get_load(self, timeout: float | None = None) -> pb.GetLoadResponse:
        """The worker's work in progress and KV cache occupancy."""
        return await self._stub.GetLoad(pb.GetLoadRequest(), timeout=timeout)

    async def list_lora_adapters(
        self, request: pb.ListLoraAdaptersRequest, timeout: float | None = None
    ) -> pb.ListLoraAdaptersResponse:
        """The LoRA adapters of a model, with their current scales."""
        return await self._stub.ListLoraAdapters(request, timeout=timeout)

    async def set_lora_adapters(
        self, request: pb.SetLoraAdaptersRequest, timeout: float | None = None
    ) -> pb.SetLoraAdaptersResponse:
        """Set the scales of a model's LoRA adapters (those left out get 0)."""
        return await self._stub.SetLoraAdapters(request, timeout=timeout)

    # Slots: the KV cache's sequences, and their files (the worker's --slot-save-path).
    async def get_slots(
        self, request: pb.GetSlotsRequest | None = None, timeout: float | None = None
    ) -> pb.GetSlotsResponse:
        """Every slot of a model, in id order, with what it runs and the tokens it holds."""
        return await self._stub.GetSlots(request or pb.GetSlotsRequest(), timeout=timeout)

    async def save_slot(
        self, request: pb.SaveSlotRequest, timeout: float | None = None
    ) -> pb.SaveSlotResponse:
        """Write an idle slot's cached tokens and KV state to a file of --slot-save-path
        (FAILED_PRECONDITION, reason SLOT_FILES_OFF, on a worker without one)."""
        return await self._stub.SaveSlot(request, timeout=timeout)

    async def restore_slot(
        self, request: pb.RestoreSlotRequest, timeout: float | None = None
    ) -> pb.RestoreSlotResponse:
        """Load a file SaveSlot wrote into an idle slot."""
        return await self._stub.RestoreSlot(request, timeout=timeout)

    async def erase_slot(
        self, request: pb.EraseSlotRequest, timeout: float | None = None
    ) -> pb.EraseSlotResponse:
        """Drop an idle slot's cached tokens."""
        return await self._stub.EraseSlot(request, timeout=timeout)

    # Sessions: a Generate request whose ``session`` names one is that session's next turn.
    async def open_session(
        self,
        model: str = "",
        ttl_s: int = 0,
        transcript: pb.SessionTranscript | None = None,
        timeout: float | None = None,
    ) -> pb.SessionInfo:
        """A new session (empty, or resuming from ``transcript``)."""
        request = pb.OpenSessionRequest(model=model, ttl_s=ttl_s, transcript=transcript)
        response = await self._sessions.OpenSession(request, timeout=timeout)
        return response.session

    async def get_session(
        self, session_id: str, with_transcript: bool = False, timeout: float | None = None
    ) -> pb.GetSessionResponse:
        """A session's description, and its transcript when asked."""
        request = pb.GetSessionRequest(session_id=session_id, with_transcript=with_transcript)
        return await self._sessions.GetSession(request, timeout=timeout)

    async def fork_session(
        self, session_id: str, turns: int, ttl_s: int = 0, timeout: float | None = None
    ) -> pb.SessionInfo:
        """A new session holding the first ``turns`` turns of another."""
        request = pb.ForkSessionRequest(session_id=session_id, turns=turns, ttl_s=ttl_s)
        response = await self._sessions.ForkSession(request, timeout=timeout)
        return response.session

    async def rollback_session(
        self, session_id: str, turns: int, timeout: float | None = None
    ) -> pb.SessionInfo:
        """Keep only a session's first ``turns`` turns."""
        request = pb.RollbackSessionRequest(session_id=session_id, turns=turns)
        response = await self._sessions.RollbackSession(request, timeout=timeout)
        return response.session

    async def close_session(self, session_id: str, timeout: float | None = None) -> None:
        """Delete a session (a turn running on it is cancelled)."""
        await self._sessions.CloseSession(
            pb.CloseSessionRequest(session_id=session_id), timeout=timeout
        )

    async def cancel_turn(self, session_id: str, timeout: float | None = None) -> bool:
        """Cancel the turn running on a session; False when none was running."""
        request = pb.CancelTurnRequest(session_id=session_id)
        response = await self._sessions.CancelTurn(request, timeout=timeout)
        return response.cancelled

    async def watch_health(self, service: str = "") -> AsyncIterator[bool]:
        """Yield whether ``service`` is SERVING, now and after every change (grpc.health.v1).

        Ends with ``grpc.aio.AioRpcError`` when the watch breaks; closing it cancels the call.
        """
        call = self._health.Watch(health_pb2.HealthCheckRequest(service=service))
        try:
            async for response in call:
                yield response.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            call.cancel()

    @property
    def channel(self) -> grpc.aio.Channel:
        """The client's channel, TLS and token included: build other stubs on it."""
        return self._channel

    async def close(self, grace: float | None = None) -> None:
        """Close the channel, cancelling calls still running after ``grace`` seconds."""
        await self._channel.close(grace)
        if self._relay is not None:  # its stream ended with the channel
            await self._relay.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
