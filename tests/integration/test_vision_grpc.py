"""Images over gRPC to a real worker: SmolLM2 with a seeded random llava-style projector
(tests/mmproj_model.py), whose answers mean nothing but whose logits depend on the pixels.

Each image of IMAGE_SIZE pixels takes IMAGE_TOKENS positions. The tests check that the pixels
reach the model (prompt sizes, logprobs, determinism), that the prefix cache reuses an image's
KV cells only for the same image, and that every bad image is refused with INVALID_ARGUMENT
naming its field, after which the worker still serves and holds no busy slot.
"""

from __future__ import annotations

import struct
import zlib
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
from llamagrid.worker.model_source import default_model_path
from tests.mmproj_model import IMAGE_SIZE, IMAGE_TOKENS, png_image
from tests.procs import Proc, running, spawn_worker, wait_serving

Stub = pb_grpc.InferenceServiceStub
MARKER = "<__media__>"
Part = str | bytes


@pytest.fixture(scope="module")
def vision_worker(
    tmp_path_factory: pytest.TempPathFactory, vision_projector: Path
) -> Iterator[Proc]:
    """A worker with the test projector; no host tier, so every reuse is resident (cached)."""
    run_dir = tmp_path_factory.mktemp("vision")
    args = ("--mmproj", str(vision_projector), "--parallel", "2", "--n-ctx", "4096")
    extra = ("--flash-attn", "off", "--host-cache-mib", "0", "--slot-save-path", str(run_dir))
    with running(spawn_worker(run_dir, *args, *extra)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def vstub(vision_worker: Proc) -> Iterator[Stub]:
    channel = grpc.insecure_channel(vision_worker.target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


def image(data: bytes, mime_type: str = "image/png") -> pb.Image:
    return pb.Image(data=data, mime_type=mime_type)


def message(role: str, *parts: Part | pb.Image) -> pb.ChatMessage:
    """A message of text parts and images (bytes are PNG images)."""
    out = pb.ChatMessage(role=role)
    for part in parts:
        if isinstance(part, str):
            out.parts.append(pb.ContentPart(text=part))
        elif isinstance(part, bytes):
            out.parts.append(pb.ContentPart(image=image(part)))
        else:
            out.parts.append(pb.ContentPart(image=part))
    return out


def chat(*messages: pb.ChatMessage, **sampling: Any) -> pb.GenerateRequest:
    params = {"temperature": 0.0, "max_tokens": 4, **sampling}
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=list(messages)),
        sampling=pb.SamplingParams(**params),
    )


def run(stub: Stub, request: pb.GenerateRequest) -> tuple[list[int], pb.GenerateFinal, list[Any]]:
    """(token ids, final, per-token logprobs) of choice 0."""
    tokens: list[int] = []
    logprobs: list[Any] = []
    final = None
    for response in stub.Generate(request, timeout=300):
        if response.HasField("chunk") and response.chunk.index == 0:
            tokens += response.chunk.token_ids
            logprobs += response.chunk.logprobs
        elif response.HasField("final") and response.final.index == 0:
            final = response.final
    assert final is not None
    return tokens, final, logprobs


def refusal(stub: Stub, request: pb.GenerateRequest) -> tuple[str, str]:
    """(param, message) of a request refused with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as caught:
        run(stub, request)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return parse_details(error.trailing_metadata()).param, error.details()


def picture(seed: int) -> bytes:
    return png_image(IMAGE_SIZE, IMAGE_SIZE, seed)


def test_model_info_reports_vision_and_the_media_marker(vstub: Stub) -> None:
    info = vstub.GetModelInfo(pb.GetModelInfoRequest(), timeout=60).info
    assert info.vision and info.media_marker == MARKER
    assert pb.CAPABILITY_VISION in info.capabilities


def test_an_image_adds_its_tokens_to_the_prompt(vstub: Stub) -> None:
    text = run(vstub, chat(message("user", "Describe this picture.")))[1].usage
    seen = run(vstub, chat(message("user", "Describe this picture.", picture(1))))[1].usage
    assert seen.prompt_tokens == text.prompt_tokens + IMAGE_TOKENS


def test_several_images_per_message_and_per_conversation_add_their_tokens(vstub: Stub) -> None:
    def conversation(a: Part, b: Part, c: Part) -> pb.GenerateRequest:
        parts = [p for p in (a, b, c) if p]  # empty text parts left out
        return chat(
            message("user", "First picture:", *parts[:1]),
            pb.ChatMessage(role="assistant", content="I see it."),
            message("user", "Then", *parts[1:2], " and", *parts[2:], " too."),
        )

    text = run(vstub, conversation("", "", ""))[1].usage
    seen = run(vstub, conversation(picture(1), picture(2), picture(3)))[1].usage
    assert seen.prompt_tokens == text.prompt_tokens + 3 * IMAGE_TOKENS


def test_the_same_image_gives_the_same_greedy_tokens(vstub: Stub) -> None:
    request = chat(message("user", picture(5), "What is this?"), max_tokens=12)
    assert run(vstub, request)[0] == run(vstub, request)[0]


def test_two_different_images_give_different_logprobs(vstub: Stub) -> None:
    def first_top(seed: int) -> list[tuple[int, float]]:
        request = chat(message("user", picture(seed), "What is this?"), top_logprobs=5)
        top = run(vstub, request)[2][0].top
        return [(e.token_id, round(e.logprob, 4)) for e in top]

    assert first_top(11) != first_top(12)
    assert first_top(11) == first_top(11)


def image_start(stub: Stub, messages: list[pb.ChatMessage]) -> int:
    """The prompt position of the first image: the tokens of the rendering before its marker."""
    text = stub.ApplyChatTemplate(
        pb.ApplyChatTemplateRequest(chat=pb.ChatConversation(messages=messages)), timeout=60
    ).prompt
    head = text.split(MARKER)[0]
    request = pb.TokenizeRequest(text=head, add_special=True, parse_special=True)
    return len(stub.Tokenize(request, timeout=60).token_ids)


def test_the_same_image_reuses_its_cells_and_a_different_one_does_not(vstub: Stub) -> None:
    def conversation(seed: int) -> list[pb.ChatMessage]:
        return [message("user", "Look at this picture:", picture(seed), " What colour is it?")]

    start = image_start(vstub, conversation(21))
    assert start > 0
    first = run(vstub, chat(*conversation(21)))[1].usage
    again = run(vstub, chat(*conversation(21)))[1].usage
    assert again.cached_tokens >= start + IMAGE_TOKENS
    assert again.cached_tokens == again.prompt_tokens - 1
    other = run(vstub, chat(*conversation(22)))[1].usage
    assert other.prompt_tokens == first.prompt_tokens
    assert 0 < other.cached_tokens <= start


def test_a_raw_prompt_takes_one_image_per_media_marker(vstub: Stub) -> None:
    head, tail = "Picture: ", "\nWhat is in it?"
    request = pb.GenerateRequest(
        prompt=head + MARKER + tail,
        images=[image(picture(3))],
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=4),
    )
    usage = run(vstub, request)[1].usage
    count = len(
        vstub.Tokenize(pb.TokenizeRequest(text=head, add_special=True), timeout=60).token_ids
    )
    count += len(vstub.Tokenize(pb.TokenizeRequest(text=tail), timeout=60).token_ids)
    assert usage.prompt_tokens == count + IMAGE_TOKENS


def test_n_choices_share_the_image_prefill(vstub: Stub) -> None:
    request = chat(message("user", picture(8), "Say something."), max_tokens=6)
    request.n = 2
    finals: dict[int, pb.GenerateFinal] = {}
    tokens: dict[int, list[int]] = {0: [], 1: []}
    for response in vstub.Generate(request, timeout=300):
        if response.HasField("chunk"):
            tokens[response.chunk.index] += response.chunk.token_ids
        else:
            finals[response.final.index] = response.final
    assert set(finals) == {0, 1}
    assert tokens[0] == tokens[1]  # greedy: the copied KV gives the same answer


def test_image_requests_running_together_answer_as_they_do_alone(vstub: Stub) -> None:
    """Two image prompts prefilled and decoded side by side (each image evaluated into its own
    sequence between shared batched steps) give the tokens each gives alone. Both runs
    evaluate the images afresh: two text requests in between take both sequences."""
    requests = [
        chat(message("user", "Tell me about", picture(seed), " in detail."), max_tokens=16)
        for seed in (31, 32)
    ]
    others = [chat(message("user", f"Count to {n}.")) for n in (5, 6)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda r: run(vstub, r), requests))
        list(pool.map(lambda r: run(vstub, r), others))
    alone = [run(vstub, r) for r in requests]
    start = image_start(vstub, list(requests[0].chat.messages))
    for (tokens, final, _), (again, fresh, _) in zip(together, alone, strict=True):
        assert tokens == again
        assert max(final.usage.cached_tokens, fresh.usage.cached_tokens) <= start  # no image
    assert alone[0][0] != alone[1][0]


def test_marker_text_a_client_types_is_text_not_an_image(vstub: Stub) -> None:
    typed = run(vstub, chat(message("user", f"What does {MARKER} mean?", picture(4))))[1].usage
    plain = run(vstub, chat(message("user", f"What does {MARKER} mean?")))[1].usage
    assert typed.prompt_tokens == plain.prompt_tokens + IMAGE_TOKENS


# Hostile images: each refused with its field named; the worker then serves as before.


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a size its (tiny) data does not hold."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


@pytest.fixture
def still_serving(vision_worker: Proc, vstub: Stub) -> Iterator[None]:
    """After the test: the worker lives, answers an image request, and no slot is busy."""
    yield
    assert vision_worker.popen.poll() is None, vision_worker.log_text()[-4000:]
    run(vstub, chat(message("user", picture(1), "Hi")))
    load = vstub.GetLoad(pb.GetLoadRequest(), timeout=60)
    assert load.active_requests == 0 and load.queued_requests == 0


BAD_IMAGES = {
    "bad bytes": (image(b"this is not an image at all"), "not an image"),
    "empty": (image(b""), "is empty"),
    "not an image type": (image(picture(1), "text/plain"), "not an image type"),
    "a type the bytes contradict": (image(picture(1), "image/jpeg"), "bytes are a PNG"),
    "a header claiming 100000x100000": (image(png_claiming(100_000, 100_000)), "the limit is"),
    "truncated pixel data": (image(picture(1)[:60]), "could not be decoded"),
    "over 10 MiB": (image(picture(1) + bytes(10 << 20)), "the limit is 10485760"),
}


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_a_bad_image_is_refused_naming_its_part(vstub: Stub, case: str) -> None:
    bad, why = BAD_IMAGES[case]
    param, text = refusal(vstub, chat(message("user", "Look:", bad)))
    assert param == "messages[0].parts[1].image" and why in text, text


@pytest.mark.usefixtures("still_serving")
def test_too_many_images_are_refused(vstub: Stub) -> None:
    param, text = refusal(vstub, chat(message("user", *[picture(1)] * 9, "Which?")))
    assert param == "messages[0].parts" and "9 images" in text


@pytest.mark.usefixtures("still_serving")
def test_a_message_of_a_million_parts_is_refused(vstub: Stub) -> None:
    param, text = refusal(vstub, chat(message("user", *["a"] * 1_000_000)))
    assert param == "messages[0].parts" and "1000000 parts" in text


@pytest.mark.usefixtures("still_serving")
def test_media_markers_must_match_the_images(vstub: Stub) -> None:
    request = pb.GenerateRequest(prompt=f"{MARKER} and {MARKER}?", images=[image(picture(1))])
    param, text = refusal(vstub, request)
    assert param == "images" and "2 media markers" in text


@pytest.mark.usefixtures("still_serving")
def test_a_prompt_ending_with_an_image_is_refused(vstub: Stub) -> None:
    request = pb.GenerateRequest(prompt=f"Look: {MARKER}", images=[image(picture(1))])
    param, text = refusal(vstub, request)
    assert param == "images" and "ends with an image" in text


@pytest.mark.usefixtures("still_serving")
def test_content_and_parts_together_are_refused(vstub: Stub) -> None:
    both = message("user", picture(1))
    both.content = "and text"
    param, _ = refusal(vstub, chat(both))
    assert param == "messages[0].parts"


@pytest.mark.usefixtures("still_serving")
def test_image_requests_cancelled_mid_prefill_free_their_slots(vstub: Stub) -> None:
    """Both slots cancelled by their deadline while their images are prefilled: the check
    after the test needs a slot again, and finds none busy."""

    def cancelled(seed: int) -> grpc.StatusCode:
        request = chat(message("user", picture(seed), "Write a long story."), max_tokens=500)
        with pytest.raises(grpc.RpcError) as caught:
            list(vstub.Generate(request, timeout=0.3))
        error: Any = caught.value
        code: grpc.StatusCode = error.code()
        return code

    with ThreadPoolExecutor(2) as pool:
        codes = list(pool.map(cancelled, (51, 52)))
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2


@pytest.mark.usefixtures("still_serving")
def test_a_slot_holding_an_image_is_not_saved_to_a_slot_file(vstub: Stub) -> None:
    run(vstub, chat(message("user", picture(9), "Hi")))
    refused = []
    for slot in (0, 1):
        try:
            vstub.SaveSlot(pb.SaveSlotRequest(id=slot, filename=f"s{slot}.bin"), timeout=60)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            refused.append(error.details())
    assert refused and all("holds an image" in why for why in refused)


@pytest.mark.usefixtures("still_serving")
def test_what_images_cannot_go_with_is_refused(vstub: Stub) -> None:
    logprobs = chat(message("user", picture(1), "Hi"))
    logprobs.prompt_logprobs = 1
    assert refusal(vstub, logprobs)[0] == "prompt_logprobs"
    tokens = pb.GenerateRequest(tokens=pb.TokenList(ids=[1, 2, 3]), images=[image(picture(1))])
    assert refusal(vstub, tokens)[0] == "images"


def failed_start(tmp: Path, *args: str) -> str:
    """The log of a worker that must refuse to start."""
    proc = spawn_worker(tmp, *args, wait_port=False)
    try:
        code = proc.popen.wait(timeout=240)
    finally:
        if proc.popen.poll() is None:
            proc.popen.kill()
    assert code != 0, proc.log_text()[-2000:]
    return proc.log_text()


def test_a_projector_of_another_width_stops_the_worker_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tests.mmproj_model as mmproj_model

    monkeypatch.setattr(mmproj_model, "PROJECTION_DIM", 512)
    wrong = mmproj_model.write_projector(tmp_path / "wrong.gguf")
    log = failed_start(tmp_path, "--mmproj", str(wrong))
    assert "could not load the projector" in log and "n_embd = 512" in log
    assert "--mmproj" in failed_start(tmp_path, "--mmproj", str(tmp_path / "none.gguf"))
    not_a_projector = failed_start(tmp_path, "--mmproj", str(default_model_path()))
    assert "could not load the projector" in not_a_projector


def test_the_host_tier_restores_an_image_only_for_the_same_image(
    tmp_path: Path, vision_projector: Path
) -> None:
    """One slot: a text request in between pushes the image prompt's cells to host memory;
    the same image comes back from there (image included), a different one does not."""
    args = ("--mmproj", str(vision_projector), "--parallel", "1", "--n-ctx", "2048")
    extra = ("--flash-attn", "off", "--host-cache-mib", "64")
    with running(spawn_worker(tmp_path, *args, *extra)) as proc:
        wait_serving(proc)
        with grpc.insecure_channel(proc.target, options=channel_options()) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)

            def conversation(seed: int) -> pb.GenerateRequest:
                return chat(message("user", "Look at", picture(seed), " and describe it."))

            text = chat(message("user", "Count to five, please."))
            start = image_start(stub, list(conversation(41).chat.messages))
            first = run(stub, conversation(41))
            run(stub, text)
            again = run(stub, conversation(41))
            assert again[1].usage.restored_tokens >= start + IMAGE_TOKENS
            assert again[0] == first[0]
            run(stub, text)
            other = run(stub, conversation(42))[1].usage
            assert other.restored_tokens == 0 and other.cached_tokens <= start
