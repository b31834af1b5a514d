"""Fixtures for the contract ring: the real gateway on a real uvicorn, in front of a fake worker."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from llamagrid.gateway.app import create_app, create_pool
from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.settings import GatewaySettings
from tests.contract.fake_worker import MODEL, FakeWorker

API_KEY = "sk-test"
AUTH_HEADERS = {"Authorization": f"Bearer {API_KEY}"}


@dataclass
class Gateway:
    """A running gateway: its base URL, pool and fake worker."""

    url: str
    pool: WorkerPool
    worker: FakeWorker

    def openai(self, api_key: str = API_KEY) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=10
        )

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until it is true, failing after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await _value(check()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else bool(result)


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Run ``app`` on a real uvicorn bound to a free port, in this event loop."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1
    )
    async with serve_config(config) as server:
        yield server_url(server)


@contextlib.asynccontextmanager
async def serve_config(config: uvicorn.Config) -> AsyncIterator[uvicorn.Server]:
    """Run a uvicorn configuration (port 0: a free port) in this event loop."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await eventually(lambda: _started(server, task))
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def server_url(server: uvicorn.Server) -> str:
    """The base URL of a started server (https when it has a certificate)."""
    port = server.servers[0].sockets[0].getsockname()[1]
    scheme = "https" if server.config.is_ssl else "http"
    return f"{scheme}://127.0.0.1:{port}"


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raises why uvicorn stopped
    return server.started


@contextlib.asynccontextmanager
async def running_gateway(
    worker: FakeWorker,
    api_key: str | None = None,
    timeout_s: float = 10.0,
    strict_model_names: bool = False,
) -> AsyncIterator[Gateway]:
    settings = GatewaySettings(
        workers=[worker.address],
        api_key=api_key,
        request_timeout_s=timeout_s,
        health_retry_s=0.05,
        strict_model_names=strict_model_names,
    )
    pool = create_pool(settings)
    async with serve(create_app(settings, pool)) as url:
        yield Gateway(url, pool, worker)


@pytest.fixture
async def worker() -> AsyncIterator[FakeWorker]:
    fake = FakeWorker()
    await fake.start(serving=True)
    yield fake
    await fake.stop()


@pytest.fixture
async def gateway(worker: FakeWorker) -> AsyncIterator[Gateway]:
    """A gateway (API key ``sk-test``) whose worker is serving and whose models are known."""
    async with running_gateway(worker, api_key=API_KEY) as gw:
        await eventually(gw.pool.any_healthy)
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> openai.AsyncOpenAI:
    return gateway.openai()


@pytest.fixture
async def vision_worker() -> AsyncIterator[FakeWorker]:
    """A fake worker whose model reads images (ModelInfo.vision)."""
    fake = FakeWorker()
    fake.vision_models = {MODEL}
    await fake.start(serving=True)
    yield fake
    await fake.stop()
