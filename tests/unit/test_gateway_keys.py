"""API keys and binds of the gateway: the key rules, key files, settings and main()'s refusals."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

import llamagrid.gateway.main
from llamagrid.gateway.auth import api_keys
from llamagrid.gateway.keys import (
    ApiKeyError,
    gateway_bind_problem,
    is_loopback,
    key_problem,
    parse_key_file,
    read_key_file,
)
from llamagrid.gateway.settings import GatewaySettings

SECRET = "sk-Zq9/secret+key_~.="


def keys_of(settings: GatewaySettings) -> list[str]:
    return [key.get_secret_value() for key in settings.api_key]


@pytest.fixture(autouse=True)
def _no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEY", "API_KEY_FILE", "ALLOW_INSECURE_BIND", "HOST"):
        monkeypatch.delenv(f"LLAMAGRID_GATEWAY_{name}", raising=False)


@pytest.mark.parametrize("key", [SECRET, "0123abcdef", "c2stdGVzdA==", "a"])
def test_bearer_tokens_are_valid_keys(key: str) -> None:
    assert key_problem(key) is None


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "an API key is empty"),
        ("two words", "an API key must be letters, digits"),
        ("comma,key", "an API key must be letters, digits"),
        ("tab\tkey", "an API key must be letters, digits"),
        ("clé", "an API key must be letters, digits"),
        ("=first", "an API key must be letters, digits"),
    ],
)
def test_empty_and_malformed_keys_are_refused_without_repeating_them(
    key: str, problem: str
) -> None:
    message = key_problem(key)
    assert message is not None and message.startswith(problem)
    if key:
        assert key not in message


def test_several_keys_come_from_repeated_flags_a_comma_list_or_json() -> None:
    for argv in (
        ["--api-key", "k1", "--api-key", "k2"],
        ["--api-key", "k1,k2"],
        ["--api-key", '["k1", "k2"]'],
    ):
        assert keys_of(CliApp.run(GatewaySettings, cli_args=argv)) == ["k1", "k2"]


def test_keys_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAGRID_GATEWAY_API_KEY", "k1, k2")
    assert keys_of(GatewaySettings()) == ["k1", "k2"]


@pytest.mark.parametrize("value", ["", " ", "k1,", "k1,,k2", '["k1", ""]'])
def test_an_empty_key_is_an_error_not_authentication_off(value: str) -> None:
    with pytest.raises(ValidationError, match="an API key is empty"):
        GatewaySettings(api_key=value)


def test_an_empty_key_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAGRID_GATEWAY_API_KEY", "")
    with pytest.raises(ValidationError, match="an API key is empty"):
        GatewaySettings()


def test_a_settings_error_never_shows_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        GatewaySettings(api_key=["good-key", "bad key!"])
    assert "key 2 of 2: an API key must be" in str(info.value)
    assert "bad key!" not in str(info.value) and "good-key" not in str(info.value)


def test_a_key_file_has_one_key_per_line_with_comments_and_blank_lines() -> None:
    text = "# rotated 2026-12\nkey-one\n\n   key-two  \n# old: gone\n"
    assert parse_key_file(text, "keys.txt") == ["key-one", "key-two"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("# only a comment\n\n", "keys.txt: no API key in the file"),
        ("", "keys.txt: no API key in the file"),
        ("good\nbad key\n", "keys.txt, line 2: an API key must be"),
        ("good # a comment\n", "keys.txt, line 1: an API key must be"),
    ],
)
def test_a_key_file_without_a_key_or_with_a_bad_line_is_an_error(text: str, message: str) -> None:
    with pytest.raises(ApiKeyError) as info:
        parse_key_file(text, "keys.txt")
    assert str(info.value).startswith(message)
    assert "bad key" not in str(info.value)


def test_a_missing_key_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyError, match="cannot read the API key file"):
        read_key_file(str(tmp_path / "missing"))


def test_the_gateway_accepts_the_flag_keys_and_the_file_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("file-key\nflag-key\n")
    settings = GatewaySettings(api_key="flag-key", api_key_file=str(path))
    assert api_keys(settings) == ("flag-key", "file-key")


def test_metrics_and_docs_need_the_key_by_default_and_nothing_is_open_by_mistake() -> None:
    settings = GatewaySettings()
    assert (settings.metrics_access, settings.docs_access) == ("key", "key")
    assert settings.allow_insecure_bind is False and settings.host == "127.0.0.1"
    opened = CliApp.run(
        GatewaySettings,
        cli_args=["--metrics-access", "open", "--docs-access", "off", "--allow-insecure-bind"],
    )
    assert (opened.metrics_access, opened.docs_access) == ("open", "off")
    assert opened.allow_insecure_bind is True
    with pytest.raises(ValidationError):
        GatewaySettings(metrics_access="public")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("gateway.example.com", False),
    ],
)
def test_only_loopback_addresses_keep_the_gateway_local(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_needs_a_key_or_the_explicit_flag() -> None:
    problem = gateway_bind_problem("0.0.0.0", protected=False, allowed=False)
    assert problem is not None and "--allow-insecure-bind" in problem
    assert gateway_bind_problem("0.0.0.0", protected=True, allowed=False) is None
    assert gateway_bind_problem("0.0.0.0", protected=False, allowed=True) is None
    assert gateway_bind_problem("127.0.0.1", protected=False, allowed=False) is None


def run_main(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> dict[str, Any]:
    """main() up to uvicorn: what it would have run."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        llamagrid.gateway.main.DrainingServer, "run", lambda server: seen.update(server=server)
    )
    llamagrid.gateway.main.main(argv)
    return seen


def test_the_gateway_refuses_to_listen_openly_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, ["--host", "0.0.0.0", "--worker", "127.0.0.1:1"])
    assert "refusing to serve the gateway on 0.0.0.0 without an API key" in str(info.value.code)
    assert run_main(monkeypatch, ["--host", "0.0.0.0", "--allow-insecure-bind"])["server"]
    monkeypatch.setenv("LLAMAGRID_GATEWAY_API_KEY", SECRET)
    assert run_main(monkeypatch, ["--host", "0.0.0.0"])["server"].config.host == "0.0.0.0"


def test_the_gateway_exits_cleanly_on_a_bad_key_or_key_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, ["--api-key", ""])
    assert str(info.value.code).startswith("llamagrid gateway: invalid settings:\n  --api-key:")
    empty = tmp_path / "keys"
    empty.write_text("# nothing yet\n")
    with pytest.raises(SystemExit) as info:
        run_main(monkeypatch, ["--api-key-file", str(empty)])
    assert str(info.value.code) == f"llamagrid gateway: {empty}: no API key in the file " + (
        "(one per line; '#' starts a comment)"
    )


def test_a_key_on_the_command_line_or_in_a_readable_file_is_warned_about(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys"
    path.write_text(SECRET + "\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="llamagrid.gateway.main"):
        run_main(monkeypatch, ["--api-key", "flag-key", "--api-key-file", str(path)])
    text = caplog.text
    assert "an API key was given on the command line" in text
    assert f"the API key file {path} is readable by every user" in text
    assert SECRET not in text and "flag-key" not in text
