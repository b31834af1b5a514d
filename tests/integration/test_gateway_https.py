"""`llamagrid serve --config` with the gateway on HTTPS (gateway.tls_cert and tls_key in the
fleet file): a real worker on SmolLM2 and a real gateway, reached by the OpenAI SDK that trusts
the test's CA; plain HTTP on the same port fails.

The tests share one supervisor and run in file order: the last one stops it.
"""

from __future__ import annotations

import contextlib
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
import yaml

from tests.certs import Certs, make_certs
from tests.fleet import children, cmdline, free_block, start_supervisor, stop_supervisor
from tests.procs import free_port


@dataclass
class HttpsFleet:
    """The supervisor, its gateway's port and the CA that signed the gateway's certificate."""

    popen: subprocess.Popen[bytes]
    port: int
    certs: Certs
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.certs.ca))


def wait_https_ok(url: str, context: ssl.SSLContext, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, verify=context, timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsFleet]:
    tmp = tmp_path_factory.mktemp("https")
    certs = make_certs(tmp / "certs")
    port = free_port()
    config = {
        "gateway": {
            "port": port,
            "tls_cert": str(certs.server_cert),
            "tls_key": str(certs.server_key),
        },
        "supervisor": {"base_port": free_block(1), "restart_backoff_s": 0.2},
        "models": [{"alias": "smollm2", "n_ctx": 1024, "parallel": 1, "n_threads": 1}],
    }
    path = tmp / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / "supervisor.log"
    popen = start_supervisor(path, log)
    fleet = HttpsFleet(popen, port, certs, log)
    try:
        wait_https_ok(f"{fleet.url}/health", fleet.context(), log)
        yield fleet
    finally:
        stop_supervisor(popen)


def test_the_openai_sdk_gets_a_chat_completion_from_serve_over_https(fleet: HttpsFleet) -> None:
    with httpx2.Client(verify=fleet.context()) as http_client:
        client = openai.OpenAI(
            base_url=f"{fleet.url}/v1",
            api_key="unused",
            max_retries=0,
            timeout=120,
            http_client=http_client,
        )
        reply = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            temperature=0,
        )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens > 0


def test_plain_http_to_the_https_port_fails(fleet: HttpsFleet) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{fleet.port}/health", timeout=5)


def test_serve_announces_the_https_url_and_keeps_the_paths_off_command_lines(
    fleet: HttpsFleet,
) -> None:
    deadline = time.monotonic() + 60
    announced = f"point an OpenAI client at {fleet.url}/v1"
    while announced not in fleet.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, fleet.log.read_text(errors="replace")
        time.sleep(0.1)
    for pid in children(fleet.popen.pid):
        with contextlib.suppress(OSError):
            argv = "\0".join(cmdline(pid))
            assert str(fleet.certs.server_key) not in argv


def test_serve_over_https_stops_cleanly_on_sigterm(fleet: HttpsFleet) -> None:
    fleet.popen.send_signal(signal.SIGTERM)
    assert fleet.popen.wait(90) == 0, fleet.log.read_text(errors="replace")
