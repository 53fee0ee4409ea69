"""pybdev.netaddr: the one loopback rule every listener uses."""

from __future__ import annotations

import pytest

from pybdev.netaddr import bind_address, is_ip_literal, is_loopback_ip


@pytest.mark.parametrize(("text", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("::ffff:127.0.0.1", True), ("::ffff:7f00:1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("0.0.0.0", False), ("::", False),
    ("fe80::1%lo", False), ("2001:db8::1", False),
])
def test_loopback(text: str, loopback: bool) -> None:
    assert is_loopback_ip(text) is loopback


def test_names_are_not_addresses() -> None:
    assert not is_ip_literal("localhost") and not is_ip_literal("evil.example")
    assert is_ip_literal("::ffff:127.0.0.1") and is_ip_literal("fe80::1%eth0")
    with pytest.raises(ValueError):
        is_loopback_ip("localhost")


def test_mapped_addresses_bind_as_ipv4() -> None:
    assert bind_address("::ffff:127.0.0.1") == "127.0.0.1"
    assert bind_address("::1") == "::1" and bind_address("fe80::1%lo") == "fe80::1%lo"
    assert bind_address("localhost") == "localhost"
