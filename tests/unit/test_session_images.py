"""Images in sessions without a model: where a turn's images land after a transcript and how a
transcript's images are read again (RequestPrompts.turn_media, transcript_images), and how the
session table holds their bytes (engine/sessions.py's ImageBank), on the stand-in vocabulary
and projector of test_vision_inputs."""

from __future__ import annotations

import hashlib

import pytest

from llamagrid.worker.engine.errors import EngineError, Reason
from llamagrid.worker.engine.media import PlacedImage
from llamagrid.worker.engine.requests import GenerationSpec, ImageInput, Message, SessionRef
from llamagrid.worker.engine.sessions import SessionTable, check_transcript
from tests.unit.test_prompt_tokens import tokenizer
from tests.unit.test_sessions import CHATML
from tests.unit.test_vision_inputs import PNG, encoded, vision_tokenizer

OTHER = ImageInput(encoded("PNG", (9, 6)))


def placed(image: ImageInput, start: int) -> PlacedImage:
    return PlacedImage(start, hashlib.sha256(image.data).hexdigest(), image)


def looking_at(image: ImageInput, text: str) -> GenerationSpec:
    return GenerationSpec(messages=(Message("user", "", parts=(text, image)),))


def test_turns_with_images_give_the_whole_conversation_rendered() -> None:
    prompts, vocab, projector = vision_tokenizer(CHATML)
    first, media = prompts.turn_media(looking_at(PNG, "Look"), [], [])
    assert media is not None and len(media.starts) == 1
    session_images = media.placed([PNG], 0)
    media.close()
    answer = vocab.text_ids("A square")
    transcript = first + answer
    second, media = prompts.turn_media(looking_at(OTHER, "And this"), transcript, session_images)
    assert media is not None
    whole, alone = prompts.prompt_media(
        GenerationSpec(
            messages=(
                Message("user", "", parts=("Look", PNG)),
                Message("assistant", "A square"),
                Message("user", "", parts=("And this", OTHER)),
            )
        )
    )
    assert alone is not None and transcript + second == whole
    # The transcript's image is read again (in case its KV is gone) and the turn's follows it.
    assert media.spans == alone.spans and media.starts == alone.starts
    assert media.digests == alone.digests
    for m in (media, alone):
        m.close()
    assert all(c.closed for c in projector.made)


def test_a_text_turn_after_an_image_still_brings_the_image() -> None:
    prompts, vocab, _ = vision_tokenizer(CHATML)
    first, media = prompts.turn_media(looking_at(PNG, "Look"), [], [])
    assert media is not None
    images = media.placed([PNG], 0)
    media.close()
    transcript = first + vocab.text_ids("ok")
    turn, again = prompts.turn_media(GenerationSpec(prompt=" more"), transcript, images)
    assert turn == vocab.text_ids(" more") and again is not None
    assert [s.start for s in again.spans] == [s.start for s in media.spans]
    again.close()
    # A raw-prompt turn takes its image at its marker, without BOS.
    marked = GenerationSpec(prompt="then <__media__> so", images=(OTHER,))
    turn, again = prompts.turn_media(marked, transcript, images)
    assert again is not None and again.starts[1] == len(transcript) + len(vocab.text_ids("then "))
    again.close()


def test_a_transcript_s_images_must_give_its_tokens_where_they_start() -> None:
    prompts, _, projector = vision_tokenizer(CHATML)
    tokens, media = prompts.turn_media(looking_at(PNG, "Look"), [], [])
    assert media is not None
    start = media.starts[0]
    media.close()
    found, text = prompts.transcript_images(tokens, [(start, PNG)])
    assert [(p.start, p.image) for p in found] == [(start, PNG)]
    # The image's tokens (its begin and end tokens, its 3 positions) are checked by reading it.
    assert text == tokens[:start] + tokens[start + 5 :] and all(c.closed for c in projector.made)

    def refused(images: list[tuple[int, ImageInput]], transcript: list[int] = tokens) -> str:
        with pytest.raises(EngineError) as caught:
            prompts.transcript_images(transcript, images)
        assert caught.value.reason is Reason.INVALID_VALUE
        return f"{caught.value.param}: {caught.value.message}"

    assert "transcript.images[0]: " in refused([(start + 1, PNG)])  # not where it was
    assert "not the image" in refused([(start, OTHER)])  # another image's ids
    assert "overlaps" in refused([(start, PNG), (start + 2, PNG)])
    assert "transcript.images[0]" in refused([(start, ImageInput(b"not an image"))])
    assert "transcript.images[0]" in refused([(len(tokens) - 2, PNG)])  # runs past the end
    no_vision, _ = tokenizer()
    with pytest.raises(EngineError) as blind:
        no_vision.transcript_images(tokens, [(start, PNG)])
    assert blind.value.reason is Reason.UNSUPPORTED
    check_transcript(tokens, [len(tokens)], 1000)


def table(max_images: int = 4, image_bytes: int = 1 << 20) -> SessionTable:
    return SessionTable(8, 60, 3600, max_images=max_images, image_bytes=image_bytes)


def test_a_turn_holds_its_images_until_it_commits_or_ends() -> None:
    sessions = table()
    session = sessions.open(0)
    sessions.begin_turn(SessionRef(session.session_id))
    sessions.reserve(session, [placed(PNG, 3)])
    assert sessions.bank.bytes == len(PNG.data) and not session.images
    sessions.end_turn(session)  # failed or cancelled: let go
    assert sessions.bank.bytes == 0 and len(sessions.bank) == 0
    sessions.begin_turn(SessionRef(session.session_id))
    sessions.reserve(session, [placed(PNG, 3), placed(OTHER, 9)])
    commit = sessions.commit(session, list(range(20)))
    sessions.end_turn(session)
    assert commit.image_starts == (3, 9) and [p.start for p in session.images] == [3, 9]
    assert sessions.bank.bytes == len(PNG.data) + len(OTHER.data)


def test_forks_share_image_bytes_and_rollbacks_and_closes_let_them_go() -> None:
    sessions = table()
    session = sessions.open(0, list(range(30)), [10, 30], [placed(PNG, 2), placed(OTHER, 15)])
    both = len(PNG.data) + len(OTHER.data)
    fork = sessions.fork(session.session_id, 1, 0)
    assert [p.start for p in fork.images] == [2] and sessions.bank.bytes == both
    full = sessions.fork(session.session_id, 2, 0)
    assert len(full.images) == 2 and sessions.bank.bytes == both  # kept once
    sessions.rollback(session.session_id, 1)
    assert [p.start for p in session.images] == [2]
    sessions.close(full.session_id)
    assert sessions.bank.bytes == len(PNG.data)  # OTHER's last holder is gone
    sessions.close(session.session_id)
    sessions.close(fork.session_id)
    assert sessions.bank.bytes == 0 and len(sessions.bank) == 0


def test_an_expired_session_lets_its_images_go() -> None:
    now = [1000.0]
    sessions = SessionTable(8, 60, 3600, clock=lambda: now[0], image_bytes=1 << 20)
    sessions.open(0, list(range(20)), [20], [placed(PNG, 2)])
    now[0] += 61
    assert sessions.sweep(force=True) == 1 and sessions.bank.bytes == 0


def test_images_beyond_a_session_s_limit_or_the_worker_s_budget_are_refused() -> None:
    sessions = table(max_images=2, image_bytes=len(PNG.data) + len(OTHER.data) - 1)
    session = sessions.open(0)
    sessions.begin_turn(SessionRef(session.session_id))
    with pytest.raises(EngineError) as count:
        sessions.reserve(session, [placed(PNG, 1), placed(PNG, 5), placed(PNG, 9)])
    assert count.value.reason is Reason.INVALID_VALUE and "--max-session-images" in str(count.value)
    with pytest.raises(EngineError) as budget:
        sessions.reserve(session, [placed(PNG, 1), placed(OTHER, 9)])
    assert budget.value.reason is Reason.SESSION_LIMIT and budget.value.retry_after_s
    assert sessions.bank.bytes == 0  # all or none
    sessions.reserve(session, [placed(PNG, 1), placed(PNG, 5)])  # equal bytes, held once
    assert sessions.bank.bytes == len(PNG.data)
    with pytest.raises(EngineError) as opened:
        sessions.open(0, list(range(40)), [40], [placed(PNG, 1), placed(PNG, 9), placed(PNG, 20)])
    assert opened.value.param == "transcript.images"
