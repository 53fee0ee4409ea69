"""Address rules shared by every listener (HTTP JSON-RPC, NBD): one notion of loopback.

An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is the IPv4 address it carries: a
dual-stack socket bound to it accepts only that IPv4 address, so it is loopback exactly
when the IPv4 address is. A zone suffix (``fe80::1%eth0``) does not change the answer.
"""

from __future__ import annotations

import ipaddress


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``text`` names (zone dropped, IPv4-mapped unwrapped); ValueError if none."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def bind_address(text: str) -> str:
    """The address to bind for ``text``: an IPv4-mapped IPv6 address as plain IPv4, since
    asyncio's IPv6 listeners are IPV6_V6ONLY and cannot bind a mapped address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text  # a zone-qualified or non-address text is bound as given
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return text


def is_loopback_ip(text: str) -> bool:
    """Whether the IP address ``text`` is a loopback address; ValueError if not an address."""
    return parse_ip(text).is_loopback


def is_ip_literal(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address rather than a host name."""
    try:
        parse_ip(text)
    except ValueError:
        return False
    return True


__all__ = ["bind_address", "is_ip_literal", "is_loopback_ip", "parse_ip"]
