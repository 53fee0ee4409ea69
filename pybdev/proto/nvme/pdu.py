"""NVMe/TCP PDUs: encoders and the stream parser (part of :mod:`pybdev.proto.nvme`).

Layouts: SPDK's ``include/spdk/nvme_tcp.h`` / ``include/spdk_internal/nvme_tcp.h`` and
the kernel's ``include/linux/nvme-tcp.h``; the checks follow SPDK's
``lib/nvmf/tcp.c`` (``nvmf_tcp_pdu_ch_handle``) and the kernel's
``drivers/nvme/target/tcp.c``.  A PDU is the 8-byte common header (type, flags, HLEN,
PDO, PLEN), the type's header, an optional header digest, padding up to PDO, data and an
optional data digest (``docs/nvmf.md``).

:class:`PduParser` takes bytes and returns PDU events; every length and offset in a
header is checked against the negotiated limits *before* the parser waits for (and
buffers) the rest of the PDU, so one connection holds at most one PDU's worth of bytes
beyond what it was just given.  Anything malformed raises :class:`PduError`, which
carries the FES/FEI of the termination request the receiver sends before closing
(:meth:`Framer.term_req`).  A data digest mismatch is not fatal: the event carries
``ddgst_ok=False`` and the command fails with a transport error.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple, TypeAlias

from .command import Cqe, Sqe, decode_cqe, decode_sqe
from .const import (
    DGST_DDGST,
    DGST_HDGST,
    FLAG_DDGSTF,
    FLAG_HDGSTF,
    FLAG_LAST_PDU,
    FLAG_SUCCESS,
    HLEN,
    PDO_MAX,
    PDU_C2H_DATA,
    PDU_C2H_TERM_REQ,
    PDU_CAPSULE_CMD,
    PDU_CAPSULE_RESP,
    PDU_H2C_DATA,
    PDU_H2C_TERM_REQ,
    PDU_IC_REQ,
    PDU_IC_RESP,
    PDU_R2T,
    TERM_REQ_MAX_DATA,
    Fes,
)
from .crc32c import crc32c
from .errors import PduError

__all__ = [
    "CH",
    "CONTROLLER",
    "HOST",
    "R2T",
    "C2HData",
    "CapsuleCmd",
    "CapsuleResp",
    "Framer",
    "H2CData",
    "ICReq",
    "ICResp",
    "Pdu",
    "PduParser",
    "TermReq",
    "encode_ic_req",
    "encode_ic_resp",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

#: type, flags, hlen, pdo, plen
CH: Final = struct.Struct("<BBBBI")
_IC: Final = struct.Struct("<BBBBIHBBI112x")  # CH + pfv, pda, dgst, maxr2t/maxh2cdata
_DATA_HDR: Final = struct.Struct("<BBBBIHHIII")  # CH + cccid, ttag, datao, datal, rsvd
_TERM_HDR: Final = struct.Struct("<BBBBIHI10x")  # CH + fes, fei
_U32: Final = struct.Struct("<I")

CONTROLLER: Final = "controller"
HOST: Final = "host"


class ICReq(NamedTuple):
    pfv: int
    hpda: int
    hdgst: bool
    ddgst: bool
    maxr2t: int


class ICResp(NamedTuple):
    pfv: int
    cpda: int
    hdgst: bool
    ddgst: bool
    maxh2cdata: int


class CapsuleCmd(NamedTuple):
    cmd: Sqe
    data: bytes | None  # in-capsule data
    ddgst_ok: bool


class CapsuleResp(NamedTuple):
    cqe: Cqe


class H2CData(NamedTuple):
    cccid: int
    ttag: int
    datao: int
    data: bytes
    last: bool
    ddgst_ok: bool


class C2HData(NamedTuple):
    cccid: int
    datao: int
    data: bytes
    last: bool
    success: bool
    ddgst_ok: bool


class R2T(NamedTuple):
    cccid: int
    ttag: int
    r2to: int
    r2tl: int


class TermReq(NamedTuple):
    pdu_type: int  # PDU_H2C_TERM_REQ or PDU_C2H_TERM_REQ
    fes: int
    fei: int
    data: bytes  # the start of the PDU the peer objected to


Pdu: TypeAlias = ICReq | ICResp | CapsuleCmd | CapsuleResp | H2CData | C2HData | R2T | TermReq

# ---------------------------------------------------------------------------- IC PDUs


def encode_ic_req(hpda: int = 0, hdgst: bool = False, ddgst: bool = False,
                  maxr2t: int = 0, pfv: int = 0) -> bytes:
    return _IC.pack(PDU_IC_REQ, 0, 128, 0, 128, pfv, hpda,
                    (DGST_HDGST if hdgst else 0) | (DGST_DDGST if ddgst else 0), maxr2t)


def encode_ic_resp(maxh2cdata: int, cpda: int = 0, hdgst: bool = False,
                   ddgst: bool = False, pfv: int = 0) -> bytes:
    return _IC.pack(PDU_IC_RESP, 0, 128, 0, 128, pfv, cpda,
                    (DGST_HDGST if hdgst else 0) | (DGST_DDGST if ddgst else 0), maxh2cdata)


# ---------------------------------------------------------------------------- framing


class Framer:
    """Encodes the PDUs after the IC exchange for one connection.

    ``hdgst``/``ddgst`` are the negotiated digests, ``pda`` the *peer's* data alignment
    (HPDA when this side is the controller, CPDA when it is the host): data starts at a
    multiple of ``(pda + 1) * 4`` bytes.  Methods that carry data return a list of
    buffers for ``writelines`` so the data is never copied into the PDU.
    """

    __slots__ = ("_flags", "_hd", "ddgst", "hdgst", "pda")

    def __init__(self, hdgst: bool = False, ddgst: bool = False, pda: int = 0) -> None:
        self.hdgst = hdgst
        self.ddgst = ddgst
        self.pda = pda
        self._hd = 4 if hdgst else 0
        self._flags = FLAG_HDGSTF if hdgst else 0

    def _pdo(self, hlen: int) -> int:
        pdo = hlen + self._hd
        if self.pda:
            align = (self.pda + 1) << 2
            pdo = -(-pdo // align) * align
        return pdo

    def _frame(self, header: bytearray, hlen: int, data: Buffer | None) -> list[Buffer]:
        """Fill PDO/PLEN/flags of ``header`` (CH + PSH) and add digests and padding."""
        n = len(data) if data is not None else 0
        flags = header[1] | self._flags
        if n:
            pdo = self._pdo(hlen)
            if self.ddgst:
                flags |= FLAG_DDGSTF
            plen = pdo + n + (4 if self.ddgst else 0)
        else:
            pdo = 0
            plen = hlen + self._hd
        header[1] = flags
        header[3] = pdo
        _U32.pack_into(header, 4, plen)
        if self.hdgst:
            header += _U32.pack(crc32c(header))
        if not n:
            return [header]
        if pdo > len(header):
            header += bytes(pdo - len(header))
        assert data is not None
        out: list[Buffer] = [header, data]
        if self.ddgst:
            out.append(_U32.pack(crc32c(data)))
        return out

    def capsule_cmd(self, sqe: bytes, data: Buffer | None = None) -> list[Buffer]:
        header = bytearray(8)
        header[0] = PDU_CAPSULE_CMD
        header[2] = 72
        header += sqe
        return self._frame(header, 72, data)

    def capsule_resp(self, cqe: bytes) -> bytes:
        if not self.hdgst:  # the hot path: one allocation
            return b"\x05\x00\x18\x00\x18\x00\x00\x00" + cqe
        header = bytearray(b"\x05\x00\x18\x00\x00\x00\x00\x00")
        header += cqe
        return bytes(self._frame(header, 24, None)[0])

    def h2c_data(self, cccid: int, ttag: int, datao: int, data: Buffer,
                 last: bool = True) -> list[Buffer]:
        header = bytearray(_DATA_HDR.pack(PDU_H2C_DATA, FLAG_LAST_PDU if last else 0, 24, 0,
                                          0, cccid, ttag, datao, len(data), 0))
        return self._frame(header, 24, data)

    def c2h_data(self, cccid: int, datao: int, data: Buffer, last: bool = True,
                 success: bool = False) -> list[Buffer]:
        """C2HData; ``success`` (only with ``last``) replaces the CapsuleResp."""
        flags = (FLAG_LAST_PDU if last else 0) | (FLAG_SUCCESS if success and last else 0)
        n = len(data)
        if not self.hdgst and not self.ddgst and not self.pda:  # the hot path
            return [_DATA_HDR.pack(PDU_C2H_DATA, flags, 24, 24, 24 + n, cccid, 0, datao, n,
                                   0), data]
        header = bytearray(_DATA_HDR.pack(PDU_C2H_DATA, flags, 24, 0, 0, cccid, 0, datao, n,
                                          0))
        return self._frame(header, 24, data)

    def r2t(self, cccid: int, ttag: int, r2to: int, r2tl: int) -> bytes:
        header = bytearray(_DATA_HDR.pack(PDU_R2T, 0, 24, 0, 0, cccid, ttag, r2to, r2tl, 0))
        return bytes(self._frame(header, 24, None)[0])

    @staticmethod
    def term_req(pdu_type: int, fes: int, fei: int = 0, header: bytes = b"") -> bytes:
        """H2CTermReq or C2HTermReq; never digests (NVMe/TCP 1.0, and both kernels)."""
        data = bytes(header[:TERM_REQ_MAX_DATA])
        return _TERM_HDR.pack(pdu_type, 0, 24, 24 if data else 0, 24 + len(data), fes,
                              fei & 0xFFFFFFFF) + data


# ---------------------------------------------------------------------------- parsing

_ACCEPTS: Final = {
    CONTROLLER: frozenset({PDU_IC_REQ, PDU_H2C_TERM_REQ, PDU_CAPSULE_CMD, PDU_H2C_DATA}),
    HOST: frozenset({PDU_IC_RESP, PDU_C2H_TERM_REQ, PDU_CAPSULE_RESP, PDU_C2H_DATA,
                     PDU_R2T}),
}
_WITH_DATA: Final = frozenset({PDU_CAPSULE_CMD, PDU_H2C_DATA, PDU_C2H_DATA})
_TERM: Final = frozenset({PDU_H2C_TERM_REQ, PDU_C2H_TERM_REQ})


class PduParser:
    """Bytes in, PDUs out, for one connection.

    ``role`` is :data:`CONTROLLER` (parses what a host sends: ICReq, CapsuleCmd, H2CData,
    H2CTermReq) or :data:`HOST` (ICResp, CapsuleResp, C2HData, R2T, C2HTermReq).  The
    first PDU must be the IC PDU; its digest bits become the connection's digests (a
    controller echoes what the host asked for, a host gets what was granted).

    Limits, all checked from the header alone: ``max_capsule_data`` (in-capsule data of
    a CapsuleCmd), ``max_data`` (DATAL of one H2CData, i.e. MAXH2CDATA, or of one
    C2HData), and ``pda`` (this side's own data alignment requirement, checked on PDO).
    """

    __slots__ = (
        "_accepts",
        "_buf",
        "_ic_done",
        "_max_plen",
        "ddgst",
        "hdgst",
        "max_capsule_data",
        "max_data",
        "pda",
        "role",
    )

    def __init__(self, role: str, *, max_capsule_data: int = 8192,
                 max_data: int = 131072, pda: int = 0) -> None:
        if role not in _ACCEPTS:
            raise ValueError(f"role must be {CONTROLLER!r} or {HOST!r}")
        self.role = role
        self.max_capsule_data = max_capsule_data
        self.max_data = max_data
        self.pda = pda
        self.hdgst = False
        self.ddgst = False
        self._buf = bytearray()
        self._ic_done = False
        self._accepts = _ACCEPTS[role]
        # digests + worst-case padding: the largest PDU this connection may buffer
        self._max_plen = 4 + PDO_MAX + max(max_capsule_data, max_data) + 4

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete PDU (bounded by one PDU of the limits above)."""
        return len(self._buf)

    def feed(self, data: Buffer) -> list[Pdu]:
        """Every PDU completed by ``data``, in order.  Raises :class:`PduError`."""
        buf = self._buf
        buf += data
        out: list[Pdu] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 8:
                typ, flags, hlen, pdo, plen = CH.unpack_from(buf, pos)
                self._check_ch(buf, pos, typ, flags, hlen, pdo, plen)
                if end - pos < plen:
                    break
                out.append(self._decode(buf, pos, typ, flags, hlen, pdo, plen))
                pos += plen
        except PduError as err:
            err.parsed = out
            self._buf = bytearray()
            raise
        if pos:
            del buf[:pos]
        return out

    def _fail(self, buf: bytearray, pos: int, message: str, fes: int, fei: int) -> PduError:
        return PduError(message, fes, fei, bytes(buf[pos:pos + TERM_REQ_MAX_DATA]))

    def _check_ch(self, buf: bytearray, pos: int, typ: int, flags: int, hlen: int,
                  pdo: int, plen: int) -> None:
        """Every check the common header allows, before waiting for the rest."""
        if typ not in self._accepts:
            raise self._fail(buf, pos, f"unexpected PDU type {typ:#x}",
                             Fes.INVALID_HEADER_FIELD, 0)
        if not self._ic_done and typ not in _TERM:
            if typ not in (PDU_IC_REQ, PDU_IC_RESP):
                raise self._fail(buf, pos, f"PDU type {typ:#x} before the IC exchange",
                                 Fes.PDU_SEQUENCE_ERROR, 0)
        elif typ in (PDU_IC_REQ, PDU_IC_RESP):
            raise self._fail(buf, pos, "second IC PDU", Fes.PDU_SEQUENCE_ERROR, 0)
        if hlen != HLEN[typ]:
            raise self._fail(buf, pos, f"HLEN {hlen} for PDU type {typ:#x}",
                             Fes.INVALID_HEADER_FIELD, 2)
        if typ in (PDU_IC_REQ, PDU_IC_RESP):
            if plen != 128:
                raise self._fail(buf, pos, f"IC PDU PLEN {plen}", Fes.INVALID_HEADER_FIELD, 4)
            return
        if typ in _TERM:
            if not hlen <= plen <= hlen + TERM_REQ_MAX_DATA:
                raise self._fail(buf, pos, f"TermReq PLEN {plen}", Fes.INVALID_HEADER_FIELD, 4)
            return
        hd = 4 if self.hdgst else 0
        if bool(flags & FLAG_HDGSTF) != self.hdgst:
            raise self._fail(buf, pos, "HDGSTF does not match the negotiated header digest",
                             Fes.INVALID_HEADER_FIELD, 1)
        if flags & FLAG_SUCCESS and (typ != PDU_C2H_DATA or not flags & FLAG_LAST_PDU):
            raise self._fail(buf, pos, "SUCCESS flag without LAST_PDU on C2HData",
                             Fes.INVALID_HEADER_FIELD, 1)
        if flags & FLAG_LAST_PDU and typ not in (PDU_H2C_DATA, PDU_C2H_DATA):
            raise self._fail(buf, pos, "LAST_PDU flag on a PDU without data",
                             Fes.INVALID_HEADER_FIELD, 1)
        header_end = hlen + hd
        if plen == header_end:  # no data
            if flags & FLAG_DDGSTF:
                raise self._fail(buf, pos, "DDGSTF on a PDU without data",
                                 Fes.INVALID_HEADER_FIELD, 1)
            if typ in (PDU_H2C_DATA, PDU_C2H_DATA):
                raise self._fail(buf, pos, "data PDU without data",
                                 Fes.INVALID_HEADER_FIELD, 4)
            return
        if plen < header_end or typ not in _WITH_DATA:
            raise self._fail(buf, pos, f"PLEN {plen} for PDU type {typ:#x}",
                             Fes.INVALID_HEADER_FIELD, 4)
        if bool(flags & FLAG_DDGSTF) != self.ddgst:
            raise self._fail(buf, pos, "DDGSTF does not match the negotiated data digest",
                             Fes.INVALID_HEADER_FIELD, 1)
        dd = 4 if self.ddgst else 0
        if (pdo < header_end or pdo > PDO_MAX
                or (self.pda and pdo % ((self.pda + 1) << 2))):
            raise self._fail(buf, pos, f"PDO {pdo}", Fes.INVALID_HEADER_FIELD, 3)
        datalen = plen - pdo - dd
        if datalen <= 0:
            raise self._fail(buf, pos, f"PLEN {plen} leaves no data after PDO {pdo}",
                             Fes.INVALID_HEADER_FIELD, 4)
        limit = self.max_capsule_data if typ == PDU_CAPSULE_CMD else self.max_data
        if datalen > limit:
            raise self._fail(buf, pos, f"{datalen} data bytes in one PDU, limit {limit}",
                             Fes.DATA_TRANSFER_LIMIT_EXCEEDED, 4)
        if plen > self._max_plen:  # unreachable given the checks above; belt and braces
            raise self._fail(buf, pos, f"PLEN {plen}", Fes.DATA_TRANSFER_LIMIT_EXCEEDED, 4)

    def _decode(self, buf: bytearray, pos: int, typ: int, flags: int, hlen: int, pdo: int,
                plen: int) -> Pdu:
        if typ in (PDU_IC_REQ, PDU_IC_RESP):
            _, _, _, _, _, pfv, pda, dgst, last = _IC.unpack_from(buf, pos)
            if pfv != 0:
                raise self._fail(buf, pos, f"PFV {pfv}", Fes.UNSUPPORTED_PARAMETER, 8)
            if pda > 31:
                raise self._fail(buf, pos, f"PDA {pda}", Fes.INVALID_HEADER_FIELD, 10)
            if dgst & ~(DGST_HDGST | DGST_DDGST):
                raise self._fail(buf, pos, f"DGST {dgst:#x}", Fes.INVALID_HEADER_FIELD, 11)
            self._ic_done = True
            self.hdgst = bool(dgst & DGST_HDGST)
            self.ddgst = bool(dgst & DGST_DDGST)
            if typ == PDU_IC_REQ:
                return ICReq(pfv, pda, self.hdgst, self.ddgst, last)
            if last < 4096 or last % 4:
                raise self._fail(buf, pos, f"MAXH2CDATA {last}", Fes.INVALID_HEADER_FIELD, 12)
            return ICResp(pfv, pda, self.hdgst, self.ddgst, last)
        if typ in _TERM:
            _, _, _, _, _, fes, fei = _TERM_HDR.unpack_from(buf, pos)
            return TermReq(typ, fes, fei, bytes(buf[pos + hlen:pos + plen]))
        if self.hdgst:
            (got,) = _U32.unpack_from(buf, pos + hlen)
            if got != crc32c(memoryview(buf)[pos:pos + hlen]):
                raise self._fail(buf, pos, "header digest mismatch", Fes.HDGST_ERROR, 0)
        data: bytes | None = None
        ddgst_ok = True
        if pdo and plen > hlen + (4 if self.hdgst else 0):
            dend = plen - 4 if self.ddgst else plen
            with memoryview(buf) as view:  # one copy, not a slice and then a copy
                data = view[pos + pdo:pos + dend].tobytes()
            if self.ddgst:
                ddgst_ok = _U32.unpack_from(buf, pos + dend)[0] == crc32c(data)
        if typ == PDU_CAPSULE_CMD:
            return CapsuleCmd(decode_sqe(buf, pos + 8), data, ddgst_ok)
        if typ == PDU_CAPSULE_RESP:
            return CapsuleResp(decode_cqe(buf, pos + 8))
        _, _, _, _, _, cccid, ttag, datao, datal, _ = _DATA_HDR.unpack_from(buf, pos)
        if typ == PDU_R2T:
            if datal == 0:
                raise self._fail(buf, pos, "R2T with R2TL 0", Fes.INVALID_HEADER_FIELD, 16)
            return R2T(cccid, ttag, datao, datal)
        assert data is not None
        if datal != len(data):
            raise self._fail(buf, pos, f"DATAL {datal} but {len(data)} data bytes",
                             Fes.INVALID_HEADER_FIELD, 16)
        if typ == PDU_H2C_DATA:
            return H2CData(cccid, ttag, datao, data, bool(flags & FLAG_LAST_PDU), ddgst_ok)
        return C2HData(cccid, datao, data, bool(flags & FLAG_LAST_PDU),
                       bool(flags & FLAG_SUCCESS), ddgst_ok)
