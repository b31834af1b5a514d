"""Multi-host: three worker hosts and a gateway host, each in its own network namespace.

The gateway finds the workers through DNS (its /etc/hosts maps one name to the three
addresses, as a Kubernetes headless Service would). Under streaming load, one worker host's
link goes down and then up again: the gateway ejects it and routes around it, its in-flight
streams end with an error event, it returns to rotation when its link does, and no request is
lost in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import netns
from tests.fleet_load import LoadRun
from tests.procs import ROOT, wait_http_ok, wait_serving

WORKER_PORT = 50051
GATEWAY_PORT = 8080
DNS_NAME = "workers.llamagrid.test"
MODEL = "smollm2"

pytestmark = pytest.mark.skipif(
    netns.unavailable_reason() is not None, reason=str(netns.unavailable_reason())
)


@contextlib.contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        yield popen
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def availability(base_url: str) -> dict[str, float]:
    """The gateway's llamagrid_gateway_worker_available gauge, by worker address."""
    text = httpx.get(f"{base_url}/metrics", timeout=5).text
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llamagrid_gateway_worker_available"
    }


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def test_a_worker_host_losing_its_link_is_ejected_and_returns_with_nothing_lost(
    tmp_path: Path,
) -> None:
    tag = f"{os.getpid() % 1000}"
    with netns.network(tag, 100 + os.getpid() % 100) as net, contextlib.ExitStack() as stack:
        hosts = [net.add_host(f"w{i}") for i in range(3)]
        etc_hosts = "127.0.0.1 localhost\n" + "".join(f"{h.address} {DNS_NAME}\n" for h in hosts)
        gateway_host = net.add_host("gw", etc_hosts=etc_hosts)
        for index, host in enumerate(hosts):
            argv = host.command(
                [
                    sys.executable,
                    "-m",
                    "llamagrid.worker",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(WORKER_PORT),
                    "--alias",
                    MODEL,
                    "--n-threads",
                    "1",
                    "--parallel",
                    "2",
                    "--n-ctx",
                    "1024",
                    "--name",
                    f"host-{index}",
                ]
            )
            stack.enter_context(process(argv, tmp_path / f"worker-{index}.log"))
        gateway_argv = gateway_host.command(
            [
                sys.executable,
                "-m",
                "llamagrid.gateway",
                "--host",
                "0.0.0.0",
                "--allow-insecure-bind",  # a private network namespace, no key
                "--port",
                str(GATEWAY_PORT),
                "--worker-dns",
                f"{DNS_NAME}:{WORKER_PORT}",
                "--dns-interval-s",
                "1",
                "--policy",
                "round_robin",
                "--health-retry-s",
                "0.5",
                "--worker-keepalive-s",
                "1",
                "--worker-keepalive-timeout-s",
                "1",
                "--breaker-cooldown-s",
                "1",
            ]
        )
        stack.enter_context(process(gateway_argv, tmp_path / "gateway.log"))
        for host in hosts:
            wait_serving(f"{host.address}:{WORKER_PORT}", timeout=180)
        base_url = f"http://{gateway_host.address}:{GATEWAY_PORT}"
        wait_http_ok(f"{base_url}/health", timeout=60)
        addresses = [f"{h.address}:{WORKER_PORT}" for h in hosts]
        deadline = time.monotonic() + 30
        while availability(base_url) != dict.fromkeys(addresses, 1.0):
            assert time.monotonic() < deadline, availability(base_url)
            time.sleep(0.2)
        asyncio.run(_cut_and_restore(net, hosts[1], base_url, addresses))


async def _cut_and_restore(
    net: netns.Network, victim: netns.Host, base_url: str, addresses: list[str]
) -> None:
    victim_address = f"{victim.address}:{WORKER_PORT}"
    load = LoadRun(base_url, MODEL, clients=4, max_tokens=24, timeout_s=90)
    load.start()
    # Every host serves some of the traffic first (DNS found all three).
    await load.wait_for(lambda run: set(run.by_worker()) == set(addresses))
    net.link_down(victim)
    cut = time.monotonic()
    await wait_until(
        lambda: availability(base_url).get(victim_address) == 0.0, 30, "the victim's ejection"
    )
    ejected = time.monotonic()
    # While it is away, requests keep completing on the other two hosts.
    await load.wait_for(
        lambda run: sum(o.kind == "done" and o.started > ejected for o in run.outcomes) >= 6
    )
    net.link_up(victim)
    restored = time.monotonic()
    await wait_until(
        lambda: availability(base_url).get(victim_address) == 1.0, 60, "the victim's return"
    )
    await load.wait_for(
        lambda run: any(
            o.worker == victim_address and o.kind == "done" and o.started > restored
            for o in run.outcomes
        )
    )
    await load.stop()

    counts = load.count()
    assert load.sent == len(load.outcomes), "a request has no outcome"
    assert counts["lost"] == 0, [o for o in load.outcomes if o.kind == "lost"]
    assert set(counts) <= {"done", "error_event"}, counts
    # Only streams that were running on the victim when its link went down ended in error.
    for failed in (o for o in load.outcomes if o.kind == "error_event"):
        assert failed.worker == victim_address and failed.started < cut, failed
        assert failed.error is not None and failed.error["type"] == "service_unavailable_error"
    # Requests that started after the ejection and before the return all completed elsewhere.
    away = [o for o in load.outcomes if ejected < o.started < restored]
    assert away and all(o.kind == "done" and o.worker != victim_address for o in away)
