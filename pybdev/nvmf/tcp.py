"""The TCP transport: listeners, and one :class:`Connection` (queue pair) per socket.

A connection runs the NVMe/TCP PDU exchange with :mod:`pybdev.proto.nvme`: ICReq /
ICResp, then command capsules.  Fabrics Connect binds it to a controller
(:mod:`pybdev.nvmf.controller`); writes larger than the in-capsule size get one R2T for
all their data (as the kernel target sends, and as every host accepts), reads answer
with one C2HData PDU, followed by a CapsuleResp unless the host disabled SQ flow control
and the transport allows the SUCCESS flag.  A malformed PDU ends only its own connection,
with a C2HTermReq.

Memory (``docs/guide.md``, "Limits"): in-capsule data is bounded by the queue size times
``in_capsule_data_size``.  Data a command moves through the target's memory otherwise
(the buffer an R2T asks the host to fill, the data of a read until the socket takes it)
is counted twice before the command starts: against the connection
(:data:`CONNECTION_DATA_BYTES`) and against the transport, all connections together
(``--nvmf-max-buffered-mb``).  A command that does not fit waits, in order, and its R2T
is sent or its read submitted when data is given back; the host cannot send write data
before its R2T, so a host that announces writes and stalls holds at most the grant.
Read data counts until the socket has taken all of it: the write buffer's high-water
mark is 0, so whatever the kernel does not take at once pauses reading the connection
and holds the data's grant until the buffer is empty again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import mmap
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from pybdev.errors import OperationError
from pybdev.netaddr import bind_address
from pybdev.nvmf.controller import DNR, Controller
from pybdev.proto import nvme
from pybdev.proto.nvme import (
    CATTR_DISABLE_SQ_FLOW,
    CNTLID_DYNAMIC,
    CONNECT_IATTR_DATA,
    OPC_FABRICS,
    PDU_C2H_TERM_REQ,
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    SQHD_DISABLED,
    FabricsType,
    Sc,
)

if TYPE_CHECKING:
    from pybdev.nvmf.target import ListenAddress, Target, TransportOpts

log = logging.getLogger("pybdev.nvmf.tcp")

ADMIN_IN_CAPSULE = 8192  # the Linux host sends admin and fabrics data in-capsule up to this
PRE_CONNECT_DEPTH = 32
MIB = 1 << 20
#: R2T buffers and read data one connection may hold (at least one max_io_size command)
CONNECTION_DATA_BYTES = 8 * MIB
#: all connections of the transport together (``--nvmf-max-buffered-mb``)
DEFAULT_MAX_BUFFERED = 256 * MIB


class TcpTransport:
    """The TCP transport of the target: its options and its reference-counted listeners."""

    trtype = "TCP"

    def __init__(self, target: Target, opts: TransportOpts) -> None:
        self.target = target
        self.opts = opts
        self.servers: dict[tuple[str, str], tuple[asyncio.Server, int]] = {}
        self.portids: dict[tuple[str, str], int] = {}
        self.connections: set[Connection] = set()
        self.stats = {"admin_qpairs": 0, "io_qpairs": 0, "completed_nvme_io": 0}
        self.max_buffered = max(target.max_buffered, opts.max_io_size)
        self.buffered = 0  # bytes granted to commands of all connections
        self.waiting: deque[Connection] = deque()  # connections with commands waiting
        self.started = 0  # commands started from `waiting` (the wake loop's progress)
        self._waking = False

    def release(self, n: int) -> None:
        """Data given back: start the commands waiting for it, oldest connection first."""
        self.buffered -= n
        if not self.waiting or self._waking:
            return  # a command started below completed at once: the loop below goes on
        self._waking = True
        try:
            # every waiting connection gets its turn: one at its own limit (a host that
            # stalls its writes) must not hold up the others
            while self.waiting:
                started = self.started
                for conn in list(self.waiting):
                    if conn.run_deferred():
                        with contextlib.suppress(ValueError):
                            self.waiting.remove(conn)
                if self.started == started:
                    return
        finally:
            self._waking = False

    def portid(self, address: ListenAddress) -> int:
        return self.portids.setdefault(address.key, len(self.portids) + 1)

    async def listen(self, address: ListenAddress) -> None:
        key = address.key
        if key in self.servers:
            server, refs = self.servers[key]
            self.servers[key] = (server, refs + 1)
            return
        try:
            port = int(address.trsvcid)
        except ValueError:
            raise OperationError(errno.EINVAL, f"bad trsvcid {address.trsvcid!r}") from None
        if not 1 <= port <= 65535:
            raise OperationError(errno.EINVAL, f"bad trsvcid {address.trsvcid!r}")
        family = socket.AF_INET6 if address.adrfam.lower() == "ipv6" else socket.AF_INET
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(lambda: Connection(self, key),
                                              bind_address(address.traddr), port,
                                              family=family, reuse_address=True)
        except OSError as e:
            raise OperationError(e.errno or errno.EADDRNOTAVAIL, str(e)) from None
        self.servers[key] = (server, 1)
        self.portid(address)
        log.info("NVMe/TCP listening on %s port %s", address.traddr, address.trsvcid)

    def unlisten(self, address: ListenAddress) -> None:
        key = address.key
        if key not in self.servers:
            return
        server, refs = self.servers[key]
        if refs > 1:
            self.servers[key] = (server, refs - 1)
            return
        del self.servers[key]
        server.close()
        for conn in list(self.connections):
            if conn.listen_key == key and conn.controller is None:
                conn.close("listener removed")

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.close("target stopping")
        for server, _ in self.servers.values():
            server.close()
        for server, _ in self.servers.values():
            await server.wait_closed()
        self.servers.clear()


#: R2T buffers this large are mapped on their own: unmapped when the write completes, so
#: memory that stalled hosts made the target hold goes back to the system (heap memory
#: would stay with the process)
MMAP_BUFFER = 64 * 1024


class _PendingWrite:
    """A command waiting for its data through R2T/H2CData."""

    __slots__ = ("buf", "cmd", "digest_ok", "length", "received")

    def __init__(self, cmd: nvme.Sqe, length: int) -> None:
        self.cmd = cmd
        self.length = length
        # allocated when the data comes in pieces: a host that sends it in one H2CData
        # PDU (the Linux host, up to MAXH2CDATA) has its PDU's data written as it is
        self.buf: bytearray | mmap.mmap | None = None
        self.received = 0
        self.digest_ok = True

    def new_buffer(self) -> bytearray | mmap.mmap:
        n = self.length
        self.buf = mmap.mmap(-1, n) if n >= MMAP_BUFFER else bytearray(n)
        return self.buf

    @property
    def data(self) -> bytes | memoryview:
        """The data for the bdev, without a copy of a mapped buffer (kept alive by the
        view until the bdev is done with it)."""
        buf = self.buf
        assert buf is not None
        return memoryview(buf) if isinstance(buf, mmap.mmap) else bytes(buf)


_R2T = 0  # deferred command kinds
_READ = 1


class Connection(asyncio.Protocol):
    """One NVMe/TCP queue pair."""

    def __init__(self, tcp: TcpTransport, listen_key: tuple[str, str]) -> None:
        self.tcp = tcp
        self.opts = tcp.opts
        self.listen_key = listen_key
        self.transport: asyncio.Transport | None = None
        self.parser = nvme.PduParser(
            nvme.CONTROLLER, max_capsule_data=max(ADMIN_IN_CAPSULE,
                                                  self.opts.in_capsule_data_size),
            max_data=self.opts.max_io_size)
        self.framer = nvme.Framer()
        self.controller: Controller | None = None
        self.qid = -1
        self.sqsize = PRE_CONNECT_DEPTH - 1
        self.sq_head = 0
        self.sqhd_disabled = False
        self.outstanding = 0
        self.pending: dict[int, _PendingWrite] = {}  # ttag -> write waiting for data
        self.conn_limit = max(CONNECTION_DATA_BYTES, self.opts.max_io_size)
        self.held: dict[int, int] = {}  # cid -> bytes granted (R2T buffer, read data)
        self.held_bytes = 0  # their sum, plus `unsent`
        self.unsent = 0  # granted bytes of answers the socket has not taken yet
        self.deferred: deque[tuple[int, nvme.Sqe]] = deque()  # waiting for a grant
        self.writing_paused = False
        self.out: list[Any] = []  # PDUs waiting for the end of the batch
        self.batching = False
        self.flush_scheduled = False
        self.closed = False
        self.peer: tuple[str, str] = ("", "")
        self.state = "uninitialized"

    # -- asyncio -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.peer = (str(peer[0]), str(peer[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # pause (and hold read data's grants) as soon as the kernel does not take a write
        with contextlib.suppress(AttributeError, NotImplementedError):
            transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
        self.tcp.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        # Answers of the commands in this chunk (the bdev often completes at once) go out
        # in one write when it is done: one syscall per batch, not per command.
        self.batching = True
        try:
            try:
                pdus = self.parser.feed(data)
            except nvme.PduError as e:
                for pdu in e.parsed:
                    self._handle(pdu)
                self._terminate(str(e), e.fes, e.fei, e.header)
                return
            for pdu in pdus:
                if self.closed:
                    return
                self._handle(pdu)
        finally:
            self.batching = False
            if self.out:
                self._flush()

    def _send(self, parts: list[Any]) -> None:
        """Queue PDUs for the socket; written once the current batch is handled."""
        self.out += parts
        if not self.batching and not self.flush_scheduled:
            # a completion outside a batch (a bdev that answers later): others that
            # complete in the same loop turn join it
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        out = self.out
        if not out or self.closed or self.transport is None:
            out.clear()
            return
        self.out = []
        self.transport.writelines(out)
        if self.unsent and not self.writing_paused:  # the socket took everything
            n, self.unsent = self.unsent, 0
            self.held_bytes -= n
            self.tcp.release(n)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed()

    # A host that stops reading must not make the target buffer its answers without end:
    # while the socket's send buffer is over the high-water mark, take no new commands.
    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.unsent:  # the socket took every answer: their data is gone
            n, self.unsent = self.unsent, 0
            self.held_bytes -= n
            self.tcp.release(n)
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    @property
    def local_address(self) -> tuple[str, str]:
        return self.listen_key

    def close(self, reason: str) -> None:
        if self.transport is not None and not self.closed:
            log.debug("closing NVMe/TCP connection from %s: %s", self.peer, reason)
            self.transport.close()
        self._closed()

    def _closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.state = "deactivating"
        self.tcp.connections.discard(self)
        self.pending.clear()
        self.deferred.clear()
        with contextlib.suppress(ValueError):
            self.tcp.waiting.remove(self)
        if self.held_bytes:  # buffers still in a bdev's hands are freed when it completes
            n, self.held_bytes = self.held_bytes, 0
            self.held.clear()
            self.unsent = 0
            self.tcp.release(n)
        if self.controller is not None:
            self.controller.qpair_closed(self)

    def _terminate(self, reason: str, fes: int, fei: int, header: bytes) -> None:
        log.warning("NVMe/TCP connection from %s:%s: %s; sending C2HTermReq", *self.peer,
                    reason)
        self.state = "error"
        if self.transport is not None:
            if self.out:
                self._flush()
            self.transport.write(nvme.Framer.term_req(PDU_C2H_TERM_REQ, fes, fei, header))
        self.close(reason)

    # -- PDUs --------------------------------------------------------------------------
    def _handle(self, pdu: nvme.Pdu) -> None:
        if isinstance(pdu, nvme.CapsuleCmd):
            self._capsule(pdu)
        elif isinstance(pdu, nvme.H2CData):
            self._h2c_data(pdu)
        elif isinstance(pdu, nvme.ICReq):
            # CPDA 0: any PDO from the host is fine; data to the host honours its HPDA.
            self.framer = nvme.Framer(pdu.hdgst, pdu.ddgst, pdu.hpda)
            assert self.transport is not None
            self._send([nvme.encode_ic_resp(self.opts.max_io_size, hdgst=pdu.hdgst,
                                            ddgst=pdu.ddgst)])
            self.state = "connecting"
        elif isinstance(pdu, nvme.TermReq):
            log.warning("host %s:%s ended the connection: H2CTermReq FES %#x", *self.peer,
                        pdu.fes)
            self.close("H2CTermReq")

    def _capsule(self, pdu: nvme.CapsuleCmd) -> None:
        cmd = pdu.cmd
        self.outstanding += 1
        if self.outstanding > self.sqsize + 1:
            self._terminate(f"{self.outstanding} commands outstanding, queue size "
                            f"{self.sqsize + 1}", nvme.Fes.PDU_SEQUENCE_ERROR, 0, b"")
            return
        if not self.sqhd_disabled:
            self.sq_head = (self.sq_head + 1) % (self.sqsize + 1)
        if not pdu.ddgst_ok:
            self.complete(cmd.cid, Sc.TRANSIENT_TRANSPORT_ERROR)
            return
        if cmd.flags & 0x03 or cmd.flags & 0xC0 != 0x40:  # fused, or not SGL (PSDT 01b)
            self.complete(cmd.cid, Sc.INVALID_FIELD | DNR)
            return
        data = pdu.data
        sgl_type, sgl_len = cmd.sgl_type, cmd.sgl_len
        if sgl_type == SGL_DATA_BLOCK_OFFSET:
            if cmd.sgl_addr != 0:
                self.complete(cmd.cid, Sc.SGL_OFFSET_INVALID | DNR)
                return
            if data is None or len(data) != sgl_len:
                self.complete(cmd.cid, Sc.SGL_LENGTH_INVALID | DNR)
                return
            if (self.qid > 0 and sgl_len > self.opts.in_capsule_data_size
                    and cmd.opc != OPC_FABRICS):
                self.complete(cmd.cid, Sc.SGL_OFFSET_INVALID | DNR)
                return
        elif sgl_type == SGL_TRANSPORT_DATA_BLOCK:
            if data is not None:
                self.complete(cmd.cid, Sc.SGL_DESCRIPTOR_TYPE_INVALID | DNR)
                return
            if sgl_len > self.opts.max_io_size:
                self.complete(cmd.cid, Sc.SGL_LENGTH_INVALID | DNR)
                return
            if sgl_len and cmd.opc & 3 == 1:  # host-to-controller data: ask for it
                if self.deferred or not self._grant(cmd.cid, sgl_len):
                    if not self.closed:
                        self._defer(_R2T, cmd)
                    return
                self._request_data(cmd)
                return
            if (sgl_len and cmd.opc & 3 == 2 and self.qid > 0  # read data to the host
                    and (self.deferred or not self._grant(cmd.cid, sgl_len))):
                if not self.closed:
                    self._defer(_READ, cmd)
                return
        else:
            self.complete(cmd.cid, Sc.SGL_DESCRIPTOR_TYPE_INVALID | DNR)
            return
        self._execute(cmd, data)

    # -- data grants ---------------------------------------------------------------------
    def _grant(self, cid: int, n: int) -> bool:
        if cid in self.held:
            self._terminate(f"command identifier {cid} reused while in flight",
                            nvme.Fes.INVALID_HEADER_FIELD, 0, b"")
            return False
        tcp = self.tcp
        if self.held_bytes + n > self.conn_limit or tcp.buffered + n > tcp.max_buffered:
            return False
        tcp.buffered += n
        self.held_bytes += n
        self.held[cid] = n
        return True

    def _defer(self, kind: int, cmd: nvme.Sqe) -> None:
        if not self.deferred:
            self.tcp.waiting.append(self)
        self.deferred.append((kind, cmd))

    def run_deferred(self) -> bool:
        """Start waiting commands that now fit; True when none is left waiting."""
        deferred = self.deferred
        while deferred:
            if self.closed:
                deferred.clear()
                return True
            kind, cmd = deferred[0]
            if not self._grant(cmd.cid, cmd.sgl_len):
                return self.closed
            deferred.popleft()
            self.tcp.started += 1
            if kind == _R2T:
                self._request_data(cmd)
            else:
                self._execute(cmd, None)
        return True

    def _ungrant(self, cid: int) -> None:
        """The command is answered: its grant goes back once the socket took the answer
        (:meth:`_flush`, or :meth:`resume_writing` when the socket was full)."""
        self.unsent += self.held.pop(cid)

    def _request_data(self, cmd: nvme.Sqe) -> None:
        ttag = 0
        while ttag in self.pending:
            ttag += 1
        self.pending[ttag] = _PendingWrite(cmd, cmd.sgl_len)
        assert self.transport is not None
        self._send([self.framer.r2t(cmd.cid, ttag, 0, cmd.sgl_len)])

    def _h2c_data(self, pdu: nvme.H2CData) -> None:
        pending = self.pending.get(pdu.ttag)
        if pending is None or pending.cmd.cid != pdu.cccid:
            self._terminate(f"H2CData for unknown TTAG {pdu.ttag} / CCCID {pdu.cccid}",
                            nvme.Fes.INVALID_HEADER_FIELD, 10, b"")
            return
        n = len(pdu.data)
        total = pending.length
        if pdu.datao != pending.received or pdu.datao + n > total:
            self._terminate(f"H2CData DATAO {pdu.datao} DATAL {n}, expected offset "
                            f"{pending.received} of {total}",
                            nvme.Fes.DATA_TRANSFER_OUT_OF_RANGE, 12, b"")
            return
        pending.received += n
        pending.digest_ok &= pdu.ddgst_ok
        whole = n == total
        if not whole:
            buf = pending.buf if pending.buf is not None else pending.new_buffer()
            buf[pdu.datao:pdu.datao + n] = pdu.data
        if pending.received == total:
            del self.pending[pdu.ttag]
            if not pending.digest_ok:
                self.complete(pending.cmd.cid, Sc.TRANSIENT_TRANSPORT_ERROR)
            else:
                self._execute(pending.cmd, pdu.data if whole else pending.data)

    # -- commands ----------------------------------------------------------------------
    def _execute(self, cmd: nvme.Sqe, data: bytes | memoryview | None) -> None:
        if cmd.opc == OPC_FABRICS:
            self._fabrics(cmd, data)
            return
        ctrlr = self.controller
        if ctrlr is None:
            self.complete(cmd.cid, Sc.INVALID_OPCODE | DNR)
        elif self.qid == 0:
            ctrlr.admin_command(self, cmd, None if data is None else bytes(data))
        else:
            ctrlr.io_command(self, cmd, data)

    def _fabrics(self, cmd: nvme.Sqe, data: bytes | memoryview | None) -> None:
        fctype = cmd.fctype
        if fctype == FabricsType.CONNECT:
            self._connect(cmd, data)
            return
        ctrlr = self.controller
        if ctrlr is None:
            self.complete(cmd.cid, Sc.COMMAND_SEQUENCE_ERROR | DNR)
            return
        if self.qid != 0 or fctype not in (FabricsType.PROPERTY_GET, FabricsType.PROPERTY_SET):
            self.complete(cmd.cid, Sc.INVALID_OPCODE | DNR)
            return
        ctrlr.touch()
        size, offset, value = nvme.property_fields(cmd)
        if fctype == FabricsType.PROPERTY_GET:
            got = ctrlr.property_get(offset, size)
            if got is None:
                self.complete(cmd.cid, Sc.INVALID_FIELD | DNR)
            else:
                self.complete(cmd.cid, 0, got & 0xFFFFFFFF, got >> 32)
        elif ctrlr.property_set(offset, size, value):
            self.complete(cmd.cid)
        else:
            self.complete(cmd.cid, Sc.INVALID_FIELD | DNR)

    def _connect(self, cmd: nvme.Sqe, data: bytes | memoryview | None) -> None:
        cid = cmd.cid
        if self.controller is not None:
            self.complete(cid, Sc.COMMAND_SEQUENCE_ERROR | DNR)
            return
        recfmt, qid, sqsize, cattr, kato = nvme.connect_fields(cmd)
        if recfmt != 0:
            self.complete(cid, Sc.CONNECT_INCOMPATIBLE_FORMAT | DNR)
            return
        try:
            cdata = nvme.ConnectData.decode(data or b"")
        except nvme.DecodeError as e:
            self.complete(cid, Sc.CONNECT_INVALID_PARAMETERS | DNR, CONNECT_IATTR_DATA | e.offset)
            return
        target = self.tcp.target
        sub = target.subsystems.get(cdata.subnqn)
        if sub is None or sub.deleting or (
                not sub.is_discovery and sub.listener(*self.listen_key) is None):
            self.complete(cid, Sc.CONNECT_INVALID_PARAMETERS | DNR, CONNECT_IATTR_DATA | 256)
            return
        if not sub.host_allowed(cdata.hostnqn):
            log.error("host %s is not allowed to connect to %s", cdata.hostnqn, sub.nqn)
            self.complete(cid, Sc.CONNECT_INVALID_HOST | DNR, CONNECT_IATTR_DATA | 512)
            return
        opts = self.opts
        max_depth = opts.max_aq_depth if qid == 0 else opts.max_queue_depth
        if sqsize == 0 or sqsize > max_depth - 1:
            self.complete(cid, Sc.CONNECT_INVALID_PARAMETERS | DNR, 44)
            return
        if qid == 0:
            if cdata.cntlid != CNTLID_DYNAMIC:
                self.complete(cid, Sc.CONNECT_INVALID_PARAMETERS | DNR, CONNECT_IATTR_DATA | 16)
                return
            cntlid = sub.allocate_cntlid()
            if cntlid is None:
                self.complete(cid, Sc.CONNECT_CONTROLLER_BUSY | DNR)
                return
            ctrlr = Controller(target, sub, cntlid, cdata.hostnqn, cdata.hostid, kato, self,
                               opts)
            sub.controllers[cntlid] = ctrlr
        else:
            found = sub.controllers.get(cdata.cntlid)
            if found is None or found.hostnqn != cdata.hostnqn or sub.is_discovery:
                self.complete(cid, Sc.CONNECT_INVALID_PARAMETERS | DNR, CONNECT_IATTR_DATA | 16)
                return
            ctrlr = found
            if qid > opts.max_io_qpairs_per_ctrlr:
                self.complete(cid, Sc.CONNECT_INVALID_PARAMETERS | DNR, 42)
                return
            if qid in ctrlr.io_qpairs or not ctrlr.ready:
                self.complete(cid, Sc.COMMAND_SEQUENCE_ERROR | DNR)
                return
            ctrlr.io_qpairs[qid] = self
        self.controller = ctrlr
        self.qid = qid
        self.sqsize = sqsize
        self.sq_head = 1 % (sqsize + 1)
        self.sqhd_disabled = bool(cattr & CATTR_DISABLE_SQ_FLOW)
        self.state = "enabled"
        self.tcp.stats["admin_qpairs" if qid == 0 else "io_qpairs"] += 1
        self.complete(cid, 0, ctrlr.cntlid)

    # -- completions -------------------------------------------------------------------
    def complete(self, cid: int, status: int = 0, dw0: int = 0, dw1: int = 0) -> None:
        if self.closed:
            return
        self.out.append(self.framer.capsule_resp(self._cqe(cid, status, dw0, dw1)))
        if not self.batching and not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        if self.held and cid in self.held:
            self._ungrant(cid)

    def _cqe(self, cid: int, status: int, dw0: int, dw1: int) -> bytes:
        """The CQE of a finished command (and its accounting)."""
        self.outstanding -= 1
        if self.qid > 0:
            self.tcp.stats["completed_nvme_io"] += 1
        sqhd = SQHD_DISABLED if self.sqhd_disabled else self.sq_head
        return nvme.encode_cqe(cid, status, dw0, dw1, sqhd, max(self.qid, 0))

    def send_data(self, cid: int, data: Any) -> None:
        """Answer a command with C2H data and success."""
        if self.closed:
            return
        payload = data if isinstance(data, bytes) else bytes(data)
        if self.sqhd_disabled and self.opts.c2h_success:
            self._cqe(cid, 0, 0, 0)  # accounted, not sent: SUCCESS replaces it
            self._send(self.framer.c2h_data(cid, 0, payload, True, True))
        else:
            # data and completion go out together (in the batch's one write)
            parts = self.framer.c2h_data(cid, 0, payload, True, False)
            parts.append(self.framer.capsule_resp(self._cqe(cid, 0, 0, 0)))
            self._send(parts)
        if self.held and cid in self.held:
            self._ungrant(cid)

    def to_json(self) -> dict[str, Any]:
        ctrlr = self.controller
        return {"cntlid": ctrlr.cntlid if ctrlr else 0, "qid": self.qid, "state": self.state,
                "thread": "nvmf_tgt_poll_group_000",
                "hostnqn": ctrlr.hostnqn if ctrlr else "",
                "listen_address": {"trtype": "TCP", "adrfam": "IPv4",
                                   "traddr": self.listen_key[0],
                                   "trsvcid": self.listen_key[1]},
                "peer_address": {"trtype": "TCP", "adrfam": "IPv4", "traddr": self.peer[0],
                                 "trsvcid": self.peer[1]}}
