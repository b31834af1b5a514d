"""Where an image's bytes may come from, through a real gateway (fake worker) and a real local
HTTP server: http(s) fetching and its address policy, file:// and its directory, and the
pinned-address fetch itself.

A successful fetch through the gateway needs a host with a globally reachable address, which
this machine's loopback is not (and must not be): the pinned fetch is shown here against the
local server dialled by address (``fetch_pinned``), over http and over https (the certificate
checked against the URL's name, not the address dialled), and the address policy in
tests/unit/test_image_policy.py.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from llamagrid.gateway.app import image_policy
from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.images.fetch import Target, fetch_pinned
from llamagrid.gateway.settings import GatewaySettings
from tests.certs import Certs, make_certs
from tests.contract.conftest import serve, serve_config, server_url
from tests.contract.fake_worker import MODEL, FakeWorker
from tests.contract.test_images_http import chat_error, image_gateway, image_part, user
from tests.mmproj_model import png_image

PNG = png_image(8, 8, 2)
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class ImageServer:
    """A local HTTP server: /cat.png and a few misbehaving paths; it records each request's
    path and Host header."""

    url: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        self.seen.append((scope["path"], headers.get(b"host", b"").decode()))
        await ROUTES.get(scope["path"], _not_found)(send)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _cat(send: Send) -> None:
    await _answer(send, 200, [(b"content-type", b"image/png")], PNG)


async def _redirect(send: Send) -> None:
    await _answer(send, 302, [(b"location", b"http://127.0.0.1/cat.png")], b"")


async def _text(send: Send) -> None:
    await _answer(send, 200, [(b"content-type", b"text/html")], b"<html></html>")


async def _gzip(send: Send) -> None:
    headers = [(b"content-type", b"image/png"), (b"content-encoding", b"gzip")]
    await _answer(send, 200, headers, b"\x1f\x8b")


async def _empty(send: Send) -> None:
    await _answer(send, 200, [(b"content-type", b"image/png")], b"")


async def _endless(send: Send) -> None:
    """An image with no length that never ends: the reader must stop at the cap."""
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"image/png")],
    }
    await send(start)
    for _ in range(10_000):
        await send({"type": "http.response.body", "body": bytes(64 * 1024), "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _not_found(send: Send) -> None:
    await _answer(send, 404, [(b"content-type", b"text/plain")], b"no")


ROUTES: dict[str, Callable[[Send], Awaitable[None]]] = {
    "/cat.png": _cat,
    "/redirect": _redirect,
    "/text": _text,
    "/gzip": _gzip,
    "/empty": _empty,
    "/endless": _endless,
}


@pytest.fixture
async def image_server() -> AsyncIterator[ImageServer]:
    server = ImageServer()
    async with serve(server) as url:
        server.url = url
        yield server


# ---------------------------------------------------------------------------------------------
# http(s)


async def test_nothing_is_fetched_while_fetching_is_off(
    vision_worker: FakeWorker, image_server: ImageServer
) -> None:
    async with image_gateway(vision_worker) as gateway:
        error = await chat_error(gateway, f"{image_server.url}/cat.png")
    assert error.status_code == 400 and "fetching images is off" in error.message
    assert image_server.seen == []


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::ffff:127.0.0.1]"])
async def test_a_loopback_host_is_never_fetched_even_when_allowed(
    vision_worker: FakeWorker, image_server: ImageServer, host: str
) -> None:
    allowed = ["localhost", "127.0.0.1", "::ffff:127.0.0.1"]
    async with image_gateway(vision_worker, image_fetch_allow_hosts=allowed) as gateway:
        error = await chat_error(gateway, f"http://{host}:{image_server.port}/cat.png")
    assert error.status_code == 400 and "loopback" in error.message, error.message
    assert image_server.seen == []  # not even a connection's worth


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/cat.png",
        "http://[fe80::1]/cat.png",
        "http://0.0.0.0/cat.png",
        "http://[::]/cat.png",
    ],
)
async def test_private_and_link_local_addresses_are_never_fetched(
    vision_worker: FakeWorker, url: str
) -> None:
    hosts = ["169.254.169.254", "10.0.0.1", "fe80::1", "0.0.0.0", "::"]
    async with image_gateway(vision_worker, image_fetch_allow_hosts=hosts) as gateway:
        error = await chat_error(gateway, url)
    assert error.status_code == 400 and "is not fetched" in error.message


async def test_a_host_off_the_allow_list_or_with_credentials_is_not_fetched(
    vision_worker: FakeWorker,
) -> None:
    allowed = ["images.example.com"]
    async with image_gateway(vision_worker, image_fetch_allow_hosts=allowed) as gateway:
        other = await chat_error(gateway, "https://evil.example.com/cat.png")
        credentials = await chat_error(gateway, "https://user:pw@images.example.com/cat.png")
    assert "not on the allow-list" in other.message
    assert "credentials" in credentials.message


# ---------------------------------------------------------------------------------------------
# The pinned fetch: the checked address is dialled, the URL's name goes in the Host header.


def pinned(server: ImageServer, path: str) -> Target:
    """``http://images.example:<port><path>``, dialled at the local server's address."""
    url = httpx.URL(f"http://images.example:{server.port}{path}")
    return Target(url, ipaddress.ip_address("127.0.0.1"))


async def test_the_pinned_fetch_dials_the_checked_address_with_the_urls_host(
    image_server: ImageServer,
) -> None:
    image = await fetch_pinned(pinned(image_server, "/cat.png"), 1 << 20, "p")
    assert (image.data, image.mime_type) == (PNG, "image/png")
    assert image_server.seen == [("/cat.png", f"images.example:{image_server.port}")]


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/redirect", 400, "does not follow"),
        ("/text", 400, "not an image type"),
        ("/gzip", 400, "content coding"),
        ("/empty", 400, "empty"),
        ("/missing", 400, "404"),
        ("/endless", 413, "larger than"),
    ],
)
async def test_the_pinned_fetch_takes_only_a_plain_image_under_the_cap(
    image_server: ImageServer, path: str, status: int, says: str
) -> None:
    with pytest.raises(OpenAIError) as caught:
        await fetch_pinned(pinned(image_server, path), 1 << 20, "p")
    assert caught.value.status_code == status and says in caught.value.message
    assert image_server.seen == [(path, f"images.example:{image_server.port}")]  # once: no hops


@pytest.fixture
async def https_image_server(tmp_path: Path) -> AsyncIterator[tuple[ImageServer, Certs]]:
    """The same server over https, its certificate (for localhost) signed by a private CA."""
    certs = make_certs(tmp_path)
    server = ImageServer()
    config = uvicorn.Config(
        server,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        ssl_certfile=str(certs.server_cert),
        ssl_keyfile=str(certs.server_key),
    )
    async with serve_config(config) as running:
        server.url = server_url(running)
        yield server, certs


async def test_an_https_host_s_certificate_is_checked_against_the_url_s_name(
    https_image_server: tuple[ImageServer, Certs],
) -> None:
    """Dialled by address, verified by name: the certificate must name the URL's host and chain
    to a trusted CA (--image-fetch-ca-file, else the public ones)."""
    server, certs = https_image_server
    here = ipaddress.ip_address("127.0.0.1")
    named = Target(httpx.URL(f"https://localhost:{server.port}/cat.png"), here)
    image = await fetch_pinned(named, 1 << 20, "p", str(certs.ca))
    assert (image.data, image.mime_type) == (PNG, "image/png")
    assert server.seen == [("/cat.png", f"localhost:{server.port}")]
    other_name = Target(httpx.URL(f"https://images.example:{server.port}/cat.png"), here)
    for target, ca in ((other_name, str(certs.ca)), (named, ""), (named, str(certs.other_ca))):
        with pytest.raises(OpenAIError) as caught:
            await fetch_pinned(target, 1 << 20, "p", ca)
        assert caught.value.status_code == 400 and "the request failed" in caught.value.message
    assert len(server.seen) == 1  # no request went out over an unverified connection


def test_the_ca_file_must_be_certificates(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    for path in (junk, tmp_path / "missing.pem"):
        with pytest.raises(ValueError, match="--image-fetch-ca-file"):
            GatewaySettings(image_fetch_ca_file=str(path))
    ca = str(make_certs(tmp_path).ca)
    assert image_policy(GatewaySettings(image_fetch_ca_file=ca)).fetch_ca_file == ca


# ---------------------------------------------------------------------------------------------
# file://


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    inside = tmp_path / "images"
    (inside / "sub").mkdir(parents=True)
    (inside / "cat.png").write_bytes(PNG)
    (inside / "sub" / "dog.png").write_bytes(PNG[::-1])
    (inside / "big.png").write_bytes(bytes(2048))
    (inside / "empty.png").write_bytes(b"")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (inside / "escape.png").symlink_to(tmp_path / "secret.png")
    (inside / "alias.png").symlink_to(inside / "cat.png")
    os.mkfifo(inside / "fifo.png")
    return inside


async def test_a_file_inside_the_directory_is_read(
    vision_worker: FakeWorker, image_dir: Path
) -> None:
    settings = {"image_file_dir": str(image_dir), "max_image_bytes": 1024}
    async with image_gateway(vision_worker, **settings) as gateway:
        client = gateway.openai()
        for name in ("cat.png", "sub/dog.png", "alias.png", "./cat.png"):
            url = f"file://{image_dir}/{name}"
            await client.chat.completions.create(model=MODEL, messages=user(image_part(url)))
    sent = [r.chat.messages[0].parts[0].image for r in vision_worker.generate_requests()]
    assert [image.data for image in sent] == [PNG, PNG[::-1], PNG, PNG]
    assert {image.mime_type for image in sent} == {"image/png"}


@pytest.mark.parametrize(
    ("name", "status", "says"),
    [
        ("../secret.png", 400, "'..'"),
        ("sub/../../secret.png", 400, "'..'"),
        ("escape.png", 400, "outside the directory"),
        ("fifo.png", 400, "not a regular file"),
        ("sub", 400, "not a regular file"),
        ("missing.png", 400, "no such readable file"),
        ("empty.png", 400, "empty"),
        ("big.png", 413, "1024 bytes"),
        ("%2e%2e/secret.png", 400, "'..'"),
    ],
)
async def test_a_file_outside_or_odd_or_too_big_is_refused(
    vision_worker: FakeWorker, image_dir: Path, name: str, status: int, says: str
) -> None:
    settings = {"image_file_dir": str(image_dir), "max_image_bytes": 1024}
    async with image_gateway(vision_worker, **settings) as gateway:
        error = await chat_error(gateway, f"file://{image_dir}/{name}")
    assert error.status_code == status and says in error.message, error.message


async def test_a_file_url_outside_the_directory_by_absolute_path_is_refused(
    vision_worker: FakeWorker, image_dir: Path
) -> None:
    async with image_gateway(vision_worker, image_file_dir=str(image_dir)) as gateway:
        secret = await chat_error(gateway, f"file://{image_dir.parent}/secret.png")
        hostname = await chat_error(gateway, "file:///etc/hostname")
        remote = await chat_error(gateway, f"file://example.com{image_dir}/cat.png")
    assert "outside the directory" in secret.message
    assert "outside the directory" in hostname.message
    assert "names no host" in remote.message
