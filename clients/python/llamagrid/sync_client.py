"""A typed blocking client for the llamagrid.v1 InferenceService.

Every method raises ``grpc.RpcError`` (a ``grpc.Call``) when the call fails; read the
machine-readable reason with :func:`llamagrid.errors.parse_details` on
``error.trailing_metadata()``. For asyncio code, use :class:`llamagrid.client.AsyncInferenceClient`.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any

import grpc

from llamagrid.grpc_options import channel_options
from llamagrid.security import ChannelSecurity, PemSource, sync_channel
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc


class GenerateCall(Iterator[pb.GenerateResponse]):
    """A running Generate call: iterate it for chunks and the final message.

    Leaving a ``with`` block, or calling ``cancel()``, cancels the call on the worker.
    """

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> GenerateCall:
        return self

    def __next__(self) -> pb.GenerateResponse:
        response: pb.GenerateResponse = next(self._call)
        return response

    def cancel(self) -> bool:
        """Cancel the call; False when it had already finished."""
        return bool(self._call.cancel())

    def __enter__(self) -> GenerateCall:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._call.cancel()


class InferenceClient:
    """One blocking channel to one llamagrid worker, with typed methods for each RPC."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool | None = None,
        root_ca: PemSource | None = None,
        client_cert: PemSource | None = None,
        client_key: PemSource | None = None,
        server_name: str | None = None,
        token: str | None = None,
        security: ChannelSecurity | None = None,
    ) -> None:
        """A channel to ``target`` (HOST:PORT); TLS, mTLS and the token as in
        :class:`llamagrid.client.AsyncInferenceClient` (plaintext by default)."""
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
        #: The channel with the token's interceptor (the plain one is watched and closed):
        #: build other stubs on it.
        self.channel: grpc.Channel
        self._channel, self.channel = sync_channel(target, channel_options(), security)
        self._stub = pb_grpc.InferenceServiceStub(self.channel)
        self._sessions = pb_grpc.SessionServiceStub(self.channel)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the channel is connected (raises grpc.FutureTimeoutError)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def generate(self, request: pb.GenerateRequest, timeout: float | None = None) -> GenerateCall:
        """Start a Generate call; iterate the result for chunks and the final message."""
        return GenerateCall(self._stub.Generate(request, timeout=timeout))

    def embed(self, request: pb.EmbedRequest, timeout: float | None = None) -> pb.EmbedResponse:
        """Embed a batch of inputs."""
        return self._stub.Embed(request, timeout=timeout)

    def tokenize(
        self, request: pb.TokenizeRequest, timeout: float | None = None
    ) -> pb.TokenizeResponse:
        """Tokenize a text."""
        return self._stub.Tokenize(request, timeout=timeout)

    def detokenize(
        self, request: pb.DetokenizeRequest, timeout: float | None = None
    ) -> pb.DetokenizeResponse:
        """Turn token ids back into text."""
        return self._stub.Detokenize(request, timeout=timeout)

    def get_model_info(
        self, request: pb.GetModelInfoRequest, timeout: float | None = None
    ) -> pb.GetModelInfoResponse:
        """Describe the model served under an alias."""
        return self._stub.GetModelInfo(request, timeout=timeout)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        """Describe every model the worker serves."""
        return self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout)

    def get_load(self, timeout: float | None = None) -> pb.GetLoadResponse:
        """The worker's work in progress and KV cache occupancy."""
        return self._stub.GetLoad(pb.GetLoadRequest(), timeout=timeout)

    def apply_chat_template(
        self, request: pb.ApplyChatTemplateRequest, timeout: float | None = None
    ) -> pb.ApplyChatTemplateResponse:
        """The prompt text a conversation renders to, nothing generated."""
        return self._stub.ApplyChatTemplate(request, timeout=timeout)

    def list_lora_adapters(
        self, request: pb.ListLoraAdaptersRequest, timeout: float | None = None
    ) -> pb.ListLoraAdaptersResponse:
        """The LoRA adapters of a model, with their current scales."""
        return self._stub.ListLoraAdapters(request, timeout=timeout)

    def set_lora_adapters(
        self, request: pb.SetLoraAdaptersRequest, timeout: float | None = None
    ) -> pb.SetLoraAdaptersResponse:
        """Set the scales of a model's LoRA adapters (those left out get 0)."""
        return self._stub.SetLoraAdapters(request, timeout=timeout)

    # Slots: the KV cache's sequences, and their files (the worker's --slot-save-path).
    def get_slots(
        self, request: pb.GetSlotsRequest | None = None, timeout: float | None = None
    ) -> pb.GetSlotsResponse:
        """Every slot of a model, in id order, with what it runs and the tokens it holds."""
        return self._stub.GetSlots(request or pb.GetSlotsRequest(), timeout=timeout)

    def save_slot(
        self, request: pb.SaveSlotRequest, timeout: float | None = None
    ) -> pb.SaveSlotResponse:
        """Write an idle slot's cached tokens and KV state to a file of --slot-save-path
        (FAILED_PRECONDITION, reason SLOT_FILES_OFF, on a worker without one)."""
        return self._stub.SaveSlot(request, timeout=timeout)

    def restore_slot(
        self, request: pb.RestoreSlotRequest, timeout: float | None = None
    ) -> pb.RestoreSlotResponse:
        """Load a file SaveSlot wrote into an idle slot."""
        return self._stub.RestoreSlot(request, timeout=timeout)

    def erase_slot(
        self, request: pb.EraseSlotRequest, timeout: float | None = None
    ) -> pb.EraseSlotResponse:
        """Drop an idle slot's cached tokens."""
        return self._stub.EraseSlot(request, timeout=timeout)

    # Sessions: a Generate request whose ``session`` names one is that session's next turn.
    def open_session(
        self,
        model: str = "",
        ttl_s: int = 0,
        transcript: pb.SessionTranscript | None = None,
        timeout: float | None = None,
    ) -> pb.SessionInfo:
        """A new session (empty, or resuming from ``transcript``)."""
        request = pb.OpenSessionRequest(model=model, ttl_s=ttl_s, transcript=transcript)
        return self._sessions.OpenSession(request, timeout=timeout).session

    def get_session(
        self, session_id: str, with_transcript: bool = False, timeout: float | None = None
    ) -> pb.GetSessionResponse:
        """A session's description, and its transcript when asked."""
        request = pb.GetSessionRequest(session_id=session_id, with_transcript=with_transcript)
        return self._sessions.GetSession(request, timeout=timeout)

    def fork_session(
        self, session_id: str, turns: int, ttl_s: int = 0, timeout: float | None = None
    ) -> pb.SessionInfo:
        """A new session holding the first ``turns`` turns of another."""
        request = pb.ForkSessionRequest(session_id=session_id, turns=turns, ttl_s=ttl_s)
        return self._sessions.ForkSession(request, timeout=timeout).session

    def rollback_session(
        self, session_id: str, turns: int, timeout: float | None = None
    ) -> pb.SessionInfo:
        """Keep only a session's first ``turns`` turns."""
        request = pb.RollbackSessionRequest(session_id=session_id, turns=turns)
        return self._sessions.RollbackSession(request, timeout=timeout).session

    def close_session(self, session_id: str, timeout: float | None = None) -> None:
        """Delete a session (a turn running on it is cancelled)."""
        self._sessions.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=timeout)

    def cancel_turn(self, session_id: str, timeout: float | None = None) -> bool:
        """Cancel the turn running on a session; False when none was running."""
        request = pb.CancelTurnRequest(session_id=session_id)
        return self._sessions.CancelTurn(request, timeout=timeout).cancelled

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
