"""LoRA adapters on a real worker and gateway: loaded at start, scales set at run time and per
request, never mixed in a batch or through the KV cache, and hostile lists refused.

The worker loads two adapters written for SmolLM2 by tests/lora_adapter.py: ``strong.gguf``
(``--lora``, scale 1) and ``weak.gguf`` (``--lora-scaled PATH 0``). The shared plain worker
gives the model's own output to compare with.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.model_source import default_model_path
from tests.lora_adapter import write_lora_adapter
from tests.procs import Proc, running, spawn_gateway, spawn_worker, wait_http_ok, wait_serving

PROMPT = "Write one sentence about the sea."
TOKENS = 16
Stub = pb_grpc.InferenceServiceStub


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lora")
    model = default_model_path()
    strong = write_lora_adapter(folder / "strong.gguf", model, seed=1)
    weak = write_lora_adapter(folder / "weak.gguf", model, seed=2, layers=(5,), strength=0.1)
    return strong, weak


@pytest.fixture(scope="module")
def lora_worker(run_dir: Path, adapters: tuple[Path, Path]) -> Iterator[Proc]:
    strong, weak = adapters
    args = ["--parallel", "2", "--n-ctx", "2048", "--lora", str(strong)]
    args += ["--lora-scaled", str(weak), "0"]  # llama-server's two-value form
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def lora_stub(lora_worker: Proc) -> Iterator[Stub]:
    channel = grpc.insecure_channel(lora_worker.target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def lora_url(run_dir: Path, lora_worker: Proc) -> Iterator[str]:
    with running(spawn_gateway(run_dir, lora_worker.target)) as proc:
        url = f"http://127.0.0.1:{proc.port}"
        wait_http_ok(f"{url}/health")
        yield url


def request(lora: list[tuple[int, float]] | None = None) -> pb.GenerateRequest:
    message = pb.ChatMessage(role="user", content=PROMPT)
    proto = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[message]),
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=TOKENS),
    )
    for index, scale in lora or ():
        proto.lora.append(pb.LoraScale(id=index, scale=scale))
    return proto


def generate(stub: Stub, lora: list[tuple[int, float]] | None = None) -> str:
    """The greedy answer over gRPC, with the request's own scales when given."""
    return "".join(m.chunk.text for m in stub.Generate(request(lora), timeout=120))


def http_chat(url: str, lora: Any = None) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "any",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": TOKENS,
    }
    if lora is not None:
        body["lora"] = lora
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def http_text(url: str, lora: Any = None) -> str:
    response = http_chat(url, lora)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def plain(stub: Stub) -> str:
    """The model's own answer, from the shared worker, which has no adapter."""
    return generate(stub)


def test_adapters_loaded_at_start_are_listed_with_their_file_names_and_scales(
    lora_stub: Stub, lora_url: str, adapters: tuple[Path, Path]
) -> None:
    expected = [
        {"id": 0, "path": "strong.gguf", "scale": 1.0},
        {"id": 1, "path": "weak.gguf", "scale": 0.0},
    ]
    response = httpx.get(f"{lora_url}/lora-adapters", timeout=30)
    assert response.status_code == 200 and response.json() == expected
    listed = lora_stub.ListLoraAdapters(pb.ListLoraAdaptersRequest(), timeout=30).adapters
    info = lora_stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).info
    for adapters_seen in (listed, info.adapters):
        assert [(a.id, a.path, a.scale) for a in adapters_seen] == [
            (e["id"], e["path"], e["scale"]) for e in expected
        ]
    assert str(adapters[0].parent) not in response.text  # a file name, never the path


def test_an_adapter_changes_the_output_at_scale_1_and_not_at_scale_0(
    lora_stub: Stub, lora_url: str, plain: str
) -> None:
    at_start = generate(lora_stub)  # strong.gguf at 1, from --lora
    assert at_start != plain
    # The same prompt again at scale 0: the KV cells just computed under scale 1 are not reused.
    assert generate(lora_stub, [(0, 0.0)]) == plain
    assert http_text(lora_url, [{"id": 0, "scale": 0.0}]) == plain
    assert http_text(lora_url) == at_start
    assert generate(lora_stub, [(0, 1.0)]) == at_start
    assert http_text(lora_url, [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]) == at_start


def test_completions_take_the_lora_field_too(lora_url: str, plain: str) -> None:
    prompt = "Once upon a time, by the sea, there was"
    body: dict[str, Any] = {"model": "m", "prompt": prompt, "max_tokens": TOKENS, "temperature": 0}
    texts = []
    for scale in (0.0, 1.0, 0.0):
        lora = [{"id": 0, "scale": scale}]
        response = httpx.post(f"{lora_url}/v1/completions", json={**body, "lora": lora}, timeout=60)
        assert response.status_code == 200, response.text
        texts.append(response.json()["choices"][0]["text"])
    assert texts[0] and texts[0] == texts[2] != texts[1]


def test_llama_servers_completion_route_takes_the_lora_field(lora_url: str) -> None:
    body: dict[str, Any] = {"prompt": "Once upon a time, by the sea, there was"}
    body |= {"n_predict": TOKENS, "temperature": 0}
    texts = []
    for scale in (0.0, 1.0, 0.0):
        lora = [{"id": 0, "scale": scale}]
        response = httpx.post(f"{lora_url}/completion", json={**body, "lora": lora}, timeout=60)
        assert response.status_code == 200, response.text
        texts.append(response.json()["content"])
    assert texts[0] and texts[0] == texts[2] != texts[1]
    refused = httpx.post(f"{lora_url}/completion", json={**body, "lora": [{"id": 9, "scale": 1}]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "lora"


def test_scales_set_at_run_time_apply_to_the_requests_that_follow(
    lora_stub: Stub, lora_url: str, plain: str
) -> None:
    at_start = generate(lora_stub)
    try:
        response = httpx.post(
            f"{lora_url}/lora-adapters", json=[{"id": 1, "scale": 0.5}], timeout=30
        )
        assert response.status_code == 200, response.text
        assert [a["scale"] for a in response.json()] == [0.0, 0.5]  # left out: 0
        response = httpx.post(f"{lora_url}/lora-adapters", json=[{"id": 0, "scale": 0}])
        assert [a["scale"] for a in response.json()] == [0.0, 0.0]
        assert generate(lora_stub) == plain
        assert http_text(lora_url) == plain
        assert http_text(lora_url, [{"id": 0, "scale": 1}]) == at_start  # the request's own
        grpc_set = pb.SetLoraAdaptersRequest(adapters=[pb.LoraScale(id=0, scale=1.0)])
        answer = lora_stub.SetLoraAdapters(grpc_set, timeout=30)
        assert [(a.id, a.scale) for a in answer.adapters] == [(0, 1.0), (1, 0.0)]
        assert generate(lora_stub) == at_start
        assert [a["scale"] for a in httpx.get(f"{lora_url}/lora-adapters").json()] == [1.0, 0.0]
    finally:
        restore = pb.SetLoraAdaptersRequest(adapters=[pb.LoraScale(id=0, scale=1.0)])
        lora_stub.SetLoraAdapters(restore, timeout=30)


def test_concurrent_requests_with_different_scales_get_the_text_they_get_alone(
    lora_stub: Stub, plain: str
) -> None:
    alone = {0.0: generate(lora_stub, [(0, 0.0)]), 1.0: generate(lora_stub, [(0, 1.0)])}
    assert alone[0.0] == plain and alone[1.0] != plain
    scales = [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    with concurrent.futures.ThreadPoolExecutor(len(scales)) as pool:
        texts = list(pool.map(lambda s: generate(lora_stub, [(0, s)]), scales))
    assert texts == [alone[s] for s in scales]


HOSTILE: list[tuple[str, Any]] = [
    ("unknown id", [{"id": 2, "scale": 1.0}]),
    ("huge id", [{"id": 2**32 - 1, "scale": 1.0}]),
    ("huge scale", [{"id": 0, "scale": 1e30}]),
    ("negative huge scale", [{"id": 0, "scale": -11}]),
    ("repeated id", [{"id": 0, "scale": 1.0}, {"id": 0, "scale": 0.5}]),
    ("too many", [{"id": 0, "scale": 0.1}] * 65),
]


@pytest.mark.parametrize(("case", "lora"), HOSTILE, ids=[case for case, _ in HOSTILE])
def test_a_hostile_lora_list_is_refused_everywhere_and_the_worker_serves_on(
    case: str, lora: Any, lora_stub: Stub, lora_url: str
) -> None:
    at_start = generate(lora_stub)
    response = http_chat(lora_url, lora)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "lora"
    response = httpx.post(f"{lora_url}/lora-adapters", json=lora, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == 400  # llama-server's error shape
    entries = [pb.LoraScale(id=e["id"], scale=e["scale"]) for e in lora]
    with pytest.raises(grpc.RpcError) as refused:
        list(lora_stub.Generate(pb.GenerateRequest(prompt=PROMPT, lora=entries), timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as refused:
        lora_stub.SetLoraAdapters(pb.SetLoraAdaptersRequest(adapters=entries), timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [a["scale"] for a in httpx.get(f"{lora_url}/lora-adapters").json()] == [1.0, 0.0]
    assert generate(lora_stub) == at_start


@pytest.mark.parametrize("scale", [math.nan, math.inf])
def test_a_scale_that_is_not_a_number_is_refused(
    scale: float, lora_stub: Stub, lora_url: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(lora_stub.Generate(request([(0, scale)]), timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = '[{"id": 0, "scale": NaN}]' if math.isnan(scale) else '[{"id": 0, "scale": 1e999}]'
    response = httpx.post(
        f"{lora_url}/lora-adapters",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text


def test_an_empty_lora_list_on_http_is_refused_with_a_hint(lora_url: str) -> None:
    response = http_chat(lora_url, [])
    assert response.status_code == 400
    assert "scale 0" in response.json()["error"]["message"]


def test_a_worker_without_adapters_refuses_a_lora_field(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Generate(request([(0, 1.0)]), timeout=60))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not stub.ListLoraAdapters(pb.ListLoraAdaptersRequest(), timeout=30).adapters


def test_an_adapter_that_does_not_load_stops_the_worker_with_the_reason(
    run_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.gguf"
    proc = spawn_worker(run_dir, "--lora", str(missing))
    with running(proc), pytest.raises(RuntimeError, match="exited"):
        wait_serving(proc)
    assert "could not load the LoRA adapter" in proc.log_text()
    with pytest.raises(RuntimeError, match="lora-scaled"):
        spawn_worker(run_dir, "--lora-scaled", f"{missing}:lots").terminate()
