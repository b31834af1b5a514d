"""When the engine thread dies, no request waits forever and the worker says it cannot serve."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llamagrid.worker.engine import llama_engine
from llamagrid.worker.engine.errors import EngineError, Reason, not_ready
from llamagrid.worker.engine.requests import GenerationSpec
from llamagrid.worker.engine.slot import Job
from llamagrid.worker.model_source import ModelSource
from llamagrid.worker.native.devices import Placement
from llamagrid.worker.rpc.server import EngineDied, serve
from llamagrid.worker.settings import WorkerSettings
from tests.unit.test_worker_batching import DESCRIPTION


class FakeScheduler:
    """Holds jobs; close() fails them, as the real one does."""

    def __init__(self) -> None:
        self.waiting: list[Job] = []
        self.active = 0
        self.lora_scales: tuple[float, ...] = ()
        self.on_dequeue: Any = None

    def enqueue(self, job: Job) -> None:
        self.waiting.append(job)

    def step(self) -> bool:
        return False

    def close(self) -> None:
        for job in self.waiting:
            job.fail(not_ready("the worker is shutting down"))


class BrokenEmbedder:
    """Raises outside the step's own error handling, as a bug there would."""

    pending: tuple[Any, ...] = ()

    def step(self) -> bool:
        raise RuntimeError("a bug outside the decode step")


class FakePrompts:
    """Tokenizes every prompt as one token (the engine tokenizes before queueing)."""

    def prompt_tokens(self, spec: GenerationSpec) -> list[int]:
        return [1]


class FakeRuntime:
    lora_files: tuple[str, ...] = ()

    def __init__(self, settings: WorkerSettings, source: ModelSource) -> None:
        self.scheduler = FakeScheduler()
        self.prompts = FakePrompts()
        self.embedder = BrokenEmbedder()
        self.placement = Placement(
            backend="cpu",
            visible_devices=(),
            n_gpu_layers=0,
            main_gpu=0,
            split_mode="none",
            tensor_split=(),
            devices=(),
            offloaded_layers=0,
            total_layers=1,
        )

    def describe(self) -> Any:
        return DESCRIPTION

    def close(self) -> None:
        self.scheduler.close()


async def test_a_dead_engine_thread_fails_its_requests_and_reports_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(llama_engine, "Runtime", FakeRuntime)
    engine = llama_engine.LlamaEngine(WorkerSettings(), ModelSource(Path("m.gguf"), "m"))
    engine.start()
    await engine.wait_loaded()
    with pytest.raises(EngineError) as caught:
        async for _ in engine.generate(GenerationSpec(prompt="hi")):
            pass
    assert caught.value.reason is Reason.NOT_READY
    await asyncio.wait_for(engine.wait_stopped(), timeout=5)
    assert isinstance(engine.failure, RuntimeError)
    assert not engine.ready
    with pytest.raises(EngineError) as refused:  # and later requests are refused at once
        await anext(engine.generate(GenerationSpec(prompt="hi")))
    assert refused.value.reason is Reason.NOT_READY


async def test_a_worker_whose_engine_thread_dies_exits_non_zero(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(llama_engine, "Runtime", FakeRuntime)
    port_file = tmp_path / "port"
    settings = WorkerSettings(host="127.0.0.1", port=0, port_file=str(port_file))
    engine = llama_engine.LlamaEngine(settings, ModelSource(Path("m.gguf"), "m"))
    serving = asyncio.create_task(serve(settings, engine))
    while not engine.ready:  # loaded and SERVING
        await asyncio.sleep(0.01)
    engine._inbox.put(("wake",))  # the next loop turn runs the broken step
    with pytest.raises(EngineDied, match="a bug outside the decode step"):
        await asyncio.wait_for(serving, timeout=10)


class UndescribedRuntime(FakeRuntime):
    """Loads, then fails while the engine reads what it loaded."""

    def describe(self) -> Any:
        raise RuntimeError("a bug after the model loaded")


async def test_a_failure_right_after_loading_is_a_load_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(llama_engine, "Runtime", UndescribedRuntime)
    engine = llama_engine.LlamaEngine(WorkerSettings(), ModelSource(Path("m.gguf"), "m"))
    engine.start()
    with pytest.raises(RuntimeError, match="a bug after the model loaded"):
        await asyncio.wait_for(engine.wait_loaded(), timeout=10)
