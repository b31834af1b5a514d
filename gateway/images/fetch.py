"""Fetching an image over http(s), for an operator who allows it (--image-fetch-allow-hosts).

One fetch: the host must be on the allow-list; its name is resolved once and every address it
resolves to must be fetchable (addresses.py), else nothing is fetched; the connection then goes
to the checked address itself, with the URL's name in the Host header and in TLS's SNI (the
certificate is verified against that name), so that a second DNS answer (DNS rebinding) can
never point it elsewhere. Redirects are not followed. The response must be a 200 with an image
Content-Type and no content coding; its body is read as a stream and dropped as soon as it
passes the byte cap. The whole fetch, resolution included, has one deadline. Proxy variables
of the environment are ignored, and no connection is kept or shared between fetches.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
from dataclasses import dataclass

import httpx

from llamagrid.gateway.errors import OpenAIError, invalid_request
from llamagrid.gateway.images.addresses import IPAddress, host_allowed, parse_ip, refusal
from llamagrid.gateway.images.loaded import LoadedImage
from llamagrid.gateway.images.policy import ImagePolicy, image_type, shown, too_large

#: Response codings that leave the bytes as they are.
_IDENTITY = ("", "identity")


@dataclass(frozen=True)
class Target:
    """Where one fetch connects: the URL as given, and the checked address to dial."""

    url: httpx.URL
    address: IPAddress


def fetch_refused(url: str, why: str, param: str) -> OpenAIError:
    """The 400 for a URL the gateway will not fetch."""
    return invalid_request(f"The image URL {shown(url)} is not fetched: {why}", param)


async def fetch(url: str, policy: ImagePolicy, param: str) -> LoadedImage:
    """The image at an http(s) URL, fetched under ``policy``."""
    try:
        async with asyncio.timeout(policy.fetch_timeout_s):
            target = await resolve(url, policy, param)
            return await fetch_pinned(target, policy.fetch_cap, param, policy.fetch_ca_file)
    except TimeoutError:
        raise invalid_request(
            f"Fetching the image {shown(url)} took longer than {policy.fetch_timeout_s:g} s.",
            param,
        ) from None


async def resolve(url: str, policy: ImagePolicy, param: str) -> Target:
    """The checked address to fetch ``url`` from: allowed host, every address fetchable."""
    if not policy.fetch_hosts:
        raise fetch_refused(
            url,
            "fetching images is off on this gateway. Send the image inline as a data URL "
            "(data:image/png;base64,...), or ask the operator to allow the host with "
            "--image-fetch-allow-hosts.",
            param,
        )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise invalid_request(f"The image URL {shown(url)} is not a valid URL.", param) from None
    host = parsed.raw_host.decode("ascii")  # IDNA names as their ASCII form
    if not host:
        raise invalid_request(f"The image URL {shown(url)} has no host.", param)
    if parsed.userinfo:
        raise fetch_refused(url, "URLs with credentials (user@host) are not fetched.", param)
    if not host_allowed(host, policy.fetch_hosts):
        raise fetch_refused(url, f"the host {shown(host)} is not on the allow-list.", param)
    addresses = await _addresses(host, parsed.port or _default_port(parsed.scheme), url, param)
    for address in addresses:
        why = refusal(address)
        if why is not None:
            raise fetch_refused(url, f"{shown(host)} resolves to {address}, and {why}.", param)
    return Target(parsed, addresses[0])


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


async def _addresses(host: str, port: int, url: str, param: str) -> list[IPAddress]:
    """Every address ``host`` stands for (itself, for an IP literal)."""
    literal = parse_ip(host)
    if literal is not None:
        return [literal]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError):
        raise fetch_refused(url, f"the name {shown(host)} does not resolve.", param) from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = parse_ip(str(sockaddr[0]).partition("%")[0])
        if address is None:
            raise fetch_refused(url, f"{shown(host)} resolves to an odd address.", param)
        addresses.append(address)
    if not addresses:
        raise fetch_refused(url, f"the name {shown(host)} does not resolve.", param)
    return addresses


@functools.cache
def _tls(ca_file: str) -> ssl.SSLContext | bool:
    """How https fetches verify a host: its certificate checked against the URL's name, and
    chaining to the CAs of ``ca_file`` (empty: httpx's default, the public ones)."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


async def fetch_pinned(
    target: Target, max_bytes: int, param: str, ca_file: str = ""
) -> LoadedImage:
    """GET ``target.url`` from ``target.address`` (Host header and SNI from the URL; an https
    host's certificate verified against that name)."""
    url = target.url
    shown_url = str(url)
    host_header = url.netloc.decode("ascii").rpartition("@")[2]
    dialled = url.copy_with(host=str(target.address))
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    headers = {"Host": host_header, "Accept": "image/*", "Accept-Encoding": "identity"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=0)
    # No timeout of httpx's own: the caller's deadline covers the whole fetch.
    async with httpx.AsyncClient(
        trust_env=False, follow_redirects=False, limits=limits, timeout=None, verify=_tls(ca_file)
    ) as client:
        request = client.build_request("GET", dialled, headers=headers, extensions=extensions)
        try:
            response = await client.send(request, stream=True)
        except httpx.HTTPError as error:
            why = f"the request failed ({type(error).__name__})."
            raise fetch_refused(shown_url, why, param) from None
        try:
            mime = _check_response(response, shown_url, max_bytes, param)
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) > max_bytes:
                    raise too_large(f"The image at {shown(shown_url)}", max_bytes, param)
        except httpx.HTTPError as error:
            why = f"reading it failed ({type(error).__name__})."
            raise fetch_refused(shown_url, why, param) from None
        finally:
            await response.aclose()
    if not data:
        raise fetch_refused(shown_url, "the response is empty.", param)
    return LoadedImage(bytes(data), mime)


def _check_response(response: httpx.Response, url: str, max_bytes: int, param: str) -> str:
    """The image type of an acceptable response; a 400 for any other response."""
    if response.is_redirect:
        raise fetch_refused(
            url,
            f"it answers a redirect ({response.status_code}), which the gateway does not follow.",
            param,
        )
    if response.status_code != 200:
        raise fetch_refused(url, f"it answers {response.status_code}, not 200.", param)
    coding = response.headers.get("Content-Encoding", "").strip().lower()
    if coding not in _IDENTITY:
        raise fetch_refused(url, f"it is sent with a content coding ({shown(coding)}).", param)
    content_type = response.headers.get("Content-Type", "").partition(";")[0]
    try:
        mime = image_type(content_type, param)
    except OpenAIError:
        raise fetch_refused(
            url, f"its Content-Type {shown(content_type)} is not an image type.", param
        ) from None
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large(f"The image at {shown(url)}", max_bytes, param)
    return mime
