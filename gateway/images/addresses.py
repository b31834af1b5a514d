"""Which hosts an image may be fetched from: the operator's allow-list, then the address.

An address is fetchable only when it is a global unicast address. Loopback, link-local,
private (RFC 1918, unique local fc00::/7, shared 100.64/10), multicast, reserved, unspecified and
documentation addresses never are, whatever the allow-list says, and neither is an IPv6 address
that carries one of those IPv4 addresses inside it (v4-mapped ::ffff:a.b.c.d, 6to4 2002::/16,
NAT64 64:ff9b::/96), nor a Teredo tunnel address (2001::/32).
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: NAT64's well-known prefix (RFC 6052): the last 32 bits are an IPv4 address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` may never be fetched from, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.teredo is not None:
            return "it is a Teredo tunnel address"
        embedded = _embedded_v4(address)
        if embedded is not None:
            inner = refusal(embedded)
            return None if inner is None else f"it carries the IPv4 address {embedded}: {inner}"
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("not globally reachable", not address.is_global),
    )
    for name, matches in kinds:
        if matches:
            return f"it is a {name} address"
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that do."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address (IPv6 with or without brackets), or None for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether the allow-list names ``host``: exactly (names compared without case or a final
    dot, IP literals as addresses), or under a ``*.domain`` entry (a name below domain, not
    domain itself)."""
    name = host.lower().rstrip(".")
    ip = parse_ip(name)
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if ip is not None:
            if parse_ip(entry) == ip:
                return True
        elif entry.startswith("*."):
            if name.endswith(entry[1:]) and len(name) > len(entry) - 1:
                return True
        elif entry == name:
            return True
    return False
