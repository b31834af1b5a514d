"""Templates and tokenization run on tokenizer threads, never on the engine thread.

Tokenizing the largest prompt a worker accepts (8 MiB) takes seconds. On the engine thread,
that was seconds without a token for every running stream.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import pytest

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.events import Final
from llamagrid.worker.engine.llama_engine import LlamaEngine
from llamagrid.worker.engine.requests import GenerationSpec, Message, Sampling
from llamagrid.worker.model_source import resolve
from llamagrid.worker.native import llama_backend as lb
from llamagrid.worker.settings import WorkerSettings
from tests.procs import Proc, running, spawn_worker, wait_serving


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


async def finish(engine: LlamaEngine, spec: GenerationSpec) -> None:
    async for batch in engine.generate(spec):
        if any(isinstance(event, Final) for event in batch):
            return
    raise AssertionError("no final event")


async def test_the_engine_thread_never_tokenizes(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every vocabulary call a request makes, recorded with the thread that made it."""
    callers: list[str] = []

    def recorded(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            callers.append(threading.current_thread().name)
            return real(*args, **kwargs)

        return call

    for name in ("tokenize", "detokenize"):
        monkeypatch.setattr(lb.Model, name, recorded(getattr(lb.Model, name)))
    sampling = Sampling(temperature=0, max_tokens=4)
    await finish(engine, GenerationSpec(messages=(Message("user", "Hi"),), sampling=sampling))
    await finish(engine, GenerationSpec(prompt="Once upon a time", sampling=sampling))
    await engine.embed(["a text to embed", [1, 2, 3]], normalize=True)
    await engine.tokenize("Tokenize me", add_special=True, parse_special=True)
    await engine.detokenize([1, 2, 3], render_special=True)
    assert len(callers) >= 5
    assert all(name.startswith("llama-tokenize") for name in callers), callers


async def test_a_request_cancelled_while_tokenizing_leaves_nothing_behind(
    engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real = lb.Model.tokenize

    def held(self: lb.Model, text: str, add_special: bool, parse_special: bool) -> list[int]:
        if text.startswith("HOLD"):
            started.set()
            release.wait(60)
        return real(self, text, add_special, parse_special)

    monkeypatch.setattr(lb.Model, "tokenize", held)
    sampling = Sampling(temperature=0, max_tokens=4)
    task = asyncio.create_task(finish(engine, GenerationSpec(prompt="HOLD on", sampling=sampling)))
    assert await asyncio.to_thread(started.wait, 60)
    assert (await engine.load()).queued == 1  # a queue place, held while tokenizing
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await engine.load()).queued == 0  # given back at once
    release.set()
    with pytest.raises(EngineError) as caught:  # refused after tokenizing: given back too
        await finish(engine, GenerationSpec(prompt="word " * 3000, sampling=sampling))
    assert caught.value.reason is Reason.CONTEXT_LENGTH_EXCEEDED
    await finish(engine, GenerationSpec(prompt="Once upon a time", sampling=sampling))
    load = await engine.load()
    assert (load.queued, load.active, engine.busy) == (0, 0, 0)


# ---------------------------------------------------------------------------------------------
# Over gRPC: a stream keeps its pace while a large Tokenize call runs.


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """One decode thread: on a 2-core machine, llama.cpp's two threads would wait on each
    other at every barrier whenever the tokenizer thread takes a core."""
    run_dir = tmp_path_factory.mktemp("tokenize")
    args = ("--parallel", "2", "--n-ctx", "4096", "--n-threads", "1")
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


def test_a_large_tokenize_call_does_not_stall_running_streams(worker: Proc) -> None:
    channel = grpc.insecure_channel(worker.target, options=channel_options())
    stub = pb_grpc.InferenceServiceStub(channel)
    message = pb.ChatMessage(role="user", content="Count upwards from one.")
    endless = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[message]),
        sampling=pb.SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True),
    )
    arrivals: list[float] = []
    paced = threading.Event()
    stream = stub.Generate(endless, timeout=300)
    ended: list[grpc.RpcError] = []

    def read() -> None:
        try:
            for _ in stream:
                arrivals.append(time.monotonic())
                if len(arrivals) == 40:
                    paced.set()
        except grpc.RpcError as error:  # cancelled at the end, or a failure to report
            ended.append(error)
        finally:
            paced.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        paced.wait(120)
        assert len(arrivals) >= 40, ended
        pace = 30 / (arrivals[39] - arrivals[9])  # chunks per second, on its own
        text = "The quick brown fox jumps over the lazy dog. " * 40_000  # 1.8 MB
        start = time.monotonic()
        reply = stub.Tokenize(pb.TokenizeRequest(text=text), timeout=120)
        end = time.monotonic()
        assert len(reply.token_ids) > 300_000
    finally:
        stream.cancel()  # type: ignore[no-untyped-call]
        reader.join()
        channel.close()
    took = end - start
    # The call lasts long enough to tell: at least 10 chunks' time at the stream's own pace.
    assert took * pace > 10, (took, pace)
    # Tokenized on the engine thread, the text would leave the stream without a chunk for
    # nearly the whole call. Off it, chunks keep coming (slower: the machine is shared): no
    # pause between two of them, or an end of the call, lasts half of it.
    points = [start, *(t for t in arrivals if start < t < end), end]
    longest = max(b - a for a, b in itertools.pairwise(points))
    assert longest < took / 2, (longest, took, len(points) - 2)
