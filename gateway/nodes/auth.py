"""Who may call the node API: admin keys, separate from the user API keys.

Admin keys come from --admin-key / LLAMAGRID_GATEWAY_ADMIN_KEY and --admin-key-file, with the
same rules as user keys (gateway/keys.py). A key may not be both an admin and a user key: a
user could then manage the fleet.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request
from fastapi.security import HTTPBearer

from llamagrid.gateway.errors import OpenAIError
from llamagrid.gateway.keys import ApiKeyError, read_key_file
from llamagrid.gateway.nodes.service import NodeRegistry
from llamagrid.gateway.settings import GatewaySettings


def admin_keys(settings: GatewaySettings, user_keys: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Every admin key (none: no node API); ApiKeyError for a bad file or a shared key."""
    keys = [key.get_secret_value() for key in settings.admin_key]
    if settings.admin_key_file:
        keys += read_key_file(settings.admin_key_file)
    if set(keys) & set(user_keys):
        raise ApiKeyError("an admin key is also a user API key: give the node API its own key")
    return tuple(dict.fromkeys(keys))


class AdminKeyCheck:
    """A dependency: 401 without an admin key, 403 for a user key, then the rate limit.

    Keys are compared as SHA-256 digests in constant time, every key every time (as auth.py).
    """

    def __init__(
        self, admin_keys: tuple[str, ...], user_keys: tuple[str, ...], registry: NodeRegistry
    ) -> None:
        if not admin_keys:
            raise ValueError("AdminKeyCheck needs at least one admin key")
        self._admin = [_digest(key) for key in admin_keys]
        self._user = [_digest(key) for key in user_keys]
        self._bearer = HTTPBearer(auto_error=False)
        self._registry = registry

    async def __call__(self, request: Request) -> None:
        credentials = await self._bearer(request)
        given = _digest(credentials.credentials if credentials else "")
        if not _matches(given, self._admin):
            if credentials and _matches(given, self._user):
                raise OpenAIError(
                    403,
                    "The node API needs an admin key; a user API key cannot use it.",
                    "permission_error",
                    code="admin_key_required",
                )
            raise OpenAIError(
                401,
                "Missing or invalid admin key: send 'Authorization: Bearer <admin key>'.",
                "authentication_error",
                code="invalid_api_key",
            )
        self._registry.rate.take(request.client.host if request.client else "")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _matches(given: bytes, digests: list[bytes]) -> bool:
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(given, digest)
    return matched
