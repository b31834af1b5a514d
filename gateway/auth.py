"""Who may call what: the API key check, and /metrics and the API docs behind it or off.

Every route of the OpenAI surface (/v1/...) needs a key once one is set (--api-key,
LLAMAGRID_GATEWAY_API_KEY, --api-key-file). /metrics and the docs (/docs, /redoc,
/openapi.json) follow --metrics-access and --docs-access: ``key`` (the default) needs a key
when one is set, ``open`` never does, ``off`` removes the routes. /health and /livez are always
open, for probes. The rules for keys themselves are in keys.py.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPBearer
from starlette.responses import HTMLResponse, JSONResponse

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.keys import read_key_file
from llamagrid.gateway.settings import Access, GatewaySettings

OPENAPI_URL = "/openapi.json"


def api_keys(settings: GatewaySettings) -> tuple[str, ...]:
    """Every accepted key: --api-key's, then the key file's (ApiKeyError: a bad file)."""
    keys = [key.get_secret_value() for key in settings.api_key]
    if settings.api_key_file:
        keys += read_key_file(settings.api_key_file)
    return tuple(dict.fromkeys(keys))


class ApiKeyCheck:
    """A dependency that refuses (401) requests without one of the keys as a bearer token.

    Keys are compared as SHA-256 digests, each in constant time and all of them every time, so
    the answer's timing says nothing about a key's length, characters or position in the list.
    """

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ValueError("ApiKeyCheck needs at least one key")
        self._digests = [hashlib.sha256(key.encode()).digest() for key in keys]
        self._bearer = HTTPBearer(auto_error=False)

    async def __call__(self, request: Request) -> None:
        credentials = await self._bearer(request)
        given = hashlib.sha256(credentials.credentials.encode() if credentials else b"").digest()
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(given, digest)
        if not matched:
            message = "Missing or invalid API key: send 'Authorization: Bearer <key>'."
            raise OpenAIError(401, message, "authentication_error", code="invalid_api_key")


def dependencies(check: ApiKeyCheck | None, access: Access = "key") -> list[DependsParam]:
    """The route dependencies for a route under ``access`` (not for ``off``: no route at all)."""
    if check is None or access == "open":
        return []
    return [Depends(check)]


def install_docs(app: FastAPI, check: ApiKeyCheck | None, access: Access) -> None:
    """/openapi.json, /docs and /redoc under ``access`` (the app's own are turned off)."""
    if access == "off":
        return
    needs = dependencies(check, access)
    title = f"{app.title} - API docs"

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=needs)
    async def openapi() -> JSONResponse:
        """The OpenAPI schema of the gateway."""
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=needs)
    async def swagger_ui() -> HTMLResponse:
        """Swagger UI over the schema."""
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=title)

    @app.get("/redoc", include_in_schema=False, dependencies=needs)
    async def redoc() -> HTMLResponse:
        """ReDoc over the schema."""
        return get_redoc_html(openapi_url=OPENAPI_URL, title=title)
