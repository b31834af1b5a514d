"""A bug hit while admitting one request fails that request alone: the others run on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from llamagrid.worker.engine import scheduler as scheduler_module
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.events import Chunk, Final
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.engine.requests import GenerationSpec, Message, Sampling
from llamagrid.worker.engine.slot import Job, Slot
from llamagrid.worker.model_source import resolve
from llamagrid.worker.settings import WorkerSettings

POISON = "poison"


@pytest.fixture
async def engine() -> AsyncIterator[LlamaEngine]:
    settings = WorkerSettings(parallel=2, n_ctx=2048, n_threads=2)
    source = resolve(
        settings.model, settings.hf_repo, settings.hf_file, settings.hf_revision, settings.alias
    )
    llama = LlamaEngine(settings, source)
    llama.start()
    await llama.wait_loaded()
    yield llama
    await llama.drain(5)


async def run(engine: LlamaEngine, text: str) -> str:
    spec = GenerationSpec(
        messages=(Message("user", text),), sampling=Sampling(temperature=0, max_tokens=8)
    )
    out = ""
    async for batch in engine.generate(spec):
        for event in batch:
            if isinstance(event, Chunk):
                out += event.text
            elif isinstance(event, Final):
                return out
    raise AssertionError("no final event")


async def test_an_unexpected_error_at_admission_fails_only_that_request(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = await run(engine, "Say hi.")
    real = scheduler_module.Scheduler._make_slot

    def buggy(self: scheduler_module.Scheduler, job: Job) -> Slot:
        req = job.request
        if req.messages and req.messages[0].content == POISON:
            raise ZeroDivisionError("a bug")
        return real(self, job)

    monkeypatch.setattr(scheduler_module.Scheduler, "_make_slot", buggy)
    with pytest.raises(EngineError) as caught:
        await run(engine, POISON)
    assert caught.value.reason is Reason.INTERNAL and "a bug" in caught.value.message
    assert await run(engine, "Say hi.") == before  # the engine thread lives on, same output
    assert engine.failure is None and engine.ready
