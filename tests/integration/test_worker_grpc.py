"""The worker's gRPC API on the real model, with raw generated stubs."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llamagrid.errors import parse_details
from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import spawn_worker

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def chat(text: str, **sampling: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(**sampling),
    )


def collect(
    stub: pb_grpc.InferenceServiceStub, req: pb.GenerateRequest
) -> tuple[str, pb.GenerateFinal]:
    text, final = [], None
    for msg in stub.Generate(req, timeout=120):
        if msg.HasField("chunk"):
            text.append(msg.chunk.text)
        else:
            final = msg.final
    assert final is not None
    return "".join(text), final


def test_tokenize_detokenize_round_trip(stub: pb_grpc.InferenceServiceStub) -> None:
    text = "Héllo wörld, 你好 🎉 and <|im_start|> too"
    toks = stub.Tokenize(pb.TokenizeRequest(text=text, parse_special=True, with_pieces=True))
    assert len(toks.token_ids) == len(toks.pieces) > 5
    assert 1 in toks.token_ids  # <|im_start|> parsed as the special token
    # Pieces are text where valid UTF-8, bytes where a character is split between tokens.
    assert any(p.WhichOneof("piece") == "raw" for p in toks.pieces)
    joined = b"".join(
        p.raw if p.WhichOneof("piece") == "raw" else p.text.encode() for p in toks.pieces
    )
    assert joined.decode() == text
    back = stub.Detokenize(pb.DetokenizeRequest(token_ids=toks.token_ids, render_special=True))
    assert back.text == text
    plain = stub.Detokenize(pb.DetokenizeRequest(token_ids=toks.token_ids))
    assert "<|im_start|>" not in plain.text


def test_embed_batch_normalised(stub: pb_grpc.InferenceServiceStub) -> None:
    ids = stub.Tokenize(pb.TokenizeRequest(text="a red apple")).token_ids
    req = pb.EmbedRequest(
        inputs=[
            pb.EmbedInput(text="a red apple"),
            pb.EmbedInput(text="quantum chromodynamics"),
            pb.EmbedInput(tokens=pb.TokenList(ids=ids)),
        ],
        normalize=True,
    )
    out = stub.Embed(req)
    info = stub.GetModelInfo(pb.GetModelInfoRequest()).info
    assert len(out.embeddings) == 3
    for e in out.embeddings:
        assert len(e.values) == info.embedding_size
        assert math.isclose(math.sqrt(sum(v * v for v in e.values)), 1.0, rel_tol=1e-4)
    # The same input as text and as tokens embeds the same.
    a, c = out.embeddings[0].values, out.embeddings[2].values
    assert max(abs(x - y) for x, y in zip(a, c, strict=True)) < 1e-4
    assert out.total_tokens == sum(e.token_count for e in out.embeddings)


def test_model_info(stub: pb_grpc.InferenceServiceStub) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(model="smollm2")).info
    assert info.alias == "smollm2"
    assert info.file.endswith(".gguf") and not info.file.startswith("/")  # no path leaks
    assert info.context_size == 2048 and info.slots == 4  # 8192 shared by 4 slots
    assert 100_000_000 < info.parameter_count < 200_000_000
    assert "im_start" in info.chat_template
    assert set(info.capabilities) == {pb.CAPABILITY_GENERATE, pb.CAPABILITY_EMBED}
    assert info.placement.backend == "cpu"
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [m.alias for m in models] == ["smollm2"]


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (chat("hi", temperature=-1), "temperature"),
        (chat("hi", top_p=0), "top_p"),
        (chat("hi", top_logprobs=50), "top_logprobs"),
        (chat("hi", grammar="root ::= ("), "grammar"),
        (chat("hi", json_schema="{not json"), "response_format"),
        (pb.GenerateRequest(tokens=pb.TokenList(ids=[999_999])), "prompt"),
        (pb.GenerateRequest(chat=pb.ChatConversation()), "messages"),
        (pb.GenerateRequest(), "input"),
        (chat("hi", logit_bias={10**7: 1.0}), "logit_bias"),
    ],
)
def test_invalid_generate_is_invalid_argument(
    stub: pb_grpc.InferenceServiceStub, request_: pb.GenerateRequest, param: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(request_, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details()
    assert parse_details(err.value.trailing_metadata()).param == param
    # The worker keeps serving.
    _, final = collect(stub, chat("Say hi.", temperature=0, max_tokens=5))
    assert final.usage.completion_tokens > 0


def test_context_length_exceeded_at_admission(stub: pb_grpc.InferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(chat("hello " * 1000, max_tokens=1500), timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parse_details(err.value.trailing_metadata()).reason == "CONTEXT_LENGTH_EXCEEDED"


def test_unknown_model_is_not_found(stub: pb_grpc.InferenceServiceStub) -> None:
    req = chat("hi")
    req.model = "no-such-model"
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(req, timeout=30))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_stop_string_spanning_tokens_never_leaks(stub: pb_grpc.InferenceServiceStub) -> None:
    full, _ = collect(stub, chat("Name three colors.", temperature=0, max_tokens=40))
    assert len(full) > 12
    stop = full[5:12]  # a stop string that begins and ends inside tokens
    text, final = collect(
        stub, chat("Name three colors.", temperature=0, max_tokens=40, stop=[stop])
    )
    assert final.finish_reason == pb.FINISH_REASON_STOP_STRING
    assert final.matched_stop == stop
    assert text == full[: full.index(stop)]


def test_deadline_cancels_generation(stub: pb_grpc.InferenceServiceStub) -> None:
    req = chat("Write a long story.", max_tokens=1500, ignore_eos=True)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Generate(req, timeout=0.5))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _, final = collect(stub, chat("Say hi.", temperature=0, max_tokens=5))
    assert final.usage.completion_tokens > 0


def _watch(channel: grpc.Channel, seen: list[int], stop: threading.Event) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    try:
        for msg in health.Watch(health_pb2.HealthCheckRequest(service="smollm2")):
            seen.append(msg.status)
            if stop.is_set():
                return
    except grpc.RpcError:
        return


def test_health_transitions_and_drain(tmp_path: Path) -> None:
    proc = spawn_worker(tmp_path, "--parallel", "1", "--drain-grace-s", "60")
    try:
        channel = grpc.insecure_channel(proc.target, options=channel_options())
        seen: list[int] = []
        done = threading.Event()
        watcher = threading.Thread(target=_watch, args=(channel, seen, done), daemon=True)
        watcher.start()
        deadline = time.monotonic() + 60
        while SERVING not in seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen[0] == NOT_SERVING and SERVING in seen  # loading, then ready
        stub = pb_grpc.InferenceServiceStub(channel)
        stream = stub.Generate(
            chat("Count to one hundred.", max_tokens=200, ignore_eos=True, temperature=0),
            timeout=120,
        )
        first = next(stream)  # the request is running
        assert first.HasField("chunk")
        proc.popen.send_signal(15)
        rest = list(stream)  # drain lets the in-flight stream finish
        assert rest[-1].HasField("final")
        assert rest[-1].final.usage.completion_tokens == 200
        assert proc.popen.wait(30) == 0
        watcher.join(10)
        assert NOT_SERVING in seen[seen.index(SERVING) :]  # shutdown reported before exit
        done.set()
        channel.close()
    finally:
        proc.terminate()


def test_drain_grace_expiry_ends_stream_with_unavailable(tmp_path: Path) -> None:
    proc = spawn_worker(tmp_path, "--parallel", "1", "--drain-grace-s", "0.5")
    try:
        channel = grpc.insecure_channel(proc.target, options=channel_options())
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.InferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 60
        while health.Check(health_pb2.HealthCheckRequest()).status != SERVING:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stream = stub.Generate(chat("Tell a story.", max_tokens=1800, ignore_eos=True))
        next(stream)
        proc.popen.send_signal(15)
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert proc.popen.wait(30) == 0
        channel.close()
    finally:
        proc.terminate()
