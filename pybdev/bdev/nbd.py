"""nbd: a remote NBD export attached as a bdev (the NBD client; after QEMU's block/nbd.c).

RPCs (pybdev's own; SPDK has no NBD client bdev):

* ``bdev_nbd_create {"name": NAME, "uri": URI}`` -> ``NAME``.  ``URI`` is
  ``nbd://HOST[:PORT]/EXPORT``, ``nbd+unix:///EXPORT?socket=PATH``, or QEMU's
  ``nbd:HOST:PORT[:exportname=EXPORT]`` / ``nbd:unix:PATH[:exportname=EXPORT]``.
  Connects, negotiates (fixed newstyle, structured replies, ``base:allocation``,
  block sizes) and registers the bdev.  Errors: name taken -17; cannot connect -errno of
  the connect (-111, -2, ...); export unknown to the server -2; other handshake failures
  -5 (among them a server sending more option replies than a handshake may cost: at most
  16,384 replies and 16 MiB); malformed URI -22; connect or handshake timeout (10 s) -110,
  saying what it waited for.
* ``bdev_nbd_delete {"name": NAME}`` -> ``true``: unregisters the bdev, which answers
  what is in flight and then says ``NBD_CMD_DISC`` to the server.  -19 if no such bdev.

CLI: ``rpc.py bdev_nbd_create -b NAME URI``, ``rpc.py bdev_nbd_delete NAME``.

Behaviour: requests are pipelined (any number in flight; replies matched by cookie);
requests larger than the server's maximum payload are split; flush, unmap and write
zeroes are offered only when the server offers them (write zeroes is emulated by the bdev
layer otherwise); a write asked for with FUA carries ``NBD_CMD_FLAG_FUA`` (or the bdev
layer follows it with a flush when the server has flush but no FUA).  If the server goes
away (the connection closes, the server breaks the protocol, or it answers nothing for
30 s while requests wait), every request in flight fails with -EIO, later ones too, and
the bdev is hot-removed (consumers get REMOVE).  The bdev's block size is the server's minimum block
size, at least 512.  ``get_block_status`` forwards ``base:allocation`` queries to the
server, so a network export of this bdev shows the remote allocation map.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import Bdev, BdevModule, BdevState, Callback
from pybdev.errors import OperationError
from pybdev.proto import nbd as proto
from pybdev.proto.nbd import uri as nbd_uri
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import NameParams, Params, Str
from pybdev.tasks import background

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

log = logging.getLogger("pybdev.bdev.nbd")

CONNECT_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 5.0
# A server that answers nothing for this long while requests wait is treated as lost
# (a stopped process keeps its sockets open: without this, I/O would hang forever).
REQUEST_TIMEOUT = 30.0
# Commands without payload still carry a 32-bit length: split them below 4 GiB.
MAX_NO_PAYLOAD = 1 << 31

_READ = proto.NBD_CMD_READ
_WRITE = proto.NBD_CMD_WRITE


class _Request:
    """One NBD request in flight."""

    __slots__ = ("cb", "dest", "error", "extents", "length", "offset", "pieces", "typ")

    def __init__(self, typ: int, offset: int, length: int, cb: Callback,
                 dest: memoryview | None = None) -> None:
        self.typ = typ
        self.offset = offset
        self.length = length
        self.cb = cb
        self.dest = dest  # where READ data is assembled when it comes in pieces
        self.error = 0
        self.extents: list[tuple[int, int]] | None = None
        # (start, end) within the request of each data or hole chunk, when a READ comes
        # in pieces: checked for full cover at the end (a gap must not read as zeroes).
        self.pieces: list[tuple[int, int]] | None = None


class _Join:
    """Completion of a request split in pieces: the first error, or success at the end."""

    __slots__ = ("cb", "data", "left", "status")

    def __init__(self, count: int, cb: Callback, data: Any = None) -> None:
        self.left = count
        self.cb = cb
        self.status = 0
        self.data = data

    def piece_done(self, status: int, _data: Any) -> None:
        if status and not self.status:
            self.status = status
        self.left -= 1
        if not self.left:
            self.cb(self.status, None if self.status else self.data)


class NbdClient(asyncio.Protocol):
    """One connection to an NBD server: handshake, then pipelined requests."""

    def __init__(self, export_name: str) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[proto.ClientReady] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.info: proto.ClientReady | None = None
        self.dead = False
        self.connected = False
        self.on_lost: Callable[[], None] | None = None
        # The handshake state machine bounds what a server can make it hold (count and
        # bytes of option replies): a flooding server fails the handshake, not the target.
        self.handshake: proto.ClientHandshake | None = proto.ClientHandshake(
            export_name, meta_contexts=[proto.BASE_ALLOCATION])
        self._parser: proto.ReplyParser | None = None
        self._buf = bytearray()
        self._reqs: dict[int, _Request] = {}
        self._keys: dict[int, tuple[int, int, int]] = {}
        self._cookie = 0
        self._pending: list[Any] = []
        self._flush_scheduled = False
        self._idle: asyncio.Future[None] | None = None
        self.allocation_id: int | None = None
        self.request_timeout = REQUEST_TIMEOUT
        self._progress = 0.0  # loop time of the last reply, or of the first request
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio callbacks ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connected = True

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None:
            self._feed_handshake(data)
            return
        self._progress = self.loop.time()
        buf = self._buf
        buf += data
        try:
            replies, pos, _need = self._parser.parse(buf)  # type: ignore[union-attr]
            reply: Any = None
        except proto.ProtocolError as e:
            log.error("NBD server broke the protocol: %s; disconnecting", e)
            for reply in e.parsed:
                self._handle(reply)
            self._fail_connection()
            return
        for reply in replies:
            self._handle(reply)
        del replies, reply  # drop the views into buf before resizing it
        try:
            del buf[:pos]
        except BufferError:
            # A callback kept a view of the buffer (it should not): leave it that one.
            self._buf = bytearray(buf[pos:])

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if not self.ready.done():
            self.ready.set_exception(OperationError(
                errno.ECONNRESET, "the server closed the connection during the handshake"))
        was_dead = self.dead
        self.dead = True
        self._fail_all()
        if not self.closed.done():
            self.closed.set_result(None)
        if not was_dead and self.on_lost is not None:
            self.on_lost()

    # -- handshake -----------------------------------------------------------------------------
    def _feed_handshake(self, data: bytes) -> None:
        hs = self.handshake
        assert hs is not None and self.transport is not None
        event = hs.receive_data(data)
        out = hs.data_to_send()
        if out:
            self.transport.write(out)
        if event is None:
            return
        self.handshake = None
        if isinstance(event, proto.ClientReady):
            self.info = event
            self._parser = proto.ReplyParser(self._keys.get, structured=event.structured_replies)
            self.allocation_id = event.meta_contexts.get(proto.BASE_ALLOCATION)
            self.ready.set_result(event)
            if event.trailing:
                self.data_received(event.trailing)
            return
        self.dead = True
        if isinstance(event, proto.ClientFailed):
            self.ready.set_exception(_handshake_error(event))
        else:
            self.ready.set_exception(OperationError(errno.EPROTO, "unexpected export list"))
        self.transport.close()

    # -- requests ------------------------------------------------------------------------------
    def request(self, typ: int, offset: int, length: int, flags: int, payload: Any,
                cb: Callback, dest: memoryview | None = None) -> None:
        transport = self.transport
        if self.dead or transport is None or transport.is_closing():
            cb(-errno.EIO, None)
            return
        self._cookie += 1
        cookie = self._cookie
        if not self._reqs:
            self._progress = self.loop.time()
            if self._watchdog is None and self.request_timeout:
                self._watchdog = self.loop.call_later(self.request_timeout / 4, self._watch)
        self._reqs[cookie] = _Request(typ, offset, length, cb, dest)
        self._keys[cookie] = (typ, offset, length)
        self._pending.append(proto.encode_request(typ, cookie, offset, length, flags))
        if payload is not None:
            # The caller keeps the payload valid until cb, which comes after it was sent.
            self._pending.append(payload)
        if not self._flush_scheduled:
            # Requests submitted in one loop iteration leave in one write.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending = self._pending
        if pending and self.transport is not None:
            self.transport.writelines(pending)
        pending.clear()

    def _watch(self) -> None:
        self._watchdog = None
        if not self._reqs or self.dead:
            return
        if self.loop.time() - self._progress > self.request_timeout:
            log.error("NBD server answered nothing for %.0f s with %d requests waiting; "
                      "giving up on the connection", self.request_timeout, len(self._reqs))
            self._fail_connection()
            return
        self._watchdog = self.loop.call_later(self.request_timeout / 4, self._watch)

    def _handle(self, reply: proto.Reply) -> None:
        cookie = reply.cookie
        req = self._reqs.get(cookie)
        if req is None:
            return
        if type(reply) is proto.SimpleReply:
            if reply.error:
                req.error = -proto.nbd_to_errno(reply.error)
            elif req.typ == _READ:
                self._finish(cookie, req, reply.data)
                return
            self._finish(cookie, req, None)
            return
        if type(reply) is proto.DataChunk:
            data = reply.data
            if (reply.done and req.dest is None and reply.offset == req.offset
                    and len(data) == req.length):
                self._finish(cookie, req, data)  # the common case: no assembly
                return
            at = reply.offset - req.offset
            self._dest(req)[at:at + len(data)] = data
            self._piece(req, at, at + len(data))
        elif type(reply) is proto.HoleChunk:
            at = reply.offset - req.offset
            self._dest(req)[at:at + reply.length] = bytes(reply.length)
            self._piece(req, at, at + reply.length)
        elif type(reply) is proto.BlockStatusChunk:
            if reply.context_id == self.allocation_id:
                req.extents = reply.extents
        elif type(reply) is proto.ErrorChunk and not req.error:
            req.error = -proto.nbd_to_errno(reply.error)
        if reply.done:
            self._finish(cookie, req, None)

    @staticmethod
    def _piece(req: _Request, start: int, end: int) -> None:
        if req.pieces is None:
            req.pieces = [(start, end)]
        else:
            req.pieces.append((start, end))

    @staticmethod
    def _dest(req: _Request) -> memoryview:
        if req.dest is None:
            req.dest = memoryview(bytearray(req.length))
        return req.dest

    def _finish(self, cookie: int, req: _Request, data: Any) -> None:
        del self._reqs[cookie]
        del self._keys[cookie]
        if req.error:
            req.cb(req.error, None)
        elif req.typ == _READ:
            if data is None:
                if not _covers(req.pieces, req.length):
                    log.error("NBD server answered a READ of %d bytes at %d with chunks "
                              "that do not cover it exactly (%s); failing it with EIO",
                              req.length, req.offset, sorted(req.pieces or ()))
                    req.cb(-errno.EIO, None)
                    self._if_idle()
                    return
                data = req.dest
            elif req.dest is not None:
                req.dest[:] = data  # a piece of a split read
                data = req.dest
            req.cb(0, data)
        elif req.typ == proto.NBD_CMD_BLOCK_STATUS:
            req.cb(0, req.extents or [(req.length, 0)])
        else:
            req.cb(0, None)
        self._if_idle()

    def _if_idle(self) -> None:
        if not self._reqs and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail_all(self) -> None:
        reqs = list(self._reqs.values())
        self._reqs.clear()
        self._keys.clear()
        self._pending.clear()
        for req in reqs:
            req.cb(-errno.EIO, None)
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _fail_connection(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost fails what waits, and reports the loss
        else:
            self.dead = True

    async def disconnect(self) -> None:
        """Let requests in flight finish, say NBD_CMD_DISC, close."""
        if self._reqs and not self.dead:
            self._idle = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle), DISCONNECT_TIMEOUT)
            except TimeoutError:
                log.warning("NBD server did not answer %d requests; dropping them",
                            len(self._reqs))
        transport = self.transport
        if transport is not None and not self.dead:
            self._flush()
            self.dead = True  # from here on a closed connection is no loss
            self._cookie += 1
            transport.write(proto.encode_request(proto.NBD_CMD_DISC, self._cookie))
            transport.close()
        elif transport is not None:
            transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), DISCONNECT_TIMEOUT)
        except TimeoutError:
            if self.transport is not None:
                self.transport.abort()


def _covers(pieces: list[tuple[int, int]] | None, length: int) -> bool:
    """Whether the ``(start, end)`` pieces tile ``[0, length)``: no gap, no overlap."""
    if pieces is None:
        return length == 0
    at = 0
    for start, end in sorted(pieces):
        if start != at:
            return False
        at = end
    return at == length


def _handshake_error(event: proto.ClientFailed) -> OperationError:
    codes = {proto.NBD_REP_ERR_UNKNOWN: errno.ENOENT, proto.NBD_REP_ERR_POLICY: errno.EACCES,
             proto.NBD_REP_ERR_TLS_REQD: errno.EACCES,
             proto.NBD_REP_ERR_SHUTDOWN: errno.ESHUTDOWN}
    err = codes.get(event.reply, errno.EIO) if event.reply is not None else errno.EIO
    return OperationError(err, f"NBD handshake failed: {event.reason}")


class NbdBdev(Bdev):
    """A bdev backed by an export of an NBD server."""

    product_name = "NBD disk"
    reports_holes = True  # base:allocation of the remote export, when it offers it
    module_name = "nbd"

    def __init__(self, name: str, uri: str, client: NbdClient, ready: proto.ClientReady) -> None:
        flags = ready.flags
        block_size = max(512, ready.min_block_size)
        io_types = {"read", "reset"}
        if not flags & proto.NBD_FLAG_READ_ONLY:
            io_types.add("write")
            if flags & proto.NBD_FLAG_SEND_WRITE_ZEROES:
                io_types.add("write_zeroes")
            if flags & proto.NBD_FLAG_SEND_TRIM:
                io_types.add("unmap")
        if flags & proto.NBD_FLAG_SEND_FLUSH:
            io_types.add("flush")
        num_blocks = ready.size // block_size
        if num_blocks == 0:
            raise OperationError(errno.EINVAL, f"export of {ready.size} bytes is smaller "
                                               f"than one {block_size}-byte block")
        if ready.size % block_size:
            log.warning("%s: the last %d bytes of the export are not a whole block; unused",
                        name, ready.size % block_size)
        super().__init__(name, block_size, num_blocks, io_types=frozenset(io_types),
                         write_cache=bool(flags & proto.NBD_FLAG_SEND_FLUSH))
        self.uri = uri
        self.client = client
        self.ready = ready
        self.server_flags = flags
        maximum = ready.max_block_size if ready.max_block_size >= block_size else block_size
        self.max_request = maximum - maximum % block_size
        # Without the server's FUA the bdev layer follows FUA writes with a flush.
        self.fua_native = bool(flags & proto.NBD_FLAG_SEND_FUA)
        client.on_lost = self._connection_lost

    # -- I/O -----------------------------------------------------------------------------------
    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        step = self.max_request
        if length <= step:
            self.client.request(_READ, offset, length, 0, None, cb)
            return
        whole = bytearray(length)
        view = memoryview(whole)
        join = _Join(-(-length // step), cb, view)
        for at in range(0, length, step):
            n = min(step, length - at)
            self.client.request(_READ, offset + at, n, 0, None, join.piece_done,
                                dest=view[at:at + n])

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        flags = proto.NBD_CMD_FLAG_FUA if fua else 0
        step = self.max_request
        length = len(data)
        if length <= step:
            self.client.request(_WRITE, offset, length, flags, data, cb)
            return
        view = memoryview(data)
        join = _Join(-(-length // step), cb)
        for at in range(0, length, step):
            n = min(step, length - at)
            self.client.request(_WRITE, offset + at, n, flags, view[at:at + n], join.piece_done)

    def _no_payload(self, typ: int, offset: int, length: int, cb: Callback) -> None:
        step = MAX_NO_PAYLOAD - MAX_NO_PAYLOAD % self.block_size
        if length <= step:
            self.client.request(typ, offset, length, 0, None, cb)
            return
        join = _Join(-(-length // step), cb)
        for at in range(0, length, step):
            self.client.request(typ, offset + at, min(step, length - at), 0, None,
                                join.piece_done)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        self._no_payload(proto.NBD_CMD_TRIM, offset, length, cb)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        self._no_payload(proto.NBD_CMD_WRITE_ZEROES, offset, length, cb)

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        self.client.request(proto.NBD_CMD_FLUSH, 0, 0, 0, None, cb)

    def get_block_status(self, offset: int, length: int, cb: Callback) -> None:
        """``base:allocation`` of the remote export, as ``[(length, flags)]`` from offset."""
        if self.client.allocation_id is None:
            cb(0, [(length, 0)])
            return
        step = MAX_NO_PAYLOAD - MAX_NO_PAYLOAD % self.block_size
        self.client.request(proto.NBD_CMD_BLOCK_STATUS, offset, min(length, step), 0, None, cb)

    # -- life ----------------------------------------------------------------------------------
    def _connection_lost(self) -> None:
        layer = self.layer
        if layer is None or self.state is not BdevState.REGISTERED:
            return
        log.error("NBD bdev %s: lost the connection to %s; removing the bdev", self.name,
                  self.uri)
        background(layer.unregister(self), f"removing NBD bdev {self.name}")

    async def destruct(self) -> None:
        await self.client.disconnect()

    def driver_specific(self) -> dict[str, Any]:
        return {"nbd": {"uri": self.uri}}

    def write_config(self) -> list[dict[str, Any]]:
        return [{"method": "bdev_nbd_create", "params": {"name": self.name, "uri": self.uri}}]


async def connect(uri: str) -> NbdClient:
    """Connect and negotiate; raises OperationError with the reason."""
    try:
        address = nbd_uri.parse(uri, legacy=True)
    except nbd_uri.UriError as e:
        raise OperationError(errno.EINVAL, f"bad NBD URI {uri!r}: {e}") from None
    loop = asyncio.get_running_loop()
    client = NbdClient(address.name)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if address.transport == "unix":
                await loop.create_unix_connection(lambda: client, address.path)
            else:
                await loop.create_connection(lambda: client, address.host, address.port)
            await client.ready
    except TimeoutError:
        # Before OSError: TimeoutError is one of its subclasses, without an errno.
        hs = client.handshake
        if client.transport is not None:
            client.transport.abort()
        if not client.connected:
            what = f"connecting to {uri}"
        else:
            waiting = hs.waiting_for if hs is not None else "the end of the handshake"
            what = f"NBD handshake with {uri} (waiting for {waiting})"
        raise OperationError(
            errno.ETIMEDOUT, f"{what} timed out after {CONNECT_TIMEOUT:g} s") from None
    except OSError as e:
        if client.transport is not None:
            client.transport.abort()
        err = e.errno or errno.EIO
        raise OperationError(err, f"cannot connect to {uri}: {e.strerror or e}") from None
    except OperationError:
        if client.transport is not None:
            client.transport.abort()
        raise
    return client


class NbdModule(BdevModule):
    name = "nbd"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)

    async def create(self, name: str, uri: str) -> NbdBdev:
        """Attach the export at ``uri`` as bdev ``name``."""
        if self.layer.get(name) is not None:
            raise OperationError(errno.EEXIST, f"bdev name {name} already exists")
        client = await connect(uri)
        assert client.info is not None
        try:
            bdev = NbdBdev(name, uri, client, client.info)
            self.layer.register(bdev)
        except BaseException:
            await client.disconnect()
            raise
        log.info("NBD bdev %s attached to %s (%d x %d bytes)", name, uri, bdev.num_blocks,
                 bdev.block_size)
        return bdev




class NbdCreateParams(Params):
    name: Str
    uri: Str


@RPC.method("bdev_nbd_create", NbdCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"})
async def bdev_nbd_create(module: NbdModule, p: NbdCreateParams) -> str:
    """Attach a remote NBD export (nbd://, nbd+unix:// or QEMU's nbd: syntax) as a bdev."""
    bdev = await module.create(p.name, p.uri)
    return bdev.name


@RPC.method("bdev_nbd_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def bdev_nbd_delete(module: NbdModule, p: NameParams) -> bool:
    """Detach an NBD bdev: finish its requests, disconnect from the server."""
    await module.layer.unregister_by_name(p.name, "nbd")
    return True
