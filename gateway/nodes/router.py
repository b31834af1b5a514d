"""The node API's routes: GET /nodes/status, POST /nodes/add, /nodes/remove, /nodes/register.

They exist only when the gateway has an admin key (--admin-key-file or
LLAMAGRID_GATEWAY_ADMIN_KEY; without one every /nodes route is a 404), and every call needs one
as ``Authorization: Bearer <admin key>``: none or a wrong one is a 401, a user API key a 403.
The key is checked before the body is read; a body is at most ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from pydantic import BaseModel, ValidationError

from llamagrid.gateway.errors import TOO_LARGE_CODE, OpenAIError, validation_failure
from llamagrid.gateway.nodes.address import AddressError, parse_address
from llamagrid.gateway.nodes.auth import AdminKeyCheck, admin_keys
from llamagrid.gateway.nodes.schemas import (
    AddNode,
    Registered,
    RegisterNode,
    RemoveNode,
    status_json,
)
from llamagrid.gateway.nodes.service import NodeRegistry
from llamagrid.gateway.pool import WorkerPool
from llamagrid.gateway.settings import GatewaySettings

#: The largest node API request body, in bytes.
MAX_BODY_BYTES = 16 * 1024
_Body = TypeVar("_Body", bound=BaseModel)


def _too_large() -> OpenAIError:
    return OpenAIError(
        413,
        f"A node API request body is at most {MAX_BODY_BYTES} bytes.",
        code=TOO_LARGE_CODE,
        headers={"Connection": "close"},
    )


async def read_bytes(request: Request) -> bytes:
    """The request body, at most ``MAX_BODY_BYTES`` (413 beyond, before reading what is declared
    larger)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def parse_body(body: bytes, model: type[_Body]) -> _Body:
    """The JSON ``body`` as ``model``; a 400 naming the bad fields."""
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        raise validation_failure(errors) from None


def _body_schema(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its body itself (after the key check)."""
    content = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"content": content, "required": required}}


def create_router(registry: NodeRegistry, check: AdminKeyCheck) -> APIRouter:
    """The node API's routes on ``registry``, behind ``check``."""
    router = APIRouter(prefix="/nodes", tags=["nodes"], dependencies=[Depends(check)])

    @router.get("/status")
    async def node_status() -> dict[str, Any]:
        """Every node the gateway routes to: address -> LMDeploy's fields and llamagrid's."""
        return status_json(registry.status())

    @router.post("/add", openapi_extra=_body_schema(AddNode))
    async def add_node(request: Request) -> dict[str, str]:
        """Put a worker (``{"url": "HOST:PORT"}``) in rotation until it is removed."""
        body = parse_body(await read_bytes(request), AddNode)
        fresh = registry.add(body.url)
        return {"url": body.url, "state": "added" if fresh else "already_added"}

    @router.post("/remove", openapi_extra=_body_schema(RemoveNode, required=False))
    async def remove_node(request: Request, node_url: str | None = None) -> dict[str, str]:
        """Drain a worker: ``{"url": ...}`` or LMDeploy's ``?node_url=...``."""
        raw = await read_bytes(request)
        body = parse_body(raw, RemoveNode) if raw.strip() else None
        if (body is None) == (node_url is None):
            raise OpenAIError(
                400,
                'Give the node\'s address once: as {"url": ...} or as ?node_url=...',
                param="url",
            )
        try:
            address = body.url if body is not None else parse_address(node_url or "")
        except AddressError as error:
            raise OpenAIError(400, f"node_url: {error}", param="node_url") from None
        registry.remove(address)
        return {"url": address, "state": "removed"}

    @router.post("/register", openapi_extra=_body_schema(RegisterNode))
    async def register_node(request: Request) -> Registered:
        """A worker's registration or heartbeat: send it again every ``heartbeat_s``."""
        body = parse_body(await read_bytes(request), RegisterNode)
        fresh, lease = registry.register(body.url, body.models, body.heartbeat_s)
        return Registered(
            url=body.url, state="registered" if fresh else "renewed", lease_s=round(lease, 3)
        )

    return router


def install_nodes(
    app: FastAPI, settings: GatewaySettings, pool: WorkerPool, user_keys: tuple[str, ...]
) -> NodeRegistry | None:
    """Add the node API to ``app`` when the settings give an admin key; its registry (to
    start and stop with the app), or None. Raises ApiKeyError for an unusable admin key file or
    an admin key that is also a user key."""
    keys = admin_keys(settings, user_keys)
    if not keys:
        return None
    registry = NodeRegistry(
        pool, settings.max_nodes, settings.node_missed_heartbeats, settings.node_rate_per_s
    )
    app.include_router(create_router(registry, AdminKeyCheck(keys, user_keys, registry)))
    return registry
