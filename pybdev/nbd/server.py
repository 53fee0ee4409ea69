"""The network NBD export: bdevs served to NBD clients (QEMU, libnbd, nbd-client, fio).

Layout
    :class:`NetworkServer` (one per target) keeps the listeners, keyed by bound address.
    A :class:`Listener` serves every :class:`NetworkExport` on its address; clients pick
    one by export name in the handshake (``NBD_OPT_LIST`` lists them all).  Each client
    connection is an :class:`NbdConnection`.

The transmission phase (hot path, limits, large writes) is
:class:`pybdev.nbd.transmission.Transmission`, shared with the kernel export; this module
adds the listeners and the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pybdev.bdev.core import Bdev
from pybdev.errors import OperationError
from pybdev.listener import (
    Identity,
    ListenError,
    listen_tcp,
    listen_unix,
    unix_identity,
    unlink_unix,
)
from pybdev.nbd.export import NbdExport
from pybdev.nbd.transmission import (
    DEFAULT_MAX_BUFFERED,
    MAX_PAYLOAD,
    PayloadBudget,
    Transmission,
)
from pybdev.netaddr import bind_address, is_loopback_ip
from pybdev.peerwarn import WARNINGS, peer_host, quote
from pybdev.proto import nbd as proto
from pybdev.proto.nbd.uri import NbdAddress

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

log = logging.getLogger("pybdev.nbd")

HANDSHAKE_BUFFER = 4096  # a connection's buffer until its handshake ends
DEFAULT_MAX_CONNECTIONS = 256  # per listener
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to the end of the handshake
DRAIN_TIMEOUT = 5.0


class NetworkExport(NbdExport):
    """A bdev served on a listener under an export name."""

    kind = "network"

    def __init__(self, subsystem: NbdSubsystem, bdev_name: str, nbd_device: str,
                 address: NbdAddress) -> None:
        super().__init__(subsystem, bdev_name, nbd_device)
        self.address = address
        self.name = address.name
        self.listener: Listener | None = None
        self.connections: set[NbdConnection] = set()
        self._info: proto.ExportInfo | None = None
        self.connections_total = 0  # for /metrics: clients served so far

    # -- NbdExport ----------------------------------------------------------------------------
    async def start(self) -> None:
        self.open_bdev()
        try:
            self.listener = await self.subsystem.network.attach(self)
        except BaseException:
            self.close_bdev()
            raise
        if self.stopping:
            # The bdev went away while the listener was being set up.
            await self.subsystem.network.detach(self)
            raise OperationError(errno.ENODEV, f"bdev {self.bdev_name} was removed")
        if self.listener.port_chosen:
            self.nbd_device = self.address.with_port(self.listener.port).uri()

    # -- stop hooks (pybdev.export.base) ---------------------------------------------------
    # New handshakes stop finding this export as ``stopping`` is set (Listener.find checks
    # it); it leaves its listener only after the drain, as the last export closes it.
    async def drain(self, drain: bool) -> None:
        conns = list(self.connections)
        for conn in conns:
            conn.shutdown(drain)
        if not conns:
            return
        _, pending = await asyncio.wait([c.closed for c in conns], timeout=DRAIN_TIMEOUT)
        for conn in conns:
            if not conn.closed.done():
                conn.abort()
        if pending:
            await asyncio.wait(pending, timeout=1.0)

    def abort(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    async def release(self) -> None:
        if self.listener is not None:
            await self.subsystem.network.detach(self)

    def on_resize(self, bdev: Bdev) -> None:
        self._info = None
        for conn in self.connections:
            conn.resized(bdev.size)

    # -- what the handshake advertises -------------------------------------------------------
    def export_info(self) -> proto.ExportInfo:
        if self._info is None:
            assert self.desc is not None
            self._info = describe_export(self.name, self.desc.bdev)
        return self._info


def transmission_flags(bdev: Bdev) -> int:
    """Transmission flags from what the bdev supports (HAS_FLAGS is added by proto)."""
    flags = proto.NBD_FLAG_CAN_MULTI_CONN | proto.NBD_FLAG_SEND_CACHE | proto.NBD_FLAG_SEND_DF
    if not bdev.supports("write"):
        return flags | proto.NBD_FLAG_READ_ONLY
    flags |= proto.NBD_FLAG_SEND_FUA
    if bdev.supports("flush"):
        flags |= proto.NBD_FLAG_SEND_FLUSH
    if bdev.supports("unmap"):
        flags |= proto.NBD_FLAG_SEND_TRIM
    if bdev.supports("write_zeroes"):
        flags |= proto.NBD_FLAG_SEND_WRITE_ZEROES
    return flags


def describe_export(name: str, bdev: Bdev) -> proto.ExportInfo:
    """The handshake's view of a bdev: size, flags and block size constraints."""
    bs = bdev.block_size
    # proto.md wants powers of two; a bdev with another block size (520, 4160, ...) is
    # advertised with the largest power of two dividing it, and the descriptor still
    # refuses what is not a multiple of the real block size.
    minimum = bs & -bs
    minimum = min(minimum, proto.MAX_MIN_BLOCK_SIZE)
    preferred = max(minimum, 4096, bdev.physical_block_size & -bdev.physical_block_size)
    # The bdev's max_io_bytes is not advertised: the bdev layer splits larger requests.
    return proto.ExportInfo(
        name=name, size=bdev.size, flags=transmission_flags(bdev),
        min_block_size=minimum, preferred_block_size=preferred, max_block_size=MAX_PAYLOAD,
        description=f"pybdev bdev {bdev.name} ({bdev.product_name})",
    )


# ============================================================================================
# Listeners
# ============================================================================================


class Listener:
    """One bound address and the exports served there."""

    def __init__(self, network: NetworkServer, key: tuple[Any, ...], address: NbdAddress) -> None:
        self.network = network
        self.key = key
        self.address = address
        self.exports: dict[str, NetworkExport] = {}
        self.connections: set[NbdConnection] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.port = address.port
        self.port_chosen = False
        self._unix_identity: Identity | None = None

    def describe(self) -> str:
        a = self.address
        return f"unix:{a.path}" if a.transport == "unix" else f"{a.host}:{self.port}"

    # -- handshake callbacks -------------------------------------------------------------------
    def find(self, name: str) -> NetworkExport | None:
        export = self.exports.get(name)
        if export is None and name == "" and len(self.exports) == 1:
            # The default export: unambiguous when the address serves only one.
            export = next(iter(self.exports.values()))
        if export is None or export.stopping:
            return None
        return export

    def lookup(self, name: str) -> proto.ExportInfo | None:
        export = self.find(name)
        return None if export is None else export.export_info()

    def list_exports(self) -> list[proto.ExportInfo]:
        return [e.export_info() for e in self.exports.values() if not e.stopping]

    def connection_factory(self) -> NbdConnection:
        return NbdConnection(self)

    # -- life -----------------------------------------------------------------------------
    async def bind(self) -> None:
        loop = asyncio.get_running_loop()
        a = self.address
        try:
            if a.transport == "unix":
                socks = [listen_unix(a.path)]
                self._unix_identity = unix_identity(a.path)
            else:
                hosts = list(self.key[1])
                if a.port == 0:
                    hosts = hosts[:1]  # one address per chosen port: the URI names one
                socks = await listen_tcp(hosts, a.port)
        except ListenError as e:
            hint = ("; stop it or export on another port (nbd://HOST:PORT/NAME)"
                    if e.errno == errno.EADDRINUSE and a.transport != "unix" else "")
            raise OperationError(e.errno or errno.EIO, f"NBD: cannot listen: {e}{hint}") from None
        try:
            for sock in socks:
                if a.transport == "unix":
                    server = await loop.create_unix_server(self.connection_factory, sock=sock)
                else:
                    server = await loop.create_server(self.connection_factory, sock=sock)
                self.servers.append(server)
        except BaseException:
            for sock in socks:
                sock.close()
            await self.close()
            raise
        if a.transport != "unix" and a.port == 0:
            self.port = socks[0].getsockname()[1]
            self.port_chosen = True
        log.info("NBD listening on %s", self.describe())

    async def close(self) -> None:
        servers, self.servers = self.servers, []
        for server in servers:
            server.close()
        for conn in list(self.connections):
            conn.abort()
        for server in servers:
            # 3.11's wait_closed can hang while connections linger; they were aborted.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._unix_identity is not None:
            unlink_unix(self.address.path, self._unix_identity)
            self._unix_identity = None
        log.info("NBD listener on %s closed", self.describe())


class NetworkServer:
    """Every listener of a target; exports on the same address share one listener."""

    def __init__(self, allow_remote: bool = False,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
                 max_buffered: int = DEFAULT_MAX_BUFFERED, poll_us: int = 0) -> None:
        self.allow_remote = allow_remote
        self.poll_us = poll_us  # adaptive polling window per connection (0: off)
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.budget = PayloadBudget(max_buffered)
        self.listeners: dict[tuple[Any, ...], Listener] = {}
        self._lock = asyncio.Lock()
        #: Told of ``connection_open`` / ``connection_close`` with their details (the
        #: subsystem points it at the target's event hub).
        self.events: Callable[[str, dict[str, Any]], object] | None = None

    async def _key(self, a: NbdAddress) -> tuple[Any, ...]:
        if a.transport == "unix":
            return ("unix", a.path)
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(a.host, a.port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as e:
            raise OperationError(errno.EINVAL, f"cannot resolve {a.host}: {e}") from None
        ips = tuple(sorted({bind_address(str(info[4][0])) for info in infos}))
        remote = [ip for ip in ips if not is_loopback_ip(ip)]
        if remote and not self.allow_remote:
            raise OperationError(
                errno.EACCES,
                f"{a.host} ({', '.join(remote)}) is not a loopback address; start the target "
                "with --nbd-allow-remote to serve NBD beyond this host (no TLS, no auth)")
        return ("tcp", ips, a.port)

    async def attach(self, export: NetworkExport) -> Listener:
        a = export.address
        key = await self._key(a)
        async with self._lock:
            listener = self.listeners.get(key) if a.port != 0 or a.transport == "unix" else None
            if listener is None:
                listener = Listener(self, key, a)
                await listener.bind()
                key = key if not listener.port_chosen else (*key[:2], listener.port)
                listener.key = key
                self.listeners[key] = listener
            elif export.name in listener.exports:
                raise OperationError(errno.EBUSY, f"export {export.name!r} already served on "
                                                  f"{listener.describe()}")
            listener.exports[export.name] = export
            return listener

    async def detach(self, export: NetworkExport) -> None:
        listener = export.listener
        if listener is None:
            return
        async with self._lock:
            if listener.exports.get(export.name) is export:
                del listener.exports[export.name]
            if not listener.exports and self.listeners.get(listener.key) is listener:
                del self.listeners[listener.key]
                await listener.close()

    async def close(self) -> None:
        for listener in list(self.listeners.values()):
            await listener.close()
        self.listeners.clear()


# ============================================================================================
# Connections
# ============================================================================================


class NbdConnection(Transmission):
    """One client: the handshake, then the transmission phase on a shared descriptor."""

    export: NetworkExport | None

    def __init__(self, listener: Listener) -> None:
        network = listener.network
        # A small buffer until the handshake ends: an idle connection costs little.
        super().__init__(network.budget, network.poll_us, HANDSHAKE_BUFFER)
        self.listener = listener
        self._handshake: proto.ServerHandshake | None = proto.ServerHandshake(
            self._lookup, exports=listener.list_exports)
        self._handshake_timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix"
        self.peer_host = peer_host(peer)
        listener = self.listener
        if len(listener.connections) >= listener.network.max_connections:
            WARNINGS.warn(log, "nbd_connection_limit", self.peer_host,
                          "NBD client %s refused on %s: %d connections, the limit "
                          "(--nbd-max-connections)", self.peer, listener.describe(),
                          len(listener.connections))
            self._closing = True
            self.transport.abort()
            return
        listener.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._handshake is not None
        self._handshake_timer = asyncio.get_running_loop().call_later(
            listener.network.handshake_timeout, self._handshake_expired)
        self.transport.write(self._handshake.data_to_send())
        log.debug("NBD client %s connected to %s", self.peer, listener.describe())

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self.listener.connections.discard(self)
        if self.export is not None:
            self.export.connections.discard(self)
            events = self.listener.network.events
            if events is not None:
                events("connection_close", {"export": self.export.nbd_device,
                                            "protocol": "nbd", "peer": self.peer})
        super().connection_lost(exc)
        log.debug("NBD client %s gone%s", self.peer, f": {exc}" if exc else "")

    # -- handshake -----------------------------------------------------------------------------
    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._handshake is not None and self.transport is not None:
            WARNINGS.warn(log, "nbd_handshake_timeout", self.peer_host,
                          "NBD client %s on %s: no handshake within %.0f s "
                          "(--nbd-handshake-timeout); closing", self.peer,
                          self.listener.describe(), self.listener.network.handshake_timeout)
            self._closing = True
            self.abort()

    def _lookup(self, name: str) -> proto.ExportInfo | None:
        info = self.listener.lookup(name)
        if info is None:
            WARNINGS.warn(log, "nbd_unknown_export", self.peer_host,
                          "NBD client %s on %s asked for export %s, which is not served there",
                          self.peer, self.listener.describe(), quote(name))
        return info

    def _feed_handshake(self) -> None:
        hs = self._handshake
        assert hs is not None and self.transport is not None
        event = hs.receive_data(self._view[: self._end])
        self._start = self._end = 0
        out = hs.data_to_send()
        if out:
            self.transport.write(out)
        if event is None:
            return
        self._handshake = None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        if isinstance(event, proto.Closed):
            log.debug("NBD client %s: handshake ended: %s", self.peer, event.reason)
            self._closing = True
            self._close()
            return
        export = self.listener.find(event.export.name)
        if export is None or export.desc is None:
            log.warning("NBD client %s on %s: export %r went away during the handshake",
                        self.peer, self.listener.describe(), event.export.name)
            self._closing = True
            self.abort()
            return
        self._begin_transmission(export, event)

    def _begin_transmission(self, export: NetworkExport, ready: proto.TransmissionReady) -> None:
        export.connections.add(self)
        export.connections_total += 1
        events = self.listener.network.events
        if events is not None:
            events("connection_open", {"export": export.nbd_device, "protocol": "nbd",
                                       "peer": self.peer})
        assert export.desc is not None
        log.debug("NBD client %s: export %r (structured %s, contexts %s)", self.peer,
                  export.name, ready.structured_replies, ready.meta_contexts)
        self._begin(export, export.desc, ready.validator(), ready.structured_replies,
                    ready.trailing)
