"""A successful http fetch needs a host with a globally reachable address: one is made here,
a network namespace holding 11.22.33.2 (a global unicast address) behind a veth pair, serving
a PNG with Python's http.server. The gateway (in this process, fake worker) fetches from it
only when the operator allows that host, and only up to its caps and deadline.

Needs root and iproute2 (tests/netns.py); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests import netns
from tests.contract.fake_worker import MODEL, FakeWorker
from tests.contract.test_images_http import chat_error, image_gateway, image_part, user
from tests.mmproj_model import png_image

pytestmark = pytest.mark.skipif(
    netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
)

PNG = png_image(16, 16, 7)
#: The public-looking host, and an address on its subnet where no one answers.
HOST, SILENT = "11.22.33.2", "11.22.33.3"
PORT = 8080


@pytest.fixture(scope="module")
def public_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://11.22.33.2:8080``, serving /cat.png from a namespace of its own."""
    files = tmp_path_factory.mktemp("public")
    (files / "cat.png").write_bytes(PNG)
    tag = f"lgi{os.getpid() % 100000}"
    namespace, outside, inside = f"{tag}ns", f"{tag}a", f"{tag}b"
    netns.run("netns", "add", namespace)
    try:
        netns.run("link", "add", outside, "type", "veth", "peer", "name", inside)
        netns.run("link", "set", inside, "netns", namespace)
        netns.run("addr", "add", "11.22.33.1/24", "dev", outside)
        netns.run("link", "set", outside, "up")
        for args in (
            ("addr", "add", f"{HOST}/24", "dev", inside),
            ("link", "set", inside, "up"),
            ("link", "set", "lo", "up"),
        ):
            netns.run("-n", namespace, *args)
        command = ["ip", "netns", "exec", namespace, sys.executable, "-m", "http.server"]
        server = subprocess.Popen(
            [*command, "--bind", HOST, "--directory", str(files), str(PORT)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            url = f"http://{HOST}:{PORT}"
            _wait_ok(f"{url}/cat.png", server)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        with contextlib.suppress(RuntimeError):
            netns.run("link", "del", outside)
        with contextlib.suppress(RuntimeError):
            netns.run("netns", "del", namespace)


def _wait_ok(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"http.server exited with {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer")


async def test_an_allowed_public_host_is_fetched(
    vision_worker: FakeWorker, public_host: str
) -> None:
    async with image_gateway(vision_worker, image_fetch_allow_hosts=[HOST]) as gateway:
        await gateway.openai().chat.completions.create(
            model=MODEL, messages=user(image_part(f"{public_host}/cat.png"))
        )
    (sent,) = vision_worker.generate_requests()
    assert sent.chat.messages[0].parts[0].image.data == PNG
    assert sent.chat.messages[0].parts[0].image.mime_type == "image/png"


async def test_a_public_host_off_the_list_is_not_fetched(
    vision_worker: FakeWorker, public_host: str
) -> None:
    async with image_gateway(vision_worker, image_fetch_allow_hosts=["8.8.8.8"]) as gateway:
        error = await chat_error(gateway, f"{public_host}/cat.png")
    assert error.status_code == 400 and "not on the allow-list" in error.message


async def test_a_fetch_over_its_byte_cap_is_a_413(
    vision_worker: FakeWorker, public_host: str
) -> None:
    settings = {"image_fetch_allow_hosts": [HOST], "image_fetch_max_bytes": 64}
    async with image_gateway(vision_worker, **settings) as gateway:
        error = await chat_error(gateway, f"{public_host}/cat.png")
    assert error.status_code == 413 and "64 bytes" in error.message


async def test_a_missing_file_or_a_silent_host_is_a_400(
    vision_worker: FakeWorker, public_host: str
) -> None:
    settings = {"image_fetch_allow_hosts": [HOST, SILENT], "image_fetch_timeout_s": 0.5}
    async with image_gateway(vision_worker, **settings) as gateway:
        missing = await chat_error(gateway, f"{public_host}/dog.png")
        silent = await chat_error(gateway, f"http://{SILENT}:{PORT}/cat.png")
    assert missing.status_code == 400 and "404" in missing.message
    assert silent.status_code == 400 and "longer than 0.5 s" in silent.message
