"""The gateway's --cors-origin and --sse-keepalive-s settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llamagrid.gateway.main import load_settings
from llamagrid.gateway.settings import GatewaySettings


def test_defaults_cors_off_and_keepalive_on() -> None:
    settings = GatewaySettings()
    assert settings.cors_origin == []
    assert settings.sse_keepalive_s == 15.0


def test_origins_from_repeated_flags_commas_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = ["--cors-origin", "https://a.example", "--cors-origin", "http://localhost:3000,*"]
    assert load_settings(argv).cors_origin == ["https://a.example", "http://localhost:3000", "*"]
    monkeypatch.setenv("LLAMAGRID_GATEWAY_CORS_ORIGIN", "http://[::1]:8080,https://a.example")
    assert load_settings([]).cors_origin == ["http://[::1]:8080", "https://a.example"]
    assert GatewaySettings(cors_origin=["https://a.example"] * 2).cors_origin == [
        "https://a.example"
    ]


@pytest.mark.parametrize(
    "origin",
    [
        "https://a.example/",
        "https://a.example/path",
        "a.example",
        "null",
        "https://a.example:123456",
        "https://user@a.example",
        "https://a.example\r\nX-Evil: 1",
        "**",
        "https://*.example",
    ],
)
def test_a_malformed_origin_is_refused(origin: str) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(cors_origin=[origin])


@pytest.mark.parametrize("value", [-1, 3601])
def test_keepalive_out_of_range_is_refused(value: float) -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(sse_keepalive_s=value)
