"""GatewaySettings from flags and environment, and main() wiring."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

import llamagrid.gateway.main
from llamagrid.gateway.settings import GatewaySettings


def test_defaults() -> None:
    settings = GatewaySettings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, [])
    assert settings.api_key == [] and settings.api_key_file == ""
    for name, field in GatewaySettings.model_fields.items():
        assert field.description, name


@pytest.mark.parametrize(
    "argv",
    [
        ["--worker", "127.0.0.1:50051", "--worker", "h:2"],
        ["--worker", "127.0.0.1:50051,h:2"],
        ["--workers", "127.0.0.1:50051", "--workers", "h:2"],
    ],
)
def test_worker_flags(argv: list[str]) -> None:
    settings = CliApp.run(GatewaySettings, cli_args=[*argv, "--port", "9", "--api-key", "k"])
    assert settings.workers == ["127.0.0.1:50051", "h:2"] and settings.port == 9
    assert [key.get_secret_value() for key in settings.api_key] == ["k"]


def test_kebab_case_flags() -> None:
    settings = CliApp.run(
        GatewaySettings, cli_args=["--request-timeout-s", "3", "--log-level", "debug"]
    )
    assert settings.request_timeout_s == 3 and settings.log_level == "debug"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAGRID_GATEWAY_WORKERS", "a:1, b:2")
    monkeypatch.setenv("LLAMAGRID_GATEWAY_PORT", "81")
    settings = GatewaySettings()
    assert settings.workers == ["a:1", "b:2"] and settings.port == 81


def test_bad_worker_address() -> None:
    with pytest.raises(ValidationError):
        GatewaySettings(workers=["localhost"])


def test_main_wires_settings_pool_and_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run(server: Any) -> None:
        seen.update(config=server.config, drain=server.drain)

    monkeypatch.setattr(llamagrid.gateway.main.DrainingServer, "run", fake_run)
    llamagrid.gateway.main.main(
        ["--worker", "127.0.0.1:50051", "--port", "8081", "--drain-grace-s", "7"]
    )
    config = seen["config"]
    assert config.port == 8081 and config.host == "127.0.0.1"
    assert "/v1/chat/completions" in config.app.openapi()["paths"]
    assert seen["drain"].grace_s == 7
