"""The network NBD export: bdevs served to NBD clients (QEMU, libnbd, nbd-client, fio).

Layout
    :class:`NetworkServer` (one per target) keeps the listeners, keyed by bound address.
    A :class:`Listener` serves every :class:`NetworkExport` on its address; clients pick
    one by export name in the handshake (``NBD_OPT_LIST`` lists them all).  Each client
    connection is an :class:`NbdConnection`.

Hot path (see docs/decisions/nbd-server-design.md for the measurements)
    :class:`NbdConnection` is an ``asyncio.BufferedProtocol``: the event loop receives
    straight into one preallocated buffer; every complete request in it is parsed in one
    go (``proto.parse_requests``), submitted to the bdev through the descriptor's
    callback API, and every reply produced while the batch runs goes out in one
    ``transport.writelines``.  No task, future or coroutine per request: a bdev that
    completes inside the call (malloc) costs a function call per request.  READ replies
    are ``[header, data]``, where ``data`` is the module's own buffer when the bdev declares
    ``read_buffer = ReadBuffer.HELD`` (it stays valid while queued for sending), a copy
    otherwise (``ReadBuffer.CALLBACK``: valid during the callback only).  WRITE payloads
    are views of the receive buffer; when a write does not complete inside the call, the
    buffer is left to it and the connection continues in a fresh one.  Writes larger than
    the buffer are received into a buffer of their own.

Allocation hint
    ``NBD_CMD_BLOCK_STATUS`` for ``base:allocation`` asks the descriptor's
    ``block_status(offset, length, cb)`` when the bdev ``reports_holes``;
    ``cb(status, extents)`` with ``extents`` a list of ``(length, flags)``
    (``NBD_STATE_HOLE`` = 1, ``NBD_STATE_ZERO`` = 2) starting at ``offset``.  Otherwise
    everything is data.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from pybdev.bdev.core import Bdev, Descriptor, ReadBuffer
from pybdev.errors import OperationError
from pybdev.export import io
from pybdev.export.status import NBD_STATUS
from pybdev.listener import (
    Identity,
    ListenError,
    listen_tcp,
    listen_unix,
    unix_identity,
    unlink_unix,
)
from pybdev.nbd import sendq
from pybdev.nbd.export import NBD_OPS, NbdExport
from pybdev.netaddr import bind_address, is_loopback_ip
from pybdev.peerwarn import WARNINGS, peer_host, quote
from pybdev.proto import nbd as proto
from pybdev.proto.nbd.uri import NbdAddress

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

log = logging.getLogger("pybdev.nbd")

MIB = 1024 * 1024
# What one connection may hold (docs/guide.md, "Limits"): a small buffer until its handshake
# ends, then a receive buffer, plus at most MAX_INFLIGHT_BYTES of payload in flight (read
# data, and receive buffers that in-flight writes still use), plus the replies of one batch
# waiting in the transport. Writes larger than the receive buffer arrive in BIG_CHUNK pieces
# that count against one cap for the whole server (--nbd-max-buffered-mb).
HANDSHAKE_BUFFER = 4096
BUFFER_SIZE = 256 * 1024  # receive buffer of a connection in transmission
BIG_CHUNK = MIB  # a write larger than BUFFER_SIZE is received and written in pieces this size
MAX_PAYLOAD = 32 * MIB  # advertised maximum payload (proto.md's default)
# Writes up to this are read and answered EINVAL; larger ones drop the connection.
MAX_WRITE = 2 * MAX_PAYLOAD
MAX_INFLIGHT = 1024  # requests in flight per connection (async bdevs only)
MAX_INFLIGHT_BYTES = 2 * MAX_PAYLOAD  # payload in flight per connection
DEFAULT_MAX_CONNECTIONS = 256  # per listener
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds from accept to the end of the handshake
DEFAULT_MAX_BUFFERED = 256 * MIB  # big-write pieces buffered across all connections
DRAIN_TIMEOUT = 5.0
MAX_SPARE_PIECES = 8  # BIG_CHUNK buffers kept for reuse, per server

_READ = proto.NBD_CMD_READ
_WRITE = proto.NBD_CMD_WRITE
_FUA = proto.NBD_CMD_FLAG_FUA
_REQ_ONE = proto.NBD_CMD_FLAG_REQ_ONE
_SIMPLE = proto.SIMPLE_REPLY.pack
_DATA_CHUNK = proto.OFFSET_DATA.pack  # header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk
assert (proto.NBD_STRUCTURED_REPLY_MAGIC, proto.NBD_SIMPLE_REPLY_MAGIC) == (0x668E33EF,
                                                                           0x67446698)
assert (proto.NBD_REPLY_FLAG_DONE, proto.NBD_REPLY_TYPE_OFFSET_DATA) == (1, 1)


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
        # For /metrics: clients served so far, and payload bytes asked for (counted per
        # batch of requests as they are submitted, not per request).
        self.connections_total = 0
        self.bytes_read = 0
        self.bytes_written = 0

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


class PayloadBudget:
    """Write payload buffered across every connection of a server, up to ``cap`` bytes.

    A connection that cannot take what it needs waits (its reading paused) and is woken,
    oldest first, when others give bytes back.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._waiting: deque[Callable[[], None]] = deque()
        # Pieces whose write completed, kept for the next big write: a fresh 1 MiB
        # bytearray costs its zeroing and page faults, about as much as receiving into it.
        self.spares: list[bytearray] = []

    def piece(self, n: int) -> bytearray:
        """A buffer for a piece of ``n`` bytes (taken from the budget already)."""
        if n == BIG_CHUNK and self.spares:
            return self.spares.pop()
        return bytearray(n)

    def recycle(self, chunk: bytearray) -> None:
        if len(chunk) == BIG_CHUNK and len(self.spares) < MAX_SPARE_PIECES:
            self.spares.append(chunk)

    def take(self, n: int) -> bool:
        if self.used + n > self.cap and self.used:  # one piece always fits an empty budget
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
        waiting, self._waiting = self._waiting, deque()
        while waiting and self.used < self.cap:
            waiting.popleft()()  # retries its take; waits again if still short
        self._waiting.extendleft(reversed(waiting))

    def wait(self, retry: Callable[[], None]) -> None:
        self._waiting.append(retry)

    def forget(self, retry: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(retry)


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


class BigWrite:
    """A write larger than the receive buffer, received and written in BIG_CHUNK pieces.

    Each piece goes to the bdev as soon as it is full, so what the server holds is the
    piece being received and the pieces the bdev has not completed, never the whole
    payload (a header alone costs nothing). The reply goes once every piece completed;
    the first error wins. ``err`` set (the request was invalid): the payload is read
    and dropped, and ``err`` is the answer. ``direct``: the bdev lent its own memory for
    the whole payload (``Descriptor.zcopy_buffer``), which is received there in one piece
    that costs the server's budget nothing and is committed, not copied.
    """

    __slots__ = ("chunk", "cookie", "direct", "err", "filled", "fua", "left", "next_offset",
                 "pending", "received", "status")

    def __init__(self, cookie: int, offset: int, length: int, fua: bool, err: int) -> None:
        self.cookie = cookie
        self.next_offset = offset  # where the next piece goes
        self.left = length  # payload bytes not received yet
        self.fua = fua
        self.err = err
        self.chunk: bytearray | memoryview | None = None  # the piece being received
        self.direct = False
        self.filled = 0
        self.pending = 0  # pieces submitted, not completed
        self.status = 0
        self.received = False


class NbdConnection(asyncio.BufferedProtocol):
    """One client: the handshake, then the transmission phase on a shared descriptor."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.budget = listener.network.budget
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peer = ""
        # A small buffer until the handshake ends: an idle connection costs little.
        self._buf = bytearray(HANDSHAKE_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.peer_host = ""
        self._handshake: proto.ServerHandshake | None = proto.ServerHandshake(
            self._lookup, exports=listener.list_exports)
        self._handshake_timer: asyncio.TimerHandle | None = None
        # Transmission state, set when the handshake ends.
        self.export: NetworkExport | None = None
        self._desc: Descriptor | None = None
        self._validator: proto.RequestValidator | None = None
        self._structured = False
        self._zcopy = False
        self._block_status: Callable[..., None] | None = None
        self._size = 0
        self._out: list[Any] = []
        self._hot: tuple[Any, ...] = ()
        # Replies leave through the transport's writelines, or through a SendQueue where
        # the transport would join them (asyncio's own loop on Python 3.11).
        self._sendq: sendq.SendQueue | None = None
        self._writelines: Callable[[list[Any]], None] = _drop
        self._batching = False
        self._inflight = 0
        self._inflight_bytes = 0  # read data and pinned receive buffers in flight
        # Writes in flight whose payload is a view of the current buffer, and of earlier
        # buffers (by generation) that they keep alive.
        self._buf_refs = 0
        self._buf_gen = 0
        self._pinned: dict[int, int] = {}
        self._big: BigWrite | None = None
        self._big_waiting = False  # a big write waits for the server's payload budget
        self._pending_bytes = b""  # payload received before the big write got its piece
        self._backlog = False  # complete requests wait in the buffer (a limit was reached)
        self._closing = False  # DISC received or export stopping: no new requests
        self._read_paused = False
        self._write_paused = False
        # Adaptive polling (--nbd-poll-us): see _poll.
        self._poll_ns = listener.network.poll_us * 1000
        self._poll_sock: socket.socket | None = None
        self._idle_at = 0  # when the connection last had nothing in flight (0: busy)
        self._gap_ns = 0  # moving average of the time from idle to the next request

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

    def get_buffer(self, sizehint: int) -> memoryview:
        big = self._big
        if big is not None:
            if big.err:  # dropped: received into the buffer, which holds nothing now
                return self._view[: min(big.left, len(self._buf))]
            assert big.chunk is not None
            return memoryview(big.chunk)[big.filled:]
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        big = self._big
        if big is not None:
            self._big_received(big, nbytes)
            return
        self._end += nbytes
        if self._handshake is not None:
            self._feed_handshake()
        elif not self._closing:
            if self._poll_ns:
                self._poll_arrived()
            self._process()
            if self._poll_ns:
                self._poll()
        else:
            self._start = self._end = 0  # after DISC: ignore what follows

    def eof_received(self) -> bool | None:
        self._cancel_big()  # its payload will never arrive
        if self._inflight and self.transport is not None:
            # Answer what is in flight, then close (the client only half-closed).
            self._closing = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._closing = True
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
        self._cancel_big()
        if self._poll_sock is not None:
            self._poll_sock.close()
            self._poll_sock = None
        if self._sendq is not None:
            self._sendq.detach()
            self._sendq = None
        self._writelines = _drop
        # Let go of buffers and of the bound methods that point back here, so a closed
        # connection's memory is freed now, not when the cycle collector runs.
        self._big = None
        self._hot = ()
        self._out = []
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._handshake = None
        self._validator = None
        self._block_status = None
        if not self.closed.done():
            self.closed.set_result(None)
        log.debug("NBD client %s gone%s", self.peer, f": {exc}" if exc else "")

    def _cancel_big(self) -> None:
        """Give up a big write still receiving (the client went): no reply, no more pieces.

        Pieces already submitted complete on their own and give their budget back.
        """
        big = self._big
        if big is None:
            return
        self._big = None
        self._inflight -= 1
        if big.chunk is not None and not big.direct:
            self.budget.give(len(big.chunk))
            big.chunk = None
        if self._big_waiting:
            self._big_waiting = False
            self.budget.forget(self._big_resume)
        big.received = False  # its pieces must not answer

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- control -------------------------------------------------------------------------------
    def shutdown(self, drain: bool) -> None:
        """Stop taking requests; close once the ones in flight are answered (``drain``)."""
        self._closing = True
        if not drain:
            self.abort()
            return
        if self._handshake is not None:
            self._close()
            return
        self._update_reading()
        if not self._inflight:
            self._close()

    def abort(self) -> None:
        if self._sendq is not None:
            self._sendq.detach()
        if self.transport is not None:
            self.transport.abort()

    def resized(self, size: int) -> None:
        self._size = size
        if self._validator is not None:
            self._validator.size = size

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self._sendq is not None:
                self._sendq.close()  # flushes queued replies first
            else:
                self.transport.close()  # flushes queued replies first

    def _blocked(self) -> bool:
        """Whether a limit stops new requests now (they wait in the buffer)."""
        return (self._write_paused or self._big_waiting or self._inflight >= MAX_INFLIGHT
                or self._inflight_bytes >= MAX_INFLIGHT_BYTES)

    def _update_reading(self) -> None:
        blocked = self._closing or self._blocked()
        if self._backlog and not blocked:
            # Complete requests wait in the buffer: process them; no new data would.
            self._backlog = False
            asyncio.get_running_loop().call_soon(self._resume_backlog)
        want_pause = blocked or self._backlog
        if want_pause == self._read_paused:
            return  # the common case, decided without touching the transport
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._read_paused = want_pause
        if want_pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _resume_backlog(self) -> None:
        if self.transport is not None and not self._closing and self._big is None:
            self._process()

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
        self.export = export
        export.connections.add(self)
        export.connections_total += 1
        events = self.listener.network.events
        if events is not None:
            events("connection_open", {"export": export.nbd_device, "protocol": "nbd",
                                       "peer": self.peer})
        desc = export.desc
        assert desc is not None
        bdev = desc.bdev
        self._desc = desc
        self._validator = ready.validator()
        self._size = bdev.size
        self._validator.size = self._size
        self._structured = ready.structured_replies
        # Read data the bdev declares valid after the callback is sent without a copy.
        self._zcopy = bdev.read_buffer is ReadBuffer.HELD
        self._block_status = desc.block_status if bdev.reports_holes else None
        # What the per-batch loop needs, fetched in one tuple unpack.
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        if sendq.usable(self.transport, loop):
            self._sendq = sendq.SendQueue(self.transport, loop, self.pause_writing,
                                          self.resume_writing, self._send_failed)
            self._writelines = self._sendq.writelines
        else:
            self._writelines = self.transport.writelines
        self._hot = (self._validator.check, desc.read, desc.write, self._read_done,
                     self._simple_done, self._structured, self._zcopy, self._out)
        log.debug("NBD client %s: export %r (structured %s, contexts %s)", self.peer,
                  export.name, ready.structured_replies, ready.meta_contexts)
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        if ready.trailing:
            n = len(ready.trailing)
            self._buf[:n] = ready.trailing
            self._end = n
            self._process()

    # -- transmission --------------------------------------------------------------------------
    def _process(self) -> None:
        """Parse and submit the complete requests in the buffer; send the replies.

        A batch stops at the payload budget of the connection (MAX_INFLIGHT_BYTES less what
        is in flight); what remains waits in the buffer, with reading paused, until the
        limits that stopped it clear (``_update_reading``).
        """
        while True:
            start, end = self._start, self._end
            error = ""
            budget = MAX_INFLIGHT_BYTES - self._inflight_bytes
            try:
                requests, pos, need = proto.parse_requests(self._buf, start, end, MAX_WRITE,
                                                           budget)
            except proto.ProtocolError as e:
                requests, pos, need, error = e.parsed, e.offset, 0, str(e)
            if requests:
                self._submit(requests)
            del requests
            if self._buf_refs:
                # Writes still in flight read their payload from this buffer: leave it to
                # them and continue in a fresh one.
                self._swap_buffer(pos, end, need)
                pos, end = 0, self._end
            if error or self._closing:
                if error:
                    WARNINGS.warn(log, "nbd_protocol_error", self.peer_host,
                                  "NBD client %s: %s; closing the connection", self.peer, error)
                    self._closing = True
                self._start = self._end = 0
                self._update_reading()
                if not self._inflight:
                    self._close()
                return
            if self._big is not None:
                return
            if pos == end:
                self._start = self._end = 0
                return
            self._start = pos
            if need == 0:  # stopped at the budget: complete requests wait
                if self._blocked():
                    self._backlog = True
                    self._update_reading()
                    return
                continue
            size = len(self._buf)
            if need > size:
                self._begin_big_write(pos, end)
            elif pos + need > size or size - end < 4096:
                n = end - pos
                self._buf[:n] = self._buf[pos:end]
                self._start, self._end = 0, n
            return

    def _poll_arrived(self) -> None:
        """A request came the usual way: count the time the connection waited for it."""
        if self._idle_at:
            gap = time.perf_counter_ns() - self._idle_at
            self._gap_ns = (self._gap_ns * 7 + gap) >> 3
            self._idle_at = 0

    def _poll(self) -> None:
        """Spin on the socket for the next request instead of going back to the loop.

        A client at queue depth 1 sends its next request a few microseconds after our
        reply; waiting for it in the event loop costs an epoll wake-up and a loop turn per
        request. When the recent gaps (a moving average of idle-to-next-request) fit in the
        poll window, read the socket directly, without blocking, until a request comes or
        the window ends. Nothing else on the loop runs meanwhile, which is why the window
        is short and the option off by default. The socket is a dup of the transport's, so
        the transport sees whatever the spin did not take (and EOF, and errors).
        """
        clock = time.perf_counter_ns
        window = self._poll_ns
        while (self._inflight == 0 and self._big is None and not self._closing
               and not self._read_paused and self.transport is not None):
            start = clock()
            if self._gap_ns > window:
                self._idle_at = start
                return
            sock = self._poll_sock
            if sock is None:
                fd = self.transport.get_extra_info("socket").fileno()
                sock = self._poll_sock = socket.socket(fileno=os.dup(fd))
                sock.setblocking(False)
            view = self._view[self._end:]
            deadline = start + window
            while True:
                try:
                    n = sock.recv_into(view)
                except BlockingIOError:
                    if clock() < deadline:
                        continue
                    self._idle_at = start
                    return
                except OSError:
                    return  # the transport will see it too
                break
            if n == 0:
                return  # EOF: the transport sees it too
            self._gap_ns = (self._gap_ns * 7 + clock() - start) >> 3
            self._end += n
            self._process()

    def _swap_buffer(self, pos: int, end: int, need: int) -> None:
        old = self._buf
        # The old buffer lives until the writes that use it complete: it counts as payload
        # in flight until then.
        self._pinned[self._buf_gen] = self._buf_refs
        self._inflight_bytes += len(old)
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        n = end - pos
        if n:
            self._buf[:n] = old[pos:end]
        self._start, self._end = 0, n
        self._buf_refs = 0
        self._buf_gen += 1
        if need > BUFFER_SIZE:
            self._begin_big_write(0, n)

    def _begin_big_write(self, pos: int, end: int) -> None:
        typ, flags, cookie, offset, length = proto.peek_request(self._buf, pos)
        assert self._validator is not None
        err = self._validator.check(typ, flags, offset, length)
        big = BigWrite(cookie, offset, length, bool(flags & _FUA), err)
        if self.export is not None:
            self.export.bytes_written += length
        self._big = big
        self._inflight += 1
        # The part of the payload already received moves to the big write's pieces.
        have = self._buf[pos + 28:end]
        self._start = self._end = 0
        if not err and self._desc is not None:
            big.chunk = self._desc.zcopy_buffer(offset, length)
            big.direct = big.chunk is not None
        if not err and not big.direct and not self._big_chunk(big):
            big.chunk = None
            self._pending_bytes = bytes(have)
            return
        self._big_feed(big, have)

    def _big_chunk(self, big: BigWrite) -> bool:
        """Give ``big`` a piece to receive into, from the server's budget (False: wait)."""
        n = min(big.left, BIG_CHUNK)
        if not self.budget.take(n):
            WARNINGS.warn(log, "nbd_buffer_cap", self.peer_host,
                          "NBD client %s: a large write waits: the server buffers %d MiB of "
                          "write payload, its limit (--nbd-max-buffered-mb)", self.peer,
                          self.budget.used // MIB)
            self._big_waiting = True
            self.budget.wait(self._big_resume)
            self._update_reading()
            return False
        big.chunk = self.budget.piece(n)
        big.filled = 0
        return True

    def _big_resume(self) -> None:
        """The budget has room again: take the piece and go on receiving."""
        big = self._big
        self._big_waiting = False
        if big is None or self.transport is None:
            return
        if not self._big_chunk(big):
            return
        pending, self._pending_bytes = self._pending_bytes, b""
        self._update_reading()
        if pending:
            self._big_feed(big, pending)

    def _big_feed(self, big: BigWrite, data: Any) -> None:
        """Payload that arrived in the receive buffer before the big write began.

        It is shorter than the payload (that is what makes the write big), so nothing of
        the next request is in it.
        """
        view = memoryview(data)
        while view and self._big is big:
            if big.err:
                n = min(len(view), big.left)
            else:
                chunk = big.chunk
                if chunk is None:  # waiting for the budget: keep the rest for then
                    self._pending_bytes = bytes(view)
                    return
                n = min(len(view), len(chunk) - big.filled)
                chunk[big.filled:big.filled + n] = view[:n]
            view = view[n:]
            self._big_received(big, n)

    def _big_received(self, big: BigWrite, nbytes: int) -> None:
        if big.err:
            big.left -= nbytes
        else:
            big.filled += nbytes
            assert big.chunk is not None
            if big.filled < len(big.chunk):
                return
            self._big_piece(big)
        if big.left == 0:
            self._big = None
            big.received = True
            if big.pending == 0:
                self._big_done(big)
        elif not big.err and not self._big_chunk(big):
            return

    def _big_piece(self, big: BigWrite) -> None:
        chunk = big.chunk
        assert chunk is not None and self._desc is not None
        big.chunk = None
        big.left -= len(chunk)
        big.pending += 1
        offset = big.next_offset
        big.next_offset += len(chunk)
        size = len(chunk)

        def piece_done(status: int, _data: Any) -> None:
            big.pending -= 1
            if not big.direct:
                self.budget.recycle(cast(bytearray, chunk))  # the bdev is done with it
                self.budget.give(size)
            if status and not big.status:
                big.status = status
            if big.received and big.pending == 0:
                self._big_done(big)

        if big.direct:
            self._desc.zcopy_commit(offset, size, piece_done, big.fua)
        else:
            self._desc.write(offset, chunk, piece_done, big.fua)

    def _big_done(self, big: BigWrite) -> None:
        """Every piece of a big write completed (or the dropped payload was read): answer."""
        if big.err:
            self._inflight -= 1
            self._send(proto.encode_error_reply(big.cookie, big.err, self._structured))
        else:
            self._simple_done(big.cookie, -1, big.status, None)
            return
        if not self._batching:
            self._after_completion()


    def _submit(self, requests: list[proto.Request]) -> None:
        check, read, write, read_done, simple_done, structured, zcopy, out = self._hot
        gen = self._buf_gen
        conn = self
        pack_data = _DATA_CHUNK
        pack_simple = _SIMPLE
        # Counted locally and added once: completions inside the calls below decrement
        # the attributes, so they are only right again after the loop.
        inflight = refs = nbytes = wbytes = 0
        self._batching = True
        try:
            for typ, flags, cookie, offset, length, payload in requests:
                err = check(typ, flags, offset, length)
                if err:
                    if typ == proto.NBD_CMD_DISC:
                        self._closing = True
                        break
                    out.append(proto.encode_error_reply(cookie, err, structured))
                    continue
                if typ == 0:  # NBD_CMD_READ
                    inflight += 1
                    nbytes += length

                    # A closure per READ, with the reply written inline for the common
                    # case (success inside this batch): measured ~25 % cheaper than a
                    # partial of a method, and this runs for every READ.
                    def done(status: int, data: Any, cookie: int = cookie,
                             offset: int = offset, length: int = length) -> None:
                        if status or not conn._batching:
                            read_done(cookie, offset, length, status, data)
                            return
                        conn._inflight -= 1
                        conn._inflight_bytes -= length
                        if structured:
                            out.append(pack_data(0x668E33EF, 1, 1, cookie, len(data) + 8,
                                                 offset))
                        else:
                            out.append(pack_simple(0x67446698, 0, cookie))
                        out.append(data if zcopy else bytes(data))

                    read(offset, length, done)
                elif typ == 1:  # NBD_CMD_WRITE
                    inflight += 1
                    refs += 1
                    wbytes += length
                    write(offset, payload, partial(simple_done, cookie, gen), flags & _FUA)
                else:
                    if typ == proto.NBD_CMD_DISC:
                        self._closing = True
                        break
                    self._submit_other(typ, flags, cookie, offset, length)
        finally:
            self._inflight += inflight
            self._inflight_bytes += nbytes
            export = self.export
            if export is not None:
                export.bytes_read += nbytes
                export.bytes_written += wbytes
            self._buf_refs += refs
            self._batching = False
            self._flush_out()
        self._update_reading()

    def _submit_other(self, typ: int, flags: int, cookie: int, offset: int, length: int) -> None:
        desc = self._desc
        assert desc is not None
        if typ == proto.NBD_CMD_CACHE:
            # Everything a bdev holds is as close as it gets: nothing to prefetch.
            self._out.append(proto.encode_simple_reply(cookie))
        elif typ == proto.NBD_CMD_BLOCK_STATUS:
            self._inflight += 1
            done = partial(self._block_status_done, cookie, length, bool(flags & _REQ_ONE))
            if self._block_status is not None:
                self._block_status(offset, length, done)
            else:
                done(0, [(length, 0)])
        else:
            # FLUSH, TRIM, WRITE_ZEROES (NO_HOLE needs nothing: write_zeroes never punches
            # holes here); READ and WRITE never get here (_submit has them inline).
            self._inflight += 1
            io.submit(desc, NBD_OPS[typ], offset, length, None, bool(flags & _FUA),
                      partial(self._simple_done, cookie, -1))

    # -- completions -----------------------------------------------------------------------------
    def _read_done(self, cookie: int, offset: int, length: int, status: int, data: Any) -> None:
        self._inflight -= 1
        self._inflight_bytes -= length
        if status:
            reply = [self._error_reply(cookie, status)]
        else:
            # proto.encode_read_reply_header, inlined: this runs for every READ.
            if self._structured:
                hdr = _DATA_CHUNK(0x668E33EF, 1, 1, cookie, len(data) + 8, offset)
            else:
                hdr = _SIMPLE(0x67446698, 0, cookie)
            if not self._zcopy:
                data = bytes(data)
            if self._batching:
                out = self._out
                out.append(hdr)
                out.append(data)
                return
            reply = [hdr, data]
        if self._batching:
            self._out += reply
        else:
            self._send_now(reply)
            self._after_completion()

    def _simple_done(self, cookie: int, gen: int, status: int, _data: Any) -> None:
        self._inflight -= 1
        if gen == self._buf_gen:
            self._buf_refs -= 1
        elif gen in self._pinned:
            self._unpin(gen)
        reply = self._error_reply(cookie, status) if status else _SIMPLE(0x67446698, 0, cookie)
        if self._batching:
            self._out.append(reply)
        else:
            self._send_now([reply])
            self._after_completion()

    def _block_status_done(self, cookie: int, length: int, req_one: bool, status: int,
                           extents: Any) -> None:
        self._inflight -= 1
        if status:
            reply = self._error_reply(cookie, status)
        else:
            reply = proto.encode_block_status_chunk(
                cookie, proto.BASE_ALLOCATION_ID, _clip_extents(extents, length, req_one))
        if self._batching:
            self._out.append(reply)
        else:
            self._send_now([reply])
            self._after_completion()

    def _error_reply(self, cookie: int, status: int) -> bytes:
        err = NBD_STATUS(status)
        message = os.strerror(-status) if self._structured else ""
        return proto.encode_error_reply(cookie, err, self._structured, message)

    def _send(self, chunk: bytes) -> None:
        if self._batching:
            self._out.append(chunk)
        else:
            self._send_now([chunk])

    def _send_now(self, chunks: list[Any]) -> None:
        self._writelines(chunks)

    def _flush_out(self) -> None:
        out = self._out
        if out:
            self._writelines(out)
            out.clear()

    def _send_failed(self, exc: OSError) -> None:
        log.debug("NBD client %s: send failed: %s", self.peer, exc)
        if self.transport is not None:
            self.transport.abort()

    def _unpin(self, gen: int) -> None:
        """A write that used an earlier buffer completed; the last one releases it."""
        left = self._pinned[gen] - 1
        if left:
            self._pinned[gen] = left
        else:
            del self._pinned[gen]
            self._inflight_bytes -= BUFFER_SIZE

    def _after_completion(self) -> None:
        """An asynchronous completion: resume reading, or finish a drain."""
        if self._closing:
            if not self._inflight:
                self._close()
        elif self._read_paused:
            self._update_reading()


def _drop(_chunks: list[Any]) -> None:
    """Replies of a connection that is gone (or not in transmission yet) go nowhere."""


def _clip_extents(extents: Any, length: int, req_one: bool) -> list[tuple[int, int]]:
    """Extents as proto.md wants them: nonzero, within the request, one with REQ_ONE."""
    out: list[tuple[int, int]] = []
    left = length
    for ext_len, flags in extents:
        if left <= 0:
            break
        n = min(int(ext_len), left)
        if n <= 0:
            continue
        out.append((n, int(flags) & 0xFFFFFFFF))
        left -= n
        if req_one:
            break
    return out or [(length, 0)]
