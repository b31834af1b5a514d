"""A bug hit while admitting one request, or libmtmd failing on its image, fails that request
alone: the others run on."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from llamagrid.worker.engine import scheduler as scheduler_module
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.events import Chunk, Final
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.engine.requests import GenerationSpec, ImageInput, Message, Sampling
from llamagrid.worker.engine.slot import Job, Slot
from llamagrid.worker.model_source import resolve
from llamagrid.worker.settings import WorkerSettings
from tests.mmproj_model import png_image

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


async def test_an_image_libmtmd_cannot_encode_fails_only_that_request(
    vision_projector: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libmtmd failing on one image (a stand-in for a projector that rejects what Pillow took)
    fails that request with INTERNAL; an image request and a text request beside it answer as
    they do alone, and no slot stays busy."""
    from llamagrid.worker.native import mtmd

    poison, fine = png_image(56, 56, 91), png_image(56, 56, 92)
    poisoned: set[int] = set()
    real_tokenize, real_encode = mtmd.Projector.tokenize, mtmd.Projector.encode

    def tokenize(self: Any, width: int, height: int, rgb: bytes, image_id: str) -> Any:
        chunks = real_tokenize(self, width, height, rgb, image_id)
        if image_id == hashlib.sha256(poison).hexdigest():
            poisoned.add(id(chunks))
        return chunks

    def encode(self: Any, chunks: Any, piece: Any) -> Any:
        if id(chunks) in poisoned:
            raise RuntimeError("libmtmd could not encode the image (code 1)")
        return real_encode(self, chunks, piece)

    monkeypatch.setattr(mtmd.Projector, "tokenize", tokenize)
    monkeypatch.setattr(mtmd.Projector, "encode", encode)
    settings = WorkerSettings(parallel=3, n_ctx=3072, n_threads=2, mmproj=str(vision_projector))
    source = resolve(settings.model, "", "", "main", "")
    llama = LlamaEngine(settings, source)
    llama.start()
    await llama.wait_loaded()
    try:
        alone = [await run(llama, "Say hi."), await run_image(llama, fine)]
        results = await asyncio.gather(
            run_image(llama, poison),
            run_image(llama, fine),
            run(llama, "Say hi."),
            return_exceptions=True,
        )
        failed = results[0]
        assert isinstance(failed, EngineError) and failed.reason is Reason.INTERNAL, failed
        assert "could not be evaluated" in failed.message
        assert results[1:] == [alone[1], alone[0]]
        load = await llama.load()
        assert load.active == 0 and load.queued == 0 and llama.failure is None
    finally:
        await llama.drain(5)


async def run_image(engine: LlamaEngine, image: bytes) -> str:
    parts = ("Look:", ImageInput(image, "image/png"), " What is it?")
    spec = GenerationSpec(
        messages=(Message("user", "", parts=parts),), sampling=Sampling(temperature=0, max_tokens=8)
    )
    out = ""
    async for batch in engine.generate(spec):
        for event in batch:
            if isinstance(event, Chunk):
                out += event.text
    return out
