"""A load generator for fleet tests: concurrent streamed chats, every outcome accounted for.

Each request ends in exactly one recorded outcome: ``done`` (the stream reached ``[DONE]``),
``error_event`` (the stream had started and ended with an OpenAI error event), ``http_<status>``
(refused before streaming) or ``lost`` (no answer within the client's timeout, or the connection
dropped without an error event). Fleet tests assert that nothing is ``lost``. ``LoadRun.probe``
runs one long stream on a chosen worker, to have one running there when it is killed.

``GatewayWatch`` scrapes the gateway's /metrics meanwhile: when the gateway itself took a worker
out of rotation, brought it back, and how many calls it routed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llamagrid.gateway.metrics import PREFIX


@dataclass
class Outcome:
    """What happened to one request."""

    kind: str
    worker: str
    started: float
    ended: float
    text: str = ""
    error: dict[str, Any] | None = None


@dataclass
class LoadRun:
    """Streams chats from ``clients`` concurrent loops until stopped."""

    base_url: str
    model: str
    clients: int = 4
    max_tokens: int = 24
    timeout_s: float = 90.0
    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start the client loops."""
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        """Let every loop finish its current request, then return."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def count(self) -> Counter[str]:
        """Outcomes by kind."""
        return Counter(outcome.kind for outcome in self.outcomes)

    def by_worker(self, kind: str = "done") -> Counter[str]:
        """Outcomes of one kind by the worker that served them."""
        return Counter(o.worker for o in self.outcomes if o.kind == kind)

    async def wait_for(self, condition: Any, timeout: float = 120.0) -> None:
        """Wait until ``condition(self)`` is true."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"load condition not met; outcomes so far: {self.count()}")
            await asyncio.sleep(0.1)

    async def _loop(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s) as http:
            number = 0
            while not self._stop.is_set():
                number += 1
                self.sent += 1
                self.outcomes.append(await self.one(http, f"client {index} request {number}"))

    async def probe(self, worker: str, running: asyncio.Event, max_tokens: int = 512) -> Outcome:
        """One long stream on ``worker``, not counted in the run's outcomes.

        ``running`` is set when its first token arrives: the worker still has hundreds to
        generate (``ignore_eos``), however late this process reads. A stream that the gateway
        sends to another worker is closed and sent again.
        """
        extra = {"max_tokens": max_tokens, "ignore_eos": True}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s) as http:
            for attempt in range(1, 51):
                outcome = await self.one(
                    http, f"probe {attempt}", extra, only_on=worker, on_content=running.set
                )
                if outcome.kind != "elsewhere":
                    return outcome
        raise AssertionError(f"50 probes and none went to {worker}")

    async def one(
        self,
        http: httpx.AsyncClient,
        content: str,
        extra: dict[str, Any] | None = None,
        only_on: str | None = None,
        on_content: Callable[[], None] | None = None,
    ) -> Outcome:
        """One streamed chat, reduced to its outcome (``elsewhere``: closed at once because it
        did not go to worker ``only_on``). ``on_content`` is called at its first content."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Count to ten. ({content})"}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            **(extra or {}),
        }
        started = time.monotonic()
        worker, text = "", ""
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                worker = response.headers.get("x-llamagrid-worker", "")
                if response.status_code != 200:
                    await response.aread()
                    return Outcome(
                        f"http_{response.status_code}", worker, started, time.monotonic()
                    )
                if only_on is not None and worker != only_on:
                    return Outcome("elsewhere", worker, started, time.monotonic())
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        return Outcome("done", worker, started, time.monotonic(), text)
                    event = json.loads(data)
                    if "error" in event:
                        ended = time.monotonic()
                        return Outcome("error_event", worker, started, ended, text, event["error"])
                    for choice in event.get("choices", []):
                        content_before = bool(text)
                        text += choice["delta"].get("content") or ""
                        if text and not content_before and on_content is not None:
                            on_content()
        except httpx.HTTPError as error:
            return Outcome(
                "lost", worker, started, time.monotonic(), text, {"message": repr(error)}
            )
        return Outcome("lost", worker, started, time.monotonic(), text)


@dataclass
class WorkerRecord:
    """One worker in one scrape of the gateway's /metrics."""

    available: bool
    ejected: bool
    #: Calls the gateway has routed to the worker so far (every model and routing reason).
    routed: int


@dataclass
class GatewayWatch:
    """Scrapes the gateway's /metrics in a loop: the gateway's own record of its workers.

    Each scrape is one snapshot of the gateway's state (the endpoint renders every metric in one
    pass on the gateway's event loop), so comparing a worker's ``available`` gauge with its
    ``routed`` counter across scrapes needs no clock shared with the gateway.
    """

    base_url: str
    interval_s: float = 0.05
    scrapes: list[dict[str, WorkerRecord]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start scraping."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop after one more scrape, begun now."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def wait_for(self, condition: Any, timeout: float = 120.0) -> None:
        """Wait until ``condition(self)`` is true."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            if self._task is not None and self._task.done():
                self._task.result()  # raises why scraping stopped
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway condition not met; last: {self.scrapes[-1:]}")
            await asyncio.sleep(0.05)

    def history(self, worker: str, since: int = 0) -> list[WorkerRecord]:
        """The worker's record in every scrape from number ``since`` on that listed it."""
        return [scrape[worker] for scrape in self.scrapes[since:] if worker in scrape]

    async def _loop(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            while True:
                stopping = self._stop.is_set()  # then this scrape, begun after stop(), is last
                response = await http.get("/metrics")
                response.raise_for_status()
                self.scrapes.append(parse_workers(response.text))
                if stopping:
                    return
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval_s)


def parse_workers(exposition: str) -> dict[str, WorkerRecord]:
    """Per-worker availability, ejection and routed calls from the gateway's /metrics text."""
    gauges: dict[str, dict[str, float]] = {"available": {}, "ejected": {}}
    routed: Counter[str] = Counter()
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            worker = sample.labels.get("worker", "")
            if sample.name == f"{PREFIX}_routed_total":
                routed[worker] += int(sample.value)
            elif sample.name in (f"{PREFIX}_worker_available", f"{PREFIX}_worker_ejected"):
                gauges[sample.name.rsplit("_", 1)[1]][worker] = sample.value
    return {
        worker: WorkerRecord(
            available=gauges["available"][worker] == 1,
            ejected=gauges["ejected"][worker] == 1,
            routed=routed[worker],
        )
        for worker in gauges["available"]
    }
