"""Fault tests on a supervised fleet: a worker killed under streaming load.

Counted request by request: the streams that were running on the killed worker end with an error
event, every request that had not started completes on the survivor, the supervisor restarts the
worker and it gets traffic again, and no request vanishes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.fleet import Fleet, free_block, supervised
from tests.fleet_load import LoadRun
from tests.procs import free_port, wait_serving

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
    load.start()
    await load.wait_for(lambda run: set(run.by_worker()) == {victim, survivor})
    # Kill it while it is streaming: with 4 clients taking turns, about 2 streams run on it.
    old = fleet.pid_of(f"{MODEL}-1")
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    await load.wait_for(
        lambda run: sum(o.kind == "done" and o.started > killed for o in run.outcomes) >= 6
    )
    # The supervisor restarts it; the gateway sees it SERVING and sends it traffic again.
    await asyncio.to_thread(wait_serving, victim, 180)
    back = time.monotonic()
    await load.wait_for(
        lambda run: any(o.worker == victim and o.started > back for o in run.outcomes), 180
    )
    await load.stop()
    assert fleet.pid_of(f"{MODEL}-1") != old

    counts = load.count()
    assert load.sent == len(load.outcomes)
    assert counts["lost"] == 0, [o for o in load.outcomes if o.kind == "lost"]
    assert set(counts) <= {"done", "error_event"}, counts
    failed = [o for o in load.outcomes if o.kind == "error_event"]
    # The streams running on the killed worker failed, each with an error event, and only they.
    assert failed and all(o.worker == victim and o.started < killed for o in failed), failed
    assert all(o.error and o.error["type"] == "service_unavailable_error" for o in failed)
    # Every request started after the kill completed, on the survivor until the victim was back.
    after = [o for o in load.outcomes if o.started > killed]
    assert all(o.kind == "done" for o in after), after
    assert all(o.worker == survivor for o in after if o.started < back - 1)
