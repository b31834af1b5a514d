"""Pure ASGI middleware: drain refusal and per-request metrics (no buffering of streams)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamagrid.gateway.console.activity import Activity, RequestRecord
from llamagrid.gateway.dispatch import Routed
from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.lifecycle import Drain
from llamagrid.gateway.metrics import GatewayMetrics
from llamagrid.gateway.sse import error_response

#: Paths that keep answering while the gateway drains, and that are not counted as requests.
ALWAYS_OPEN = frozenset({"/livez", "/metrics"})


class GatewayMiddleware:
    """Refuses new requests while draining, counts running ones, and records each outcome
    (in the metrics, and in the console's activity when there is one)."""

    def __init__(
        self, app: ASGIApp, drain: Drain, metrics: GatewayMetrics, activity: Activity | None = None
    ) -> None:
        self.app = app
        self.drain = drain
        self.metrics = metrics
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_OPEN:
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            error = OpenAIError(
                503, "The gateway is shutting down.", "service_unavailable_error", code="draining"
            )
            error.headers["Connection"] = "close"
            await error_response(error)(scope, receive, send)
            self._record(scope, 503)
            return
        status = 500
        started = time.monotonic()
        self.drain.active += 1

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            self.drain.active -= 1
            self._record(scope, status, time.monotonic() - started)

    def _record(self, scope: Scope, status: int, duration_s: float = 0.0) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "other"
        state = scope.get("state") or {}
        model = state.get("model")
        label = self.metrics.model_label(model) if isinstance(model, str) else ""
        self.metrics.requests.labels(path, label, str(status)).inc()
        if status == 429:
            self.metrics.rate_limited.labels(label).inc()
        if self.activity is not None:
            self._remember(scope, path, model, status, duration_s)

    def _remember(
        self, scope: Scope, path: str, model: object, status: int, duration_s: float
    ) -> None:
        """The console's record of the request: in full when it named a model."""
        assert self.activity is not None
        if not isinstance(model, str):
            self.activity.answered(status)
            return
        routed = (scope.get("state") or {}).get("routed")
        if not isinstance(routed, Routed):
            routed = Routed()
        record = RequestRecord(
            time=self.activity.now(),
            method=scope["method"],
            route=path,
            model=model,
            status=status,
            worker=routed.worker,
            reason=routed.reason,
            attempts=routed.attempts,
            ttft_s=routed.ttft_s,
            duration_s=duration_s,
            prompt_tokens=routed.prompt_tokens,
            cached_tokens=routed.cached_tokens,
            completion_tokens=routed.completion_tokens,
        )
        self.activity.record(record)
