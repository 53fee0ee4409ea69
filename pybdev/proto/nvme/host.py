"""The host side of one NVMe/TCP queue pair, sans-IO (part of :mod:`pybdev.proto.nvme`).

:class:`HostQueue` is what an initiator needs per connection once it has a socket:
the ICReq to send, the ICResp check (digests granted exactly as asked, CPDA 0,
MAXH2CDATA as SPDK's and the kernel's hosts require it), command identifiers, the
data of each command (in the capsule up to the in-capsule limit, else by R2T and
H2CData PDUs no larger than MAXH2CDATA), the reassembly of C2HData PDUs and the
completion of commands by CapsuleResp or by a C2HData with SUCCESS.

Every field the controller sends is checked before it is used, after the checks of
SPDK's host (``lib/nvme/nvme_tcp.c``: ``nvme_tcp_c2h_data_hdr_handle``,
``nvme_tcp_r2t_hdr_handle``, ``nvme_tcp_capsule_resp_hdr_handle``) and the kernel's
(``drivers/nvme/host/tcp.c``): data or an R2T for an unknown command, data for a write,
an R2T for a read, data out of order or beyond the command's length, an R2T that does
not continue where the last one ended.  Each raises :class:`PduError` and the
connection must end.  A data digest mismatch fails only its command (status Data
Transfer Error), as the kernel's host does.

Bytes a controller can make the host hold: one PDU of at most ``max_data`` data bytes
(the parser's bound) and, per command, at most its own read length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple, TypeAlias

from .const import SGL_DATA_BLOCK_OFFSET, Fes, Sc
from .errors import PduError
from .pdu import (
    HOST,
    R2T,
    C2HData,
    CapsuleResp,
    Framer,
    ICResp,
    PduParser,
    TermReq,
    encode_ic_req,
)

__all__ = ["Completion", "HostQueue", "QueueFull", "check_ic_resp", "in_capsule_sqe"]

Buffer: TypeAlias = bytes | bytearray | memoryview

#: Status of a command whose data failed its digest (the kernel's host does the same).
DATA_TRANSFER_ERROR: Final = int(Sc.DATA_TRANSFER_ERROR)


class QueueFull(Exception):
    """Every command identifier of the queue is in use."""


class Completion(NamedTuple):
    """A finished command: ``status`` is the 15-bit CQE status (0 = success), ``dw0``
    and ``dw1`` the CQE's command-specific dwords, ``data`` what a read brought (None
    for commands without controller-to-host data) and ``ctx`` what ``submit`` was given."""

    ctx: Any
    status: int
    dw0: int
    dw1: int
    data: Buffer | None


class _Cmd:
    __slots__ = ("buf", "ctx", "digest_bad", "got", "length", "read", "sent", "write")

    def __init__(self, ctx: Any, read: int, write: Buffer | None) -> None:
        self.ctx = ctx
        self.read = read  # bytes expected from the controller (0: none)
        self.write = write  # data to send by R2T (None: none, or sent in the capsule)
        self.length = len(write) if write is not None else 0
        self.got = 0  # C2H bytes received
        self.sent = 0  # H2C bytes sent
        self.buf: bytearray | bytes | None = None
        self.digest_bad = False


def check_ic_resp(resp: ICResp, hdgst: bool, ddgst: bool) -> str | None:
    """Why an ICResp is unacceptable to a host that asked for these digests, or None."""
    if resp.hdgst != hdgst or resp.ddgst != ddgst:
        return (f"digests granted (header {resp.hdgst}, data {resp.ddgst}) differ from "
                f"those asked for (header {hdgst}, data {ddgst})")
    if resp.cpda != 0:
        return f"CPDA {resp.cpda}: data alignment is not supported"
    return None


def in_capsule_sqe(sqe: bytes, length: int) -> bytes:
    """``sqe`` with its SGL rewritten to describe ``length`` bytes of in-capsule data."""
    return (sqe[:32] + length.to_bytes(4, "little") + sqe[36:39]
            + bytes((SGL_DATA_BLOCK_OFFSET,)) + sqe[40:])


class HostQueue:
    """One queue pair seen from the host: bytes in, completions and bytes out.

    Use: send :meth:`ic_req`; :meth:`feed` received bytes; the first event is the
    :class:`ICResp` (already checked), every later one a :class:`Completion`; after
    each ``feed`` write out :meth:`data_to_send` (H2CData answering R2Ts).
    :meth:`submit` returns the buffers of a command to write.  ``depth`` bounds the
    commands in flight (CIDs 0..depth-1); ``max_data`` the data of one C2HData and of
    one command (larger reads must be split by the caller).
    """

    __slots__ = ("_cmds", "_free", "_out", "connected", "ddgst", "depth", "framer",
                 "hdgst", "in_capsule", "max_data", "maxh2cdata", "parser")

    def __init__(self, *, hdgst: bool = False, ddgst: bool = False, depth: int = 128,
                 max_data: int = 1 << 20) -> None:
        self.hdgst = hdgst
        self.ddgst = ddgst
        self.depth = depth
        self.max_data = max_data
        self.parser = PduParser(HOST, max_capsule_data=0, max_data=max_data)
        self.framer = Framer(hdgst, ddgst)
        self.maxh2cdata = 0
        self.connected = False
        # In-capsule write data limit: 8 KiB on the admin queue and for Connect (as the
        # kernel's host), IOCCSZ*16-64 on I/O queues once Identify told it.
        self.in_capsule = 8192
        self._cmds: dict[int, _Cmd] = {}
        self._free = list(range(depth - 1, -1, -1))
        self._out: list[Buffer] = []

    # -- connection ---------------------------------------------------------------------
    def ic_req(self) -> bytes:
        return encode_ic_req(hdgst=self.hdgst, ddgst=self.ddgst)

    @property
    def outstanding(self) -> int:
        return len(self._cmds)

    def set_depth(self, depth: int) -> None:
        """Lower (or raise) the CIDs in use to ``depth`` (the controller's queue size);
        only while nothing is in flight."""
        assert not self._cmds
        self.depth = depth
        self._free = list(range(depth - 1, -1, -1))

    # -- commands -----------------------------------------------------------------------
    def submit(self, make_sqe: Callable[[int], bytes], ctx: Any, *, read: int = 0,
               write: Buffer | None = None) -> list[Buffer]:
        """Buffers to send for the command ``make_sqe(cid)``; raises :class:`QueueFull`.

        ``read`` is the number of bytes the command brings back; ``write`` its data to
        the controller, sent in the capsule when it fits, else on R2T (the caller keeps
        it unchanged until the completion)."""
        if not self._free:
            raise QueueFull()
        cid = self._free.pop()
        sqe = make_sqe(cid)
        if write is not None and len(write) <= self.in_capsule:
            self._cmds[cid] = _Cmd(ctx, read, None)
            return self.framer.capsule_cmd(in_capsule_sqe(sqe, len(write)), write)
        self._cmds[cid] = _Cmd(ctx, read, write)
        return self.framer.capsule_cmd(sqe)

    def data_to_send(self) -> list[Buffer]:
        out = self._out
        self._out = []
        return out

    def fail_all(self) -> list[Any]:
        """Forget every command in flight (the connection is gone); their contexts."""
        ctxs = [c.ctx for c in self._cmds.values()]
        self._cmds.clear()
        self._free = list(range(self.depth - 1, -1, -1))
        return ctxs

    # -- receiving ----------------------------------------------------------------------
    def feed(self, data: Buffer) -> list[ICResp | Completion | TermReq]:
        """Events of ``data``; raises :class:`PduError` (send a TermReq, close)."""
        out: list[ICResp | Completion | TermReq] = []
        try:
            pdus = self.parser.feed(data)
        except PduError as err:
            for pdu in err.parsed:
                self._event(pdu, out)
            err.parsed = out  # type: ignore[assignment]
            raise
        try:
            for pdu in pdus:
                self._event(pdu, out)
        except PduError as err:
            err.parsed = out  # type: ignore[assignment]
            raise
        return out

    def _event(self, pdu: Any, out: list[ICResp | Completion | TermReq]) -> None:
        typ = type(pdu)
        if typ is CapsuleResp:
            cqe = pdu.cqe
            cmd = self._cmds.pop(cqe.cid, None)
            if cmd is None:
                raise PduError(f"CapsuleResp for CID {cqe.cid}, which is not in flight",
                               Fes.INVALID_HEADER_FIELD, 20)
            self._free.append(cqe.cid)
            st = cqe.status
            if cmd.digest_bad and not st:
                st = DATA_TRANSFER_ERROR
            elif cmd.read and not st and cmd.got != cmd.read:
                st = DATA_TRANSFER_ERROR  # success without all the data (kernel: -EPROTO)
            out.append(Completion(cmd.ctx, st, cqe.dw0, cqe.dw1,
                                  cmd.buf if cmd.read else None))
        elif typ is C2HData:
            self._c2h(pdu, out)
        elif typ is R2T:
            self._r2t(pdu)
        elif typ is ICResp:
            why = check_ic_resp(pdu, self.hdgst, self.ddgst)
            if why is not None:
                raise PduError(f"unacceptable ICResp: {why}", Fes.UNSUPPORTED_PARAMETER, 10)
            self.maxh2cdata = pdu.maxh2cdata
            self.connected = True
            out.append(pdu)
        else:  # TermReq: the caller reports it and closes
            out.append(pdu)

    def _c2h(self, pdu: C2HData, out: list[ICResp | Completion | TermReq]) -> None:
        cid = pdu.cccid
        cmd = self._cmds.get(cid)
        if cmd is None or not cmd.read:
            what = "not in flight" if cmd is None else "not a read"
            raise PduError(f"C2HData for CID {cid}, which is {what}",
                           Fes.INVALID_HEADER_FIELD, 8)
        n = len(pdu.data)
        if pdu.datao != cmd.got:
            raise PduError(f"C2HData offset {pdu.datao} for CID {cid}, expected {cmd.got}",
                           Fes.DATA_TRANSFER_OUT_OF_RANGE, 12)
        if cmd.got + n > cmd.read:
            raise PduError(f"C2HData for CID {cid} ends at {cmd.got + n}, beyond its "
                           f"{cmd.read} bytes", Fes.DATA_TRANSFER_OUT_OF_RANGE, 16)
        if not pdu.ddgst_ok:
            cmd.digest_bad = True
        if cmd.buf is None and n == cmd.read:
            cmd.buf = pdu.data  # the usual case: the whole read in one PDU, no copy
        else:
            if cmd.buf is None:
                cmd.buf = bytearray()
            cmd.buf += pdu.data  # type: ignore[operator]
        cmd.got += n
        if pdu.success:
            if cmd.got != cmd.read:
                raise PduError(f"C2HData SUCCESS for CID {cid} after {cmd.got} of "
                               f"{cmd.read} bytes", Fes.PDU_SEQUENCE_ERROR, 1)
            del self._cmds[cid]
            self._free.append(cid)
            out.append(Completion(cmd.ctx, DATA_TRANSFER_ERROR if cmd.digest_bad else 0,
                                  0, 0, cmd.buf))

    def _r2t(self, pdu: R2T) -> None:
        cid = pdu.cccid
        cmd = self._cmds.get(cid)
        if cmd is None or cmd.write is None:
            what = "not in flight" if cmd is None else "not a write waiting for an R2T"
            raise PduError(f"R2T for CID {cid}, which is {what}", Fes.INVALID_HEADER_FIELD, 8)
        end = pdu.r2to + pdu.r2tl
        if pdu.r2to != cmd.sent or end > cmd.length:
            raise PduError(f"R2T for CID {cid} asks for bytes {pdu.r2to}..{end} of "
                           f"{cmd.length}, {cmd.sent} already sent",
                           Fes.DATA_TRANSFER_OUT_OF_RANGE, 12)
        step = self.maxh2cdata
        view = memoryview(cmd.write)
        h2c = self.framer.h2c_data
        at = pdu.r2to
        while at < end:
            n = min(step, end - at)
            self._out += h2c(cid, pdu.ttag, at, view[at:at + n], last=at + n == end)
            at += n
        cmd.sent = end

