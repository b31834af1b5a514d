"""Pure ASGI middleware: drain refusal and per-request metrics (no buffering of streams)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.lifecycle import Drain
from llamagrid.gateway.metrics import GatewayMetrics
from llamagrid.gateway.sse import error_response

#: Paths that keep answering while the gateway drains, and that are not counted as requests.
ALWAYS_OPEN = frozenset({"/livez", "/metrics"})


class GatewayMiddleware:
    """Refuses new requests while draining, counts running ones, and records each outcome."""

    def __init__(self, app: ASGIApp, drain: Drain, metrics: GatewayMetrics) -> None:
        self.app = app
        self.drain = drain
        self.metrics = metrics

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
            self._record(scope, status)

    def _record(self, scope: Scope, status: int) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "other"
        state = scope.get("state") or {}
        model = state.get("model")
        label = self.metrics.model_label(model) if isinstance(model, str) else ""
        self.metrics.requests.labels(path, label, str(status)).inc()
        if status == 429:
            self.metrics.rate_limited.labels(label).inc()
