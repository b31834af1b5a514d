"""UTF-8 assembly and stop-string holdback, fed byte by byte and token by token."""

from __future__ import annotations

import pytest

from llamagrid.worker.engine.text_stream import TextStream


def run(pieces: list[bytes], stops: list[str]) -> tuple[list[str], str | None]:
    stream = TextStream(stops)
    out: list[str] = []
    stopped = None
    for p in pieces:
        d = stream.feed(p)
        out.append(d.text)
        if d.stopped_by:
            stopped = d.stopped_by
            break
    else:
        tail = stream.finish()
        out.append(tail.text)
        stopped = tail.stopped_by
    return out, stopped


def split_bytes(text: str) -> list[bytes]:
    data = text.encode()
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("text", ["🎉🎉 party", "你好，世界", "naïve café", "a\u0301 combining"])
def test_no_delta_splits_a_character(text: str) -> None:
    out, stopped = run(split_bytes(text), [])
    assert stopped is None
    assert "".join(out) == text
    assert all("\ufffd" not in piece for piece in out)
    # The four bytes of an emoji arrive one at a time: nothing is emitted until the last one.
    if text.startswith("🎉"):
        assert out[:3] == ["", "", ""] and out[3] == "🎉"


def test_stop_string_spanning_tokens_is_held_back_and_dropped() -> None:
    pieces = [b"The answer", b" is", b" 4", b"2.", b"\n\n#", b"## Next"]
    out, stopped = run(pieces, ["\n\n###"])
    assert stopped == "\n\n###"
    assert "".join(out) == "The answer is 42."
    assert "\n" not in "".join(out)


def test_partial_stop_is_released_when_it_does_not_complete() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"go ST").text == "go "  # "ST" could begin STOP: held
    assert stream.feed(b"ay").text == "STay"  # it did not: released
    assert stream.finish().text == ""


def test_held_text_is_flushed_at_the_end() -> None:
    stream = TextStream(["STOP"])
    assert stream.feed(b"ends with ST").text == "ends with "
    tail = stream.finish()
    assert tail.text == "ST" and tail.stopped_by is None


def test_earliest_of_several_stops_wins() -> None:
    out, stopped = run([b"alpha beta gamma"], ["gamma", "beta"])
    assert stopped == "beta"
    assert "".join(out) == "alpha "


def test_stop_made_of_multibyte_characters() -> None:
    out, stopped = run(split_bytes("答案是：四十二。结束了"), ["结束"])
    assert stopped == "结束"
    assert "".join(out) == "答案是：四十二。"


def test_emoji_stop_split_across_tokens() -> None:
    data = "done 👋 bye".encode()
    pieces = [data[:6], data[6:8], data[8:]]  # the emoji is cut in the middle
    out, stopped = run(pieces, ["👋"])
    assert stopped == "👋"
    assert "".join(out) == "done "


def test_invalid_bytes_become_replacement_characters() -> None:
    out, _ = run([b"ok \xff\xfe then"], [])
    assert "".join(out) == "ok \ufffd\ufffd then"


def test_input_after_stop_is_ignored() -> None:
    stream = TextStream(["x"])
    assert stream.feed(b"abxcd").stopped_by == "x"
    assert stream.feed(b"more").text == ""
    assert stream.finish().text == ""
