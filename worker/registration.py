"""Self-registration with gateways (LMDeploy's ``--proxy-url``): ``--register-with URL``.

Once the worker is SERVING, one background asyncio task per gateway POSTs the worker's gRPC
address (--advertise-address, default the address it listens on), its model and its heartbeat
interval to ``URL/nodes/register`` with the gateway's admin key, then sends it again every
--register-interval-s: each registration is also the heartbeat, so a gateway that restarted
learns the worker again at the next one. While a gateway cannot be reached or refuses, the
task retries with a backoff that starts at ``FIRST_RETRY_S`` and doubles up to the interval.
On drain or shutdown the tasks stop and the worker POSTs ``URL/nodes/remove`` (best effort,
within ``DEREGISTER_TIMEOUT_S``); a worker that dies without it is ejected by the gateway once
its heartbeats stop.

The tasks run on the gRPC server's event loop and only wait on the network: nothing here
touches the engine or its thread. The admin key comes from --register-key-file or the
``LLAMAGRID_REGISTER_KEY`` environment variable, never from a flag.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)

#: The environment variable holding the admin key (when --register-key-file is not given).
KEY_ENV = "LLAMAGRID_REGISTER_KEY"
#: The first pause after a failed registration; it doubles up to the interval.
FIRST_RETRY_S = 0.5
#: The longest wait for one deregistration at shutdown.
DEREGISTER_TIMEOUT_S = 2.0
#: The longest gateway URL accepted.
MAX_URL_CHARS = 2048
#: An RFC 6750 bearer token (the gateway's rule for keys).
_KEY = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class RegistrationError(ValueError):
    """Registration settings that cannot be used; the message never contains the key."""


def check_gateway_url(url: str) -> str:
    """``url`` without a trailing '/', or ValueError: http(s), a host, no query or user info."""
    if len(url) > MAX_URL_CHARS:
        raise ValueError(f"a --register-with URL is longer than {MAX_URL_CHARS} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--register-with {url[:100]!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("a --register-with URL has no query, fragment or user info")
    return url.rstrip("/")


def check_advertise_address(address: str) -> str:
    """``HOST:PORT`` with a port from 1 to 65535, or ValueError."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or len(address) > 300:
        raise ValueError(f"--advertise-address {address[:100]!r} is not HOST:PORT")
    return address


def read_key(key_file: str, environ: Mapping[str, str]) -> str:
    """The admin key, from the file (first non-comment line) or LLAMAGRID_REGISTER_KEY."""
    if key_file:
        try:
            lines = Path(key_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistrationError(f"{key_file}: cannot read the register key file") from exc
        keys = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        key = keys[0] if keys else ""
        source = key_file
    else:
        key, source = environ.get(KEY_ENV, "").strip(), KEY_ENV
    if not key:
        raise RegistrationError(
            f"--register-with needs the gateway's admin key: {source} holds none "
            f"(give --register-key-file or set {KEY_ENV})"
        )
    if not _KEY.fullmatch(key):
        raise RegistrationError(f"{source}: the admin key is not a bearer token")
    return key


class Registrar:
    """Registers the worker with each gateway and keeps it registered until ``stop``."""

    def __init__(self, gateways: Sequence[str], key: str, interval_s: float) -> None:
        self.gateways = list(gateways)
        self.interval_s = interval_s
        self._headers = {"Authorization": f"Bearer {key}"}
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._address = ""

    def start(self, address: str, models: Sequence[str]) -> None:
        """Start registering ``address`` (serving ``models``) with every gateway."""
        self._address = address
        timeout = httpx.Timeout(min(10.0, max(1.0, self.interval_s)))
        self._client = httpx.AsyncClient(headers=self._headers, timeout=timeout)
        body = {"url": address, "models": list(models), "heartbeat_s": self.interval_s}
        self._tasks = [
            asyncio.create_task(self._keep(gateway, body), name=f"register with {gateway}")
            for gateway in self.gateways
        ]

    async def stop(self) -> None:
        """Stop the heartbeats and deregister from every gateway (best effort)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._client is None:
            return
        await asyncio.gather(*(self._deregister(gateway) for gateway in self.gateways))
        await self._client.aclose()
        self._client = None

    async def _keep(self, gateway: str, body: dict[str, object]) -> None:
        retry_s, failing = FIRST_RETRY_S, False
        while True:
            problem = await self._register(gateway, body)
            if problem is None:
                if failing:
                    log.info("registered with %s again", gateway)
                failing, retry_s = False, FIRST_RETRY_S
                await asyncio.sleep(self.interval_s)
                continue
            if not failing:
                log.warning("cannot register with %s (retrying): %s", gateway, problem)
            failing = True
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, self.interval_s)

    async def _register(self, gateway: str, body: dict[str, object]) -> str | None:
        """None once registered, else why not."""
        assert self._client is not None
        try:
            reply = await self._client.post(f"{gateway}/nodes/register", json=body)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        if reply.status_code != 200:
            return f"HTTP {reply.status_code}: {reply.text[:300]}"
        try:
            answer = reply.json()
        except ValueError:
            return "HTTP 200 but the answer is not JSON (is this a llamagrid gateway?)"
        if isinstance(answer, dict) and answer.get("state") == "registered":
            log.info("registered %s with %s", self._address, gateway)
        return None

    async def _deregister(self, gateway: str) -> None:
        assert self._client is not None
        with contextlib.suppress(httpx.HTTPError, asyncio.TimeoutError):
            reply = await asyncio.wait_for(
                self._client.post(f"{gateway}/nodes/remove", json={"url": self._address}),
                DEREGISTER_TIMEOUT_S,
            )
            if reply.status_code == 200:
                log.info("deregistered from %s", gateway)
            else:
                log.warning("%s refused the deregistration: HTTP %d", gateway, reply.status_code)
            return
        log.warning("could not deregister from %s", gateway)


def advertised_address(configured: str, host: str, port: int) -> str:
    """--advertise-address, else HOST:PORT of the listening socket (the hostname for a
    wildcard host, an IPv6 address in brackets)."""
    if configured:
        return configured
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.gethostname()
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
