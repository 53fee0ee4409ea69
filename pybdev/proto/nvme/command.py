"""NVMe submission and completion queue entries, and the commands pybdev uses
(part of :mod:`pybdev.proto.nvme`).

An SQE is decoded once into :class:`Sqe` (a named tuple of plain ints); command-specific
fields are read from its ``cdw10``..``cdw15`` with the small accessors below, so the I/O
path pays for one ``struct.unpack`` per command.  Encoders build the 64-byte SQE a host
sends, with the SGL descriptor NVMe/TCP requires: type 0x01 (in-capsule data, offset 0)
or 0x5A (data by R2T/H2CData or C2HData, address 0).  Layouts: ``include/linux/nvme.h``,
SPDK's ``include/spdk/nvme_spec.h`` and ``nvmf_spec.h``.
"""

from __future__ import annotations

import struct
import uuid as _uuid
from typing import Final, NamedTuple

from .const import (
    CONNECT_DATA_LEN,
    NQN_MAX,
    OPC_FABRICS,
    PSDT_SGL_MPTR_CONTIG,
    SGL_DATA_BLOCK_OFFSET,
    SGL_TRANSPORT_DATA_BLOCK,
    AdminOpc,
    FabricsType,
    IoOpc,
)
from .errors import DecodeError

__all__ = [
    "CQE",
    "DSM_RANGE",
    "SQE",
    "ConnectData",
    "Cqe",
    "Sqe",
    "connect_fields",
    "decode_cqe",
    "decode_dsm_ranges",
    "decode_sqe",
    "encode_async_event_request",
    "encode_connect",
    "encode_cqe",
    "encode_dsm",
    "encode_dsm_ranges",
    "encode_flush",
    "encode_get_features",
    "encode_get_log_page",
    "encode_identify",
    "encode_keep_alive",
    "encode_property_get",
    "encode_property_set",
    "encode_read",
    "encode_set_features",
    "encode_sqe",
    "encode_write",
    "encode_write_zeroes",
    "log_page_fields",
    "property_fields",
    "rw_fields",
]

#: opc, flags, cid, nsid, cdw2, cdw3, mptr, sgl address, sgl length, sgl type, cdw10-15
SQE: Final = struct.Struct("<BBHIIIQQI3xB6I")
#: dw0, dw1, sqhd, sqid, cid, status (bit 0 is the phase tag, 0 on fabrics)
CQE: Final = struct.Struct("<IIHHHH")
#: Dataset Management range: context attributes, NLB (not 0's based), SLBA
DSM_RANGE: Final = struct.Struct("<IIQ")


class Sqe(NamedTuple):
    opc: int
    flags: int
    cid: int
    nsid: int
    cdw2: int
    cdw3: int
    mptr: int
    sgl_addr: int
    sgl_len: int
    sgl_type: int
    cdw10: int
    cdw11: int
    cdw12: int
    cdw13: int
    cdw14: int
    cdw15: int

    @property
    def fctype(self) -> int:
        """Fabrics command type (byte 4, where other commands hold NSID)."""
        return self.nsid & 0xFF


class Cqe(NamedTuple):
    dw0: int
    dw1: int
    sqhd: int
    sqid: int
    cid: int
    status: int  # 15-bit: (DNR << 14) | (SCT << 8) | SC, see const.status()

    @property
    def sct(self) -> int:
        return (self.status >> 8) & 0x7

    @property
    def sc(self) -> int:
        return self.status & 0xFF

    @property
    def dnr(self) -> bool:
        return bool(self.status & 0x4000)


def decode_sqe(data: bytes | bytearray | memoryview, offset: int = 0) -> Sqe:
    return Sqe._make(SQE.unpack_from(data, offset))


def encode_sqe(opc: int, cid: int, nsid: int = 0, *, cdw10: int = 0, cdw11: int = 0,
               cdw12: int = 0, cdw13: int = 0, cdw14: int = 0, cdw15: int = 0,
               data_len: int = 0, in_capsule: bool = False, flags: int = PSDT_SGL_MPTR_CONTIG,
               cdw2: int = 0, cdw3: int = 0) -> bytes:
    """A 64-byte SQE whose SGL describes ``data_len`` bytes, in the capsule or not."""
    sgl_type = SGL_DATA_BLOCK_OFFSET if in_capsule else SGL_TRANSPORT_DATA_BLOCK
    return SQE.pack(opc, flags, cid, nsid, cdw2, cdw3, 0, 0, data_len, sgl_type,
                    cdw10, cdw11, cdw12, cdw13, cdw14, cdw15)


def decode_cqe(data: bytes | bytearray | memoryview, offset: int = 0) -> Cqe:
    dw0, dw1, sqhd, sqid, cid, raw = CQE.unpack_from(data, offset)
    return Cqe(dw0, dw1, sqhd, sqid, cid, raw >> 1)


def encode_cqe(cid: int, status: int = 0, dw0: int = 0, dw1: int = 0, sqhd: int = 0,
               sqid: int = 0) -> bytes:
    return CQE.pack(dw0, dw1, sqhd, sqid, cid, (status << 1) & 0xFFFF)


# ---------------------------------------------------------------------------- fabrics


class ConnectData(NamedTuple):
    """The 1024 bytes of Connect data."""

    hostid: bytes  # 16 raw bytes
    cntlid: int
    subnqn: str
    hostnqn: str

    def encode(self) -> bytes:
        out = bytearray(CONNECT_DATA_LEN)
        out[0:16] = self.hostid.ljust(16, b"\0")[:16]
        struct.pack_into("<H", out, 16, self.cntlid)
        for off, nqn in ((256, self.subnqn), (512, self.hostnqn)):
            raw = nqn.encode()
            if len(raw) > 255:
                raise ValueError(f"NQN longer than 255 bytes: {nqn!r}")
            out[off:off + len(raw)] = raw
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> ConnectData:
        """Raises :class:`DecodeError` (with the byte offset of the bad field)."""
        if len(data) != CONNECT_DATA_LEN:
            raise DecodeError(f"Connect data is {len(data)} bytes, not 1024", 0)
        raw = bytes(data)
        return cls(raw[0:16], struct.unpack_from("<H", raw, 16)[0],
                   _nqn(raw, 256), _nqn(raw, 512))

    @property
    def hostid_uuid(self) -> str:
        return str(_uuid.UUID(bytes=self.hostid))


def _nqn(raw: bytes, off: int) -> str:
    field = raw[off:off + 256]
    end = field.find(b"\0")
    if end < 0 or end > NQN_MAX:
        raise DecodeError("NQN not NUL-terminated within 224 bytes", off)
    try:
        return field[:end].decode()
    except UnicodeDecodeError:
        raise DecodeError("NQN is not UTF-8", off) from None


def connect_fields(sqe: Sqe) -> tuple[int, int, int, int, int]:
    """(recfmt, qid, sqsize, cattr, kato) of a Connect SQE."""
    return (sqe.cdw10 & 0xFFFF, sqe.cdw10 >> 16, sqe.cdw11 & 0xFFFF,
            (sqe.cdw11 >> 16) & 0xFF, sqe.cdw12)


def property_fields(sqe: Sqe) -> tuple[int, int, int]:
    """(size in bytes 4 or 8, offset, value) of a Property Get/Set SQE."""
    return (8 if sqe.cdw10 & 0x7 == 1 else 4 if sqe.cdw10 & 0x7 == 0 else -1,
            sqe.cdw11, sqe.cdw12 | (sqe.cdw13 << 32))


def encode_connect(cid: int, qid: int, sqsize: int, kato: int = 0, cattr: int = 0,
                   recfmt: int = 0) -> bytes:
    """Connect SQE; its 1024 bytes of :class:`ConnectData` travel in the capsule."""
    return encode_sqe(OPC_FABRICS, cid, FabricsType.CONNECT, cdw10=recfmt | qid << 16,
                      cdw11=sqsize | (cattr << 16), cdw12=kato,
                      data_len=CONNECT_DATA_LEN, in_capsule=True)


def encode_property_get(cid: int, offset: int, size: int = 4) -> bytes:
    return encode_sqe(OPC_FABRICS, cid, FabricsType.PROPERTY_GET,
                      cdw10=1 if size == 8 else 0, cdw11=offset)


def encode_property_set(cid: int, offset: int, value: int, size: int = 4) -> bytes:
    return encode_sqe(OPC_FABRICS, cid, FabricsType.PROPERTY_SET,
                      cdw10=1 if size == 8 else 0, cdw11=offset,
                      cdw12=value & 0xFFFFFFFF, cdw13=value >> 32)


# ---------------------------------------------------------------------------- admin


def encode_identify(cid: int, cns: int, nsid: int = 0, cntid: int = 0, csi: int = 0) -> bytes:
    return encode_sqe(AdminOpc.IDENTIFY, cid, nsid, cdw10=cns | cntid << 16,
                      cdw11=csi << 24, data_len=4096)


def encode_get_log_page(cid: int, lid: int, length: int, offset: int = 0,
                        nsid: int = 0xFFFFFFFF, lsp: int = 0, rae: bool = False,
                        lsi: int = 0, csi: int = 0) -> bytes:
    """``length`` bytes (a multiple of 4) of log ``lid`` from byte ``offset``."""
    numd = (length >> 2) - 1
    return encode_sqe(AdminOpc.GET_LOG_PAGE, cid, nsid,
                      cdw10=lid | lsp << 8 | int(rae) << 15 | (numd & 0xFFFF) << 16,
                      cdw11=(numd >> 16) | lsi << 16, cdw12=offset & 0xFFFFFFFF,
                      cdw13=offset >> 32, cdw14=csi << 24, data_len=length)


def log_page_fields(sqe: Sqe) -> tuple[int, int, int, bool]:
    """(lid, length in bytes, offset, rae) of a Get Log Page SQE."""
    numd = ((sqe.cdw10 >> 16) | (sqe.cdw11 & 0xFFFF) << 16) + 1
    return (sqe.cdw10 & 0xFF, numd << 2, sqe.cdw12 | sqe.cdw13 << 32,
            bool(sqe.cdw10 & 0x8000))


def encode_set_features(cid: int, fid: int, cdw11: int = 0, nsid: int = 0,
                        save: bool = False) -> bytes:
    return encode_sqe(AdminOpc.SET_FEATURES, cid, nsid, cdw10=fid | int(save) << 31,
                      cdw11=cdw11)


def encode_get_features(cid: int, fid: int, sel: int = 0, cdw11: int = 0,
                        nsid: int = 0, data_len: int = 0) -> bytes:
    return encode_sqe(AdminOpc.GET_FEATURES, cid, nsid, cdw10=fid | sel << 8,
                      cdw11=cdw11, data_len=data_len)


def encode_async_event_request(cid: int) -> bytes:
    return encode_sqe(AdminOpc.ASYNC_EVENT_REQUEST, cid)


def encode_keep_alive(cid: int) -> bytes:
    return encode_sqe(AdminOpc.KEEP_ALIVE, cid)


# ---------------------------------------------------------------------------- I/O


def rw_fields(sqe: Sqe) -> tuple[int, int, bool]:
    """(SLBA, number of blocks (not 0's based), FUA) of Read/Write/Write Zeroes."""
    return sqe.cdw10 | sqe.cdw11 << 32, (sqe.cdw12 & 0xFFFF) + 1, bool(sqe.cdw12 & 1 << 30)


def _rw(opc: int, cid: int, nsid: int, slba: int, nlb: int, fua: bool, data_len: int,
        in_capsule: bool = False, extra: int = 0) -> bytes:
    if not 1 <= nlb <= 0x10000:
        raise ValueError(f"nlb {nlb} outside 1..65536")
    return encode_sqe(opc, cid, nsid, cdw10=slba & 0xFFFFFFFF, cdw11=slba >> 32,
                      cdw12=(nlb - 1) | int(fua) << 30 | extra, data_len=data_len,
                      in_capsule=in_capsule)


def encode_read(cid: int, nsid: int, slba: int, nlb: int, block_size: int,
                fua: bool = False) -> bytes:
    return _rw(IoOpc.READ, cid, nsid, slba, nlb, fua, nlb * block_size)


def encode_write(cid: int, nsid: int, slba: int, nlb: int, block_size: int,
                 fua: bool = False, in_capsule: bool = False) -> bytes:
    return _rw(IoOpc.WRITE, cid, nsid, slba, nlb, fua, nlb * block_size, in_capsule)


def encode_write_zeroes(cid: int, nsid: int, slba: int, nlb: int, deac: bool = False,
                        fua: bool = False) -> bytes:
    return _rw(IoOpc.WRITE_ZEROES, cid, nsid, slba, nlb, fua, 0, extra=int(deac) << 25)


def encode_flush(cid: int, nsid: int) -> bytes:
    return encode_sqe(IoOpc.FLUSH, cid, nsid)


def encode_dsm(cid: int, nsid: int, nr: int, deallocate: bool = True,
               in_capsule: bool = True) -> bytes:
    """Dataset Management over ``nr`` ranges (1..256) sent as data after the SQE."""
    if not 1 <= nr <= 256:
        raise ValueError(f"{nr} ranges outside 1..256")
    return encode_sqe(IoOpc.DATASET_MANAGEMENT, cid, nsid, cdw10=nr - 1,
                      cdw11=int(deallocate) << 2, data_len=nr * 16, in_capsule=in_capsule)


def encode_dsm_ranges(ranges: list[tuple[int, int]]) -> bytes:
    """``[(slba, nlb), ...]`` -> the range list (context attributes 0)."""
    return b"".join(DSM_RANGE.pack(0, nlb, slba) for slba, nlb in ranges)


def decode_dsm_ranges(data: bytes | bytearray | memoryview, nr: int) -> list[tuple[int, int]]:
    """``[(slba, nlb), ...]`` of the first ``nr`` ranges; DecodeError if data is short."""
    if len(data) < nr * 16:
        raise DecodeError(f"{len(data)} bytes hold fewer than {nr} ranges", len(data))
    return [(slba, nlb) for _, nlb, slba in
            (DSM_RANGE.unpack_from(data, i * 16) for i in range(nr))]


