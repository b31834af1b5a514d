"""HTTP and gRPC give the same answer for the same invalid input: the worker decides, once.

Each case sends one request over the gateway (the OpenAI SDK's JSON) and the equivalent
llamagrid.v1 request straight to the worker, and compares the HTTP 400's param and message
with the gRPC status's ErrorInfo param and details.
"""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import pytest

from llamagrid.errors import parse_details
from llamagrid.v1 import inference_pb2 as pb
from llamagrid.v1 import inference_pb2_grpc as pb_grpc

USER = [{"role": "user", "content": "hi"}]


def chat_proto(messages: list[dict[str, str]], **sampling: Any) -> pb.GenerateRequest:
    conversation = pb.ChatConversation(messages=[pb.ChatMessage(**m) for m in messages])
    return pb.GenerateRequest(chat=conversation, sampling=pb.SamplingParams(**sampling))


def grpc_refusal(stub: pb_grpc.InferenceServiceStub, request: Any) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        if isinstance(request, pb.EmbedRequest):
            stub.Embed(request, timeout=30)
        else:
            list(stub.Generate(request, timeout=30))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return parse_details(caught.value.trailing_metadata()).param, caught.value.details()


def http_refusal(base_url: str, route: str, body: dict[str, Any]) -> tuple[str, str]:
    response = httpx.post(f"{base_url}/v1/{route}", json={"model": "smollm2", **body}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    return error["param"], error["message"]


@pytest.mark.parametrize(
    ("body", "proto"),
    [
        # The gateway used to drop empty stop strings while the worker refused them.
        ({"messages": USER, "stop": ["a", ""]}, chat_proto(USER, stop=["a", ""])),
        # The gateway's schema and the worker both checked for an empty conversation.
        ({"messages": []}, chat_proto([])),
        # The gateway allowed temperature up to 2 and the worker up to 100: one rule now.
        ({"messages": USER, "temperature": -1}, chat_proto(USER, temperature=-1)),
        ({"messages": USER, "top_p": 0}, chat_proto(USER, top_p=0)),
        ({"messages": USER, "repeat_penalty": 0}, chat_proto(USER, repeat_penalty=0)),
        ({"messages": USER, "top_k": -3}, chat_proto(USER, top_k=-3)),
        ({"messages": USER, "max_tokens": 0}, chat_proto(USER, max_tokens=0)),
        (
            {"messages": USER, "logit_bias": {"9999999": 1}},
            chat_proto(USER, logit_bias={9999999: 1}),
        ),
        ({"messages": USER, "logit_bias": {"5": 500}}, chat_proto(USER, logit_bias={5: 500})),
        (
            {"messages": [{"role": "user", "content": "hi"}], "grammar": "root ::= ("},
            chat_proto(USER, grammar="root ::= ("),
        ),
    ],
)
def test_a_chat_refusal_is_the_same_over_http_and_grpc(
    base_url: str, stub: pb_grpc.InferenceServiceStub, body: dict[str, Any], proto: Any
) -> None:
    assert http_refusal(base_url, "chat/completions", body) == grpc_refusal(stub, proto)


def test_a_temperature_above_two_is_honoured_on_both_paths(
    base_url: str, stub: pb_grpc.InferenceServiceStub
) -> None:
    body = {"model": "smollm2", "messages": USER, "temperature": 3, "max_tokens": 2}
    assert httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).is_success
    final = list(stub.Generate(chat_proto(USER, temperature=3, max_tokens=2), timeout=60))[-1]
    assert final.final.usage.completion_tokens > 0


@pytest.mark.parametrize(
    ("value", "proto_inputs"),
    [
        ([], []),
        ([""], [pb.EmbedInput(text="")]),
        (["a", ""], [pb.EmbedInput(text="a"), pb.EmbedInput(text="")]),
        ([[]], [pb.EmbedInput(tokens=pb.TokenList())]),
    ],
)
def test_an_embedding_refusal_is_the_same_over_http_and_grpc(
    base_url: str, stub: pb_grpc.InferenceServiceStub, value: Any, proto_inputs: list[Any]
) -> None:
    proto = pb.EmbedRequest(inputs=proto_inputs, normalize=True)
    assert http_refusal(base_url, "embeddings", {"input": value}) == grpc_refusal(stub, proto)


def test_an_empty_token_prompt_is_refused_the_same_way(
    base_url: str, stub: pb_grpc.InferenceServiceStub
) -> None:
    proto = pb.GenerateRequest(tokens=pb.TokenList())
    assert http_refusal(base_url, "completions", {"prompt": []}) == grpc_refusal(stub, proto)


def test_grammar_and_response_format_are_refused_by_the_only_layer_that_sees_both(
    base_url: str,
) -> None:
    # On the wire they are one oneof, so only the HTTP translation can be handed both.
    body = {"messages": USER, "grammar": "root ::= x", "response_format": {"type": "json_object"}}
    param, _ = http_refusal(base_url, "chat/completions", body)
    assert param == "grammar"
    sampling = pb.SamplingParams(grammar="root ::= x")
    sampling.json_schema = "{}"
    assert sampling.WhichOneof("constraint") == "json_schema" and not sampling.grammar
