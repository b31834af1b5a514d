"""Sessions on a real worker over gRPC (issue 12): the transcript is the truth, a turn costs its
new tokens, turns commit atomically, one turn runs at a time, and every limit has its error.

Greedy decoding with flash attention off, where equality is asserted: a session's turn must
give the text a stateless request over the whole history gives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from llamagrid.errors import parse_details
from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_worker, wait_serving

#: Tokens of context per request: 2048 (4096 over 2 slots).
CONTEXT = 2048
MAX_SESSIONS = 8
QUESTIONS = [
    "Name a colour.",
    "Why is the sky blue?",
    "Say hello in French.",
    "What is two plus two?",
    "Name a fruit.",
]


@pytest.fixture(scope="module")
def session_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("sessions")
    args = ["--parallel", "2", "--n-ctx", str(2 * CONTEXT), "--n-threads", "1"]
    args += ["--flash-attn", "off", "--max-sessions", str(MAX_SESSIONS)]
    args += ["--max-session-ttl-s", "3600"]
    with running(spawn_worker(Path(tmp), *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def channel(session_worker: Proc) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(session_worker.target, options=channel_options()) as channel:
        grpc.channel_ready_future(channel).result(timeout=60)
        yield channel


@pytest.fixture(scope="module")
def sessions(channel: grpc.Channel) -> pb_grpc.SessionServiceStub:
    return pb_grpc.SessionServiceStub(channel)


@pytest.fixture(scope="module")
def inference(channel: grpc.Channel) -> pb_grpc.InferenceServiceStub:
    return pb_grpc.InferenceServiceStub(channel)


@pytest.fixture
def session_id(sessions: pb_grpc.SessionServiceStub) -> Iterator[str]:
    """A fresh session, closed after the test (the worker holds only MAX_SESSIONS)."""
    opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=30).session.session_id
    yield opened
    try:
        sessions.CloseSession(pb.CloseSessionRequest(session_id=opened), timeout=30)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND  # the test closed it itself


def greedy(max_tokens: int = 12, ignore_eos: bool = False) -> pb.SamplingParams:
    return pb.SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)


def run(
    inference: pb_grpc.InferenceServiceStub, request: pb.GenerateRequest
) -> tuple[str, pb.GenerateFinal]:
    """The text and the final message of a Generate call."""
    text, final = "", None
    for response in inference.Generate(request, timeout=120):
        if response.HasField("chunk"):
            text += response.chunk.text
        else:
            final = response.final
    assert final is not None
    return text, final


def turn(
    inference: pb_grpc.InferenceServiceStub,
    session_id: str,
    content: str,
    expected_turns: int | None = None,
    sampling: pb.SamplingParams | None = None,
) -> tuple[str, pb.GenerateFinal]:
    request = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content=content)]),
        sampling=sampling or greedy(),
        session=pb.SessionRef(session_id=session_id, expected_turns=expected_turns),
    )
    return run(inference, request)


def stateless(
    inference: pb_grpc.InferenceServiceStub, history: list[tuple[str, str]]
) -> tuple[str, pb.GenerateFinal]:
    messages = [pb.ChatMessage(role=role, content=content) for role, content in history]
    request = pb.GenerateRequest(chat=pb.ChatConversation(messages=messages), sampling=greedy())
    return run(inference, request)


def error_of(call: object) -> tuple[grpc.StatusCode, str]:
    """The code and ErrorInfo reason of a failed call."""
    assert isinstance(call, grpc.RpcError) and isinstance(call, grpc.Call)
    return call.code(), parse_details(call.trailing_metadata()).reason


def info(sessions: pb_grpc.SessionServiceStub, session_id: str) -> pb.GetSessionResponse:
    request = pb.GetSessionRequest(session_id=session_id, with_transcript=True)
    response: pb.GetSessionResponse = sessions.GetSession(request, timeout=30)
    return response


def test_twenty_turns_cost_their_new_tokens_and_match_stateless_runs(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub, session_id: str
) -> None:
    history: list[tuple[str, str]] = []
    length = 0
    for index in range(20):
        question = QUESTIONS[index % len(QUESTIONS)] + f" (question {index + 1})"
        text, final = turn(inference, session_id, question, expected_turns=index)
        commit, usage = final.session, final.usage
        assert commit.turns == index + 1
        assert commit.length == length + len(commit.appended_token_ids)
        assert usage.prompt_tokens == commit.length - usage.completion_tokens
        new_tokens = len(commit.appended_token_ids) - usage.completion_tokens
        if index > 0:
            # Only the new turn (template glue included) is prefilled: the session's KV stayed
            # in its sequence. One more when the last turn's last token was never decoded.
            assert usage.prefilled_tokens <= new_tokens + 1, (index, usage)
        assert usage.prefilled_tokens == usage.prompt_tokens - usage.cached_tokens
        length = commit.length
        history.append(("user", question))
        again, _ = stateless(inference, history)
        assert text == again, f"turn {index + 1}: session {text!r}, stateless {again!r}"
        history.append(("assistant", text))
    described = info(sessions, session_id)
    assert described.session.length == length == len(described.transcript.token_ids)
    assert len(described.session.turn_ends) == 20
    assert described.session.turn_ends[-1] == length
    assert described.session.kv_tier == pb.KV_TIER_RESIDENT
    assert not described.session.busy


def test_fork_and_rollback_reproduce_their_turns(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub, session_id: str
) -> None:
    answers = [turn(inference, session_id, q)[0] for q in QUESTIONS[:3]]
    ends = list(info(sessions, session_id).session.turn_ends)
    fork = sessions.ForkSession(pb.ForkSessionRequest(session_id=session_id, turns=2), timeout=30)
    forked = fork.session.session_id
    try:
        assert forked != session_id
        assert list(fork.session.turn_ends) == ends[:2]
        # The fork's next turn equals the original's third turn, and prefills only its new
        # tokens: the original's sequence holds the fork's whole transcript.
        text, final = turn(inference, forked, QUESTIONS[2])
        assert text == answers[2]
        new_tokens = len(final.session.appended_token_ids) - final.usage.completion_tokens
        assert final.usage.prefilled_tokens <= new_tokens + 1
    finally:
        sessions.CloseSession(pb.CloseSessionRequest(session_id=forked), timeout=30)
    rolled = sessions.RollbackSession(
        pb.RollbackSessionRequest(session_id=session_id, turns=1), timeout=30
    )
    assert list(rolled.session.turn_ends) == ends[:1]
    assert rolled.session.length == ends[0]
    text, final = turn(inference, session_id, QUESTIONS[1])
    assert text == answers[1]
    assert final.session.turns == 2
    with pytest.raises(grpc.RpcError) as raised:
        sessions.RollbackSession(pb.RollbackSessionRequest(session_id=session_id, turns=3))
    assert error_of(raised.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_one_turn_at_a_time_and_a_cancelled_turn_commits_nothing(
    channel: grpc.Channel,
    inference: pb_grpc.InferenceServiceStub,
    sessions: pb_grpc.SessionServiceStub,
    session_id: str,
) -> None:
    turn(inference, session_id, QUESTIONS[0])
    before = info(sessions, session_id)
    request = pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="Count to 500.")]),
        sampling=greedy(400, ignore_eos=True),
        session=pb.SessionRef(session_id=session_id),
    )
    long_turn = inference.Generate(request, timeout=120)
    next(long_turn)  # a first chunk: the turn is running
    with pytest.raises(grpc.RpcError) as raised:
        turn(inference, session_id, "And another thing.")
    assert error_of(raised.value) == (grpc.StatusCode.ABORTED, "SESSION_BUSY")
    with pytest.raises(grpc.RpcError) as raised:
        sessions.RollbackSession(pb.RollbackSessionRequest(session_id=session_id, turns=0))
    assert error_of(raised.value) == (grpc.StatusCode.ABORTED, "SESSION_BUSY")
    assert info(sessions, session_id).session.busy
    long_turn.cancel()
    deadline = time.monotonic() + 30
    while info(sessions, session_id).session.busy:  # the worker sees the cancel
        assert time.monotonic() < deadline, "the cancelled turn still holds the session"
        time.sleep(0.05)
    after = info(sessions, session_id)
    assert after.transcript == before.transcript
    assert list(after.session.turn_ends) == list(before.session.turn_ends)
    _, final = turn(inference, session_id, "Name a fruit.")
    assert final.session.turns == 2


def test_closing_a_session_ends_its_running_turn(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub
) -> None:
    opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=30).session.session_id
    request = pb.GenerateRequest(
        prompt="Once upon a time",
        sampling=greedy(400, ignore_eos=True),
        session=pb.SessionRef(session_id=opened),
    )
    running_turn = inference.Generate(request, timeout=120)
    next(running_turn)
    sessions.CloseSession(pb.CloseSessionRequest(session_id=opened), timeout=30)
    with pytest.raises(grpc.RpcError) as raised:
        for _ in running_turn:
            pass
    assert error_of(raised.value) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as raised:
        info(sessions, opened)
    assert error_of(raised.value) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


def test_expected_turns_unknown_ids_and_expiry(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub, session_id: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        turn(inference, session_id, "Hi", expected_turns=3)
    assert error_of(raised.value) == (grpc.StatusCode.ABORTED, "SESSION_LENGTH_MISMATCH")
    for unknown in ("ses_nothing", "x"):
        with pytest.raises(grpc.RpcError) as raised:
            turn(inference, unknown, "Hi")
        assert error_of(raised.value) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as raised:
        turn(inference, "s" * 10_000, "Hi")
    assert error_of(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")
    short = sessions.OpenSession(pb.OpenSessionRequest(ttl_s=1), timeout=30).session
    assert short.ttl_s == 1
    time.sleep(1.5)  # the TTL itself is what is tested: a second of disuse
    with pytest.raises(grpc.RpcError) as raised:
        turn(inference, short.session_id, "Hi")
    assert error_of(raised.value) == (grpc.StatusCode.NOT_FOUND, "SESSION_EXPIRED")
    for ttl in (3601, 2**32 - 1):
        with pytest.raises(grpc.RpcError) as raised:
            sessions.OpenSession(pb.OpenSessionRequest(ttl_s=ttl), timeout=30)
        assert error_of(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_VALUE")


def test_the_session_limit(sessions: pb_grpc.SessionServiceStub) -> None:
    opened: list[str] = []
    try:
        with pytest.raises(grpc.RpcError) as raised:
            for _ in range(MAX_SESSIONS + 1):
                response = sessions.OpenSession(pb.OpenSessionRequest(), timeout=30)
                opened.append(response.session.session_id)
        assert error_of(raised.value) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SESSION_LIMIT")
        assert 0 < len(opened) <= MAX_SESSIONS
    finally:
        for session_id in opened:
            sessions.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=30)
    sessions.CloseSession(
        pb.CloseSessionRequest(
            session_id=sessions.OpenSession(pb.OpenSessionRequest()).session.session_id
        )
    )


def test_transcripts_are_checked_and_a_session_is_never_truncated(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub
) -> None:
    bad = [
        pb.SessionTranscript(token_ids=[1, 2, 3], turn_ends=[2]),  # does not end at its length
        pb.SessionTranscript(token_ids=[1, 2, 3], turn_ends=[2, 2, 3]),  # not increasing
        pb.SessionTranscript(token_ids=[1, 2, 3]),  # no turn ends
        pb.SessionTranscript(token_ids=[1, 2, 10**9], turn_ends=[3]),  # not in the vocabulary
        pb.SessionTranscript(token_ids=[-1, 2, 3], turn_ends=[3]),
    ]
    for transcript in bad:
        with pytest.raises(grpc.RpcError) as raised:
            sessions.OpenSession(pb.OpenSessionRequest(transcript=transcript), timeout=30)
        assert error_of(raised.value)[0] == grpc.StatusCode.INVALID_ARGUMENT, transcript
    full = pb.SessionTranscript(token_ids=[28] * CONTEXT, turn_ends=[CONTEXT])
    with pytest.raises(grpc.RpcError) as raised:
        sessions.OpenSession(pb.OpenSessionRequest(transcript=full), timeout=30)
    assert error_of(raised.value) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED")
    # Resumed near the end of the context: a turn that does not fit is refused, and the
    # session keeps every token.
    near = pb.SessionTranscript(token_ids=[28] * (CONTEXT - 8), turn_ends=[CONTEXT - 8])
    resumed = sessions.OpenSession(pb.OpenSessionRequest(transcript=near), timeout=30).session
    try:
        assert resumed.length == CONTEXT - 8 and list(resumed.turn_ends) == [CONTEXT - 8]
        with pytest.raises(grpc.RpcError) as raised:
            turn(inference, resumed.session_id, "Tell me a long story.", sampling=greedy(64))
        assert error_of(raised.value) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "CONTEXT_LENGTH_EXCEEDED",
        )
        assert info(sessions, resumed.session_id).session.length == CONTEXT - 8
    finally:
        sessions.CloseSession(pb.CloseSessionRequest(session_id=resumed.session_id), timeout=30)


def test_concurrent_turns_on_one_session_give_exactly_one_busy(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub, session_id: str
) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def attempt() -> None:
        barrier.wait()
        try:
            turn(inference, session_id, "Name a colour.", sampling=greedy(200, ignore_eos=True))
            outcomes.append("ok")
        except grpc.RpcError as error:
            outcomes.append(error_of(error)[1])

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(outcomes) == ["SESSION_BUSY", "ok"]
    assert len(info(sessions, session_id).session.turn_ends) == 1


async def test_the_python_clients_session_calls(session_worker: Proc) -> None:
    from llamagrid.client import AsyncInferenceClient
    from llamagrid.sync_client import InferenceClient

    async with AsyncInferenceClient(session_worker.target) as client:
        opened = await client.open_session(ttl_s=60)
        request = pb.GenerateRequest(
            chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content="Hi")]),
            sampling=greedy(),
            session=pb.SessionRef(session_id=opened.session_id, expected_turns=0),
        )
        finals = [r.final async for r in client.generate(request) if r.HasField("final")]
        assert finals[-1].session.turns == 1
        described = await client.get_session(opened.session_id, with_transcript=True)
        assert list(described.transcript.token_ids) == list(finals[-1].session.appended_token_ids)
        fork = await client.fork_session(opened.session_id, 1)
        assert list(fork.turn_ends) == list(described.session.turn_ends)
        assert (await client.rollback_session(fork.session_id, 0)).length == 0
        await client.close_session(fork.session_id)
        await client.close_session(opened.session_id)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.get_session(opened.session_id)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with InferenceClient(session_worker.target) as sync:
        opened = sync.open_session()
        assert sync.get_session(opened.session_id).session.length == 0
        fork = sync.fork_session(opened.session_id, 0)
        assert fork.length == 0
        sync.close_session(fork.session_id)
        assert sync.rollback_session(opened.session_id, 0).turn_ends == []
        sync.close_session(opened.session_id)


def test_cancel_turn_from_another_caller_ends_the_turn_and_commits_nothing(
    inference: pb_grpc.InferenceServiceStub, sessions: pb_grpc.SessionServiceStub, session_id: str
) -> None:
    idle = sessions.CancelTurn(pb.CancelTurnRequest(session_id=session_id), timeout=30)
    assert not idle.cancelled  # nothing runs
    request = pb.GenerateRequest(
        prompt="Once upon a time",
        sampling=greedy(400, ignore_eos=True),
        session=pb.SessionRef(session_id=session_id),
    )
    running_turn = inference.Generate(request, timeout=120)
    next(running_turn)
    cancelled = sessions.CancelTurn(pb.CancelTurnRequest(session_id=session_id), timeout=30)
    assert cancelled.cancelled
    with pytest.raises(grpc.RpcError) as raised:
        for _ in running_turn:
            pass
    assert error_of(raised.value) == (grpc.StatusCode.CANCELLED, "TURN_CANCELLED")
    described = info(sessions, session_id).session
    assert described.length == 0 and not described.busy
    load = inference.GetLoad(pb.GetLoadRequest(), timeout=30)
    assert load.max_sessions == MAX_SESSIONS and 1 <= load.sessions <= MAX_SESSIONS
    _, final = turn(inference, session_id, "Hello")
    assert final.session.turns == 1
