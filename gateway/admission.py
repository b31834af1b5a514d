"""What the gateway checks before it reads a request's body: the API key, then the body's size.

FastAPI reads and parses a body before it runs a route's dependencies, so without this a client
with no key could make the gateway read and parse a body of any size. Here a /v1 request without
a valid key is a 401 before one byte of its body is read, a declared Content-Length over
--max-body-bytes is a 413 at once, and a body sent without a length (chunked) is a 413 as soon
as it grows past the limit.

The whole body must also arrive within --body-timeout-s of the request's head: a client that
sends part of it and stalls gets a 408 and loses the connection. Once the body is in, waiting
for the client to disconnect (as streams do) has no deadline.
"""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llamagrid.gateway.auth import ApiKeyCheck
from llamagrid.gateway.errors import TOO_LARGE_CODE, OpenAIError
from llamagrid.gateway.sse import error_response

#: The surface every key protects (the routes' own dependencies check it again).
PROTECTED_PREFIX = "/v1/"


def too_large(limit: int) -> str:
    """The 413 message."""
    return f"The request body is larger than {limit} bytes (the gateway's --max-body-bytes)."


def too_slow(timeout_s: float) -> str:
    """The 408 message."""
    return (
        f"The request body did not arrive within {timeout_s:g} s of its headers "
        "(the gateway's --body-timeout-s)."
    )


class Admission:
    """Pure ASGI middleware: the key check and the body limit, before the body is read, and
    the body's deadline while it is read."""

    def __init__(
        self,
        app: ASGIApp,
        check: ApiKeyCheck | None,
        max_body_bytes: int,
        body_timeout_s: float = 60.0,
    ) -> None:
        self.app = app
        self.check = check
        self.limit = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            if self.check is not None and scope["path"].startswith(PROTECTED_PREFIX):
                await self.check(Request(scope))
            declared = _content_length(scope)
            if declared is not None and declared > self.limit:
                raise OpenAIError(413, too_large(self.limit), code=TOO_LARGE_CODE)
        except OpenAIError as error:
            error.headers["Connection"] = "close"  # what is left of the body is not read
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, self._counted(receive), send)

    def _counted(self, receive: Receive) -> Receive:
        seen, complete = 0, False
        deadline = _now() + self.body_timeout_s

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in: what is left is waiting for a disconnect
                return await receive()
            # Raised inside the route's body read, these become the app's 408 and 413.
            try:
                message = await asyncio.wait_for(receive(), deadline - _now())
            except asyncio.TimeoutError:
                raise HTTPException(
                    408, too_slow(self.body_timeout_s), {"Connection": "close"}
                ) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, too_large(self.limit), {"Connection": "close"})
            return message

        return counted


def _now() -> float:
    return asyncio.get_running_loop().time()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
