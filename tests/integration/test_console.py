"""The console (issue 15) in a real headless browser: Playwright driving Debian's chromium, against
real gateways and workers on the real model.

Every test records each request the browser makes and checks, at its end, that all of them went
to the gateway's own origin (the page works offline: no CDN, font or remote script), and that
the page raised no error and broke no rule of its Content-Security-Policy. The chat and fleet
tests save the README's screenshots (docs/console-chat.png, docs/console-fleet.png).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    expect,
    sync_playwright,
)

from llamagrid.v1 import inference_pb2 as pb
from tests.procs import ROOT, Proc, free_port, running, spawn_gateway, spawn_worker, wait_serving
from tests.serving import ONE_THREAD, connect, wait_idle

#: Debian's chromium (`make system-deps` installs it); Playwright's own builds are never used.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = ROOT / "docs"
KEY = "sk-console-test-key"
#: Long enough for any answer of the small model to stream for a while.
ANSWER_TIMEOUT_MS = 120_000
TTFT = re.compile(r"^\d+ ms$|^\d+\.\d\d s$")


@dataclass
class Console:
    """Browser pages on gateways, with every request and error they make."""

    browser: Browser
    requests: list[tuple[str, Request]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, base_url: str, view: str = "", width: int = 1100, height: int = 820) -> Page:
        context = self.browser.new_context(
            viewport={"width": width, "height": height}, service_workers="block"
        )
        context.on("request", lambda request: self.requests.append((base_url, request)))
        page = context.new_page()
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("console", self._console)
        page.goto(f"{base_url}/{view}")
        return page

    def _console(self, message: ConsoleMessage) -> None:
        # A 401 answer is logged by the browser as a failed resource: expected without a key.
        if message.type == "error" and "status of 401" not in message.text:
            self.errors.append(message.text)

    def check(self) -> None:
        """Only the gateway's origin was asked for anything; no error, no CSP violation."""
        assert self.requests, "the browser made no request at all"
        for origin, request in self.requests:
            assert request.url.startswith(f"{origin}/"), f"a request left the origin: {request.url}"
        assert not self.errors, self.errors


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make system-deps` installs it"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def console(browser: Browser) -> Iterator[Console]:
    tracked = Console(browser)
    yield tracked
    for context in browser.contexts:
        context.close()
    tracked.check()


@pytest.fixture(scope="module")
def model(base_url: str) -> str:
    name: str = httpx.get(f"{base_url}/v1/models", timeout=10).json()["data"][0]["id"]
    return name


def settings(page: Page, **values: float | int) -> None:
    """Open the sampling settings and fill them in."""
    details = page.locator("#settings")
    if details.get_attribute("open") is None:
        page.locator("#settings summary").click()
    for name, value in values.items():
        page.fill(f"#{name}", str(value))


def send(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.click("#send")


def last_answer(page: Page) -> Locator:
    return page.locator("#transcript .msg.assistant").last


def stat(page: Page, name: str) -> str:
    return last_answer(page).locator(f'[data-stat="{name}"]').inner_text()


def save_screenshot(page: Page, name: str) -> None:
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / name), full_page=True)


def test_the_chat_view_streams_an_answer_with_its_stats(
    console: Console, base_url: str, model: str, worker: Proc
) -> None:
    page = console.open(base_url)
    expect(page.locator(f'#model option[value="{model}"]')).to_have_count(1)
    page.select_option("#model", model)
    settings(page, temperature=0, seed=7, max_tokens=96)
    page.locator("#settings summary").click()  # closed again, for the screenshot
    # Count the answer's renders: a streamed answer is drawn many times before it is done.
    page.evaluate(
        """() => {
          window.renders = 0;
          new MutationObserver(() => { window.renders += 1; })
            .observe(document.getElementById("transcript"), { childList: true, subtree: true });
        }"""
    )
    send(page, "Write a Python function that adds two numbers.")
    answer = last_answer(page)
    expect(answer).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    assert page.evaluate("window.renders") > 5

    assert TTFT.match(stat(page, "ttft")), stat(page, "ttft")
    assert float(stat(page, "rate")) > 0
    assert int(stat(page, "prompt")) > 0 and int(stat(page, "completion")) > 0
    assert int(stat(page, "cached")) >= 0
    assert stat(page, "worker") == worker.target  # X-Llamagrid-Worker
    assert re.fullmatch(r"[a-z_]+:[a-z_]+", stat(page, "route"))  # X-Llamagrid-Route
    # The answer is rendered Markdown: its code block is a <pre>, never raw backticks.
    expect(answer.locator(".body pre code")).not_to_have_count(0)
    assert "```" not in answer.locator(".body").inner_text()
    save_screenshot(page, "console-chat.png")


def test_stopping_a_stream_frees_its_slot(
    console: Console, base_url: str, model: str, worker: Proc
) -> None:
    channel, stub = connect(worker.target)
    try:
        wait_idle(stub)
        page = console.open(base_url)
        expect(page.locator(f'#model option[value="{model}"]')).to_have_count(1)
        settings(page, max_tokens=1500, temperature=1, seed=3)
        send(page, "Tell me a very long story about a dragon, a knight and a baker.")
        answer = last_answer(page)
        expect(answer.locator(".body")).not_to_be_empty(timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#stop-button")).to_be_enabled()
        assert stub.GetLoad(pb.GetLoadRequest(), timeout=10).active_requests == 1  # streaming
        page.click("#stop-button")
        expect(answer).to_have_attribute("data-state", "stopped")
        expect(page.locator("#send")).to_be_enabled()
        load = wait_idle(stub)  # GetLoad polled until no slot is busy, with a deadline
        assert load.active_requests == 0 and load.queued_requests == 0
    finally:
        channel.close()


def test_session_mode_sends_only_the_new_message(
    console: Console, base_url: str, model: str
) -> None:
    page = console.open(base_url)
    expect(page.locator(f'#model option[value="{model}"]')).to_have_count(1)
    page.check("#session-mode")
    settings(page, temperature=0, max_tokens=16)
    bodies: list[dict[str, list[object]]] = []

    def sent(request: Request) -> None:
        if request.url.endswith("/chat/completions"):
            bodies.append(json.loads(request.post_data or "{}"))

    page.on("request", sent)
    for question in ("Hi, I am Ada.", "What is my name?"):
        page.fill("#prompt", question)
        page.locator("#prompt").press("Enter")  # the keyboard sends
        answer = last_answer(page)
        expect(answer).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
    assert [len(body["messages"]) for body in bodies] == [1, 1]
    assert int(stat(page, "cached")) > 0  # the first turn came from the session's cache
    assert stat(page, "route") == "session:home"
    expect(page.locator("#session-info")).to_contain_text("2 turn(s)")


def test_the_page_works_at_phone_width_with_every_control_labelled(
    console: Console, base_url: str, model: str
) -> None:
    page = console.open(base_url, width=375, height=740)
    expect(page.locator(f'#model option[value="{model}"]')).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, select, textarea")]
                 .filter((control) => control.labels.length === 0).map((control) => control.id)"""
    )
    assert unlabelled == []
    expect(page.locator("#send")).to_be_in_viewport()
    # Tab order: the model picker comes before the prompt, and the prompt before Send.
    page.focus("#model")
    order = []
    for _ in range(8):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id"))
    assert order.index("prompt") < order.index("send"), order
    page.click("#tab-fleet")
    expect(page.locator("#fleet-view")).to_be_visible()
    expect(page.locator('[data-chart="tokens"]')).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.fixture(scope="module")
def keyed_url(run_dir: Path, worker: Proc) -> Iterator[str]:
    with running(spawn_gateway(run_dir, worker.target, extra=["--api-key", KEY])) as gateway:
        yield f"http://127.0.0.1:{gateway.port}"


def test_a_keyed_console_shows_nothing_without_the_key(console: Console, keyed_url: str) -> None:
    page = console.open(keyed_url, view="#fleet")
    expect(page.locator("#key-view")).to_be_visible()
    expect(page.locator("#chat-view")).to_be_hidden()
    expect(page.locator("#fleet-view")).to_be_hidden()
    assert page.locator("#model option").count() == 0
    assert page.locator("#fleet-models *").count() == 0

    page.fill("#key-input", "sk-wrong")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("refused")
    expect(page.locator("#fleet-view")).to_be_hidden()
    assert page.locator("#fleet-models *").count() == 0

    page.fill("#key-input", KEY)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#fleet-view")).to_be_visible()
    expect(page.locator("#fleet-models tr[data-worker]")).to_have_count(1)
    page.click("#tab-chat")
    expect(page.locator("#model option")).not_to_have_count(0)
    settings(page, temperature=0, max_tokens=8)
    send(page, "Say hello.")
    expect(last_answer(page)).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)

    # The key stays in the tab: sessionStorage, never localStorage or a URL; it travels only as
    # the Authorization header.
    stored = page.evaluate("[sessionStorage.getItem('llamagrid.apiKey'), localStorage.length]")
    assert stored == [KEY, 0]
    assert not [r.url for _, r in console.requests if KEY in r.url]
    api_calls = [r for _, r in console.requests if "/v1/" in r.url]
    assert any(r.headers.get("authorization") == f"Bearer {KEY}" for r in api_calls)

    page.click("#forget-key")
    expect(page.locator("#key-view")).to_be_visible()
    expect(page.locator("#chat-view")).to_be_hidden()
    assert page.locator("#transcript *").count() == 0


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_a_tool_call_in_an_answer_is_shown(console: Console, run_dir: Path) -> None:
    # Qwen3's template gives SmolLM2 Hermes-style tool calls; `required` makes the worker's
    # grammar force one (as in test_tools_http.py).
    template = ROOT / "tests" / "fixtures" / "chat_templates" / "qwen3.jinja"
    args = ("--parallel", "1", "--n-ctx", "2048", "--chat-template", str(template), *ONE_THREAD)
    with running(spawn_worker(run_dir, *args)) as worker:
        wait_serving(worker)
        with running(spawn_gateway(run_dir, worker.target)) as gateway:
            page = console.open(f"http://127.0.0.1:{gateway.port}")
            expect(page.locator("#model option")).not_to_have_count(0)
            settings(page, temperature=0, max_tokens=96)
            page.fill("#tools", json.dumps([WEATHER_TOOL]))
            page.select_option("#tool_choice", "required")
            send(page, "What is the weather in Paris?")
            answer = last_answer(page)
            expect(answer).to_have_attribute("data-state", "done", timeout=ANSWER_TIMEOUT_MS)
            names = answer.locator(".tool-call .tool-name")
            expect(names).not_to_have_count(0)
            assert set(names.all_inner_texts()) == {"get_weather"}
            for shown in answer.locator(".tool-call .tool-args").all_inner_texts():
                assert isinstance(json.loads(shown)["city"], str)
            assert stat(page, "finish") == "tool_calls"
            page.close()  # before its gateway stops


def _restartable_worker(tmp: Path, port: int) -> Proc:
    proc = spawn_worker(tmp, "--parallel", "2", "--n-ctx", "2048", *ONE_THREAD, "--port", str(port))
    wait_serving(proc)
    return proc


def test_the_fleet_view_shows_a_killed_worker_ejected_then_back(
    console: Console, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    workers = [_restartable_worker(tmp_path, port) for port in ports]
    try:
        targets = [worker.target for worker in workers]
        extra = ["--health-retry-s", "0.1", "--load-interval-s", "0.25", "--policy", "round_robin"]
        with running(spawn_gateway(tmp_path, *targets, extra=extra)) as gateway:
            url = f"http://127.0.0.1:{gateway.port}"
            page = console.open(url, view="#fleet")
            rows = {t: page.locator(f'#fleet-models tr[data-worker="{t}"]') for t in targets}
            for row in rows.values():
                expect(row).to_have_attribute("data-state", "up", timeout=60_000)
            # Traffic on both workers, for the recent requests and the charts.
            model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
            for question in ("Name a colour.", "Name a fruit.", "Name a tree.", "Name a city."):
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 12,
                    "temperature": 0,
                    "stream": True,
                }
                with httpx.stream(
                    "POST", f"{url}/v1/chat/completions", json=body, timeout=120
                ) as r:
                    assert r.status_code == 200
                    r.read()
            recent = page.locator("#recent tbody tr")
            expect(recent).to_have_count(4)
            for target in targets:
                expect(
                    page.locator(f'#recent td[data-col="worker"]:text-is("{target}")')
                ).to_have_count(2)
            expect(page.locator('#recent td[data-col="reason"]').first).to_have_text(
                "round_robin:turn"
            )
            expect(page.locator('[data-chart="tokens"] rect.bar')).not_to_have_count(0)
            expect(rows[targets[0]].locator('td[data-col="slots"]')).to_have_text("0 / 2")
            save_screenshot(page, "console-fleet.png")

            victim = workers[1]
            os.kill(victim.popen.pid, signal.SIGKILL)
            victim.popen.wait(30)
            down = re.compile(r"^(down|ejected)$")
            expect(rows[victim.target]).to_have_attribute("data-state", down, timeout=30_000)
            expect(rows[targets[0]]).to_have_attribute("data-state", "up")
            expect(page.locator("#fleet-status")).to_have_text("2 worker(s), 1 up.")

            workers[1] = _restartable_worker(tmp_path, ports[1])  # the same address
            expect(rows[victim.target]).to_have_attribute("data-state", "up", timeout=60_000)
            expect(page.locator("#fleet-status")).to_have_text("2 worker(s), 2 up.")
            page.close()  # before its gateway stops
    finally:
        for worker in workers:
            with running(worker):
                pass
