"""More sessions than slots (issue 12): 100 sessions take 3 turns each, round-robin, on one
worker with 8 slots, so every turn finds its session's sequence taken by others.

With a host-memory budget that fits them all, each evicted session's KV is saved to host memory
and restored for its next turn: only the new tokens are prefilled. With no budget, every turn
prefills its whole session again. The answers are the same in both modes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import free_port, running, spawn_worker, wait_serving

SESSIONS = 100
ROUNDS = 3
SLOTS = 8


Run = tuple[list[list[str]], list[list[pb.Usage]], pb.GetLoadResponse, dict[str, float]]


def run_rounds(tmp: Path, host_cache_mib: int) -> Run:
    """Every session's answers and usages, round by round, and the worker's load report."""
    args = ["--parallel", str(SLOTS), "--n-ctx", str(SLOTS * 512), "--n-threads", "1"]
    args += ["--flash-attn", "off", "--max-sessions", str(SESSIONS + 8)]
    args += ["--host-cache-mib", str(host_cache_mib)]
    metrics_port = free_port()
    args += ["--metrics-port", str(metrics_port)]
    texts: list[list[str]] = [[] for _ in range(SESSIONS)]
    usages: list[list[pb.Usage]] = [[] for _ in range(SESSIONS)]
    with running(spawn_worker(tmp, *args)) as worker:
        wait_serving(worker)
        with grpc.insecure_channel(worker.target, options=channel_options()) as channel:
            sessions = pb_grpc.SessionServiceStub(channel)
            inference = pb_grpc.InferenceServiceStub(channel)
            ids = [
                sessions.OpenSession(pb.OpenSessionRequest(), timeout=30).session.session_id
                for _ in range(SESSIONS)
            ]
            for round_ in range(ROUNDS):
                for index, session_id in enumerate(ids):
                    question = f"Conversation {index}, question {round_ + 1}: name a number."
                    request = pb.GenerateRequest(
                        chat=pb.ChatConversation(
                            messages=[pb.ChatMessage(role="user", content=question)]
                        ),
                        sampling=pb.SamplingParams(max_tokens=4, temperature=0.0),
                        session=pb.SessionRef(session_id=session_id, expected_turns=round_),
                    )
                    text, final = "", None
                    for response in inference.Generate(request, timeout=120):
                        if response.HasField("chunk"):
                            text += response.chunk.text
                        else:
                            final = response.final
                    assert final is not None and final.session.turns == round_ + 1
                    texts[index].append(text)
                    usages[index].append(final.usage)
            load = inference.GetLoad(pb.GetLoadRequest(), timeout=30)
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    tiers = {
        sample.labels["tier"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "llamagrid_worker_sessions_by_tier"
        for sample in family.samples
    }
    return texts, usages, load, tiers


@pytest.fixture(scope="module")
def modes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Run]]:
    tmp = tmp_path_factory.mktemp("tiers")
    yield {"host": run_rounds(tmp, 1024), "none": run_rounds(tmp, 0)}


def new_tokens(usage: pb.Usage, previous: pb.Usage) -> int:
    """The tokens a turn added before generating: its prompt less the previous turn's context."""
    return usage.prompt_tokens - (previous.prompt_tokens + previous.completion_tokens)


def test_with_a_host_budget_later_turns_prefill_only_their_new_tokens(
    modes: dict[str, Run],
) -> None:
    _, usages, load, tiers = modes["host"]
    restored = 0
    for session in usages:
        for previous, usage in itertools.pairwise(session):
            assert usage.prefilled_tokens <= new_tokens(usage, previous) + 1, usage
            restored += usage.restored_tokens > 0
    # 100 sessions on 8 slots: nearly every later turn came back from host memory.
    assert restored >= SESSIONS * (ROUNDS - 1) - SLOTS
    assert load.sessions == SESSIONS and load.host_cache_restores >= restored
    assert load.host_cache_bytes > 0 and load.session_tokens_reprefilled == 0
    # By tier: the sessions that ran last are resident, every other one is in host memory.
    assert 0 < load.sessions_resident <= SLOTS and load.sessions_transcript == 0
    assert load.sessions_host == SESSIONS - load.sessions_resident
    assert tiers == {"resident": load.sessions_resident, "host": load.sessions_host,
                     "transcript": 0}  # fmt: skip


def test_without_a_budget_the_answers_are_the_same_through_re_prefill(
    modes: dict[str, Run],
) -> None:
    host_texts = modes["host"][0]
    none_texts, none_usages, load, tiers = modes["none"]
    assert none_texts == host_texts
    reprefilled = sum(
        usage.prefilled_tokens > new_tokens(usage, previous) + 1
        for session in none_usages
        for previous, usage in itertools.pairwise(session)
    )
    assert reprefilled >= SESSIONS * (ROUNDS - 1) - SLOTS
    assert all(u.restored_tokens == 0 for session in none_usages for u in session)
    assert load.host_cache_bytes == 0 and load.host_cache_restores == 0
    assert load.session_tokens_reprefilled > 0
    assert 0 < load.sessions_resident <= SLOTS and load.sessions_host == 0
    assert load.sessions_transcript == SESSIONS - load.sessions_resident
    assert tiers == {"resident": load.sessions_resident, "host": 0,
                     "transcript": load.sessions_transcript}  # fmt: skip
