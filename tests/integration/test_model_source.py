"""Loading a model through huggingface-hub, offline, from a local Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

import grpc

from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.model_source import default_model_path
from tests.procs import running, spawn_worker, wait_serving

REPO = "llamagrid-test/SmolLM2-135M-Instruct-GGUF"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hf_cache(root: Path, projector: Path | None = None) -> Path:
    """A cache laid out as huggingface-hub writes it, holding the default model's file (and a
    vision projector for it, when given)."""
    repo_dir = root / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "smollm2-135m-instruct-q4_1.gguf").symlink_to(default_model_path())
    if projector is not None:
        (snapshot / "mmproj-smollm2-135m-f16.gguf").symlink_to(projector)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return root


def test_worker_loads_from_hugging_face_cache_offline(tmp_path: Path) -> None:
    cache = make_hf_cache(tmp_path / "hub")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = spawn_worker(
        tmp_path,
        "--hf-repo",
        REPO,
        "--hf-file",
        "*q4_1.gguf",
        "--alias",
        "smol-hf",
        "--parallel",
        "1",
        env=env,
    )
    with running(proc):
        wait_serving(proc)
        channel = grpc.insecure_channel(proc.target)
        stub = pb_grpc.InferenceServiceStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest()).info
        assert info.alias == "smol-hf"
        assert info.hf_repo == REPO
        assert info.file.endswith(".gguf") and "/" not in info.file  # a name, never a path
        channel.close()


def test_missing_hugging_face_file_fails_clearly(tmp_path: Path) -> None:
    cache = make_hf_cache(tmp_path / "hub")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    proc = spawn_worker(
        tmp_path, "--hf-repo", REPO, "--hf-file", "*Q8_0.gguf", env=env, wait_port=False
    )
    code = proc.popen.wait(60)
    assert code != 0
    assert "no file in" in proc.log_text() and "Q8_0" in proc.log_text()


def test_the_vision_projector_comes_from_the_repository_too(
    tmp_path: Path, vision_projector: Path
) -> None:
    cache = make_hf_cache(tmp_path / "hub", vision_projector)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    model = ("--hf-repo", REPO, "--hf-file", "*q4_1.gguf", "--parallel", "1")
    proc = spawn_worker(tmp_path, *model, "--hf-mmproj-file", "mmproj-*.gguf", env=env)
    with running(proc):
        wait_serving(proc)
        with grpc.insecure_channel(proc.target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).info
            assert info.vision and pb.CAPABILITY_VISION in info.capabilities
    missing = spawn_worker(
        tmp_path, *model, "--hf-mmproj-file", "mmproj-*q8_0.gguf", env=env, wait_port=False
    )
    assert missing.popen.wait(60) != 0
    assert "no file in" in missing.log_text() and "mmproj-*q8_0.gguf" in missing.log_text()
    both = ("--hf-mmproj-file", "mmproj-*.gguf", "--mmproj", str(vision_projector))
    twice = spawn_worker(tmp_path, *model, *both, env=env, wait_port=False)
    assert twice.popen.wait(60) != 0 and "not both" in twice.log_text()
