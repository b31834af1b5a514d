"""The node API's address rule and the worker's registration settings, without a network."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from llamagrid.gateway.nodes.address import AddressError, parse_address
from llamagrid.worker.registration import (
    KEY_ENV,
    RegistrationError,
    advertised_address,
    check_gateway_url,
    read_key,
)
from llamagrid.worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("grpc://Worker-1.NS.svc.cluster.local:443", "worker-1.ns.svc.cluster.local:443"),
        ("GRPC://localhost:0080", "localhost:80"),
        ("[::1]:50051", "[::1]:50051"),
        ("worker.example.:1", "worker.example.:1"),
    ],
)
def test_an_accepted_address_is_made_canonical(given: str, canonical: str) -> None:
    assert parse_address(given) == canonical


@pytest.mark.parametrize(
    "given",
    [
        "",
        "localhost",
        "localhost:",
        ":80",
        "localhost:0",
        "localhost:99999",
        "localhost:-1",
        "localhost:8o",
        "localhost:\u0668\u0660",
        "http://localhost:80",
        "https://localhost:80",
        "grpc://grpc://localhost:80",
        "unix:///tmp/sock",
        "localhost:80/path",
        "user@localhost:80",
        " localhost:80",
        "local host:80",
        "-bad.example:80",
        "a" * 64 + ".example:80",
        "999.0.0.1:80",
        "1.2.3:80",
        "::1:80",
        "[::g]:80",
        "[127.0.0.1]:80",
        "x" * 301,
        "exämple.com:80",
    ],
)
def test_a_bad_address_is_refused(given: str) -> None:
    with pytest.raises(AddressError):
        parse_address(given)


def test_gateway_urls_are_http_or_https_without_query_or_user_info() -> None:
    assert check_gateway_url("http://gw:8080/") == "http://gw:8080"
    assert check_gateway_url("https://gw.example/base") == "https://gw.example/base"
    for bad in ("gw:8080", "ftp://gw", "http://", "http://u:p@gw", "http://gw/?a=1", "http://gw#x"):
        with pytest.raises(ValueError):
            check_gateway_url(bad)
    with pytest.raises(ValidationError):
        WorkerSettings(register_with=["grpc://gw:1"])
    settings = WorkerSettings(register_with=["http://gw:1/", "http://gw:1"])
    assert settings.register_with == ["http://gw:1"]


def test_the_advertised_address_defaults_to_the_listening_one() -> None:
    assert advertised_address("", "127.0.0.1", 5000) == "127.0.0.1:5000"
    assert advertised_address("", "::1", 5000) == "[::1]:5000"
    assert advertised_address("", "0.0.0.0", 5000).endswith(":5000")
    assert advertised_address("w.example:9", "0.0.0.0", 5000) == "w.example:9"
    with pytest.raises(ValidationError):
        WorkerSettings(advertise_address="w.example:99999")


def test_the_register_key_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("# the gateway's admin key\nfile-key\n")
    assert read_key(str(path), {KEY_ENV: "env-key"}) == "file-key"
    assert read_key("", {KEY_ENV: " env-key\n"}) == "env-key"
    for environ in ({}, {KEY_ENV: ""}, {KEY_ENV: "two words"}):
        with pytest.raises(RegistrationError) as caught:
            read_key("", environ)
        assert "two" not in str(caught.value)
    with pytest.raises(RegistrationError):
        read_key(str(tmp_path / "missing"), {})
