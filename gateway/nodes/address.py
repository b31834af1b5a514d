"""A node's address as the node API takes it: a worker's gRPC ``HOST:PORT``, checked strictly.

The node API is the one place where a caller names an address the gateway will dial, so the
rules are narrow: a DNS name (RFC 1123 labels), an IPv4 address or a bracketed IPv6 address,
then a port from 1 to 65535; optionally written ``grpc://HOST:PORT`` (the scheme is dropped).
No other scheme (``http://`` is an HTTP server, not a worker), no path, no user info, no
whitespace, at most ``MAX_ADDRESS_CHARS`` characters. Pure: no web framework.
"""

from __future__ import annotations

import ipaddress
import re

#: The longest address accepted, scheme included.
MAX_ADDRESS_CHARS = 300
#: The one scheme accepted in front of HOST:PORT.
SCHEME = "grpc://"
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class AddressError(ValueError):
    """An address the node API refuses; the message says which rule it breaks."""


def _host_problem(host: str) -> str | None:
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "the bracketed host is not an IPv6 address"
        return None
    if len(host) > 253:
        return "the host name is longer than 253 characters"
    labels = host.removesuffix(".").split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return "the host is not a DNS name, an IPv4 address or a bracketed IPv6 address"
    if labels[-1].isdigit():  # all-numeric: it must be a dotted IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "the host is not a valid IPv4 address"
    return None


def parse_address(value: str) -> str:
    """The canonical ``HOST:PORT`` of ``value``; AddressError says why it is refused."""
    if len(value) > MAX_ADDRESS_CHARS:
        raise AddressError(f"the address is longer than {MAX_ADDRESS_CHARS} characters")
    text = value[len(SCHEME) :] if value.lower().startswith(SCHEME) else value
    if "://" in text:
        raise AddressError(
            "the only scheme accepted is grpc://; give the worker's gRPC address as HOST:PORT"
        )
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise AddressError("the address is not HOST:PORT")
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 1 <= int(port) <= 65535:
        raise AddressError("the port is not a number from 1 to 65535")
    problem = _host_problem(host)
    if problem:
        raise AddressError(problem)
    return f"{host.lower()}:{int(port)}"
