"""NBD export addresses: the URI forms QEMU and libnbd use, plus QEMU's legacy syntax.

Accepted:

* ``nbd://HOST[:PORT]/NAME`` -- TCP, port 10809 by default; ``HOST`` may be ``[IPv6]``.
  ``NAME`` is percent-decoded; ``nbd://HOST`` or ``nbd://HOST/`` name the default
  export ``""``.
* ``nbd+unix:///NAME?socket=PATH`` -- a Unix socket.
* ``nbd:HOST:PORT[:exportname=NAME]`` and ``nbd:unix:PATH[:exportname=NAME]`` -- QEMU's
  legacy ``-drive file=`` syntax (only where ``legacy=True``: the client bdev takes it,
  ``nbd_start_disk`` does not, so that one spelling names one export in listings).

TLS forms (``nbds://``, ``nbds+unix://``) are refused: pybdev speaks no TLS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

DEFAULT_PORT = 10809


class UriError(ValueError):
    """The text is not an NBD address pybdev understands; the message says why."""


@dataclass(frozen=True)
class NbdAddress:
    """Where an export lives: ``transport`` ``"tcp"`` (host, port) or ``"unix"`` (path)."""

    transport: Literal["tcp", "unix"]
    name: str
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""

    def uri(self) -> str:
        """The canonical URI (what libnbd and QEMU accept)."""
        name = quote(self.name, safe="")
        if self.transport == "unix":
            return f"nbd+unix:///{name}?socket={quote(self.path, safe='/')}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nbd://{host}:{self.port}/{name}"

    def with_port(self, port: int) -> NbdAddress:
        return NbdAddress(self.transport, self.name, self.host, port, self.path)


def is_uri(text: str) -> bool:
    """True when ``text`` is meant as an NBD address rather than a device path."""
    return "://" in text or text.startswith("nbd:")


def parse(text: str, *, legacy: bool = False) -> NbdAddress:
    """Parse an NBD address; raises :class:`UriError` with the reason."""
    if legacy and text.startswith("nbd:") and not text.startswith(("nbd://", "nbd+")):
        return _parse_legacy(text)
    try:
        parts = urlsplit(text)
    except ValueError as e:
        raise UriError(str(e)) from None
    scheme = parts.scheme.lower()
    if scheme in ("nbds", "nbds+unix", "nbds+vsock"):
        raise UriError(f"{scheme}:// needs TLS, which pybdev does not support")
    if parts.fragment:
        raise UriError("an NBD URI has no #fragment")
    name = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if scheme == "nbd":
        if parts.query:
            raise UriError(f"unsupported query {parts.query!r} (nbd:// takes none)")
        try:
            host, port = parts.hostname, parts.port
        except ValueError as e:
            raise UriError(f"bad port: {e}") from None
        if not host:
            raise UriError("nbd:// needs a host, e.g. nbd://127.0.0.1/NAME")
        if parts.username or parts.password:
            raise UriError("an NBD URI carries no user or password")
        return NbdAddress("tcp", name, host=host, port=DEFAULT_PORT if port is None else port)
    if scheme == "nbd+unix":
        if parts.netloc:
            raise UriError("nbd+unix:// takes no host: use nbd+unix:///NAME?socket=PATH")
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = sorted(set(query) - {"socket"})
        if unknown:
            raise UriError(f"unsupported query parameter(s) {', '.join(unknown)}")
        sockets = query.get("socket", [])
        if len(sockets) != 1 or not sockets[0]:
            raise UriError("nbd+unix:// needs exactly one ?socket=PATH")
        return NbdAddress("unix", name, path=os.path.abspath(sockets[0]))
    raise UriError(
        f"unknown scheme {parts.scheme!r}: use nbd://HOST[:PORT]/NAME or "
        "nbd+unix:///NAME?socket=PATH"
    )


def _parse_legacy(text: str) -> NbdAddress:
    rest = text[len("nbd:"):]
    name = ""
    marker = ":exportname="
    if marker in rest:
        rest, name = rest.split(marker, 1)
    if rest.startswith("unix:"):
        path = rest[len("unix:"):]
        if not path:
            raise UriError("nbd:unix: needs a socket path")
        return NbdAddress("unix", name, path=os.path.abspath(path))
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep:
            raise UriError("unterminated [IPv6] address")
        port_text = tail[1:] if tail.startswith(":") else tail
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise UriError("nbd:HOST:PORT needs a host")
    if not port_text:
        port = DEFAULT_PORT
    elif port_text.isdigit() and int(port_text) < 65536:
        port = int(port_text)
    else:
        raise UriError(f"bad port {port_text!r}")
    return NbdAddress("tcp", name, host=host, port=port)
