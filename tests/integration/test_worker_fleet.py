"""Fleet features of a real worker on SmolLM2: device placement in GetModelInfo, the GPU
offload check, the llamagrid-worker trailer, and the Prometheus /metrics endpoint."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamagrid.errors import REASON_INVALID_VALUE, parse_details
from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, free_port, running, spawn_worker, wait_serving

NAME = "fleet-worker-7"
CUDA_VISIBLE = "1,GPU-8c1f0e0a-55d3-4a41-9e8b-0f3c2f6e2a11"
#: SmolLM2-135M: 30 repeating layers plus the output layer.
SMOLLM2_LAYERS = 31
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def fleet_worker(run_dir: Path) -> Iterator[tuple[Proc, int]]:
    """A named worker with a metrics endpoint, pinned (in name only, on this CPU) to GPUs."""
    metrics_port = free_port()
    proc = spawn_worker(
        run_dir,
        *("--n-threads", "1", "--parallel", "2", "--n-ctx", "2048"),
        *("--name", NAME, "--metrics-port", str(metrics_port)),
        env={"CUDA_VISIBLE_DEVICES": CUDA_VISIBLE},
    )
    with running(proc):
        wait_serving(proc)
        yield proc, metrics_port


@pytest.fixture(scope="module")
def fleet_stub(fleet_worker: tuple[Proc, int]) -> Iterator[pb_grpc.InferenceServiceStub]:
    channel = grpc.insecure_channel(fleet_worker[0].target, options=channel_options())
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


def scrape(port: int) -> Samples:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after[key] - before.get(key, 0.0)


def generate(
    stub: pb_grpc.InferenceServiceStub, req: pb.GenerateRequest
) -> tuple[pb.GenerateFinal, tuple[tuple[str, str], ...]]:
    """Run a stream to its end; returns the final message and the call's trailers."""
    call = stub.Generate(req, timeout=120)
    final = None
    for msg in call:
        if msg.HasField("final"):
            final = msg.final
    assert final is not None
    return final, tuple((m.key, m.value) for m in call.trailing_metadata())


def test_placement_lists_the_devices_llama_cpp_uses(
    fleet_stub: pb_grpc.InferenceServiceStub,
) -> None:
    place = fleet_stub.GetModelInfo(pb.GetModelInfoRequest()).info.placement
    assert list(place.visible_devices) == CUDA_VISIBLE.split(",")
    assert place.n_gpu_layers == 0
    assert place.backend == "cpu"
    cpu = [d for d in place.devices if d.type == pb.DEVICE_TYPE_CPU]
    assert len(cpu) == 1
    assert cpu[0].name == "CPU" and cpu[0].backend == "CPU" and cpu[0].description
    assert cpu[0].memory_total_bytes > 0
    assert 0 < cpu[0].memory_free_bytes <= cpu[0].memory_total_bytes
    # Every layer is somewhere, and none of them on a GPU.
    assert place.total_layers == SMOLLM2_LAYERS
    assert sum(d.layers for d in place.devices) == place.total_layers
    assert place.offloaded_layers == 0
    assert cpu[0].layers == place.total_layers
    listed = fleet_stub.ListModels(pb.ListModelsRequest()).models[0].placement
    assert listed == place


def test_asking_for_gpu_layers_on_a_cpu_only_build_fails_fast(
    run_dir: Path, fleet_stub: pb_grpc.InferenceServiceStub
) -> None:
    place = fleet_stub.GetModelInfo(pb.GetModelInfoRequest()).info.placement
    if any(d.type in (pb.DEVICE_TYPE_GPU, pb.DEVICE_TYPE_IGPU) for d in place.devices):
        pytest.skip("this llama.cpp build sees a GPU")
    proc = spawn_worker(run_dir, "--n-threads", "1", "--n-gpu-layers", "-1", wait_port=False)
    try:
        code = proc.popen.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.terminate()
        pytest.fail(f"the worker kept running:\n{proc.log_text()}")
    out = proc.log_text()
    assert code != 0
    assert "n_gpu_layers (--n-gpu-layers) is -1" in out
    assert "no GPU backend" in out
    assert "CMAKE_ARGS=-DGGML_CUDA=on" in out
    assert "set n_gpu_layers to 0 (--n-gpu-layers 0)" in out
    assert "SERVING" not in out and "Traceback" not in out


def test_every_call_names_the_worker_in_its_trailers(
    fleet_stub: pb_grpc.InferenceServiceStub,
) -> None:
    expected = ("llamagrid-worker", NAME)
    # A streamed Generate.
    req = pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(max_tokens=3))
    _, trailers = generate(fleet_stub, req)
    assert expected in trailers
    # A unary call.
    _, call = fleet_stub.Tokenize.with_call(pb.TokenizeRequest(text="hello"))
    assert expected in tuple((m.key, m.value) for m in call.trailing_metadata())
    # Errors, streamed and unary: the trailer and the rich status details both arrive.
    bad = pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(temperature=-1))
    with pytest.raises(grpc.RpcError) as err:
        generate(fleet_stub, bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in tuple(err.value.trailing_metadata())
    assert parse_details(err.value.trailing_metadata()).reason == REASON_INVALID_VALUE
    with pytest.raises(grpc.RpcError) as err:
        fleet_stub.GetModelInfo(pb.GetModelInfoRequest(model="no-such-model"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert expected in tuple(err.value.trailing_metadata())


def test_metrics_count_what_the_responses_reported(
    fleet_worker: tuple[Proc, int], fleet_stub: pb_grpc.InferenceServiceStub
) -> None:
    port = fleet_worker[1]
    load_before = fleet_stub.GetLoad(pb.GetLoadRequest())
    before = scrape(port)
    chat = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="Name a color.")]),
        sampling=pb.SamplingParams(max_tokens=8, temperature=0),
    )
    prompt = pb.GenerateRequest(
        prompt="The capital of France is", sampling=pb.SamplingParams(max_tokens=6, seed=1)
    )
    finals = [generate(fleet_stub, r)[0] for r in (chat, chat, prompt)]
    with pytest.raises(grpc.RpcError):
        generate(fleet_stub, pb.GenerateRequest(sampling=pb.SamplingParams(max_tokens=2)))
    embedded = fleet_stub.Embed(
        pb.EmbedRequest(inputs=[pb.EmbedInput(text="red"), pb.EmbedInput(text="a blue sky")])
    )
    load_after = fleet_stub.GetLoad(pb.GetLoadRequest())
    after = scrape(port)

    usage = [f.usage for f in finals]
    assert usage[1].cached_tokens > 0  # the repeated chat reused its prefix
    assert delta(after, before, "llamacpp:prompt_tokens_total") == sum(
        u.prompt_tokens - u.cached_tokens for u in usage
    )
    assert delta(after, before, "llamacpp:prompt_tokens_cached_total") == sum(
        u.cached_tokens for u in usage
    )
    assert delta(after, before, "llamacpp:tokens_predicted_total") == sum(
        u.completion_tokens for u in usage
    )
    prompt_s = delta(after, before, "llamacpp:prompt_seconds_total")
    decode_s = delta(after, before, "llamacpp:tokens_predicted_seconds_total")
    assert prompt_s == pytest.approx(sum(u.prefill_ms for u in usage) / 1000, rel=1e-6)
    assert decode_s == pytest.approx(sum(u.decode_ms for u in usage) / 1000, rel=1e-6)
    # The throughput gauges are measured over the window since the previous scrape.
    prompt_tokens = delta(after, before, "llamacpp:prompt_tokens_total")
    assert after[("llamacpp:prompt_tokens_seconds", ())] == pytest.approx(prompt_tokens / prompt_s)
    assert after[("llamacpp:predicted_tokens_seconds", ())] > 0
    assert delta(after, before, "llamacpp:n_decode_total") == (
        load_after.decode_steps - load_before.decode_steps
    )
    calls = {
        (method, code): delta(
            after, before, "llamagrid_worker_requests_total", method=method, code=code
        )
        for method, code in [("Generate", "OK"), ("Generate", "INVALID_ARGUMENT"), ("Embed", "OK")]
    }
    assert calls == {("Generate", "OK"): 3, ("Generate", "INVALID_ARGUMENT"): 1, ("Embed", "OK"): 1}
    assert delta(after, before, "llamagrid_worker_embed_inputs_total") == 2
    assert delta(after, before, "llamagrid_worker_embed_tokens_total") == embedded.total_tokens
    reasons = {
        r: delta(after, before, "llamagrid_worker_generations_total", finish_reason=r)
        for r in ("eos", "length", "stop_string")
    }
    assert sum(reasons.values()) == 3
    # State gauges, and llama-server's names.
    assert after[("llamacpp:requests_processing", ())] == 0
    assert after[("llamacpp:requests_deferred", ())] == 0
    assert after[("llamagrid_worker_slots", ())] == 2
    assert after[("llamagrid_worker_kv_cells", ())] == load_after.kv_cells_total
    assert 0 < after[("llamacpp:kv_cache_usage_ratio", ())] <= 1
    assert after[("llamagrid_worker_layers", (("device", "CPU"),))] == SMOLLM2_LAYERS
    assert after[("llamagrid_worker_ready", ())] == 1
    assert after[("llamagrid_worker_info", (("model", "smollm2"), ("name", NAME)))] == 1
    llama_server_names = {
        "llamacpp:prompt_tokens_total",
        "llamacpp:prompt_seconds_total",
        "llamacpp:tokens_predicted_total",
        "llamacpp:tokens_predicted_seconds_total",
        "llamacpp:prompt_tokens_seconds",
        "llamacpp:predicted_tokens_seconds",
        "llamacpp:requests_processing",
        "llamacpp:requests_deferred",
        "llamacpp:n_decode_total",
        "llamacpp:n_busy_slots_per_decode",
        "llamacpp:n_tokens_max",
    }
    assert llama_server_names <= {name for name, _ in after}
