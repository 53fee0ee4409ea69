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
    are ``[header, data]``, where ``data`` is the module's own memory when the bdev offers
    ``zcopy`` (its read views stay valid), a copy otherwise (core's contract: read data
    is valid during the callback only).  WRITE payloads are views of the receive buffer;
    when a write does not complete inside the call, the buffer is left to it and the
    connection continues in a fresh one.  Writes larger than the buffer are received
    into a buffer of their own.

Allocation hint
    ``NBD_CMD_BLOCK_STATUS`` for ``base:allocation`` asks the bdev for
    ``get_block_status(offset, length, cb)`` when it has one; ``cb(status, extents)``
    with ``extents`` a list of ``(length, flags)`` (``NBD_STATE_HOLE`` = 1,
    ``NBD_STATE_ZERO`` = 2) starting at ``offset``.  Without it everything is data.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from pybdev.bdev.core import Bdev, Descriptor
from pybdev.errors import OperationError
from pybdev.nbd.export import Export
from pybdev.netaddr import bind_address, is_loopback_ip
from pybdev.proto import nbd as proto
from pybdev.proto.nbd.uri import NbdAddress

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

log = logging.getLogger("pybdev.nbd")

BUFFER_SIZE = 256 * 1024  # receive buffer; larger writes get a buffer of their own
MAX_PAYLOAD = 32 * 1024 * 1024  # advertised maximum payload (proto.md's default)
# Writes up to this are read and answered EINVAL; larger ones drop the connection.
MAX_WRITE = 2 * MAX_PAYLOAD
MAX_INFLIGHT = 1024  # per connection: stop reading beyond this (async bdevs only)
DRAIN_TIMEOUT = 5.0

_READ = proto.NBD_CMD_READ
_WRITE = proto.NBD_CMD_WRITE
_FUA = proto.NBD_CMD_FLAG_FUA
_REQ_ONE = proto.NBD_CMD_FLAG_REQ_ONE
_SIMPLE = proto.SIMPLE_REPLY.pack
_DATA_CHUNK = proto.OFFSET_DATA.pack  # header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk
assert (proto.NBD_STRUCTURED_REPLY_MAGIC, proto.NBD_SIMPLE_REPLY_MAGIC) == (0x668E33EF,
                                                                           0x67446698)
assert (proto.NBD_REPLY_FLAG_DONE, proto.NBD_REPLY_TYPE_OFFSET_DATA) == (1, 1)


class NetworkExport(Export):
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
        self._stopped: asyncio.Future[None] | None = None

    # -- Export ----------------------------------------------------------------------------
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

    async def stop(self, drain: bool = True) -> None:
        if self._stopped is not None:
            if drain:
                await asyncio.shield(self._stopped)
            else:
                for conn in list(self.connections):
                    conn.abort()
            return
        # New handshakes stop finding this export now (Listener.find checks ``stopping``);
        # it leaves its listener only after the drain, as the last export closes it.
        self.stopping = True
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            conns = list(self.connections)
            for conn in conns:
                conn.shutdown(drain)
            if conns:
                waiters = [c.closed for c in conns]
                _, pending = await asyncio.wait(waiters, timeout=DRAIN_TIMEOUT)
                for conn in conns:
                    if not conn.closed.done():
                        conn.abort()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
            if self.listener is not None:
                await self.subsystem.network.detach(self)
        finally:
            self.close_bdev()
            self._stopped.set_result(None)

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
    maximum = MAX_PAYLOAD
    if bdev.max_io_bytes:
        maximum = max(preferred, min(maximum, bdev.max_io_bytes - bdev.max_io_bytes % bs))
    return proto.ExportInfo(
        name=name, size=bdev.size, flags=transmission_flags(bdev),
        min_block_size=minimum, preferred_block_size=preferred, max_block_size=maximum,
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
        self.server: asyncio.AbstractServer | None = None
        self.port = address.port
        self.port_chosen = False
        self._unix_inode: tuple[int, int] | None = None

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
                _clear_stale_socket(a.path)
                self.server = await loop.create_unix_server(self.connection_factory, a.path)
                st = os.stat(a.path)
                self._unix_inode = (st.st_dev, st.st_ino)
            else:
                hosts = list(self.key[1])
                if a.port == 0:
                    hosts = hosts[:1]  # each address would get its own port otherwise
                self.server = await loop.create_server(
                    self.connection_factory, hosts, a.port, reuse_address=True)
                if a.port == 0:
                    self.port = self.server.sockets[0].getsockname()[1]
                    self.port_chosen = True
        except OSError as e:
            raise OperationError(e.errno or errno.EIO,
                                 f"cannot listen on {self.describe()}: {e.strerror}") from None
        log.info("NBD listening on %s", self.describe())

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.abort()
        if self.server is not None:
            # 3.11's wait_closed can hang while connections linger; they were aborted.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None
        if self._unix_inode is not None:
            try:
                st = os.stat(self.address.path)
                if (st.st_dev, st.st_ino) == self._unix_inode:
                    os.unlink(self.address.path)
            except OSError:
                pass
        log.info("NBD listener on %s closed", self.describe())


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OperationError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OperationError(errno.EADDRINUSE, f"another process listens on {path}")


class NetworkServer:
    """Every listener of a target; exports on the same address share one listener."""

    def __init__(self, allow_remote: bool = False) -> None:
        self.allow_remote = allow_remote
        self.listeners: dict[tuple[Any, ...], Listener] = {}
        self._lock = asyncio.Lock()

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


class NbdConnection(asyncio.BufferedProtocol):
    """One client: the handshake, then the transmission phase on a shared descriptor."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peer = ""
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._handshake: proto.ServerHandshake | None = proto.ServerHandshake(
            listener.lookup, exports=listener.list_exports)
        # Transmission state, set when the handshake ends.
        self.export: NetworkExport | None = None
        self._desc: Descriptor | None = None
        self._validator: proto.RequestValidator | None = None
        self._structured = False
        self._zcopy = False
        self._block_status: Callable[..., None] | None = None
        self._flush_after = False
        self._size = 0
        self._out: list[Any] = []
        self._hot: tuple[Any, ...] = ()
        self._batching = False
        self._inflight = 0
        # Writes in flight whose payload is a view of the current buffer.
        self._buf_refs = 0
        self._buf_gen = 0
        # A write too large for the buffer: header, its own buffer, bytes received.
        self._big: tuple[int, int, int, int, int] | None = None
        self._big_buf: bytearray | None = None
        self._big_view: memoryview | None = None
        self._big_filled = 0
        self._big_left = 0
        self._big_err = 0
        self._spare: bytearray | None = None
        self._closing = False  # DISC received or export stopping: no new requests
        self._read_paused = False
        self._write_paused = False

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, hence no isinstance.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer) if peer else "unix"
        self.listener.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._handshake is not None
        self.transport.write(self._handshake.data_to_send())
        log.debug("NBD client %s connected to %s", self.peer, self.listener.describe())

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._big_view is not None:
            return self._big_view[self._big_filled:]
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big_view is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big_view):
                self._finish_big_write()
            return
        self._end += nbytes
        if self._handshake is not None:
            self._feed_handshake()
        elif not self._closing:
            self._process()
        else:
            self._start = self._end = 0  # after DISC: ignore what follows

    def eof_received(self) -> bool | None:
        if self._inflight and self.transport is not None:
            # Answer what is in flight, then close (the client only half-closed).
            self._closing = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._closing = True
        self.listener.connections.discard(self)
        if self.export is not None:
            self.export.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)
        log.debug("NBD client %s gone%s", self.peer, f": {exc}" if exc else "")

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
        if self.transport is not None:
            self.transport.abort()

    def resized(self, size: int) -> None:
        self._size = size
        if self._validator is not None:
            self._validator.size = size

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # flushes queued replies first

    def _update_reading(self) -> None:
        want_pause = self._closing or self._write_paused or self._inflight >= MAX_INFLIGHT
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

    # -- handshake -----------------------------------------------------------------------------
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
        if isinstance(event, proto.Closed):
            log.debug("NBD client %s: handshake ended: %s", self.peer, event.reason)
            self._closing = True
            self._close()
            return
        export = self.listener.find(event.export.name)
        if export is None or export.desc is None:
            self._closing = True
            self.abort()
            return
        self._begin_transmission(export, event)

    def _begin_transmission(self, export: NetworkExport, ready: proto.TransmissionReady) -> None:
        self.export = export
        export.connections.add(self)
        desc = export.desc
        assert desc is not None
        bdev = desc.bdev
        self._desc = desc
        self._validator = ready.validator()
        self._size = bdev.size
        self._validator.size = self._size
        self._structured = ready.structured_replies
        # zcopy bdevs hand out views of their own memory, valid after the callback.
        self._zcopy = bdev.supports("zcopy")
        self._block_status = getattr(bdev, "get_block_status", None)
        self._flush_after = bdev.supports("flush")
        # What the per-batch loop needs, fetched in one tuple unpack.
        self._hot = (self._validator.check, desc.read, desc.write, self._read_done,
                     self._simple_done, self._structured, self._zcopy, self._out)
        log.debug("NBD client %s: export %r (structured %s, contexts %s)", self.peer,
                  export.name, ready.structured_replies, ready.meta_contexts)
        if ready.trailing:
            n = len(ready.trailing)
            self._buf[:n] = ready.trailing
            self._end = n
            self._process()

    # -- transmission --------------------------------------------------------------------------
    def _process(self) -> None:
        """Parse and submit every complete request in the buffer; send the replies."""
        start, end = self._start, self._end
        error = ""
        try:
            requests, pos, need = proto.parse_requests(self._buf, start, end, MAX_WRITE)
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
                log.info("NBD client %s: %s; closing the connection", self.peer, error)
                self._closing = True
            self._start = self._end = 0
            self._update_reading()
            if not self._inflight:
                self._close()
            return
        if self._big_view is not None:
            return
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos
            size = len(self._buf)
            if need > size:
                self._begin_big_write(pos, end)
            elif pos + need > size or size - end < 4096:
                n = end - pos
                self._buf[:n] = self._buf[pos:end]
                self._start, self._end = 0, n

    def _swap_buffer(self, pos: int, end: int, need: int) -> None:
        old = self._buf
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
        self._big = (typ, flags, cookie, offset, length)
        self._big_err = self._validator.check(typ, flags, offset, length)
        if self._big_err:
            # Read and drop the payload, in pieces, before answering the error.
            big = self._spare if self._spare is not None else bytearray(BUFFER_SIZE)
            self._spare = None
            self._big_buf = big
            self._big_view = memoryview(big)[: min(len(big), length)]
            self._big_left = length
        else:
            spare = self._spare
            if spare is not None and len(spare) >= length:
                big = spare
                self._spare = None
            else:
                big = bytearray(length)
            self._big_buf = big
            self._big_view = memoryview(big)[:length]
            self._big_left = length
        have = end - pos - 28
        n = min(have, len(self._big_view))
        self._big_view[:n] = self._buf[pos + 28 : pos + 28 + n]
        self._big_filled = n
        self._start = self._end = 0
        if self._big_filled == len(self._big_view):
            self._finish_big_write()

    def _finish_big_write(self) -> None:
        assert self._big is not None and self._big_view is not None
        _typ, flags, cookie, offset, _length = self._big
        if self._big_err:
            self._big_left -= self._big_filled
            if self._big_left > 0:
                self._big_view = memoryview(self._big_buf)[: min(len(self._big_buf or b""),
                                                                 self._big_left)]
                self._big_filled = 0
                return
            self._spare = self._big_buf
            self._big_view = self._big_buf = self._big = None
            self._big_filled = 0
            self._send(proto.encode_error_reply(cookie, self._big_err, self._structured))
            return
        payload = self._big_view
        big = self._big_buf
        self._big_view = self._big_buf = self._big = None
        self._big_filled = 0
        self._batching = True
        self._inflight += 1
        done = [False]

        def write_done(status: int, _data: Any) -> None:
            done[0] = True
            self._simple_done(cookie, -1, status, None)

        assert self._desc is not None
        self._desc.write(offset, payload, write_done, bool(flags & _FUA))
        self._batching = False
        self._flush_out()
        if done[0]:
            self._spare = big  # completed inside the call: the buffer can be reused
        self._update_reading()

    def _submit(self, requests: list[proto.Request]) -> None:
        check, read, write, read_done, simple_done, structured, zcopy, out = self._hot
        gen = self._buf_gen
        conn = self
        pack_data = _DATA_CHUNK
        pack_simple = _SIMPLE
        # Counted locally and added once: completions inside the calls below decrement
        # the attributes, so they are only right again after the loop.
        inflight = refs = 0
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

                    # A closure per READ, with the reply written inline for the common
                    # case (success inside this batch): measured ~25 % cheaper than a
                    # partial of a method, and this runs for every READ.
                    def done(status: int, data: Any, cookie: int = cookie,
                             offset: int = offset) -> None:
                        if status or not conn._batching:
                            read_done(cookie, offset, status, data)
                            return
                        conn._inflight -= 1
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
                    write(offset, payload, partial(simple_done, cookie, gen), flags & _FUA)
                else:
                    if typ == proto.NBD_CMD_DISC:
                        self._closing = True
                        break
                    self._submit_other(typ, flags, cookie, offset, length)
        finally:
            self._inflight += inflight
            self._buf_refs += refs
            self._batching = False
            self._flush_out()
        self._update_reading()

    def _submit_other(self, typ: int, flags: int, cookie: int, offset: int, length: int) -> None:
        desc = self._desc
        assert desc is not None
        if typ == proto.NBD_CMD_FLUSH:
            self._inflight += 1
            desc.flush(0, self._size, partial(self._simple_done, cookie, -1))
        elif typ == proto.NBD_CMD_TRIM:
            self._inflight += 1
            desc.unmap(offset, length, self._then_flush(flags, cookie, offset, length))
        elif typ == proto.NBD_CMD_WRITE_ZEROES:
            # NO_HOLE needs nothing: write_zeroes never punches holes here.
            self._inflight += 1
            desc.write_zeroes(offset, length, self._then_flush(flags, cookie, offset, length))
        elif typ == proto.NBD_CMD_CACHE:
            # Everything a bdev holds is as close as it gets: nothing to prefetch.
            self._out.append(proto.encode_simple_reply(cookie))
        elif typ == proto.NBD_CMD_BLOCK_STATUS:
            self._inflight += 1
            done = partial(self._block_status_done, cookie, length, bool(flags & _REQ_ONE))
            if self._block_status is not None:
                self._block_status(offset, length, done)
            else:
                done(0, [(length, 0)])
        else:  # the validator lets nothing else through
            self._out.append(proto.encode_error_reply(cookie, proto.NBD_EINVAL, self._structured))

    def _then_flush(self, flags: int, cookie: int, offset: int,
                    length: int) -> Callable[[int, Any], None]:
        """Completion of TRIM / WRITE_ZEROES: with FUA, flush the range before answering."""
        if not (flags & _FUA and self._flush_after):
            return partial(self._simple_done, cookie, -1)

        def flush(status: int, _data: Any) -> None:
            if status or self._desc is None:
                self._simple_done(cookie, -1, status, None)
            else:
                self._desc.flush(offset, length, partial(self._simple_done, cookie, -1))

        return flush

    # -- completions -----------------------------------------------------------------------------
    def _read_done(self, cookie: int, offset: int, status: int, data: Any) -> None:
        self._inflight -= 1
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
        err = proto.errno_to_nbd(status)
        message = os.strerror(-status) if self._structured else ""
        return proto.encode_error_reply(cookie, err, self._structured, message)

    def _send(self, chunk: bytes) -> None:
        if self._batching:
            self._out.append(chunk)
        else:
            self._send_now([chunk])

    def _send_now(self, chunks: list[Any]) -> None:
        if self.transport is not None:
            self.transport.writelines(chunks)

    def _flush_out(self) -> None:
        out = self._out
        if out:
            if self.transport is not None:
                self.transport.writelines(out)
            out.clear()

    def _after_completion(self) -> None:
        """An asynchronous completion: resume reading, or finish a drain."""
        if self._closing:
            if not self._inflight:
                self._close()
        elif self._read_paused:
            self._update_reading()


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
