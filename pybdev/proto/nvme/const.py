"""NVMe/TCP and NVMe(-oF) constants (part of :mod:`pybdev.proto.nvme`).

Names follow the Linux kernel's ``include/linux/nvme.h`` / ``nvme-tcp.h`` and SPDK's
``include/spdk/nvme_spec.h`` / ``nvmf_spec.h``.  All multi-byte fields on the wire are
little-endian.  Status values are kept as (SCT, SC) pairs and combined into the 15-bit
CQE status field (without the phase bit) by :func:`status`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

# ---------------------------------------------------------------------------- PDU types
PDU_IC_REQ: Final = 0x00
PDU_IC_RESP: Final = 0x01
PDU_H2C_TERM_REQ: Final = 0x02
PDU_C2H_TERM_REQ: Final = 0x03
PDU_CAPSULE_CMD: Final = 0x04
PDU_CAPSULE_RESP: Final = 0x05
PDU_H2C_DATA: Final = 0x06
PDU_C2H_DATA: Final = 0x07
PDU_R2T: Final = 0x09


class PduType(IntEnum):
    IC_REQ = PDU_IC_REQ
    IC_RESP = PDU_IC_RESP
    H2C_TERM_REQ = PDU_H2C_TERM_REQ
    C2H_TERM_REQ = PDU_C2H_TERM_REQ
    CAPSULE_CMD = PDU_CAPSULE_CMD
    CAPSULE_RESP = PDU_CAPSULE_RESP
    H2C_DATA = PDU_H2C_DATA
    C2H_DATA = PDU_C2H_DATA
    R2T = PDU_R2T


#: HLEN (common + PDU-specific header, without the header digest) of each type.
HLEN: Final[dict[int, int]] = {
    PDU_IC_REQ: 128, PDU_IC_RESP: 128, PDU_H2C_TERM_REQ: 24, PDU_C2H_TERM_REQ: 24,
    PDU_CAPSULE_CMD: 72, PDU_CAPSULE_RESP: 24, PDU_H2C_DATA: 24, PDU_C2H_DATA: 24,
    PDU_R2T: 24,
}
CH_LEN: Final = 8
DIGEST_LEN: Final = 4
TERM_REQ_MAX_DATA: Final = 128  # the offending PDU header, at most this much
#: SPDK's ``SPDK_NVME_TCP_PDU_PDO_MAX_OFFSET``: PDO is one byte, and alignment caps it.
PDO_MAX: Final = 128

# ---------------------------------------------------------------------------- CH flags
FLAG_HDGSTF: Final = 0x01
FLAG_DDGSTF: Final = 0x02
FLAG_LAST_PDU: Final = 0x04
FLAG_SUCCESS: Final = 0x08  # C2HData only, with LAST_PDU

# ICReq/ICResp DGST bits
DGST_HDGST: Final = 0x01
DGST_DDGST: Final = 0x02

# ---------------------------------------------------------------------------- TermReq FES


class Fes(IntEnum):
    INVALID_HEADER_FIELD = 0x01
    PDU_SEQUENCE_ERROR = 0x02
    HDGST_ERROR = 0x03
    DATA_TRANSFER_OUT_OF_RANGE = 0x04
    DATA_TRANSFER_LIMIT_EXCEEDED = 0x05  # also "R2T limit exceeded"
    UNSUPPORTED_PARAMETER = 0x06


# ---------------------------------------------------------------------------- SGL types
SGL_DATA_BLOCK_OFFSET: Final = 0x01  # in-capsule data, address = offset in the capsule
SGL_TRANSPORT_DATA_BLOCK: Final = 0x5A  # data by R2T/H2CData or C2HData

# ---------------------------------------------------------------------------- SQE flags
PSDT_SGL_MPTR_CONTIG: Final = 0x40  # fabrics commands must set PSDT = 01b
FUSE_MASK: Final = 0x03

# ---------------------------------------------------------------------------- opcodes


class AdminOpc(IntEnum):
    GET_LOG_PAGE = 0x02
    IDENTIFY = 0x06
    ABORT = 0x08
    SET_FEATURES = 0x09
    GET_FEATURES = 0x0A
    ASYNC_EVENT_REQUEST = 0x0C
    KEEP_ALIVE = 0x18
    FABRICS = 0x7F


class IoOpc(IntEnum):
    FLUSH = 0x00
    WRITE = 0x01
    READ = 0x02
    WRITE_ZEROES = 0x08
    DATASET_MANAGEMENT = 0x09


OPC_FABRICS: Final = 0x7F


class FabricsType(IntEnum):
    PROPERTY_SET = 0x00
    CONNECT = 0x01
    PROPERTY_GET = 0x04
    AUTH_SEND = 0x05
    AUTH_RECV = 0x06
    DISCONNECT = 0x08


# ---------------------------------------------------------------------------- Identify CNS


class Cns(IntEnum):
    NAMESPACE = 0x00
    CONTROLLER = 0x01
    ACTIVE_NS_LIST = 0x02
    NS_ID_DESCRIPTORS = 0x03
    CSI_CONTROLLER = 0x06


class Nidt(IntEnum):
    EUI64 = 1
    NGUID = 2
    UUID = 3
    CSI = 4


NIDL: Final[dict[int, int]] = {1: 8, 2: 16, 3: 16, 4: 1}

# ---------------------------------------------------------------------------- log pages


class Lid(IntEnum):
    ERROR = 0x01
    SMART = 0x02
    FIRMWARE_SLOT = 0x03
    CHANGED_NS_LIST = 0x04
    COMMANDS_EFFECTS = 0x05
    ANA = 0x0C
    DISCOVERY = 0x70


# ---------------------------------------------------------------------------- features


class Fid(IntEnum):
    ARBITRATION = 0x01
    POWER_MANAGEMENT = 0x02
    VOLATILE_WRITE_CACHE = 0x06
    NUMBER_OF_QUEUES = 0x07
    INTERRUPT_COALESCING = 0x08
    ASYNC_EVENT_CONFIGURATION = 0x0B
    TIMESTAMP = 0x0E
    KEEP_ALIVE_TIMER = 0x0F
    HOST_IDENTIFIER = 0x81


# Async event completion DW0 = type | info << 8 | lid << 16
AER_NS_ATTR_CHANGED: Final = 0x00040002
AER_ANA_CHANGE: Final = 0x000C0302
AER_DISCOVERY_CHANGE: Final = 0x0070F002
# OAES / Async Event Configuration bits
OAES_NS_ATTR: Final = 1 << 8
OAES_FW_ACTIVATION: Final = 1 << 9
OAES_ANA_CHANGE: Final = 1 << 11
OAES_DISCOVERY_CHANGE: Final = 1 << 31

# ---------------------------------------------------------------------------- properties
PROP_CAP: Final = 0x00
PROP_VS: Final = 0x08
PROP_CC: Final = 0x14
PROP_CSTS: Final = 0x1C
PROP_NSSR: Final = 0x20
PROP_CRTO: Final = 0x68

CC_EN: Final = 0x1
CSTS_RDY: Final = 0x1
CSTS_CFS: Final = 0x2
CSTS_SHST_OCCURRING: Final = 0x1 << 2
CSTS_SHST_COMPLETE: Final = 0x2 << 2

CONNECT_DATA_LEN: Final = 1024
CNTLID_DYNAMIC: Final = 0xFFFF
CATTR_DISABLE_SQ_FLOW: Final = 0x04
SQHD_DISABLED: Final = 0xFFFF

DISCOVERY_NQN: Final = "nqn.2014-08.org.nvmexpress.discovery"
NQN_MAX: Final = 223  # bytes, without the NUL; the wire field is 256 bytes

NSID_ALL: Final = 0xFFFFFFFF

# Identify controller CNTRLTYPE
CNTRLTYPE_IO: Final = 1
CNTRLTYPE_DISCOVERY: Final = 2
CNTRLTYPE_ADMIN: Final = 3

# Discovery log entry fields
TRTYPE_RDMA: Final = 1
TRTYPE_FC: Final = 2
TRTYPE_TCP: Final = 3
ADRFAM_IPV4: Final = 1
ADRFAM_IPV6: Final = 2
SUBTYPE_REFERRAL: Final = 1
SUBTYPE_NVME: Final = 2
SUBTYPE_CURRENT_DISCOVERY: Final = 3

# ---------------------------------------------------------------------------- status
SCT_GENERIC: Final = 0
SCT_COMMAND_SPECIFIC: Final = 1
SCT_MEDIA: Final = 2
SCT_PATH: Final = 3

STATUS_DNR: Final = 0x4000  # in the 15-bit field (CQE bits 15:1 shifted right by one)


def status(sct: int, sc: int, dnr: bool = False) -> int:
    """The 15-bit status field (CQE bytes 14-15 without the phase tag, shifted right)."""
    return (sct << 8) | sc | (STATUS_DNR if dnr else 0)


class Sc(IntEnum):
    """(SCT << 8) | SC for the statuses pybdev uses."""

    SUCCESS = 0x000
    INVALID_OPCODE = 0x001
    INVALID_FIELD = 0x002
    DATA_TRANSFER_ERROR = 0x004
    INTERNAL_ERROR = 0x006
    ABORTED_BY_REQUEST = 0x007
    ABORTED_SQ_DELETION = 0x008
    INVALID_NAMESPACE = 0x00B
    COMMAND_SEQUENCE_ERROR = 0x00C
    SGL_LENGTH_INVALID = 0x00F
    SGL_DESCRIPTOR_TYPE_INVALID = 0x011
    SGL_OFFSET_INVALID = 0x016
    KEEP_ALIVE_TIMEOUT_INVALID = 0x01A
    TRANSIENT_TRANSPORT_ERROR = 0x022
    LBA_OUT_OF_RANGE = 0x080
    CAPACITY_EXCEEDED = 0x081
    NAMESPACE_NOT_READY = 0x082
    AER_LIMIT_EXCEEDED = 0x105
    INVALID_LOG_PAGE = 0x109
    CONNECT_INCOMPATIBLE_FORMAT = 0x180
    CONNECT_CONTROLLER_BUSY = 0x181
    CONNECT_INVALID_PARAMETERS = 0x182
    CONNECT_RESTART_DISCOVERY = 0x183
    CONNECT_INVALID_HOST = 0x184
    WRITE_FAULT = 0x280
    UNRECOVERED_READ_ERROR = 0x281
    ANA_INACCESSIBLE = 0x302


# Connect Invalid Parameters: DW0 = IATTR (bit 16 = offset is in the data) | IPO
CONNECT_IATTR_DATA: Final = 1 << 16

__all__ = [
    "ADRFAM_IPV4",
    "ADRFAM_IPV6",
    "AER_ANA_CHANGE",
    "AER_DISCOVERY_CHANGE",
    "AER_NS_ATTR_CHANGED",
    "CATTR_DISABLE_SQ_FLOW",
    "CC_EN",
    "CH_LEN",
    "CNTLID_DYNAMIC",
    "CNTRLTYPE_ADMIN",
    "CNTRLTYPE_DISCOVERY",
    "CNTRLTYPE_IO",
    "CONNECT_DATA_LEN",
    "CONNECT_IATTR_DATA",
    "CSTS_CFS",
    "CSTS_RDY",
    "CSTS_SHST_COMPLETE",
    "CSTS_SHST_OCCURRING",
    "DGST_DDGST",
    "DGST_HDGST",
    "DIGEST_LEN",
    "DISCOVERY_NQN",
    "FLAG_DDGSTF",
    "FLAG_HDGSTF",
    "FLAG_LAST_PDU",
    "FLAG_SUCCESS",
    "FUSE_MASK",
    "HLEN",
    "NIDL",
    "NQN_MAX",
    "NSID_ALL",
    "OAES_ANA_CHANGE",
    "OAES_DISCOVERY_CHANGE",
    "OAES_FW_ACTIVATION",
    "OAES_NS_ATTR",
    "OPC_FABRICS",
    "PDO_MAX",
    "PDU_C2H_DATA",
    "PDU_C2H_TERM_REQ",
    "PDU_CAPSULE_CMD",
    "PDU_CAPSULE_RESP",
    "PDU_H2C_DATA",
    "PDU_H2C_TERM_REQ",
    "PDU_IC_REQ",
    "PDU_IC_RESP",
    "PDU_R2T",
    "PROP_CAP",
    "PROP_CC",
    "PROP_CRTO",
    "PROP_CSTS",
    "PROP_NSSR",
    "PROP_VS",
    "PSDT_SGL_MPTR_CONTIG",
    "SCT_COMMAND_SPECIFIC",
    "SCT_GENERIC",
    "SCT_MEDIA",
    "SCT_PATH",
    "SGL_DATA_BLOCK_OFFSET",
    "SGL_TRANSPORT_DATA_BLOCK",
    "SQHD_DISABLED",
    "STATUS_DNR",
    "SUBTYPE_CURRENT_DISCOVERY",
    "SUBTYPE_NVME",
    "SUBTYPE_REFERRAL",
    "TERM_REQ_MAX_DATA",
    "TRTYPE_FC",
    "TRTYPE_RDMA",
    "TRTYPE_TCP",
    "AdminOpc",
    "Cns",
    "FabricsType",
    "Fes",
    "Fid",
    "IoOpc",
    "Lid",
    "Nidt",
    "PduType",
    "Sc",
    "status",
]
