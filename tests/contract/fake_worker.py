"""An in-process fake worker: the real llamagrid.v1 gRPC service with scripted output.

It serves on a real grpc.aio server (port 0) with the grpc.health.v1 service beside it, records
every request it receives and every call that was cancelled, and can be told to fail, to stream
slowly, or to hold a call before admitting it.
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llamagrid.errors import REASON_MODEL_NOT_FOUND, build_status
from llamagrid.grpc_options import server_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.rpc.relay import serve_relay

MODEL = "fake-model"
PROMPT_TOKENS = 7
CACHED_TOKENS = 3
EMBEDDING_SIZE = 4
#: The media marker of a model in FakeWorker.vision_models.
MEDIA_MARKER = "<__media__>"
FIRST_TOKEN_ID = 100


@dataclass
class Failure:
    """A status to abort the next calls with."""

    code: grpc.StatusCode
    message: str = "scripted failure"
    reason: str = ""
    param: str = ""
    retry_after_s: float | None = None
    after_chunks: int = 0  # > 0: fail a Generate stream after this many chunks


@dataclass
class Script:
    """What the fake worker does with the next calls."""

    pieces: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    admit_delay_s: float = 0.0  # before the initial metadata: "queued"
    first_delay_s: float = 0.0  # after admission, before the first chunk: "prefill"
    delay_s: float = 0.0  # between chunks
    failure: Failure | None = None
    #: When set, awaited before admission ("queued" until the test sets it) and after it
    #: ("prefilling" until the test sets it).
    admit_gate: asyncio.Event | None = None
    first_gate: asyncio.Event | None = None
    #: Aborted with instead of admitting, once admit_delay_s and admit_gate have passed (a
    #: refusal that comes after a wait in the queue, such as QUEUE_TIMEOUT).
    queue_failure: Failure | None = None
    #: When set, sent as they are instead of ``pieces`` (thinking, tool-call deltas, ...).
    chunks: list[pb.GenerateChunk] | None = None
    #: The final message's tool calls; with some, its finish reason is TOOL_CALLS.
    tool_calls: list[pb.ToolCall] = field(default_factory=list)
    #: A Generate call whose text prompt is this is refused before admission (INVALID_ARGUMENT,
    #: param "prompt"); the others are served.
    refuse_prompt: str | None = None


class FakeWorker(pb_grpc.InferenceServiceServicer):
    """The fake worker; ``await start()`` it, then point a gateway at ``address``."""

    def __init__(self, models: tuple[str, ...] = (MODEL,)) -> None:
        self.models = models
        self.script = Script()
        self.requests: list[object] = []
        self.cancelled: list[pb.GenerateRequest] = []
        self.chunks_sent = 0
        #: Whether the Relay method exists (False: UNIMPLEMENTED, like an older worker).
        self.relay = True
        self.relay_streams = 0
        self.relay_messages = 0
        #: Models whose info says they read images (vision, MEDIA_MARKER).
        self.vision_models: set[str] = set()
        self.health = health.aio.HealthServicer()
        self.address = ""
        self._server: grpc.aio.Server | None = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self, serving: bool = True) -> str:
        return await self.start_on(0, serving)

    async def start_on(self, port: int, serving: bool = True) -> str:
        self._server = grpc.aio.server(options=server_options())
        pb_grpc.add_InferenceServiceServicer_to_server(self, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self.set_serving(serving)
        await self._server.start()
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse
        await self.health.set("", status.SERVING if serving else status.NOT_SERVING)

    def fail_with(self, code: grpc.StatusCode, message: str = "scripted failure", **kw: object):
        self.script.failure = Failure(code, message, **kw)  # type: ignore[arg-type]

    def generate_requests(self) -> list[pb.GenerateRequest]:
        return [r for r in self.requests if isinstance(r, pb.GenerateRequest)]

    async def wait_cancelled(self, timeout: float = 5.0) -> pb.GenerateRequest:
        """The first cancelled Generate call, waiting for it up to ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.cancelled:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the worker never saw its call cancelled")
            await asyncio.sleep(0.01)
        return self.cancelled[0]

    # ---------------------------------------------------------------- RPCs

    async def Generate(self, request, context):
        self.requests.append(request)
        script = self.script
        try:
            await self._check(request.model, context, before_chunks=True)
            if script.refuse_prompt is not None and request.prompt == script.refuse_prompt:
                status = build_status(
                    grpc.StatusCode.INVALID_ARGUMENT, "scripted refusal", "INVALID_VALUE", "prompt"
                )
                await context.abort_with_status(status)
            await asyncio.sleep(script.admit_delay_s)
            if script.admit_gate is not None:
                await script.admit_gate.wait()
            if script.queue_failure is not None:
                await context.abort_with_status(_status(script.queue_failure))
            await context.send_initial_metadata(())
            await asyncio.sleep(script.first_delay_s)
            if script.first_gate is not None:
                await script.first_gate.wait()
            async for response in self._responses(request, context):
                yield response
        except asyncio.CancelledError:
            self.cancelled.append(request)
            raise

    async def Relay(self, request_iterator, context):
        # The worker's own multiplexer, running this fake's Generate for each call.
        if not self.relay:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.relay_streams += 1
        async for message in serve_relay(self.Generate, request_iterator, context, 64):
            self.relay_messages += 1
            yield message

    async def _responses(self, request, context):
        if self.script.chunks is not None:
            async for response in self._scripted():
                yield response
            return
        if request.n > 1 or request.echo or request.HasField("prompt_logprobs"):
            async for response in self._choices(request):
                yield response
            return
        sampling, script = request.sampling, self.script
        limit = sampling.max_tokens if sampling.HasField("max_tokens") else None
        text, reason, matched = "", pb.FINISH_REASON_EOS, ""
        count = 0
        for index, piece in enumerate(script.pieces):
            if limit is not None and index >= limit:
                reason = pb.FINISH_REASON_LENGTH
                break
            failure = script.failure
            if failure is not None and failure.after_chunks and index == failure.after_chunks:
                await context.abort_with_status(_status(failure))
            stop = next((s for s in sampling.stop if s in text + piece), None)
            if stop is not None:
                piece = (text + piece)[: (text + piece).index(stop)][len(text) :]
                reason, matched = pb.FINISH_REASON_STOP_STRING, stop
            chunk = pb.GenerateChunk(text=piece, token_ids=[FIRST_TOKEN_ID + index])
            if sampling.HasField("top_logprobs"):
                chunk.logprobs.append(_logprob(index, piece, sampling.top_logprobs))
            if piece or stop is None:
                count += 1
                self.chunks_sent += 1
                yield pb.GenerateResponse(chunk=chunk)
            text += piece
            if stop is not None:
                break
            await asyncio.sleep(script.delay_s)
        usage = pb.Usage(
            prompt_tokens=PROMPT_TOKENS, completion_tokens=count, cached_tokens=CACHED_TOKENS
        )
        final = pb.GenerateFinal(finish_reason=reason, usage=usage, matched_stop=matched)
        yield pb.GenerateResponse(final=final)

    async def _choices(self, request):
        """n choices (GenerateRequest.n) of the scripted pieces, interleaved piece by piece, after
        the prompt's text and log-probabilities when asked for (echo, prompt_logprobs: one
        entry per word of the prompt); the final messages in reverse order, the prompt counted
        in choice 0's only, as the worker does."""
        sampling, script = request.sampling, self.script
        n = max(1, request.n)
        limit = sampling.max_tokens if sampling.HasField("max_tokens") else None
        pieces = script.pieces if limit is None else script.pieces[:limit]
        head = pb.GenerateChunk(index=0)
        if request.echo:
            head.prompt_text = prompt_text(request)
        if request.HasField("prompt_logprobs"):
            for i, word in enumerate(prompt_words(prompt_text(request))):
                head.prompt_logprobs.append(_prompt_logprob(i, word, request.prompt_logprobs))
        if head.prompt_text or head.prompt_logprobs:
            yield pb.GenerateResponse(chunk=head)
        for i, piece in enumerate(pieces):
            for j in range(n):
                chunk = pb.GenerateChunk(text=piece, token_ids=[FIRST_TOKEN_ID + i], index=j)
                if sampling.HasField("top_logprobs"):
                    chunk.logprobs.append(_logprob(i, piece, sampling.top_logprobs))
                self.chunks_sent += 1
                yield pb.GenerateResponse(chunk=chunk)
            await asyncio.sleep(script.delay_s)
        cut = len(pieces) < len(script.pieces)
        reason = pb.FINISH_REASON_LENGTH if cut else pb.FINISH_REASON_EOS
        for j in reversed(range(n)):
            usage = pb.Usage(completion_tokens=len(pieces))
            if j == 0:
                usage.prompt_tokens, usage.cached_tokens = PROMPT_TOKENS, CACHED_TOKENS
            final = pb.GenerateFinal(finish_reason=reason, usage=usage, index=j)
            yield pb.GenerateResponse(final=final)

    async def _scripted(self):
        script = self.script
        for chunk in script.chunks or ():
            self.chunks_sent += 1
            yield pb.GenerateResponse(chunk=chunk)
        reason = pb.FINISH_REASON_TOOL_CALLS if script.tool_calls else pb.FINISH_REASON_EOS
        usage = pb.Usage(prompt_tokens=PROMPT_TOKENS, completion_tokens=len(script.chunks or ()))
        final = pb.GenerateFinal(finish_reason=reason, usage=usage, tool_calls=script.tool_calls)
        yield pb.GenerateResponse(final=final)

    async def Embed(self, request, context):
        self.requests.append(request)
        await self._check(request.model, context)
        if request.HasField("dimensions"):  # as a worker started without --embedding-dimensions
            status = build_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                "dimensions cannot be honoured for this model",
                "UNSUPPORTED_PARAMETER",
                "dimensions",
            )
            await context.abort_with_status(status)
        embeddings = []
        for index, item in enumerate(request.inputs):
            size = len(item.text) if item.HasField("text") else len(item.tokens.ids)
            values = [float(index + 1 + j) / (size + 1) for j in range(EMBEDDING_SIZE)]
            if request.normalize:
                norm = math.sqrt(sum(v * v for v in values))
                values = [v / norm for v in values]
            embeddings.append(pb.Embedding(values=values, token_count=size))
        total = sum(e.token_count for e in embeddings)
        return pb.EmbedResponse(embeddings=embeddings, total_tokens=total)

    async def Tokenize(self, request, context):
        self.requests.append(request)
        return pb.TokenizeResponse(token_ids=[ord(c) for c in request.text])

    async def Detokenize(self, request, context):
        self.requests.append(request)
        return pb.DetokenizeResponse(text="".join(chr(i) for i in request.token_ids))

    async def GetModelInfo(self, request, context):
        await self._check(request.model or self.models[0], context)
        return pb.GetModelInfoResponse(info=self._info(request.model or self.models[0]))

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self._info(alias) for alias in self.models])

    # ---------------------------------------------------------------- helpers

    async def _check(self, model: str, context, before_chunks: bool = False) -> None:
        failure = self.script.failure
        if failure is not None and not (before_chunks and failure.after_chunks):
            await context.abort_with_status(_status(failure))
        if model not in self.models:
            status = build_status(
                grpc.StatusCode.NOT_FOUND, f"no model {model!r}", REASON_MODEL_NOT_FOUND, "model"
            )
            await context.abort_with_status(status)

    def _info(self, alias: str) -> pb.ModelInfo:
        return pb.ModelInfo(
            alias=alias,
            context_size=2048,
            capabilities=[pb.CAPABILITY_GENERATE, pb.CAPABILITY_EMBED],
            embedding_size=EMBEDDING_SIZE,
            slots=4,
            vision=alias in self.vision_models,
            media_marker=MEDIA_MARKER if alias in self.vision_models else "",
        )


def _status(failure: Failure) -> grpc.Status:
    return build_status(
        failure.code, failure.message, failure.reason, failure.param, failure.retry_after_s
    )


def prompt_text(request: pb.GenerateRequest) -> str:
    """A request's prompt as the fake reads it: the text, or each token id as ``<id>``."""
    if request.WhichOneof("input") == "prompt":
        return request.prompt
    return "".join(f"<{token}>" for token in request.tokens.ids)


def prompt_words(text: str) -> list[str]:
    """The fake's prompt tokens: each word with the spaces before it."""
    return re.findall(r"\s*\S+", text) or [text]


def prompt_logprob(index: int) -> float:
    """The fake's log-probability of prompt token ``index`` (0 for the first, which has none)."""
    return -0.5 * index


def _prompt_logprob(index: int, word: str, top: int) -> pb.TokenLogprob:
    chosen = pb.LogprobEntry(
        token_id=index, token=word, raw=word.encode(), logprob=prompt_logprob(index)
    )
    if index == 0:
        return pb.TokenLogprob(chosen=chosen)
    alternatives = [
        pb.LogprobEntry(token_id=1 + k, token=f"alt{k}", raw=f"alt{k}".encode(), logprob=-1.0 - k)
        for k in range(top)
    ]
    return pb.TokenLogprob(chosen=chosen, top=alternatives)


def _logprob(index: int, piece: str, top: int) -> pb.TokenLogprob:
    chosen = pb.LogprobEntry(
        token_id=FIRST_TOKEN_ID + index, token=piece, raw=piece.encode(), logprob=-0.25
    )
    alternatives = [
        pb.LogprobEntry(token_id=1 + k, token=f"alt{k}", raw=f"alt{k}".encode(), logprob=-1.0 - k)
        for k in range(max(0, top - 1))
    ]
    return pb.TokenLogprob(chosen=chosen, top=[chosen, *alternatives][:top])
