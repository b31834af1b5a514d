"""Tool calls and thinking over gRPC, end to end: SmolLM2 under other models' chat templates,
driven with the Python client.

One worker runs Qwen 2.5's template (tests/fixtures/chat_templates: Hermes-style <tool_call>
markup), another a small ChatML template that opens a thinking block when asked to. SmolLM2 was
not trained to call tools, so the calls here are those a grammar forces: tool_choice required or
a named function (the worker's own tool grammar), or a test's grammar that writes the markup the
parser must take apart. Greedy decoding throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from llamagrid.errors import parse_details
from llamagrid.sync_client import InferenceClient
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc
from tests.procs import Proc, running, spawn_worker, wait_serving
from tests.serving import ONE_THREAD

FIXTURES = Path(__file__).parent.parent / "fixtures" / "chat_templates"
#: A ChatML template that opens a thinking block when asked to (enable_thinking), as
#: DeepSeek-R1's and Qwen3's do.
THINKING_TEMPLATE = """\
{%- for message in messages %}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% if enable_thinking %}<think>
{% endif %}
{%- endif %}
"""
WEATHER = pb.Tool(
    name="get_weather",
    description="Get the current weather in a city.",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 24},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        }
    ),
    strict=True,
)
TIME = pb.Tool(
    name="get_time",
    description="Get the current time in a time zone.",
    parameters_json=json.dumps(
        {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 24}},
            "required": ["zone"],
            "additionalProperties": False,
        }
    ),
)
QUESTION = pb.ChatMessage(role="user", content="What is the weather like in Paris?")


def spawn(run_dir: Path, template: Path) -> Proc:
    args = ("--chat-template", str(template), "--parallel", "2", "--n-ctx", "4096")
    return spawn_worker(run_dir, *args, "--flash-attn", "off", *ONE_THREAD)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """SmolLM2 under Qwen 2.5's template."""
    run_dir = tmp_path_factory.mktemp("tools-grpc")
    with running(spawn(run_dir, FIXTURES / "qwen2.5.jinja")) as proc:
        wait_serving(proc)
        yield proc


@pytest.fixture(scope="module")
def client(worker: Proc) -> Iterator[InferenceClient]:
    with InferenceClient(worker.target) as c:
        c.wait_ready(timeout=60)
        yield c


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferenceClient]:
    """A client of SmolLM2 under THINKING_TEMPLATE."""
    run_dir = tmp_path_factory.mktemp("thinking-grpc")
    template = run_dir / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE, encoding="utf-8")
    with running(spawn(run_dir, template)) as proc:
        wait_serving(proc)
        with InferenceClient(proc.target) as c:
            c.wait_ready(timeout=60)
            yield c


@pytest.fixture(scope="module")
def sessions(worker: Proc) -> Iterator[pb_grpc.SessionServiceStub]:
    with grpc.insecure_channel(worker.target) as channel:
        yield pb_grpc.SessionServiceStub(channel)


@dataclass
class Stream:
    """What one Generate stream carried."""

    text: str = ""
    reasoning: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: int = 0
    deltas: list[pb.ToolCallDelta] = field(default_factory=list)
    final: pb.GenerateFinal = field(default_factory=pb.GenerateFinal)

    def arguments(self, index: int) -> str:
        """The argument fragments of call ``index``, joined."""
        return "".join(d.arguments for d in self.deltas if d.index == index)


def generate(client: InferenceClient, request: pb.GenerateRequest) -> Stream:
    out = Stream()
    finals = []
    for response in client.generate(request, timeout=300):
        if response.HasField("final"):
            finals.append(response.final)
            continue
        chunk = response.chunk
        out.text += chunk.text
        out.reasoning += chunk.reasoning
        out.token_ids += chunk.token_ids
        out.logprobs += len(chunk.logprobs)
        out.deltas += chunk.tool_calls
    assert len(finals) == 1
    out.final = finals[0]
    assert out.final.usage.completion_tokens == len(out.token_ids)
    return out


def chat(*messages: pb.ChatMessage, **fields: object) -> pb.GenerateRequest:
    sampling = fields.pop("sampling", None) or pb.SamplingParams(temperature=0.0, max_tokens=96)
    return pb.GenerateRequest(
        chat=pb.ChatConversation(messages=list(messages)),
        sampling=sampling,  # type: ignore[arg-type]
        **fields,  # type: ignore[arg-type]
    )


REQUIRED = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_REQUIRED)


def check_calls(stream: Stream, names: set[str]) -> list[pb.ToolCall]:
    """The final's calls: each streamed as deltas whose fragments join to its arguments, with
    arguments valid against the tool's schema; the text holds no markup."""
    final = stream.final
    assert final.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert final.tool_calls
    assert "<tool_call>" not in stream.text and "</tool_call>" not in stream.text
    for index, call in enumerate(final.tool_calls):
        assert call.name in names
        assert call.id.startswith("call_") and len(call.id) == 29
        first = next(d for d in stream.deltas if d.index == index)
        assert (first.id, first.name) == (call.id, call.name)
        arguments = json.loads(call.arguments)
        assert json.loads(stream.arguments(index)) == arguments
        if call.name == "get_weather":
            assert set(arguments) == {"city", "unit"}
            assert isinstance(arguments["city"], str) and len(arguments["city"]) <= 24
            assert arguments["unit"] in ("celsius", "fahrenheit")
        else:
            assert set(arguments) == {"zone"} and isinstance(arguments["zone"], str)
    assert len({c.id for c in final.tool_calls}) == len(final.tool_calls)
    return list(final.tool_calls)


def test_required_makes_even_smollm2_call_a_tool(client: InferenceClient) -> None:
    request = chat(QUESTION, tools=[WEATHER, TIME], tool_choice=REQUIRED, parallel_tool_calls=False)
    stream = generate(client, request)
    assert len(check_calls(stream, {"get_weather", "get_time"})) == 1  # parallel calls off
    assert stream.logprobs == 0


def test_a_named_function_is_the_one_called(client: InferenceClient) -> None:
    named = pb.ToolChoice(function="get_time")
    stream = generate(client, chat(QUESTION, tools=[WEATHER, TIME], tool_choice=named))
    calls = check_calls(stream, {"get_time"})
    assert [c.name for c in calls] == ["get_time"] * len(calls)


def test_logprobs_and_tokens_are_kept_for_a_call(client: InferenceClient) -> None:
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=96, top_logprobs=2)
    request = chat(QUESTION, tools=[WEATHER], tool_choice=REQUIRED, sampling=sampling)
    stream = generate(client, request)
    check_calls(stream, {"get_weather"})
    assert stream.logprobs == len(stream.token_ids)
    # The tokens are the markup's: detokenized, they are the call as the model wrote it.
    text = client.detokenize(pb.DetokenizeRequest(token_ids=stream.token_ids)).text
    assert text.startswith("<tool_call>") and '"get_weather"' in text


def test_a_second_turn_with_the_call_and_its_result_renders_and_answers(
    client: InferenceClient,
) -> None:
    first = generate(client, chat(QUESTION, tools=[WEATHER], tool_choice=REQUIRED))
    (call,) = check_calls(first, {"get_weather"})[:1]
    turn = pb.ChatMessage(role="assistant", tool_calls=[call])
    result = pb.ChatMessage(role="tool", content='{"celsius": 18, "sky": "cloudy"}')
    result.tool_call_id = call.id
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=24)
    second = generate(client, chat(QUESTION, turn, result, tools=[WEATHER], sampling=sampling))
    assert second.final.usage.prompt_tokens > first.final.usage.prompt_tokens + 20
    assert second.token_ids
    assert second.final.finish_reason in (
        pb.FINISH_REASON_EOS,
        pb.FINISH_REASON_LENGTH,
        pb.FINISH_REASON_TOOL_CALLS,
    )
    assert "<tool_call>" not in second.text


def forced(output: str, max_tokens: int = 64) -> pb.SamplingParams:
    """Greedy sampling held to exactly ``output``."""
    return pb.SamplingParams(
        temperature=0.0, max_tokens=max_tokens, grammar=f"root ::= {json.dumps(output)}"
    )


def test_an_auto_call_is_parsed_out_of_the_text(client: InferenceClient) -> None:
    output = 'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", '
    output += '"unit": "celsius"}}\n</tool_call>'
    stream = generate(client, chat(QUESTION, tools=[WEATHER], sampling=forced(output)))
    (call,) = check_calls(stream, {"get_weather"})
    assert json.loads(call.arguments) == {"city": "Oslo", "unit": "celsius"}
    assert stream.text.strip() == "Let me check."


def test_tool_choice_none_leaves_the_markup_in_the_text(client: InferenceClient) -> None:
    output = '<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>'
    none = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)
    stream = generate(
        client, chat(QUESTION, tools=[WEATHER], tool_choice=none, sampling=forced(output))
    )
    assert stream.text == output and not stream.deltas
    assert stream.final.finish_reason == pb.FINISH_REASON_EOS and not stream.final.tool_calls


def test_a_call_of_an_unknown_function_ends_without_calls_or_markup(
    client: InferenceClient,
) -> None:
    output = 'Sure. <tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    stream = generate(client, chat(QUESTION, tools=[WEATHER], sampling=forced(output)))
    assert stream.text.strip() == "Sure."
    assert not stream.final.tool_calls
    assert stream.final.finish_reason == pb.FINISH_REASON_EOS


def test_a_call_cut_by_max_tokens_ends_with_length_and_no_call(client: InferenceClient) -> None:
    request = chat(QUESTION, tools=[WEATHER], tool_choice=REQUIRED)
    request.sampling.max_tokens = 6
    stream = generate(client, request)
    assert stream.final.finish_reason == pb.FINISH_REASON_LENGTH
    assert not stream.final.tool_calls and "<tool_call>" not in stream.text


def test_stop_strings_end_the_output_before_the_parser_sees_it(client: InferenceClient) -> None:
    sampling = forced("Fine. STOP <tool_call>")
    sampling.stop.append("STOP")
    stream = generate(client, chat(QUESTION, tools=[WEATHER], sampling=sampling))
    assert stream.text == "Fine. "
    assert stream.final.finish_reason == pb.FINISH_REASON_STOP_STRING
    assert stream.final.matched_stop == "STOP"


def test_thinking_is_split_out_when_the_prompt_opens_it(thinker: InferenceClient) -> None:
    kwargs = json.dumps({"enable_thinking": True})
    request = chat(
        QUESTION, chat_template_kwargs=kwargs, sampling=forced("It is spring.</think>Mild.")
    )
    stream = generate(thinker, request)
    assert stream.reasoning.strip() == "It is spring."
    assert stream.text.strip() == "Mild."
    assert stream.final.finish_reason == pb.FINISH_REASON_EOS


def test_thinking_is_split_out_when_the_model_opens_it(thinker: InferenceClient) -> None:
    stream = generate(thinker, chat(QUESTION, sampling=forced("<think>Paris, so</think>Mild.")))
    assert (stream.reasoning.strip(), stream.text.strip()) == ("Paris, so", "Mild.")


def test_reasoning_format_none_keeps_the_thinking_in_the_text(thinker: InferenceClient) -> None:
    output = "<think>Paris, so</think>Mild."
    request = chat(QUESTION, reasoning_format=pb.REASONING_FORMAT_NONE, sampling=forced(output))
    stream = generate(thinker, request)
    assert (stream.text, stream.reasoning) == (output, "")


def test_session_turns_commit_the_exact_tokens_and_take_tool_results(
    client: InferenceClient, sessions: pb_grpc.SessionServiceStub
) -> None:
    session_id = sessions.OpenSession(pb.OpenSessionRequest(), timeout=30).session.session_id
    try:
        request = chat(QUESTION, tools=[WEATHER], tool_choice=REQUIRED, parallel_tool_calls=False)
        request.session.session_id = session_id
        first = generate(client, request)
        (call,) = check_calls(first, {"get_weather"})
        appended = list(first.final.session.appended_token_ids)
        assert appended[-len(first.token_ids) :] == first.token_ids
        # The next turn is only the tool's result; the template writes it after the call.
        result = pb.ChatMessage(role="tool", content="18 C, cloudy", tool_call_id=call.id)
        sampling = pb.SamplingParams(temperature=0.0, max_tokens=16)
        second = chat(result, tools=[WEATHER], sampling=sampling)
        second.session.session_id = session_id
        second.session.expected_turns = 1
        answer = generate(client, second)
        assert answer.final.session.turns == 2 and answer.token_ids
        assert "<tool_call>" not in answer.text
        turn = client.detokenize(
            pb.DetokenizeRequest(token_ids=answer.final.session.appended_token_ids)
        ).text
        assert "<tool_response>\n18 C, cloudy\n</tool_response>" in turn
    finally:
        sessions.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=30)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [WEATHER], "tool_choice": pb.ToolChoice(function="nope")}, "tool_choice"),
        ({"tool_choice": REQUIRED}, "tool_choice"),
        ({"chat_template_kwargs": '{"messages": []}'}, "chat_template_kwargs"),
        ({"chat_template_kwargs": "[]"}, "chat_template_kwargs"),
        ({"reasoning_effort": "max"}, "reasoning_effort"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": REQUIRED,
                "sampling": pb.SamplingParams(json_schema="{}"),
            },
            "tool_choice",
        ),
    ],
)
def test_bad_tool_fields_are_invalid_argument_with_their_field(
    client: InferenceClient, fields: dict[str, object], param: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        generate(client, chat(QUESTION, **fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parse_details(err.value.trailing_metadata()).param == param


def test_the_tool_grammar_is_refused_when_it_outgrows_the_grammar_limit(
    client: InferenceClient,
) -> None:
    """A small schema can make a large grammar (each maxLength nests that many groups): the
    grammar made from the tools is held to --max-grammar-bytes like any other."""
    long_strings = {f"p{i}": {"type": "string", "maxLength": 500} for i in range(16)}
    schema = json.dumps({"type": "object", "properties": long_strings})
    tools = [pb.Tool(name="fill_form", parameters_json=schema)]
    with pytest.raises(grpc.RpcError) as err:
        generate(client, chat(QUESTION, tools=tools, tool_choice=REQUIRED))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert parse_details(err.value.trailing_metadata()).param == "tools"


def test_the_worker_serves_as_before_after_all_this(client: InferenceClient, worker: Proc) -> None:
    sampling = pb.SamplingParams(temperature=0.0, max_tokens=8)
    stream = generate(client, chat(QUESTION, sampling=sampling))
    assert stream.text and not stream.deltas and not stream.reasoning
    assert worker.popen.poll() is None


def test_a_template_without_tools_gets_them_described_and_answers_in_the_generic_json(
    thinker: InferenceClient,
) -> None:
    """THINKING_TEMPLATE never reads ``tools``: the worker describes them in a system message
    (not for tool_choice none), and reads an answer in the generic JSON as a call."""

    def prompt_tokens(**fields: object) -> int:
        stream = generate(thinker, chat(QUESTION, sampling=forced("Hm."), **fields))
        return stream.final.usage.prompt_tokens

    plain = prompt_tokens()
    none = pb.ToolChoice(mode=pb.TOOL_CHOICE_MODE_NONE)
    assert prompt_tokens(tools=[WEATHER], tool_choice=none) == plain
    assert prompt_tokens(tools=[WEATHER]) > plain + 40  # the tool, its schema, how to call
    arguments = {"city": "Oslo", "unit": "celsius"}
    output = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": arguments}]})
    stream = generate(thinker, chat(QUESTION, tools=[WEATHER], sampling=forced(output, 96)))
    (call,) = check_calls(stream, {"get_weather"})
    assert json.loads(call.arguments) == arguments and stream.text == ""
