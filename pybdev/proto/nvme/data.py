"""Data structures carried by admin commands (part of :mod:`pybdev.proto.nvme`):
Identify Controller and Namespace, the active namespace list, namespace identification
descriptors, the discovery log page, the changed namespace list and SMART / health log.

Each has ``encode() -> bytes`` (target side) and ``decode(data)`` (initiator side);
decoders raise :class:`DecodeError` with the byte offset of the bad field.  Offsets:
``include/linux/nvme.h`` (``struct nvme_id_ctrl``, ``nvme_id_ns``,
``nvmf_disc_rsp_page_entry``) and SPDK's ``include/spdk/nvme_spec.h``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from .const import NIDL
from .errors import DecodeError

__all__ = [
    "DISCOVERY_ENTRY_LEN",
    "DISCOVERY_HEADER_LEN",
    "IDENTIFY_LEN",
    "DiscoveryEntry",
    "IdentifyController",
    "IdentifyNamespace",
    "NsIdDescriptor",
    "SmartLog",
    "decode_discovery_entries",
    "decode_discovery_header",
    "decode_ns_descriptors",
    "decode_ns_list",
    "encode_changed_ns_list",
    "encode_discovery_log",
    "encode_ns_descriptors",
    "encode_ns_list",
    "encode_smart_log",
]

IDENTIFY_LEN: Final = 4096
DISCOVERY_HEADER_LEN: Final = 1024
DISCOVERY_ENTRY_LEN: Final = 1024


def _ascii(value: str, size: int) -> bytes:
    """A space-padded ASCII field, as SN/MN/FR are."""
    raw = value.encode("ascii", "replace")[:size]
    return raw.ljust(size, b" ")


def _nul(value: str, size: int) -> bytes:
    raw = value.encode()[: size - 1]
    return raw.ljust(size, b"\0")


def _text(raw: bytes, strip: bytes = b" \0") -> str:
    return raw.split(b"\0", 1)[0].rstrip(strip).decode("ascii", "replace")


def _need(data: bytes | bytearray | memoryview, size: int, what: str) -> bytes:
    if len(data) < size:
        raise DecodeError(f"{what} needs {size} bytes, got {len(data)}", len(data))
    return bytes(data[:size])


# (offset, struct format) of every scalar field of Identify Controller pybdev sets
_CTRL_FIELDS: Final[dict[str, tuple[int, str]]] = {
    "vid": (0, "H"), "ssvid": (2, "H"), "rab": (72, "B"), "cmic": (76, "B"),
    "mdts": (77, "B"), "cntlid": (78, "H"), "ver": (80, "I"), "rtd3r": (84, "I"),
    "rtd3e": (88, "I"), "oaes": (92, "I"), "ctratt": (96, "I"), "cntrltype": (111, "B"),
    "crdt1": (128, "H"), "crdt2": (130, "H"), "crdt3": (132, "H"), "oacs": (256, "H"),
    "acl": (258, "B"), "aerl": (259, "B"), "frmw": (260, "B"), "lpa": (261, "B"),
    "elpe": (262, "B"), "kas": (320, "H"), "sqes": (512, "B"), "cqes": (513, "B"),
    "maxcmd": (514, "H"), "nn": (516, "I"), "oncs": (520, "H"), "fuses": (522, "H"),
    "fna": (524, "B"), "vwc": (525, "B"), "awun": (526, "H"), "awupf": (528, "H"),
    "sgls": (536, "I"), "mnan": (540, "I"), "ioccsz": (1792, "I"), "iorcsz": (1796, "I"),
    "icdoff": (1800, "H"), "fcatt": (1802, "B"), "msdbd": (1803, "B"),
    "ofcs": (1804, "H"),
}


@dataclass
class IdentifyController:
    """Identify Controller (CNS 0x01, 4096 bytes); defaults suit an NVMe/TCP I/O
    controller as the Linux host checks it (``docs/nvmf.md``)."""

    sn: str = ""
    mn: str = ""
    fr: str = ""
    subnqn: str = ""
    vid: int = 0
    ssvid: int = 0
    rab: int = 6
    cmic: int = 0x02  # multi-controller: reconnects create new controllers
    mdts: int = 5
    cntlid: int = 0
    ver: int = 0x00010300
    rtd3r: int = 0
    rtd3e: int = 0
    oaes: int = 0x100
    ctratt: int = 0
    cntrltype: int = 1
    crdt1: int = 0
    crdt2: int = 0
    crdt3: int = 0
    oacs: int = 0
    acl: int = 3
    aerl: int = 3
    frmw: int = 0x03
    lpa: int = 0x04
    elpe: int = 127
    kas: int = 100
    sqes: int = 0x66
    cqes: int = 0x44
    maxcmd: int = 128
    nn: int = 32
    oncs: int = 0x0C
    fuses: int = 0
    fna: int = 0
    vwc: int = 0x01
    awun: int = 0
    awupf: int = 0
    sgls: int = 0x100001
    mnan: int = 0
    ioccsz: int = 260
    iorcsz: int = 1
    icdoff: int = 0
    fcatt: int = 0
    msdbd: int = 1
    ofcs: int = 0

    def encode(self) -> bytes:
        out = bytearray(IDENTIFY_LEN)
        out[4:24] = _ascii(self.sn, 20)
        out[24:64] = _ascii(self.mn, 40)
        out[64:72] = _ascii(self.fr, 8)
        out[768:1024] = _nul(self.subnqn, 256)
        for name, (off, fmt) in _CTRL_FIELDS.items():
            struct.pack_into("<" + fmt, out, off, getattr(self, name))
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> IdentifyController:
        raw = _need(data, IDENTIFY_LEN, "Identify Controller")
        values = {name: struct.unpack_from("<" + fmt, raw, off)[0]
                  for name, (off, fmt) in _CTRL_FIELDS.items()}
        return cls(sn=_text(raw[4:24]), mn=_text(raw[24:64]), fr=_text(raw[64:72]),
                   subnqn=_text(raw[768:1024], b"\0"), **values)


@dataclass
class IdentifyNamespace:
    """Identify Namespace (CNS 0x00) with one LBA format and no metadata.  An all-zero
    structure (``IdentifyNamespace()``) is what an inactive NSID returns."""

    nsze: int = 0
    ncap: int = 0
    nuse: int = 0
    nsfeat: int = 0
    nlbaf: int = 0
    flbas: int = 0
    nmic: int = 0
    dlfeat: int = 0
    noiob: int = 0
    anagrpid: int = 0
    nsattr: int = 0
    nguid: bytes = bytes(16)
    eui64: bytes = bytes(8)
    lbads: int = 0  # log2 of the block size (LBAF0)

    def encode(self) -> bytes:
        out = bytearray(IDENTIFY_LEN)
        struct.pack_into("<QQQBBB", out, 0, self.nsze, self.ncap, self.nuse, self.nsfeat,
                         self.nlbaf, self.flbas)
        out[30] = self.nmic
        out[33] = self.dlfeat
        struct.pack_into("<H", out, 46, self.noiob)
        struct.pack_into("<I", out, 92, self.anagrpid)
        out[99] = self.nsattr
        out[104:120] = self.nguid
        out[120:128] = self.eui64
        struct.pack_into("<HBB", out, 128, 0, self.lbads, 0)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> IdentifyNamespace:
        raw = _need(data, IDENTIFY_LEN, "Identify Namespace")
        nsze, ncap, nuse, nsfeat, nlbaf, flbas = struct.unpack_from("<QQQBBB", raw, 0)
        fmt = (flbas & 0xF) | ((flbas >> 1) & 0x30)
        ms, lbads, _ = struct.unpack_from("<HBB", raw, 128 + 4 * fmt)
        if ms:
            raise DecodeError("LBA format with metadata", 128 + 4 * fmt)
        return cls(nsze, ncap, nuse, nsfeat, nlbaf, flbas, raw[30], raw[33],
                   struct.unpack_from("<H", raw, 46)[0], struct.unpack_from("<I", raw, 92)[0],
                   raw[99], raw[104:120], raw[120:128], lbads)

    @property
    def block_size(self) -> int:
        return 1 << self.lbads if self.lbads else 0


def encode_ns_list(nsids: list[int], after: int = 0) -> bytes:
    """Active NSID list (CNS 0x02): ascending NSIDs greater than ``after``, at most 1024."""
    chosen = sorted(n for n in nsids if n > after)[:1024]
    return struct.pack(f"<{len(chosen)}I", *chosen).ljust(IDENTIFY_LEN, b"\0")


def decode_ns_list(data: bytes | bytearray | memoryview) -> list[int]:
    raw = _need(data, IDENTIFY_LEN, "namespace list")
    out = []
    for nsid in struct.unpack("<1024I", raw):
        if nsid == 0:
            break
        out.append(nsid)
    return out


@dataclass(frozen=True)
class NsIdDescriptor:
    nidt: int
    nid: bytes


def encode_ns_descriptors(descs: list[NsIdDescriptor]) -> bytes:
    """Namespace Identification Descriptor list (CNS 0x03), ended by a zero NIDL."""
    out = bytearray()
    for d in descs:
        if NIDL.get(d.nidt) != len(d.nid):
            raise ValueError(f"descriptor type {d.nidt} with {len(d.nid)} bytes")
        out += struct.pack("<BBH", d.nidt, len(d.nid), 0) + d.nid
    return bytes(out.ljust(IDENTIFY_LEN, b"\0"))


def decode_ns_descriptors(data: bytes | bytearray | memoryview) -> list[NsIdDescriptor]:
    raw = _need(data, IDENTIFY_LEN, "descriptor list")
    out, pos = [], 0
    while pos + 4 <= IDENTIFY_LEN:
        nidt, nidl = raw[pos], raw[pos + 1]
        if nidl == 0:
            break
        if nidt in NIDL and NIDL[nidt] != nidl:
            raise DecodeError(f"descriptor type {nidt} with NIDL {nidl}", pos + 1)
        if pos + 4 + nidl > IDENTIFY_LEN:
            raise DecodeError("descriptor runs past the end", pos)
        out.append(NsIdDescriptor(nidt, raw[pos + 4:pos + 4 + nidl]))
        pos += 4 + nidl
    return out





@dataclass(frozen=True)
class DiscoveryEntry:
    """One discovery log page entry (1024 bytes)."""

    trtype: int
    adrfam: int
    subtype: int
    treq: int
    portid: int
    trsvcid: str
    subnqn: str
    traddr: str
    cntlid: int = 0xFFFF
    asqsz: int = 128
    eflags: int = 0
    sectype: int = 0

    def encode(self) -> bytes:
        out = bytearray(DISCOVERY_ENTRY_LEN)
        struct.pack_into("<BBBBHHHH", out, 0, self.trtype, self.adrfam, self.subtype,
                         self.treq, self.portid, self.cntlid, self.asqsz, self.eflags)
        out[32:64] = _ascii(self.trsvcid, 32)
        out[256:512] = _nul(self.subnqn, 256)
        out[512:768] = _ascii(self.traddr, 256)
        out[768] = self.sectype
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> DiscoveryEntry:
        raw = _need(data, DISCOVERY_ENTRY_LEN, "discovery log entry")
        trtype, adrfam, subtype, treq, portid, cntlid, asqsz, eflags = struct.unpack_from(
            "<BBBBHHHH", raw, 0)
        return cls(trtype, adrfam, subtype, treq, portid, _text(raw[32:64]),
                   _text(raw[256:512], b"\0"), _text(raw[512:768]), cntlid, asqsz, eflags,
                   raw[768])


def encode_discovery_log(genctr: int, entries: list[DiscoveryEntry]) -> bytes:
    """The whole discovery log page (LID 0x70); serve windows of it by LPO/length."""
    header = struct.pack("<QQH", genctr, len(entries), 0).ljust(DISCOVERY_HEADER_LEN, b"\0")
    return header + b"".join(e.encode() for e in entries)


def decode_discovery_header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(GENCTR, NUMREC) from at least the first 16 bytes of the page."""
    raw = _need(data, 16, "discovery log header")
    genctr, numrec = struct.unpack_from("<QQ", raw, 0)
    return genctr, numrec


def decode_discovery_entries(data: bytes | bytearray | memoryview) -> list[DiscoveryEntry]:
    """Entries of a page read from offset 0 (header included)."""
    _, numrec = decode_discovery_header(data)
    if len(data) < DISCOVERY_HEADER_LEN + numrec * DISCOVERY_ENTRY_LEN:
        raise DecodeError(f"page too short for {numrec} entries", len(data))
    return [DiscoveryEntry.decode(memoryview(data)[DISCOVERY_HEADER_LEN + i * 1024:
                                                   DISCOVERY_HEADER_LEN + (i + 1) * 1024])
            for i in range(numrec)]


def encode_changed_ns_list(nsids: list[int]) -> bytes:
    """Changed Namespace List (LID 0x04, 4096 bytes): > 1024 changes -> 0xFFFFFFFF."""
    if len(nsids) > 1024:
        return struct.pack("<I", 0xFFFFFFFF).ljust(IDENTIFY_LEN, b"\0")
    return struct.pack(f"<{len(nsids)}I", *sorted(nsids)).ljust(IDENTIFY_LEN, b"\0")


@dataclass
class SmartLog:
    """The SMART / health log (LID 0x02, 512 bytes), the fields pybdev can report."""

    temperature_k: int = 0
    data_units_read: int = 0
    data_units_written: int = 0
    host_reads: int = 0
    host_writes: int = 0

    def encode(self) -> bytes:
        out = bytearray(512)
        struct.pack_into("<H", out, 1, self.temperature_k)
        for i, value in enumerate((self.data_units_read, self.data_units_written,
                                   self.host_reads, self.host_writes)):
            out[32 + 16 * i:48 + 16 * i] = value.to_bytes(16, "little")
        return bytes(out)


def encode_smart_log(smart: SmartLog | None = None) -> bytes:
    return (smart or SmartLog()).encode()
