"""The gateway's OpenAPI schema documents what the routes really answer (the HTTP fuzzing in
tests/integration/test_fuzz_http.py checks every answer against it)."""

from __future__ import annotations

from typing import Any

import pytest

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.settings import GatewaySettings


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    settings = GatewaySettings.model_validate({"workers": ["127.0.0.1:1"]})
    return create_app(settings, create_pool(settings)).openapi()


def operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def test_every_v1_route_documents_openai_errors_and_no_422(schema: dict[str, Any]) -> None:
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    v1 = {name: op for name, op in operations(schema).items() if " /v1/" in name}
    assert v1
    for name, operation in v1.items():
        responses = operation["responses"]
        assert "422" not in responses, name  # validation failures are 400s
        for status in ("4XX", "5XX"):
            assert responses[status]["content"]["application/json"]["schema"] == error, name
    fields = schema["components"]["schemas"]["ErrorDetail"]["properties"]
    assert set(fields) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("path", "model"),
    [("/v1/chat/completions", "ChatCompletion"), ("/v1/completions", "Completion")],
)
def test_completions_document_their_json_object_and_their_event_stream(
    schema: dict[str, Any], path: str, model: str
) -> None:
    content = schema["paths"][path]["post"]["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    event = content["text/event-stream"]["itemSchema"]
    assert event["required"] == ["data"] and event["properties"]["data"]["type"] == "string"


def test_readiness_documents_its_503(schema: dict[str, Any]) -> None:
    responses = schema["paths"]["/health"]["get"]["responses"]
    # llama-server's shape, which scripts waiting for a model to load read
    assert responses["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LlamaErrorResponse"
    }
