"""Images in session turns, over gRPC to a real worker (SmolLM2 with the seeded test projector,
tests/mmproj_model.py).

A session keeps each image's bytes beside its transcript. While the session's KV cache is
resident a later turn prefills only its own tokens; once it is gone (two slots and no host
tier: other requests take both sequences), the next turn reads the images again and prefills
the whole transcript, and answers the same greedy tokens. A transcript with its images opens a
session elsewhere (how the gateway moves a session off a lost worker); one whose images do not
give its tokens is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from llamagrid.errors import parse_details
from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.integration.test_vision_grpc import Stub, chat, image_start, message, picture, run
from tests.mmproj_model import IMAGE_TOKENS
from tests.procs import running, spawn_worker, wait_serving

Sessions = pb_grpc.SessionServiceStub


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory, vision_projector: Path) -> Iterator[Any]:
    """A channel to a worker with the test projector, two slots and no host tier."""
    run_dir = tmp_path_factory.mktemp("vision-sessions")
    args = ("--mmproj", str(vision_projector), "--parallel", "2", "--n-ctx", "4096")
    extra = ("--flash-attn", "off", "--host-cache-mib", "0", "--max-session-images", "3")
    with running(spawn_worker(run_dir, *args, *extra)) as proc:
        wait_serving(proc)
        with grpc.insecure_channel(proc.target, options=channel_options()) as opened:
            grpc.channel_ready_future(opened).result(timeout=60)
            yield opened


@pytest.fixture(scope="module")
def stub(channel: Any) -> Stub:
    return pb_grpc.InferenceServiceStub(channel)


@pytest.fixture(scope="module")
def sessions(channel: Any) -> Sessions:
    return pb_grpc.SessionServiceStub(channel)


def turn(stub: Stub, session_id: str, *messages: pb.ChatMessage) -> tuple[list[int], Any]:
    """(greedy tokens, final) of a session turn."""
    request = chat(*messages, max_tokens=8)
    request.session.session_id = session_id
    tokens, final, _ = run(stub, request)
    return tokens, final


def info(sessions: Sessions, session_id: str) -> pb.GetSessionResponse:
    return sessions.GetSession(
        pb.GetSessionRequest(session_id=session_id, with_transcript=True), timeout=60
    )


def evict(stub: Stub, sessions: Sessions, session_id: str) -> None:
    """Run unrelated prompts, two at a time, until the session's KV is gone from both
    sequences."""
    for n in range(4):
        if info(sessions, session_id).session.kv_tier == pb.KV_TIER_TRANSCRIPT:
            return
        prompts = [f"{n} unrelated words, {k} " * 20 for k in range(2)]
        requests = [pb.GenerateRequest(prompt=p, sampling=chat().sampling) for p in prompts]
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda r: run(stub, r), requests))
    raise AssertionError("the session's KV cache stayed resident")


LOOK = message("user", "Look at this picture:", picture(61), " What is it?")
AGAIN = pb.ChatMessage(role="user", content="Describe it again, briefly.")


def test_a_session_answers_the_same_whether_its_images_are_resident_or_read_again(
    stub: Stub, sessions: Sessions
) -> None:
    opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=60).session
    _, first = turn(stub, opened.session_id, LOOK)
    start = image_start(stub, [LOOK])
    assert list(first.session.image_starts) == [start]
    assert first.usage.prompt_tokens > start + IMAGE_TOKENS
    assert info(sessions, opened.session_id).session.images == 1

    # A fork runs the next turn while the session's cells are resident: only its own tokens.
    fork = sessions.ForkSession(
        pb.ForkSessionRequest(session_id=opened.session_id, turns=1), timeout=60
    ).session
    assert fork.images == 1
    resident, warm = turn(stub, fork.session_id, AGAIN)
    assert warm.usage.cached_tokens >= first.session.length - 1

    # The same turn once the KV is gone: the image is read again and the answer is the same.
    evict(stub, sessions, opened.session_id)
    again, cold = turn(stub, opened.session_id, AGAIN)
    assert again == resident
    assert cold.usage.cached_tokens <= start < cold.usage.prompt_tokens - IMAGE_TOKENS

    # Its transcript, images included, opens a session that answers the same too.
    transcript = info(sessions, fork.session_id).transcript
    assert [i.start for i in transcript.images] == [start]
    assert transcript.images[0].image.data == picture(61)
    assert sum(t < 0 for t in transcript.token_ids) == IMAGE_TOKENS
    first_turn = pb.SessionTranscript(
        token_ids=transcript.token_ids[: transcript.turn_ends[0]],
        turn_ends=transcript.turn_ends[:1],
        images=transcript.images,
    )
    moved = sessions.OpenSession(pb.OpenSessionRequest(transcript=first_turn), timeout=60).session
    assert moved.images == 1 and moved.length == first.session.length
    evict(stub, sessions, moved.session_id)
    assert turn(stub, moved.session_id, AGAIN)[0] == resident

    # A rollback drops the turns' images with them.
    rolled = sessions.RollbackSession(
        pb.RollbackSessionRequest(session_id=opened.session_id, turns=0), timeout=60
    ).session
    assert rolled.images == 0 and rolled.length == 0


def test_later_turns_add_their_own_images(stub: Stub, sessions: Sessions) -> None:
    opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=60).session
    _, first = turn(stub, opened.session_id, LOOK)
    second_look = message("user", "And this one?", picture(62), " Compare them.")
    _, second = turn(stub, opened.session_id, second_look)
    (start,) = second.session.image_starts
    assert start > first.session.length
    assert second.usage.cached_tokens >= first.session.length - 1  # the first image not again
    assert info(sessions, opened.session_id).session.images == 2


def refused(call: Any, *args: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=60)
    error: Any = caught.value
    return error.code(), parse_details(error.trailing_metadata()).param, error.details()


def test_a_transcript_whose_images_do_not_give_its_tokens_is_refused(
    stub: Stub, sessions: Sessions
) -> None:
    opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=60).session
    turn(stub, opened.session_id, LOOK)
    transcript = info(sessions, opened.session_id).transcript

    def open_with(**changes: Any) -> tuple[grpc.StatusCode, str, str]:
        fields = {
            "token_ids": transcript.token_ids,
            "turn_ends": transcript.turn_ends,
            "images": transcript.images,
            **changes,
        }
        request = pb.OpenSessionRequest(transcript=pb.SessionTranscript(**fields))
        return refused(sessions.OpenSession, request)

    start = transcript.images[0].start
    shifted = pb.TranscriptImage(start=start + 1, image=transcript.images[0].image)
    other = pb.TranscriptImage(start=start, image=pb.Image(data=picture(63)))
    junk = pb.TranscriptImage(start=start, image=pb.Image(data=b"GIF89a, or not"))
    for changes, why in (
        ({"images": [shifted]}, "not where it was"),
        ({"images": [other]}, "not the image"),
        ({"images": [junk]}, "not an image"),
        ({"images": [transcript.images[0]] * 2}, "overlaps"),
    ):
        code, param, text = open_with(**changes)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and why in text, text
        assert param.startswith("transcript.images["), param
    code, param, _ = open_with(images=[])  # image positions with no image: ids out of range
    assert code == grpc.StatusCode.INVALID_ARGUMENT and param == "transcript.token_ids"
    code, param, text = open_with(images=[transcript.images[0]] * 4)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-session-images" in text
    # The worker still serves.
    assert run(stub, chat(message("user", picture(1), "Hi")))[1].usage.prompt_tokens > 0


def test_a_session_holds_at_most_its_limit_of_images(stub: Stub, sessions: Sessions) -> None:
    opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=60).session
    three = message("user", picture(71), picture(72), picture(73), " Which is brightest?")
    turn(stub, opened.session_id, three)
    request = chat(message("user", "And", picture(74), " this?"))
    request.session.session_id = opened.session_id
    code, param, text = refused(lambda r, timeout: run(stub, r), request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "--max-session-images" in text, text
    assert param == "messages"
    after = info(sessions, opened.session_id).session
    assert after.images == 3 and len(after.turn_ends) == 1 and not after.busy
