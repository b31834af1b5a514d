"""Fuzzing of the worker's gRPC API with messages generated from the proto descriptors.

Every generated GenerateRequest, EmbedRequest, TokenizeRequest, DetokenizeRequest and
GetModelInfoRequest goes to a real worker, and so do Relay streams of generated starts and
cancellations (the gateway's path to a worker). Each call must end OK or with a client-error
status that names its cause in an ErrorInfo: INVALID_ARGUMENT (a bad value, a prompt over the
context) or NOT_FOUND (an unknown model); on a Relay stream also FAILED_PRECONDITION (a tag
already running) and DEADLINE_EXCEEDED (the call's own deadline). Nothing else is a client's
fault here: the calls are sequential, so RESOURCE_EXHAUSTED would mean that something was left
queued, and UNKNOWN, INTERNAL, UNAVAILABLE or a dropped connection mean the worker failed.
After each operation's run the worker is SERVING, idle, and gives the same greedy answer as
before.

Requests come from two mixes: ``wild`` (every field over its whole range: NaN, infinities,
extreme integers, control characters, random GBNF and JSON-schema documents) and ``tame``
(plausible values), so that many requests also pass validation and reach the engine.
max_tokens is always set and at most 8, so the run stays short; the huge values are in
test_huge_values_are_refused_and_extreme_valid_ones_served. Examples are not shrunk: a failure
is reported as generated, rather than after minutes of shrinking.

The budget is bounded (LLAMAGRID_FUZZ_SCALE multiplies it) and the run is derandomized (the
same examples on every run). Each run prints how its calls ended, and enough of them must have
been served for the run to have gone past validation.
"""

from __future__ import annotations

import json
import os
import string
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from llamagrid import errors as wire
from llamagrid.errors import parse_details
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_worker, wait_serving
from tests.proto_strategies import TEXT, M, MessageStrategies, integers
from tests.serving import ONE_THREAD, Stub, assert_serving, connect, greedy

#: llama-server's sampler names (infill is refused: the wild mix tries it).
SAMPLER_NAMES = [
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typ_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
    "adaptive_p",
]

#: Multiplies every budget below: LLAMAGRID_FUZZ_SCALE=10 fuzzes ten times longer.
FUZZ_SCALE = float(os.environ.get("LLAMAGRID_FUZZ_SCALE", "1"))
#: The status codes a client's mistake may get, and the ErrorInfo reasons that go with each.
ALLOWED: dict[grpc.StatusCode, set[str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: {
        wire.REASON_INVALID_VALUE,
        wire.REASON_CONTEXT_LENGTH_EXCEEDED,
        wire.REASON_UNSUPPORTED,
    },
    grpc.StatusCode.NOT_FOUND: {
        wire.REASON_MODEL_NOT_FOUND,
        wire.REASON_SESSION_NOT_FOUND,
        wire.REASON_SESSION_EXPIRED,
    },
    grpc.StatusCode.ABORTED: {wire.REASON_SESSION_BUSY, wire.REASON_SESSION_LENGTH_MISMATCH},
    grpc.StatusCode.RESOURCE_EXHAUSTED: {wire.REASON_SESSION_LIMIT},
}
#: The embedding widths the worker allows (--embedding-dimensions): the tame mix asks for these.
EMBEDDING_DIMENSIONS = (64, 128)
#: The most tokens a generated request asks for.
MAX_TOKENS = 8
V1 = "llamagrid.v1."
INT32_MAX = 2**31 - 1
#: The requests that name a model.
MODEL_FIELDS = (
    "GenerateRequest",
    "EmbedRequest",
    "TokenizeRequest",
    "DetokenizeRequest",
    "GetModelInfoRequest",
)


def fuzz_settings(max_examples: int) -> settings:
    """A bounded, derandomized run that keeps no database of failing examples."""
    return settings(
        max_examples=max(1, round(max_examples * FUZZ_SCALE)),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A worker of its own: 2 slots of 1024 tokens, flash attention off (greedy output then
    does not depend on what was cached or batched), one thread (tests/serving.py)."""
    run_dir = tmp_path_factory.mktemp("fuzz-grpc")
    args = ("--parallel", "2", "--n-ctx", "2048", "--flash-attn", "off", *ONE_THREAD)
    args += ("--embedding-dimensions", ",".join(map(str, EMBEDDING_DIMENSIONS)))
    with running(spawn_worker(run_dir, *args)) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def channel_and_stub(worker: Proc) -> Iterator[tuple[grpc.Channel, Stub]]:
    channel, stub = connect(worker.target)
    yield channel, stub
    channel.close()


@pytest.fixture(scope="module")
def stub(channel_and_stub: tuple[grpc.Channel, Stub]) -> Stub:
    return channel_and_stub[1]


@pytest.fixture(scope="module")
def info(stub: Stub) -> pb.ModelInfo:
    return stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).info


@pytest.fixture(scope="module")
def baseline(stub: Stub) -> str:
    return greedy(stub)


@pytest.fixture
def still_serving(
    worker: Proc, channel_and_stub: tuple[grpc.Channel, Stub], baseline: str
) -> Iterator[None]:
    """After the test: the process lives, is SERVING and idle, and answers as before."""
    yield
    assert worker.popen.poll() is None, worker.log_text()[-4000:]
    assert_serving(*channel_and_stub, baseline)


# ---------------------------------------------------------------------------------------------
# Strategies


VALID_GRAMMARS = ['root ::= "yes" | "no"', "root ::= [a-z]+", "root ::= [0-9]{1,3}"]
VALID_SCHEMAS = [
    '{"type":"object"}',
    '{"type":"string","maxLength":5}',
    '{"type":"array","items":{"type":"boolean"},"maxItems":3}',
    '{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}',
]


#: Tool-call arguments: objects (valid), and what is not an object or not JSON.
TOOL_ARGUMENTS = ["{}", '{"city": "Paris"}', '{"a": {"b": [1, 2]}}', "[]", "{", '"x"']
#: chat_template_kwargs: objects (valid), and objects that try to replace the worker's own
#: variables, lists and broken JSON.
TEMPLATE_KWARGS = ["", "{}", '{"enable_thinking": false}', '{"messages": []}', "[1]", "{"]


def grammars() -> st.SearchStrategy[str]:
    """GBNF text: valid small grammars, and random sequences of GBNF tokens."""
    pieces = ['"a"', '"\\n"', "[a-z]", "[^x]", "[\\x00]", "(", ")", "|", "*", "+", "?", "{2,3}"]
    pieces += ["{99999}", " ", "\n", "root", "x", "::=", "\\", '"', "[", "]", "-", "#"]
    random = st.lists(st.sampled_from(pieces), max_size=12).map(lambda p: "root ::= " + "".join(p))
    return st.one_of(st.sampled_from(VALID_GRAMMARS), random, TEXT)


JSON_KEYWORDS = [
    "type", "properties", "items", "prefixItems", "required", "additionalProperties", "enum",
    "const", "anyOf", "oneOf", "allOf", "not", "$ref", "$defs", "pattern", "format", "minLength",
    "maxLength", "minItems", "maxItems", "minimum", "maximum", "uniqueItems",
]  # fmt: skip
JSON_TYPES = ["object", "array", "string", "integer", "number", "boolean", "null"]


def json_schemas() -> st.SearchStrategy[str]:
    """JSON-schema text: valid small schemas, random JSON documents made of schema keywords, and
    text that is not JSON at all."""
    leaves = st.one_of(
        st.sampled_from(JSON_TYPES),
        st.none(),
        st.booleans(),
        integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        TEXT,
        st.sampled_from(["^[a-z]+$", "#/$defs/x", "date-time", "(a|b)*{3}", "[", "\\"]),
    )
    keys = st.one_of(st.sampled_from(JSON_KEYWORDS), TEXT)
    documents = st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )
    return st.one_of(st.sampled_from(VALID_SCHEMAS), documents.map(json.dumps), TEXT)


def strategies(info: pb.ModelInfo) -> tuple[MessageStrategies, MessageStrategies]:
    """The wild and the tame mixes for a worker serving ``info``."""
    in_vocab = st.integers(0, info.vocab_size - 1)
    served = st.sampled_from(["", info.alias])
    models = st.one_of(served, TEXT)
    roles = st.sampled_from(["user", "assistant", "system"])
    messages = st.builds(pb.ChatMessage, role=roles, content=TEXT)
    embed_inputs = st.one_of(
        st.builds(pb.EmbedInput, text=TEXT.filter(bool)),
        st.builds(
            pb.EmbedInput,
            tokens=st.builds(pb.TokenList, ids=st.lists(in_vocab, min_size=1, max_size=32)),
        ),
    )
    token_ids = st.one_of(in_vocab, in_vocab, integers(-(2**31), INT32_MAX))
    token_lists = st.lists(token_ids, max_size=16)
    common = {
        **{V1 + f"{name}.model": models for name in MODEL_FIELDS},
        V1 + "SamplingParams.max_tokens": st.integers(0, MAX_TOKENS),
        V1 + "SamplingParams.grammar": grammars(),
        V1 + "SamplingParams.json_schema": json_schemas(),
        V1 + "TokenList.ids": token_lists,
        V1 + "DetokenizeRequest.token_ids": token_lists,
        V1 + "ChatMessage.role": st.one_of(
            st.sampled_from(["user", "assistant", "system", "tool", "developer", ""]), TEXT
        ),
        V1 + "TokenizeRequest.text": st.text(st.characters(codec="utf-8"), max_size=200),
        V1 + "Tool.parameters_json": json_schemas(),
        V1 + "ToolCall.arguments": st.one_of(st.sampled_from(TOOL_ARGUMENTS), TEXT),
        V1 + "GenerateRequest.chat_template_kwargs": st.one_of(
            st.sampled_from(TEMPLATE_KWARGS), TEXT
        ),
    }
    wild = MessageStrategies(common)

    def floats(lo: float, hi: float) -> st.SearchStrategy[float]:
        return st.floats(lo, hi, width=32)

    tool_names = st.sampled_from(["get_weather", "f", "a.b-c_1"])
    tools = st.builds(
        pb.Tool,
        name=tool_names,
        description=TEXT,
        parameters_json=st.sampled_from(["", *VALID_SCHEMAS]),
        strict=st.booleans(),
    )

    tame = MessageStrategies(
        {
            **common,
            V1 + "SamplingParams.temperature": floats(0, 2),
            V1 + "SamplingParams.top_p": floats(0.0625, 1),
            V1 + "SamplingParams.top_k": st.integers(0, 100),
            V1 + "SamplingParams.min_p": floats(0, 1),
            V1 + "SamplingParams.typical_p": floats(0.0625, 1),
            V1 + "SamplingParams.repeat_penalty": floats(0.5, 2),
            V1 + "SamplingParams.repeat_last_n": st.integers(-1, 64),
            V1 + "SamplingParams.presence_penalty": floats(-2, 2),
            V1 + "SamplingParams.frequency_penalty": floats(-2, 2),
            V1 + "SamplingParams.top_logprobs": st.integers(0, 20),
            V1 + "SamplingParams.mirostat": st.integers(0, 2),
            V1 + "SamplingParams.mirostat_tau": floats(0, 10),
            V1 + "SamplingParams.mirostat_eta": floats(0, 1),
            V1 + "SamplingParams.dry_multiplier": floats(0, 2),
            V1 + "SamplingParams.dry_base": floats(1, 4),
            V1 + "SamplingParams.dry_allowed_length": st.integers(0, 8),
            V1 + "SamplingParams.dry_penalty_last_n": st.integers(-1, 64),
            V1 + "SamplingParams.dry_sequence_breakers": st.lists(
                st.text(string.ascii_letters + " .,:\n", min_size=1, max_size=4), max_size=3
            ),
            V1 + "SamplingParams.xtc_probability": floats(0, 1),
            V1 + "SamplingParams.xtc_threshold": floats(0, 1),
            V1 + "SamplingParams.top_n_sigma": floats(-1, 3),
            V1 + "SamplingParams.dynatemp_range": floats(0, 2),
            V1 + "SamplingParams.dynatemp_exponent": floats(0, 2),
            V1 + "SamplingParams.min_keep": st.integers(0, 64),
            V1 + "SamplingParams.samplers": st.lists(
                st.sampled_from(SAMPLER_NAMES), max_size=5, unique=True
            ),
            V1 + "SamplingParams.adaptive_target": floats(-1, 1),
            V1 + "SamplingParams.adaptive_decay": floats(0, 0.9375),
            V1 + "SamplingParams.logit_bias": st.dictionaries(in_vocab, floats(-100, 100)),
            V1 + "SamplingParams.stop": st.lists(
                st.text(string.ascii_letters + " .\n", min_size=1, max_size=4), max_size=3
            ),
            V1 + "TokenList.ids": st.lists(in_vocab, min_size=1, max_size=32),
            V1 + "ChatConversation.messages": st.lists(messages, min_size=1, max_size=3),
            V1 + "EmbedRequest.inputs": st.lists(embed_inputs, min_size=1, max_size=4),
            V1 + "EmbedRequest.dimensions": st.sampled_from(EMBEDDING_DIMENSIONS),
            V1 + "GenerateRequest.prompt": TEXT.filter(bool),
            V1 + "GenerateRequest.tools": st.lists(tools, max_size=3),
            V1 + "Tool.name": tool_names,
            V1 + "ToolCall.name": tool_names,
            V1 + "ToolChoice.function": tool_names,
            V1 + "ToolCall.id": st.sampled_from(["", "call_1", "abc123XYZ"]),
            V1 + "ChatMessage.tool_call_id": st.sampled_from(["", "call_1"]),
            V1 + "GenerateRequest.reasoning_effort": st.sampled_from(["", "low", "high"]),
            V1 + "GenerateRequest.reasoning_format": st.sampled_from([0, 1, 2]),
            V1 + "ToolChoice.mode": st.sampled_from([0, 1, 2, 3]),
            V1 + "SamplingParams.max_tokens": st.integers(1, MAX_TOKENS),
            V1 + "SamplingParams.grammar": st.sampled_from(VALID_GRAMMARS),
            V1 + "SamplingParams.json_schema": st.sampled_from(VALID_SCHEMAS),
            V1 + "GenerateRequest.n": st.integers(1, max(1, info.slots)),
            V1 + "GenerateRequest.prompt_logprobs": st.integers(0, 20),
            **{V1 + f"{name}.model": served for name in MODEL_FIELDS},
        }
    )
    return wild, tame


def capped(request: pb.GenerateRequest) -> pb.GenerateRequest:
    """max_tokens always set (unset means up to the whole context)."""
    if not request.sampling.HasField("max_tokens"):
        request.sampling.max_tokens = MAX_TOKENS
    return request


def with_input(request: pb.GenerateRequest) -> pb.GenerateRequest:
    """A tame request always has something to complete, no session (a generated session id
    names none: the wild requests try those), tools only beside chat messages, and echo only
    beside a prompt or token ids. It has no infill input (SmolLM2 has no fill-in-the-middle
    tokens) and no LoRA scales (this worker loads no adapters): both are always refused, and
    the wild requests try them."""
    if request.WhichOneof("input") in (None, "infill"):
        request.prompt = "Hello"
    request.ClearField("session")
    request.ClearField("lora")
    if request.WhichOneof("input") != "chat":
        request.ClearField("tools")
        request.ClearField("chat_template_kwargs")
    else:
        request.ClearField("echo")
    return request


def with_inputs(request: pb.EmbedRequest) -> pb.EmbedRequest:
    """A tame embedding request always has something to embed (a generated message may leave
    its inputs unset: the wild requests try that)."""
    if not request.inputs:
        request.inputs.add(text="Hello")
    return request


def either(info: pb.ModelInfo, cls: type[M]) -> st.SearchStrategy[M]:
    """Wild or tame messages of class cls, half and half."""
    wild, tame = strategies(info)
    tamed = tame.of(cls)
    if cls is pb.GenerateRequest:
        tamed = tamed.map(with_input)  # type: ignore[arg-type]
    elif cls is pb.EmbedRequest:
        tamed = tamed.map(with_inputs)  # type: ignore[arg-type]
    return st.one_of(wild.of(cls), tamed)


# ---------------------------------------------------------------------------------------------
# Outcomes


class Tally(Counter[str]):
    """How the calls of one run ended: "served", or the refusal's status code."""

    def refused(self, error: grpc.RpcError, request: Message) -> None:
        """A failed call ended with an allowed code and an ErrorInfo reason that goes with it."""
        code, details = error.code(), error.details()
        assert code in ALLOWED, f"{code} ({details}) for:\n{request}"
        reason = parse_details(error.trailing_metadata()).reason
        assert reason in ALLOWED[code], f"{code}, reason {reason!r} ({details}) for:\n{request}"
        self[code.name] += 1

    def report(self, least_served: int) -> None:
        """Print the outcomes; enough calls must have been served for the run to have reached
        past validation."""
        print(f"outcomes: {dict(self)}")
        assert self["served"] >= least_served, dict(self)

    def generate(self, stub: Stub, request: pb.GenerateRequest) -> None:
        """One Generate call: a well-formed stream (for each choice, chunks then one final
        message), or an allowed refusal."""
        finals: dict[int, pb.GenerateFinal] = {}
        token_ids: dict[int, int] = {}
        prompt_entries = 0
        try:
            for message in stub.Generate(request, timeout=120):
                index = message.chunk.index if message.HasField("chunk") else message.final.index
                assert index not in finals, "a message after its choice's final one"
                if message.HasField("final"):
                    finals[index] = message.final
                else:
                    token_ids[index] = token_ids.get(index, 0) + len(message.chunk.token_ids)
                    prompt_entries += len(message.chunk.prompt_logprobs)
        except grpc.RpcError as error:
            self.refused(error, request)
            return
        choices = max(1, request.n)
        assert sorted(finals) == list(range(choices)), f"{len(finals)} finals for:\n{request}"
        for index, final in finals.items():
            usage = final.usage
            assert usage.completion_tokens == token_ids.get(index, 0)
            assert usage.completion_tokens <= request.sampling.max_tokens
            assert final.finish_reason != pb.FINISH_REASON_UNSPECIFIED
        if request.HasField("prompt_logprobs"):
            assert prompt_entries == finals[0].usage.prompt_tokens
        self["served"] += 1

    def unary(self, call: Callable[..., Any], request: Message) -> Any:
        """One unary call: its answer, or None after an allowed refusal."""
        try:
            reply = call(request, timeout=60)
        except grpc.RpcError as error:
            self.refused(error, request)
            return None
        self["served"] += 1
        return reply


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.usefixtures("still_serving")
def test_generated_generate_requests_are_served_or_refused_precisely(
    stub: Stub, info: pb.ModelInfo
) -> None:
    tally = Tally()

    @fuzz_settings(300)
    @given(either(info, pb.GenerateRequest).map(capped))
    def run(request: pb.GenerateRequest) -> None:
        tally.generate(stub, request)

    run()
    tally.report(least_served=60)


@pytest.mark.usefixtures("still_serving")
def test_generated_embed_requests_are_served_or_refused_precisely(
    stub: Stub, info: pb.ModelInfo
) -> None:
    tally = Tally()

    @fuzz_settings(150)
    @given(either(info, pb.EmbedRequest))
    def run(request: pb.EmbedRequest) -> None:
        reply = tally.unary(stub.Embed, request)
        if reply is not None:
            assert len(reply.embeddings) == len(request.inputs)
            width = request.dimensions if request.HasField("dimensions") else info.embedding_size
            assert all(len(e.values) == width for e in reply.embeddings)

    run()
    tally.report(least_served=40)


@pytest.mark.usefixtures("still_serving")
def test_generated_tokenize_and_detokenize_requests_are_served_or_refused_precisely(
    stub: Stub, info: pb.ModelInfo
) -> None:
    tally = Tally()

    @fuzz_settings(150)
    @given(either(info, pb.TokenizeRequest), either(info, pb.DetokenizeRequest))
    def run(tokenize: pb.TokenizeRequest, detokenize: pb.DetokenizeRequest) -> None:
        reply = tally.unary(stub.Tokenize, tokenize)
        if reply is not None and tokenize.with_pieces:
            assert [p.id for p in reply.pieces] == list(reply.token_ids)
        tally.unary(stub.Detokenize, detokenize)

    run()
    tally.report(least_served=100)


@pytest.mark.usefixtures("still_serving")
def test_generated_model_info_requests_are_served_or_refused_precisely(
    stub: Stub, info: pb.ModelInfo
) -> None:
    tally = Tally()

    @fuzz_settings(30)
    @given(either(info, pb.GetModelInfoRequest))
    def run(request: pb.GetModelInfoRequest) -> None:
        reply = tally.unary(stub.GetModelInfo, request)
        if reply is not None:
            assert reply.info.alias == info.alias

    run()
    tally.report(least_served=5)


@pytest.mark.usefixtures("still_serving")
def test_generated_session_requests_are_served_or_refused_precisely(
    channel_and_stub: tuple[grpc.Channel, Stub], info: pb.ModelInfo
) -> None:
    """Every SessionService call, generated, half of them on a real session with a turn; every
    session a call opens is closed again, so the worker's session limit is never the answer."""
    stub = channel_and_stub[1]
    sessions = pb_grpc.SessionServiceStub(channel_and_stub[0])
    tally = Tally()

    def real_session() -> str:
        opened = sessions.OpenSession(pb.OpenSessionRequest(), timeout=30).session.session_id
        turn = prompt(max_tokens=2)
        turn.session.session_id = opened
        tally.generate(stub, turn)
        return opened

    real = [real_session()]
    calls: dict[type[Message], Callable[..., Any]] = {
        pb.OpenSessionRequest: sessions.OpenSession,
        pb.GetSessionRequest: sessions.GetSession,
        pb.ForkSessionRequest: sessions.ForkSession,
        pb.RollbackSessionRequest: sessions.RollbackSession,
        pb.CloseSessionRequest: sessions.CloseSession,
        pb.CancelTurnRequest: sessions.CancelTurn,
    }
    requests = st.sampled_from(list(calls)).flatmap(lambda cls: either(info, cls))

    @fuzz_settings(200)
    @given(requests, st.booleans())
    def run(request: Message, on_real: bool) -> None:
        if on_real and "session_id" in request.DESCRIPTOR.fields_by_name:
            request.session_id = real[0]  # type: ignore[attr-defined]
        reply = tally.unary(calls[type(request)], request)
        opened = getattr(reply, "session", None)
        if opened is not None and opened.session_id != real[0]:
            sessions.CloseSession(pb.CloseSessionRequest(session_id=opened.session_id))
        if isinstance(request, pb.CloseSessionRequest) and request.session_id == real[0]:
            real[0] = real_session()

    run()
    sessions.CloseSession(pb.CloseSessionRequest(session_id=real[0]), timeout=30)
    tally.report(least_served=60)


#: Status codes by number (a RelayError carries the number).
CODES = {code.value[0]: code for code in grpc.StatusCode}


def relay_actions(info: pb.ModelInfo) -> st.SearchStrategy[list[pb.RelayRequest]]:
    """What a client sends on one Relay stream: starts of generated requests (tags from a small
    set, so some repeat; deadlines of any length, zero meaning none) and cancellations of
    started or unknown tags."""
    tags = st.one_of(st.integers(0, 5), integers(0, 2**64 - 1))
    start = st.builds(
        pb.RelayStart,
        tag=tags,
        request=either(info, pb.GenerateRequest).map(capped),
        timeout_ms=st.one_of(st.just(0), integers(0, 2**32 - 1)),
    )
    action = st.one_of(
        st.builds(pb.RelayRequest, start=start), st.builds(pb.RelayRequest, cancel=tags)
    )
    return st.lists(action, min_size=1, max_size=6)


def relay_ends(stub: Stub, actions: list[pb.RelayRequest]) -> Counter[int]:
    """Send the actions on one Relay stream and read it to its end; every call's error must be
    one a Generate call may end with (or a refused duplicate tag, or its own deadline). Returns
    how many calls ended (the last final message, one per choice, or an error) under each
    tag."""
    ends: Counter[int] = Counter()
    deadlines = {a.start.tag for a in actions if a.HasField("start") and a.start.timeout_ms}
    #: Final messages a call under each tag ends with (for a tag started once).
    choices = {a.start.tag: max(1, a.start.request.n) for a in actions if a.HasField("start")}
    finals: Counter[int] = Counter()
    try:
        for message in stub.Relay(iter(actions), timeout=120):
            for event in message.events:
                if event.HasField("error"):
                    code = CODES[event.error.code]
                    metadata = (("grpc-status-details-bin", event.error.status),)
                    reason = parse_details(metadata).reason
                    refused = code == grpc.StatusCode.FAILED_PRECONDITION
                    expired = code == grpc.StatusCode.DEADLINE_EXCEEDED and event.tag in deadlines
                    allowed = reason in ALLOWED.get(code, ())
                    assert refused or expired or allowed, f"{code} {event.error.message!r}"
                    ends[event.tag] += 1
                elif event.HasField("response") and event.response.HasField("final"):
                    finals[event.tag] += 1
                    if finals[event.tag] == choices[event.tag]:
                        ends[event.tag] += 1
                        finals[event.tag] = 0
    except grpc.RpcError as error:
        raise AssertionError(f"the Relay stream failed: {error}\n{actions}") from None
    return ends


@pytest.mark.usefixtures("still_serving")
def test_generated_relay_streams_end_every_call_precisely(stub: Stub, info: pb.ModelInfo) -> None:
    """The gateway sends its generations over Relay streams: many calls, started and cancelled
    by tag, on one stream. Each generated stream ends OK, and each call started once under its
    tag and not cancelled ends exactly once."""
    calls = Counter[str]()

    @fuzz_settings(150)
    @given(relay_actions(info))
    def run(actions: list[pb.RelayRequest]) -> None:
        starts = Counter(a.start.tag for a in actions if a.HasField("start"))
        cancelled = {a.cancel for a in actions if a.WhichOneof("action") == "cancel"}
        ends = relay_ends(stub, actions)
        for tag, count in starts.items():
            if count == 1 and tag not in cancelled:
                assert ends[tag] == 1, f"tag {tag} ended {ends[tag]} times:\n{actions}"
                calls["ended once"] += 1

    run()
    print(f"relay: {dict(calls)}")
    assert calls["ended once"] >= 100


def prompt(**sampling: Any) -> pb.GenerateRequest:
    return pb.GenerateRequest(prompt="Hello", sampling=pb.SamplingParams(**sampling))


def chat(*turns: pb.ChatMessage, **fields: Any) -> pb.GenerateRequest:
    """A chat request for "Hello" and then ``turns``, with ``fields`` set."""
    messages = [pb.ChatMessage(role="user", content="Hello"), *turns]
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=messages),
        sampling=pb.SamplingParams(max_tokens=1),
        **fields,
    )


KWARGS = "chat_template_kwargs"
#: JSON nested 100,000 deep (json.loads gives up with RecursionError long before).
DEEP = '{"a": ' * 100_000 + "1" + "}" * 100_000


#: Requests with a value at the edge of its type: (id, method, request, refused param or None
#: when the request is valid and must be served).
HUGE: list[tuple[str, str, Message, str | None]] = [
    ("max_tokens", "Generate", prompt(max_tokens=2**32 - 1), "prompt"),
    ("top_logprobs", "Generate", prompt(max_tokens=1, top_logprobs=2**32 - 1), "top_logprobs"),
    ("repeat_last_n", "Generate", prompt(max_tokens=1, repeat_last_n=INT32_MAX), "repeat_last_n"),
    ("top_k-min", "Generate", prompt(max_tokens=1, top_k=-(2**31)), "top_k"),
    ("temperature-inf", "Generate", prompt(max_tokens=1, temperature=float("inf")), "temperature"),
    ("top_p-nan", "Generate", prompt(max_tokens=1, top_p=float("nan")), "top_p"),
    ("penalty-max", "Generate", prompt(max_tokens=1, repeat_penalty=3.4e38), None),
    ("logit_bias-key", "Generate", prompt(max_tokens=1, logit_bias={INT32_MAX: 1.0}), "logit_bias"),
    ("logit_bias-value", "Generate", prompt(max_tokens=1, logit_bias={1: 3.4e38}), "logit_bias"),
    ("stop-count", "Generate", prompt(max_tokens=1, stop=["x"] * 10_000), "stop"),
    ("stop-length", "Generate", prompt(max_tokens=1, stop=["x" * 100_000]), "stop"),
    ("token-max", "Generate", pb.GenerateRequest(tokens=pb.TokenList(ids=[INT32_MAX])), "prompt"),
    ("token-min", "Generate", pb.GenerateRequest(tokens=pb.TokenList(ids=[-(2**31)])), "prompt"),
    ("seed-max", "Generate", prompt(max_tokens=1, seed=2**64 - 1), None),
    (
        "tools-count",
        "Generate",
        chat(tools=[pb.Tool(name=f"f{i}") for i in range(10_000)]),
        "tools",
    ),
    ("kwargs-size", "Generate", chat(chat_template_kwargs='{"a": "' + "x" * 10**6 + '"}'), KWARGS),
    ("kwargs-depth", "Generate", chat(chat_template_kwargs="[" * 10**5 + "]" * 10**5), KWARGS),
    (
        "arguments-depth",
        "Generate",
        chat(pb.ChatMessage(role="assistant", tool_calls=[pb.ToolCall(name="f", arguments=DEEP)])),
        "messages[1].tool_calls[0].arguments",
    ),
    (
        "schema-depth",
        "Generate",
        chat(tools=[pb.Tool(name="f", parameters_json=DEEP)]),
        "tools[0].parameters",
    ),
    ("top_k-max", "Generate", prompt(max_tokens=1, top_k=INT32_MAX), None),
    ("mirostat-max", "Generate", prompt(max_tokens=1, mirostat=2**32 - 1), "mirostat"),
    ("min_keep-max", "Generate", prompt(max_tokens=1, min_keep=2**32 - 1), "min_keep"),
    (
        "mirostat_tau-nan",
        "Generate",
        prompt(max_tokens=1, mirostat_tau=float("nan")),
        "mirostat_tau",
    ),
    (
        "dry_penalty_last_n-max",
        "Generate",
        prompt(max_tokens=1, dry_multiplier=1, dry_penalty_last_n=INT32_MAX),
        "dry_penalty_last_n",
    ),
    (
        "dry_allowed_length-max",
        "Generate",
        prompt(max_tokens=1, dry_multiplier=100, dry_allowed_length=INT32_MAX),
        None,
    ),
    (
        "dry_breakers-count",
        "Generate",
        prompt(max_tokens=1, dry_sequence_breakers=["x"] * 10_000),
        "dry_sequence_breakers",
    ),
    ("samplers-count", "Generate", prompt(max_tokens=1, samplers=["k"] * 10_000), "samplers"),
    (
        "samplers-edges",
        "Generate",
        prompt(
            max_tokens=1,
            xtc_probability=1,
            xtc_threshold=0,
            dynatemp_range=100,
            dynatemp_exponent=100,
            top_n_sigma=100,
            samplers=list("edskypmxta"),
        ),
        None,
    ),
    ("detokenize-max", "Detokenize", pb.DetokenizeRequest(token_ids=[INT32_MAX]), "token_ids"),
    (
        "embed-count",
        "Embed",
        pb.EmbedRequest(inputs=[pb.EmbedInput(text="a")] * 100_000),
        "input",
    ),
    (
        "embed-token",
        "Embed",
        pb.EmbedRequest(inputs=[pb.EmbedInput(tokens=pb.TokenList(ids=[-1]))]),
        "input",
    ),
]


def outcome(stub: Stub, method: str, request: Message) -> str | None:
    """None when the call was served, else the refusal's code and param."""
    try:
        reply = getattr(stub, method)(request, timeout=120)
        if method == "Generate":
            assert list(reply)
        return None
    except grpc.RpcError as error:
        param = parse_details(error.trailing_metadata()).param
        return f"{error.code().name} {param}"


@pytest.mark.usefixtures("still_serving")
def test_huge_values_are_refused_and_extreme_valid_ones_served(stub: Stub) -> None:
    outcomes = {name: outcome(stub, method, request) for name, method, request, _ in HUGE}
    expected = {name: param and f"INVALID_ARGUMENT {param}" for name, _, _, param in HUGE}
    assert outcomes == expected


@pytest.mark.usefixtures("still_serving")
def test_an_embedding_input_that_tokenizes_to_nothing_is_refused(stub: Stub) -> None:
    """Found by this fuzzing: some control characters ("\\x1d" among them) tokenize to no
    token at all, and such an Embed input reached llama_decode as an empty sequence: INTERNAL
    (a 500 over HTTP), alone or beside other inputs."""
    assert not stub.Tokenize(pb.TokenizeRequest(text="\x1d", add_special=True)).token_ids
    nothing, word = pb.EmbedInput(text="\x1d"), pb.EmbedInput(text="word")
    for inputs in ([nothing], [word, nothing]):
        assert outcome(stub, "Embed", pb.EmbedRequest(inputs=inputs)) == "INVALID_ARGUMENT input"
    assert outcome(stub, "Generate", pb.GenerateRequest(prompt="\x1d")) == "INVALID_ARGUMENT prompt"
