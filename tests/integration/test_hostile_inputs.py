"""One hostile request each, over gRPC to a real worker: refused with the right status and
field, and afterwards the worker is alive and gives the same greedy answer as before.

Found by a hostile client: an unsatisfiable grammar aborted the worker (SIGABRT), a grammar
nested a million parentheses deep and a schema with maxLength 1000000 overflowed its stack,
100,000 stop strings slowed every stream elevenfold, and json_object answers at temperature 1
held raw control characters.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from llamagrid.errors import parse_details
from llamagrid.grpc_options import channel_options
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_worker, wait_serving

Stub = pb_grpc.InferenceServiceStub
GREEDY_PROMPT = "Name three colors and say why you like each."


def chat(text: str, **sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=[pb.ChatMessage(role="user", content=text)]),
        sampling=pb.SamplingParams(**sampling),
    )


def collect(stub: Stub, request: pb.GenerateRequest) -> tuple[str, pb.GenerateFinal]:
    text, final = [], None
    for message in stub.Generate(request, timeout=300):
        if message.HasField("chunk"):
            text.append(message.chunk.text)
        else:
            final = message.final
    assert final is not None
    return "".join(text), final


def greedy(stub: Stub) -> str:
    return collect(stub, chat(GREEDY_PROMPT, temperature=0.0, max_tokens=48))[0]


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A worker of its own (flash attention off: greedy output does not depend on caching)."""
    run_dir = tmp_path_factory.mktemp("hostile")
    args = ("--parallel", "4", "--n-ctx", "4096", "--flash-attn", "off")
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def stub(worker: Proc) -> Iterator[Stub]:
    channel = grpc.insecure_channel(worker.target, options=channel_options())
    grpc.channel_ready_future(channel).result(timeout=60)
    yield pb_grpc.InferenceServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def baseline(stub: Stub) -> str:
    return greedy(stub)


@pytest.fixture
def still_serving(worker: Proc, stub: Stub, baseline: str) -> Iterator[None]:
    """After the test: the worker process lives and answers as it did before."""
    yield
    assert worker.popen.poll() is None, worker.log_text()[-4000:]
    assert greedy(stub) == baseline


def refusal(stub: Stub, request: pb.GenerateRequest) -> tuple[str, str]:
    """(param, message) of a request refused with INVALID_ARGUMENT."""
    with pytest.raises(grpc.RpcError) as caught:
        collect(stub, request)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    return parse_details(error.trailing_metadata()).param, error.details()


@pytest.mark.usefixtures("still_serving")
def test_a_grammar_no_token_can_satisfy_is_refused_at_admission(stub: Stub) -> None:
    param, message = refusal(stub, chat("Hi", grammar="root ::= [\\x00]"))
    assert param == "grammar" and "allows no first token" in message


@pytest.mark.usefixtures("still_serving")
def test_a_grammar_that_dead_ends_midway_ends_only_its_own_stream(
    stub: Stub, baseline: str
) -> None:
    with ThreadPoolExecutor(1) as pool:
        neighbour = pool.submit(greedy, stub)  # a stream decoded in the same batches
        received: list[str] = []
        with pytest.raises(grpc.RpcError) as caught:
            request = chat("Say hello.", grammar='root ::= "Hello" [\\x00]', max_tokens=20)
            for message in stub.Generate(request, timeout=300):
                received.append(message.chunk.text)
        assert neighbour.result() == baseline
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parse_details(error.trailing_metadata()).param == "grammar"
    assert "".join(received) == "Hello" and "allows no token after" in error.details()


@pytest.mark.usefixtures("still_serving")
def test_a_grammar_nested_a_million_parentheses_deep_is_refused(stub: Stub) -> None:
    deep = "root ::= " + "(" * 1_000_000 + '"a"' + ")" * 1_000_000
    param, message = refusal(stub, chat("Hi", grammar=deep))
    assert param == "grammar" and "bytes; the limit is 65536" in message
    deep = "root ::= " + "(" * 5000 + '"a"' + ")" * 5000
    param, message = refusal(stub, chat("Hi", grammar=deep))
    assert param == "grammar" and "deeper than 1024 levels" in message


@pytest.mark.usefixtures("still_serving")
def test_a_schema_with_a_million_character_string_is_refused(stub: Stub) -> None:
    schema = json.dumps({"type": "string", "maxLength": 1_000_000})
    param, message = refusal(stub, chat("Hi", json_schema=schema))
    assert param == "response_format" and "maxLength 1000000" in message


@pytest.mark.usefixtures("still_serving")
@pytest.mark.parametrize(
    ("sampling", "param"),
    [
        ({"stop": [f"s{i}" for i in range(100_000)]}, "stop"),
        ({"stop": ["x" * 1_000_000]}, "stop"),
        ({"repeat_last_n": 2**31 - 1, "repeat_penalty": 1.1}, "repeat_last_n"),
        ({"dry_penalty_last_n": 2**31 - 1, "dry_multiplier": 1.0}, "dry_penalty_last_n"),
        ({"dry_sequence_breakers": ["x"] * 100_000}, "dry_sequence_breakers"),
        ({"dry_sequence_breakers": ["x" * 1_000_000]}, "dry_sequence_breakers"),
        ({"samplers": ["top_k"] * 100_000}, "samplers"),
        ({"min_keep": 2**32 - 1}, "min_keep"),
        (
            {"json_schema": json.dumps({"type": "string", "pattern": "^a{0,99999999}$"})},
            "response_format",
        ),
        ({"json_schema": json.dumps({"type": "string", "pattern": "^[ -~]*$"})}, "response_format"),
        ({"grammar": 'root ::= "a"{5,2}'}, "grammar"),
        ({"grammar": 'root ::= "a"{0,2000000000}'}, "grammar"),
        ({"grammar": "root ::= <notonetoken>"}, "grammar"),
    ],
)
def test_a_limit_past_its_bound_is_refused_naming_the_field(
    stub: Stub, sampling: dict[str, Any], param: str
) -> None:
    assert refusal(stub, chat("Hi", **sampling))[0] == param


@pytest.mark.usefixtures("still_serving")
def test_a_refused_grammar_is_not_echoed_into_the_log(stub: Stub, worker: Proc) -> None:
    marker = "MARKER-4711"
    grammars = [
        f'root ::= "{marker}" ' + '"filler" ' * 500 + "\\q",  # a syntax error
        f'root ::= root "a" | "{marker}"',  # left recursion: only llama.cpp finds it
        f'root ::= <{marker}-not-a-token> "a"',  # llama.cpp would tokenize and throw
        f'root ::= "{marker}" undefined-rule',
    ]
    for grammar in grammars:
        assert refusal(stub, chat("Hi", grammar=grammar))[0] == "grammar"
    assert marker not in worker.log_text()


def sample_json(stub: Stub, prompts: list[str], **constraint: str) -> list[tuple[str, int]]:
    """(text, finish reason) of 30 answers at temperature 1, 4 at a time."""

    def one(seed: int) -> tuple[str, int]:
        request = chat(prompts[seed % len(prompts)], temperature=1.0, seed=seed, max_tokens=200)
        request.sampling.MergeFrom(pb.SamplingParams(**constraint))
        text, final = collect(stub, request)
        return text, final.finish_reason

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(30)))


PROMPTS = [
    "Reply in JSON: a poem of four lines about the sea, with its line breaks, in a field poem.",
    'Reply in JSON: a field quote holding a famous quotation, "with its quotation marks".',
    "Reply in JSON: a Python function with tabs and newlines in its source, in a field code.",
]


def check_answers(answers: list[tuple[str, int]], validate: Callable[[Any], None]) -> None:
    finished = [text for text, reason in answers if reason == pb.FINISH_REASON_EOS]
    assert len(finished) >= 10, answers
    for text in finished:
        validate(json.loads(text))  # no "Invalid control character", no stray quote


@pytest.mark.usefixtures("still_serving")
def test_every_json_object_answer_that_finishes_parses(stub: Stub) -> None:
    answers = sample_json(stub, PROMPTS, json_schema='{"type":"object"}')
    check_answers(answers, lambda doc: None)


@pytest.mark.usefixtures("still_serving")
def test_every_json_schema_answer_that_finishes_parses_and_validates(stub: Stub) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 60},
            "lines": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "mood": {"enum": ["calm", 'a "stormy" one', "back\\slash"]},
        },
        "required": ["title", "lines", "mood"],
    }
    answers = sample_json(stub, PROMPTS, json_schema=json.dumps(schema))
    check_answers(answers, lambda doc: jsonschema.validate(doc, schema))


def test_grammar_requests_do_not_hold_up_the_engine_thread(stub: Stub, baseline: str) -> None:
    """Ten schema requests compiling at once, and a greedy stream beside them, all finish."""
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "string"}}})
    errors: list[BaseException] = []

    def constrained() -> None:
        try:
            collect(stub, chat("Give me JSON.", json_schema=schema, max_tokens=8))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=constrained) for _ in range(10)]
    for thread in threads:
        thread.start()
    assert greedy(stub) == baseline
    for thread in threads:
        thread.join(300)
    assert not errors


def test_worker_settings_set_the_limits(tmp_path: Path) -> None:
    args = (
        "--parallel",
        "1",
        "--n-ctx",
        "1024",
        "--max-stop-strings",
        "2",
        "--max-grammar-depth",
        "3",
    )
    with running(spawn_worker(tmp_path, *args)) as proc:
        wait_serving(proc)
        with grpc.insecure_channel(proc.target, options=channel_options()) as channel:
            own = pb_grpc.InferenceServiceStub(channel)
            assert refusal(own, chat("Hi", stop=["a", "b", "c"]))[0] == "stop"
            param, message = refusal(own, chat("Hi", grammar='root ::= (((("a"))))'))
            assert param == "grammar" and "deeper than 3" in message


@pytest.mark.usefixtures("still_serving")
def test_half_a_million_messages_are_refused_before_any_template_runs(stub: Stub) -> None:
    many = [pb.ChatMessage(role="user", content="hi")] * 500_000
    request = pb.GenerateRequest(chat=pb.ChatConversation(messages=many))
    param, message = refusal(stub, request)
    assert param == "messages" and "500000 messages" in message


@pytest.mark.usefixtures("still_serving")
def test_oversized_embed_tokenize_and_detokenize_requests_are_refused(stub: Stub) -> None:
    refused = [
        lambda: stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="a")] * 3000), timeout=60),
        lambda: stub.Tokenize(pb.TokenizeRequest(text="x" * (9 << 20)), timeout=60),
        lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[1] * (5 << 20)), timeout=60),
    ]
    for call, param in zip(refused, ("input", "text", "token_ids"), strict=True):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
        assert parse_details(error.trailing_metadata()).param == param


@pytest.mark.usefixtures("still_serving")
def test_an_image_to_a_model_without_a_projector_is_refused(stub: Stub) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 32  # never decoded: the model reads no images
    part = pb.ContentPart(image=pb.Image(data=png, mime_type="image/png"))
    message = pb.ChatMessage(role="user", parts=[pb.ContentPart(text="Look:"), part])
    param, text = refusal(stub, pb.GenerateRequest(chat=pb.ChatConversation(messages=[message])))
    assert param == "messages[0].parts" and "does not read images" in text
    prompt = pb.GenerateRequest(prompt="<__media__> what?", images=[part.image])
    param, text = refusal(stub, prompt)
    assert param == "images" and "does not read images" in text
