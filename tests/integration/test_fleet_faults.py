"""Fault tests on a supervised fleet: a worker killed under streaming load.

Counted request by request: the streams that were running on the killed worker end with an error
event, every request that had not started completes on the survivor, the supervisor restarts the
worker and it gets traffic again, and no request vanishes. The kill lands while a long probe
stream runs on the victim, so at least one stream is cut. When the victim was out of rotation is
the gateway's own record (its /metrics, scraped throughout), not a time this test measured.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.fleet import Fleet, free_block, supervised
from tests.fleet_load import GatewayWatch, LoadRun
from tests.procs import free_port

MODEL = "smollm2"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two supervised SmolLM2 replicas behind the gateway, round robin between them."""
    config = {
        "gateway": {"host": "127.0.0.1", "port": free_port(), "policy": "round_robin"},
        "supervisor": {"base_port": free_block(2), "restart_backoff_s": 0.2, "drain_grace_s": 20},
        "models": [
            {"alias": MODEL, "replicas": 2, "n_ctx": 2048, "parallel": 2, "n_threads": 1},
        ],
    }
    with supervised(config, tmp_path_factory.mktemp("faults")) as fleet:
        yield fleet


def test_killing_a_worker_under_load_loses_no_request(pair: Fleet) -> None:
    asyncio.run(_kill_under_load(pair))


async def _kill_under_load(fleet: Fleet) -> None:
    victim = fleet.worker(f"{MODEL}-1")["address"]
    survivor = fleet.worker(f"{MODEL}-0")["address"]
    load = LoadRun(fleet.base_url, MODEL, clients=4, max_tokens=32, timeout_s=120)
    gateway = GatewayWatch(fleet.base_url)
    gateway.start()
    load.start()
    await load.wait_for(lambda run: set(run.by_worker()) == {victim, survivor})
    await gateway.wait_for(lambda watch: _available(watch, {victim, survivor}))
    old = fleet.pid_of(f"{MODEL}-1")
    # Kill it while it is streaming: a long probe stream at least, and likely some of the load's.
    running = asyncio.Event()
    probe = asyncio.create_task(load.probe(victim, running))
    started = asyncio.create_task(running.wait())
    await asyncio.wait({probe, started}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    assert running.is_set(), probe.result() if probe.done() else "the probe got no token in 120 s"
    scrapes_before_kill = len(gateway.scrapes)
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    # The gateway takes it out of rotation (its health watch breaks, or the breaker ejects it).
    await gateway.wait_for(lambda watch: _down_seen(watch, victim, scrapes_before_kill))
    await load.wait_for(
        lambda run: sum(o.kind == "done" and o.started > killed for o in run.outcomes) >= 6
    )
    # The supervisor restarts it; the gateway sees it SERVING and sends it traffic again (only
    # the restarted process can complete a request that started after the kill).
    await load.wait_for(
        lambda run: any(
            o.kind == "done" and o.worker == victim and o.started > killed for o in run.outcomes
        ),
        180,
    )
    await load.stop()
    await gateway.stop()
    assert fleet.pid_of(f"{MODEL}-1") != old

    counts = load.count()
    assert load.sent == len(load.outcomes)
    assert counts["lost"] == 0, [o for o in load.outcomes if o.kind == "lost"]
    assert set(counts) <= {"done", "error_event"}, counts
    # The streams running on the killed worker failed, each with an error event, and only they.
    failed = [o for o in [*load.outcomes, await probe] if o.kind == "error_event"]
    assert probe.result() in failed, probe.result()
    assert all(o.worker == victim and o.started < killed for o in failed), failed
    assert all(o.error and o.error["type"] == "service_unavailable_error" for o in failed)
    # Every request started after the kill completed.
    after = [o for o in load.outcomes if o.started > killed]
    assert all(o.kind == "done" for o in after), after
    # By the gateway's own record: it took the victim out of rotation, routed no call to it
    # while it was out, and put it back (and routed calls to it) once it was SERVING again.
    history = gateway.history(victim, since=scrapes_before_kill)
    down = [i for i, record in enumerate(history) if not record.available]
    assert down and down[-1] + 1 < len(history), history
    while_out = [(a, b) for a, b in itertools.pairwise(history) if not (a.available or b.available)]
    assert all(a.routed == b.routed for a, b in while_out), history
    assert history[-1].available and history[-1].routed > history[down[-1]].routed, history
    assert all(record.available for record in gateway.history(survivor, scrapes_before_kill))


def _available(watch: GatewayWatch, workers: set[str]) -> bool:
    """Whether the latest scrape shows every one of ``workers`` in rotation."""
    latest = watch.scrapes[-1] if watch.scrapes else {}
    return all(worker in latest and latest[worker].available for worker in workers)


def _down_seen(watch: GatewayWatch, worker: str, since: int) -> bool:
    """Whether a scrape after the first ``since`` ones shows ``worker`` out of rotation."""
    return any(not record.available for record in watch.history(worker, since))
