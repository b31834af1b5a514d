"""The gateway's image policy, pure: which addresses are never fetched, which hosts the
allow-list names, strict base64, and the settings that configure it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import CliApp

from llamagrid.gateway.app import image_policy
from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.images.addresses import host_allowed, refusal
from llamagrid.gateway.images.policy import decode_base64, decode_data_url, image_type
from llamagrid.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", ""),
        ("172.16.0.1", ""),
        ("192.168.1.1", ""),
        ("100.64.0.1", ""),  # shared address space (carrier NAT)
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("fe80::1", "link-local"),
        ("fc00::1", ""),
        ("fd12:3456::1", ""),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", ""),
        ("255.255.255.255", ""),
        ("192.0.2.1", ""),  # documentation
        ("2001:db8::1", ""),  # documentation
        ("fec0::1", ""),
        ("::ffff:127.0.0.1", "127.0.0.1"),  # v4-mapped
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("64:ff9b::a00:1", "10.0.0.1"),  # NAT64
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ],
)
def test_addresses_that_are_never_fetched(address: str, kind: str) -> None:
    """``kind``: what the refusal must name ("" where Python versions name it differently)."""
    why = refusal(ipaddress.ip_address(address))
    assert why is not None and kind in why, why


@pytest.mark.parametrize(
    "address",
    ["93.184.215.14", "8.8.8.8", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:8.8.8.8"],
)
def test_global_addresses_may_be_fetched(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "allowed", "expected"),
    [
        ("images.example.com", ("images.example.com",), True),
        ("IMAGES.example.com.", ("images.example.com",), True),
        ("evil.com", ("images.example.com",), False),
        ("images.example.com.evil.com", ("images.example.com",), False),
        ("a.example.com", ("*.example.com",), True),
        ("a.b.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("badexample.com", ("*.example.com",), False),
        ("8.8.8.8", ("8.8.8.8",), True),
        ("8.8.8.8", ("*.8.8.8",), False),
        ("2001:4860::8888", ("[2001:4860:0::8888]",), True),
        ("localhost", (), False),
    ],
)
def test_the_allow_list_names_hosts_exactly_or_under_a_wildcard(
    host: str, allowed: tuple[str, ...], expected: bool
) -> None:
    assert host_allowed(host, allowed) is expected


async def test_strict_base64_decodes_only_the_standard_padded_alphabet() -> None:
    assert await decode_base64("aGVsbG8=", 100, "p") == b"hello"
    for bad in ("aGVsbG8", "aGVs bG8=", "aGVsbG8=\n", "aGV-bG8=", "é", "====", "aGVsbG8=aGk="):
        with pytest.raises(OpenAIError) as caught:
            await decode_base64(bad, 100, "p")
        assert caught.value.status_code == 400 and caught.value.param == "p"


async def test_the_byte_cap_is_checked_before_decoding_and_after() -> None:
    with pytest.raises(OpenAIError) as caught:
        await decode_base64("A" * 4000, 100, "p")  # far over: refused before decoding
    assert caught.value.status_code == 413
    with pytest.raises(OpenAIError) as caught:
        await decode_base64("aGVsbG8=", 4, "p")  # 5 bytes
    assert caught.value.status_code == 413
    assert await decode_base64("aGVsbA==", 4, "p") == b"hell"


async def test_a_data_url_keeps_its_image_type_lower_cased() -> None:
    image = await decode_data_url("data:Image/PNG;name=a.png;base64,aGk=", 10, "p")
    assert (image.data, image.mime_type) == (b"hi", "image/png")


@pytest.mark.parametrize(
    "value", ["text/plain", "image", "image/", "image/png/x", "imagex/png", ""]
)
def test_a_media_type_that_is_not_an_image_is_refused(value: str) -> None:
    with pytest.raises(OpenAIError):
        image_type(value, "p")


def test_image_settings_have_safe_defaults() -> None:
    settings = GatewaySettings()
    assert settings.image_fetch_allow_hosts == [] and settings.image_file_dir == ""
    assert (settings.max_images, settings.max_image_bytes) == (8, 10 * 1024 * 1024)


def test_image_settings_read_lists_and_check_hosts_and_the_directory(tmp_path: Path) -> None:
    settings = GatewaySettings(
        image_fetch_allow_hosts="images.example.com, *.cdn.example.com,8.8.8.8",
        image_file_dir=str(tmp_path),
    )
    assert settings.image_fetch_allow_hosts == [
        "images.example.com",
        "*.cdn.example.com",
        "8.8.8.8",
    ]
    for bad in ("https://images.example.com", "example.com:8080", "a/b", "*", "user@host"):
        with pytest.raises(ValidationError):
            GatewaySettings(image_fetch_allow_hosts=bad)
    with pytest.raises(ValidationError):
        GatewaySettings(image_file_dir=str(tmp_path / "missing"))


def test_image_flags_map_onto_the_settings(tmp_path: Path) -> None:
    argv = ["--image-fetch-allow-hosts", "a.example", "--image-fetch-allow-hosts", "b.example,c"]
    argv += ["--image-file-dir", str(tmp_path), "--max-images", "3", "--max-image-bytes", "99"]
    argv += ["--image-fetch-max-bytes", "50", "--image-fetch-timeout-s", "2.5"]
    settings = CliApp.run(GatewaySettings, cli_args=argv)
    assert settings.image_fetch_allow_hosts == ["a.example", "b.example", "c"]
    assert (settings.image_file_dir, settings.max_images) == (str(tmp_path), 3)
    assert (settings.max_image_bytes, settings.image_fetch_max_bytes) == (99, 50)
    assert settings.image_fetch_timeout_s == 2.5
    policy = image_policy(settings)
    assert policy.fetch_hosts == ("a.example", "b.example", "c") and policy.fetch_cap == 50
