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

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.insecure_channel(target, options=channel_options())
        self._stub = pb_grpc.InferenceServiceStub(self._channel)

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
