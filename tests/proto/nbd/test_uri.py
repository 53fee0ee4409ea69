"""NBD addresses: the URI forms of QEMU and libnbd, and QEMU's legacy syntax."""

from __future__ import annotations

import pytest

from pybdev.proto.nbd.uri import NbdAddress, UriError, is_uri, parse


@pytest.mark.parametrize(("text", "expected"), [
    ("nbd://127.0.0.1/Malloc0", NbdAddress("tcp", "Malloc0", host="127.0.0.1", port=10809)),
    ("nbd://127.0.0.1:4000/a%2Fb", NbdAddress("tcp", "a/b", host="127.0.0.1", port=4000)),
    ("nbd://[::1]:10810/x", NbdAddress("tcp", "x", host="::1", port=10810)),
    ("nbd://localhost", NbdAddress("tcp", "", host="localhost")),
    ("nbd://h:0/", NbdAddress("tcp", "", host="h", port=0)),
    ("nbd+unix:///disk?socket=/run/n.sock", NbdAddress("unix", "disk", path="/run/n.sock")),
    ("nbd+unix:///?socket=/run/n.sock", NbdAddress("unix", "", path="/run/n.sock")),
])
def test_uri_forms(text: str, expected: NbdAddress) -> None:
    assert parse(text) == expected
    assert parse(text, legacy=True) == expected
    assert is_uri(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("nbd:127.0.0.1:10809", NbdAddress("tcp", "", host="127.0.0.1")),
    ("nbd:host:4000:exportname=disk0", NbdAddress("tcp", "disk0", host="host", port=4000)),
    ("nbd:[::1]:4000:exportname=a:b", NbdAddress("tcp", "a:b", host="::1", port=4000)),
    ("nbd:unix:/tmp/s.sock", NbdAddress("unix", "", path="/tmp/s.sock")),
    ("nbd:unix:/tmp/s.sock:exportname=x", NbdAddress("unix", "x", path="/tmp/s.sock")),
])
def test_qemu_legacy_forms(text: str, expected: NbdAddress) -> None:
    assert parse(text, legacy=True) == expected
    with pytest.raises(UriError):
        parse(text)  # only the client bdev takes them


@pytest.mark.parametrize("text", [
    "nbds://h/x", "nbds+unix:///x?socket=/s", "nbd+unix:///x", "nbd+unix://h/x?socket=/s",
    "nbd+unix:///x?socket=/s&tls=require", "nbd://h/x?tls=1", "nbd://:10809/x",
    "nbd://h:99999/x", "nbd://u:p@h/x", "http://h/x", "nbd://h/x#frag",
])
def test_refused(text: str) -> None:
    with pytest.raises(UriError):
        parse(text)


def test_canonical_uri_round_trips() -> None:
    for addr in (NbdAddress("tcp", "a b/c", host="::1", port=4),
                 NbdAddress("unix", "d", path="/s")):
        assert parse(addr.uri()) == addr
    assert NbdAddress("tcp", "x", host="127.0.0.1").with_port(5).uri() == "nbd://127.0.0.1:5/x"
    assert not is_uri("/dev/nbd0")
