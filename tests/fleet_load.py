"""A load generator for fleet tests: concurrent streamed chats, every outcome accounted for.

Each request ends in exactly one recorded outcome: ``done`` (the stream reached ``[DONE]``),
``error_event`` (the stream had started and ended with an OpenAI error event), ``http_<status>``
(refused before streaming) or ``lost`` (no answer within the client's timeout, or the connection
dropped without an error event). Fleet tests assert that nothing is ``lost``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx


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

    async def one(self, http: httpx.AsyncClient, content: str) -> Outcome:
        """One streamed chat, reduced to its outcome."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"Count to ten. ({content})"}],
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
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
                        text += choice["delta"].get("content") or ""
        except httpx.HTTPError as error:
            return Outcome(
                "lost", worker, started, time.monotonic(), text, {"message": repr(error)}
            )
        return Outcome("lost", worker, started, time.monotonic(), text)
