"""NBD protocol constants and wire structures (part of :mod:`pybdev.proto.nbd`).

Every value exists twice on purpose: as a plain ``int`` named as in the NBD protocol
document (``NBD_CMD_READ``), which is what hot paths compare against, and as a member of
an ``IntEnum``/``IntFlag`` (``Cmd.READ``), which is what logs and error messages use to
print a name.  The enum members compare equal to the plain ints.

The ``struct.Struct`` objects at the end are the fixed-size wire layouts (big-endian, as
every NBD field is), shared by both roles so that no module keeps a private copy.
"""

from __future__ import annotations

import errno as _errno
import struct
from enum import IntEnum, IntFlag
from typing import Final

# --- magics -------------------------------------------------------------------------------
NBD_MAGIC: Final = 0x4E42444D41474943  # "NBDMAGIC", first 8 bytes the server sends
NBD_IHAVEOPT: Final = 0x49484156454F5054  # "IHAVEOPT": newstyle greeting and option prefix
NBD_CLISERV_MAGIC: Final = 0x00420281861253  # oldstyle greeting (not supported, detected only)
NBD_OPT_REPLY_MAGIC: Final = 0x3E889045565A9
NBD_REQUEST_MAGIC: Final = 0x25609513
NBD_SIMPLE_REPLY_MAGIC: Final = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC: Final = 0x668E33EF
NBD_EXTENDED_REQUEST_MAGIC: Final = 0x21E41C71  # experimental extension, never negotiated here
NBD_EXTENDED_REPLY_MAGIC: Final = 0x6E8A278C

# --- handshake flags (server, 16 bits) ----------------------------------------------------
NBD_FLAG_FIXED_NEWSTYLE: Final = 1 << 0
NBD_FLAG_NO_ZEROES: Final = 1 << 1

# --- client flags (32 bits) ---------------------------------------------------------------
NBD_FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
NBD_FLAG_C_NO_ZEROES: Final = 1 << 1

# --- transmission flags (16 bits) ---------------------------------------------------------
NBD_FLAG_HAS_FLAGS: Final = 1 << 0
NBD_FLAG_READ_ONLY: Final = 1 << 1
NBD_FLAG_SEND_FLUSH: Final = 1 << 2
NBD_FLAG_SEND_FUA: Final = 1 << 3
NBD_FLAG_ROTATIONAL: Final = 1 << 4
NBD_FLAG_SEND_TRIM: Final = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES: Final = 1 << 6
NBD_FLAG_SEND_DF: Final = 1 << 7
NBD_FLAG_CAN_MULTI_CONN: Final = 1 << 8
NBD_FLAG_SEND_RESIZE: Final = 1 << 9
NBD_FLAG_SEND_CACHE: Final = 1 << 10
NBD_FLAG_SEND_FAST_ZERO: Final = 1 << 11
NBD_FLAG_BLOCK_STATUS_PAYLOAD: Final = 1 << 12

# --- options ------------------------------------------------------------------------------
NBD_OPT_EXPORT_NAME: Final = 1
NBD_OPT_ABORT: Final = 2
NBD_OPT_LIST: Final = 3
NBD_OPT_PEEK_EXPORT: Final = 4
NBD_OPT_STARTTLS: Final = 5
NBD_OPT_INFO: Final = 6
NBD_OPT_GO: Final = 7
NBD_OPT_STRUCTURED_REPLY: Final = 8
NBD_OPT_LIST_META_CONTEXT: Final = 9
NBD_OPT_SET_META_CONTEXT: Final = 10
NBD_OPT_EXTENDED_HEADERS: Final = 11

# --- option reply types -------------------------------------------------------------------
NBD_REP_ACK: Final = 1
NBD_REP_SERVER: Final = 2
NBD_REP_INFO: Final = 3
NBD_REP_META_CONTEXT: Final = 4
NBD_REP_FLAG_ERROR: Final = 1 << 31
NBD_REP_ERR_UNSUP: Final = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY: Final = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID: Final = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM: Final = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD: Final = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN: Final = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN: Final = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD: Final = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG: Final = NBD_REP_FLAG_ERROR | 9
NBD_REP_ERR_EXT_HEADER_REQD: Final = NBD_REP_FLAG_ERROR | 10

# --- NBD_REP_INFO information types -------------------------------------------------------
NBD_INFO_EXPORT: Final = 0
NBD_INFO_NAME: Final = 1
NBD_INFO_DESCRIPTION: Final = 2
NBD_INFO_BLOCK_SIZE: Final = 3

# --- commands -----------------------------------------------------------------------------
NBD_CMD_READ: Final = 0
NBD_CMD_WRITE: Final = 1
NBD_CMD_DISC: Final = 2
NBD_CMD_FLUSH: Final = 3
NBD_CMD_TRIM: Final = 4
NBD_CMD_CACHE: Final = 5
NBD_CMD_WRITE_ZEROES: Final = 6
NBD_CMD_BLOCK_STATUS: Final = 7
NBD_CMD_RESIZE: Final = 8  # experimental extension, never valid here

# --- command flags (16 bits) --------------------------------------------------------------
NBD_CMD_FLAG_FUA: Final = 1 << 0
NBD_CMD_FLAG_NO_HOLE: Final = 1 << 1
NBD_CMD_FLAG_DF: Final = 1 << 2
NBD_CMD_FLAG_REQ_ONE: Final = 1 << 3
NBD_CMD_FLAG_FAST_ZERO: Final = 1 << 4
NBD_CMD_FLAG_PAYLOAD_LEN: Final = 1 << 5  # extended headers only, never valid here

# --- structured replies -------------------------------------------------------------------
NBD_REPLY_FLAG_DONE: Final = 1 << 0
NBD_REPLY_TYPE_NONE: Final = 0
NBD_REPLY_TYPE_OFFSET_DATA: Final = 1
NBD_REPLY_TYPE_OFFSET_HOLE: Final = 2
NBD_REPLY_TYPE_BLOCK_STATUS: Final = 5
NBD_REPLY_TYPE_BLOCK_STATUS_EXT: Final = 6
NBD_REPLY_TYPE_ERROR_BIT: Final = 1 << 15
NBD_REPLY_TYPE_ERROR: Final = NBD_REPLY_TYPE_ERROR_BIT | 1
NBD_REPLY_TYPE_ERROR_OFFSET: Final = NBD_REPLY_TYPE_ERROR_BIT | 2

# --- error values on the wire (not host errno values, though equal on Linux) ---------------
NBD_EPERM: Final = 1
NBD_EIO: Final = 5
NBD_ENOMEM: Final = 12
NBD_EINVAL: Final = 22
NBD_ENOSPC: Final = 28
NBD_EOVERFLOW: Final = 75
NBD_ENOTSUP: Final = 95
NBD_ESHUTDOWN: Final = 108

# --- metadata contexts --------------------------------------------------------------------
BASE_ALLOCATION: Final = "base:allocation"
# Context ids are opaque to clients; 0 is avoided so that a client confusing "no id" with an
# id cannot accidentally match.
BASE_ALLOCATION_ID: Final = 1
NBD_STATE_HOLE: Final = 1 << 0
NBD_STATE_ZERO: Final = 1 << 1

# --- sizes and limits ---------------------------------------------------------------------
REQUEST_SIZE: Final = 28
SIMPLE_REPLY_SIZE: Final = 16
STRUCTURED_REPLY_HEADER_SIZE: Final = 20
OPTION_HEADER_SIZE: Final = 16
OPTION_REPLY_HEADER_SIZE: Final = 20
GREETING_SIZE: Final = 18
MAX_STRING: Final = 4096  # proto.md: names and messages MUST be no longer than this
DEFAULT_MIN_BLOCK_SIZE: Final = 1
DEFAULT_PREFERRED_BLOCK_SIZE: Final = 4096
DEFAULT_MAX_BLOCK_SIZE: Final = 1 << 25  # 32 MiB: proto.md's default maximum payload
MAX_MIN_BLOCK_SIZE: Final = 1 << 16


class HandshakeFlag(IntFlag):
    FIXED_NEWSTYLE = NBD_FLAG_FIXED_NEWSTYLE
    NO_ZEROES = NBD_FLAG_NO_ZEROES


class ClientFlag(IntFlag):
    C_FIXED_NEWSTYLE = NBD_FLAG_C_FIXED_NEWSTYLE
    C_NO_ZEROES = NBD_FLAG_C_NO_ZEROES


class TxFlag(IntFlag):
    HAS_FLAGS = NBD_FLAG_HAS_FLAGS
    READ_ONLY = NBD_FLAG_READ_ONLY
    SEND_FLUSH = NBD_FLAG_SEND_FLUSH
    SEND_FUA = NBD_FLAG_SEND_FUA
    ROTATIONAL = NBD_FLAG_ROTATIONAL
    SEND_TRIM = NBD_FLAG_SEND_TRIM
    SEND_WRITE_ZEROES = NBD_FLAG_SEND_WRITE_ZEROES
    SEND_DF = NBD_FLAG_SEND_DF
    CAN_MULTI_CONN = NBD_FLAG_CAN_MULTI_CONN
    SEND_RESIZE = NBD_FLAG_SEND_RESIZE
    SEND_CACHE = NBD_FLAG_SEND_CACHE
    SEND_FAST_ZERO = NBD_FLAG_SEND_FAST_ZERO
    BLOCK_STATUS_PAYLOAD = NBD_FLAG_BLOCK_STATUS_PAYLOAD


class Opt(IntEnum):
    EXPORT_NAME = NBD_OPT_EXPORT_NAME
    ABORT = NBD_OPT_ABORT
    LIST = NBD_OPT_LIST
    PEEK_EXPORT = NBD_OPT_PEEK_EXPORT
    STARTTLS = NBD_OPT_STARTTLS
    INFO = NBD_OPT_INFO
    GO = NBD_OPT_GO
    STRUCTURED_REPLY = NBD_OPT_STRUCTURED_REPLY
    LIST_META_CONTEXT = NBD_OPT_LIST_META_CONTEXT
    SET_META_CONTEXT = NBD_OPT_SET_META_CONTEXT
    EXTENDED_HEADERS = NBD_OPT_EXTENDED_HEADERS


class Rep(IntEnum):
    ACK = NBD_REP_ACK
    SERVER = NBD_REP_SERVER
    INFO = NBD_REP_INFO
    META_CONTEXT = NBD_REP_META_CONTEXT
    ERR_UNSUP = NBD_REP_ERR_UNSUP
    ERR_POLICY = NBD_REP_ERR_POLICY
    ERR_INVALID = NBD_REP_ERR_INVALID
    ERR_PLATFORM = NBD_REP_ERR_PLATFORM
    ERR_TLS_REQD = NBD_REP_ERR_TLS_REQD
    ERR_UNKNOWN = NBD_REP_ERR_UNKNOWN
    ERR_SHUTDOWN = NBD_REP_ERR_SHUTDOWN
    ERR_BLOCK_SIZE_REQD = NBD_REP_ERR_BLOCK_SIZE_REQD
    ERR_TOO_BIG = NBD_REP_ERR_TOO_BIG
    ERR_EXT_HEADER_REQD = NBD_REP_ERR_EXT_HEADER_REQD


class Info(IntEnum):
    EXPORT = NBD_INFO_EXPORT
    NAME = NBD_INFO_NAME
    DESCRIPTION = NBD_INFO_DESCRIPTION
    BLOCK_SIZE = NBD_INFO_BLOCK_SIZE


class Cmd(IntEnum):
    READ = NBD_CMD_READ
    WRITE = NBD_CMD_WRITE
    DISC = NBD_CMD_DISC
    FLUSH = NBD_CMD_FLUSH
    TRIM = NBD_CMD_TRIM
    CACHE = NBD_CMD_CACHE
    WRITE_ZEROES = NBD_CMD_WRITE_ZEROES
    BLOCK_STATUS = NBD_CMD_BLOCK_STATUS
    RESIZE = NBD_CMD_RESIZE


class CmdFlag(IntFlag):
    FUA = NBD_CMD_FLAG_FUA
    NO_HOLE = NBD_CMD_FLAG_NO_HOLE
    DF = NBD_CMD_FLAG_DF
    REQ_ONE = NBD_CMD_FLAG_REQ_ONE
    FAST_ZERO = NBD_CMD_FLAG_FAST_ZERO
    PAYLOAD_LEN = NBD_CMD_FLAG_PAYLOAD_LEN


class ReplyFlag(IntFlag):
    DONE = NBD_REPLY_FLAG_DONE


class ReplyType(IntEnum):
    NONE = NBD_REPLY_TYPE_NONE
    OFFSET_DATA = NBD_REPLY_TYPE_OFFSET_DATA
    OFFSET_HOLE = NBD_REPLY_TYPE_OFFSET_HOLE
    BLOCK_STATUS = NBD_REPLY_TYPE_BLOCK_STATUS
    BLOCK_STATUS_EXT = NBD_REPLY_TYPE_BLOCK_STATUS_EXT
    ERROR = NBD_REPLY_TYPE_ERROR
    ERROR_OFFSET = NBD_REPLY_TYPE_ERROR_OFFSET


class Err(IntEnum):
    EPERM = NBD_EPERM
    EIO = NBD_EIO
    ENOMEM = NBD_ENOMEM
    EINVAL = NBD_EINVAL
    ENOSPC = NBD_ENOSPC
    EOVERFLOW = NBD_EOVERFLOW
    ENOTSUP = NBD_ENOTSUP
    ESHUTDOWN = NBD_ESHUTDOWN


class StateFlag(IntFlag):
    """Status flags of the ``base:allocation`` context."""

    HOLE = NBD_STATE_HOLE
    ZERO = NBD_STATE_ZERO


_ERRNO_TO_NBD: dict[int, int] = {
    _errno.EPERM: NBD_EPERM,
    _errno.EACCES: NBD_EPERM,
    _errno.EROFS: NBD_EPERM,
    _errno.EIO: NBD_EIO,
    _errno.ENOMEM: NBD_ENOMEM,
    _errno.EINVAL: NBD_EINVAL,
    _errno.ENOSPC: NBD_ENOSPC,
    # proto.md: "SHOULD map the EDQUOT and EFBIG errors to NBD_ENOSPC"
    _errno.EDQUOT: NBD_ENOSPC,
    _errno.EFBIG: NBD_ENOSPC,
    _errno.EOVERFLOW: NBD_EOVERFLOW,
    _errno.ENOTSUP: NBD_ENOTSUP,
    _errno.EOPNOTSUPP: NBD_ENOTSUP,
    _errno.ESHUTDOWN: NBD_ESHUTDOWN,
}

_NBD_TO_ERRNO: dict[int, int] = {
    NBD_EPERM: _errno.EPERM,
    NBD_EIO: _errno.EIO,
    NBD_ENOMEM: _errno.ENOMEM,
    NBD_EINVAL: _errno.EINVAL,
    NBD_ENOSPC: _errno.ENOSPC,
    NBD_EOVERFLOW: _errno.EOVERFLOW,
    NBD_ENOTSUP: _errno.ENOTSUP,
    NBD_ESHUTDOWN: _errno.ESHUTDOWN,
}


def errno_to_nbd(err: int) -> int:
    """Map a host errno (positive or negative) to the NBD error value to send.

    Anything without an NBD equivalent becomes ``NBD_EIO``, the value a client can always
    interpret; ``0`` stays ``0``.
    """
    if err == 0:
        return 0
    return _ERRNO_TO_NBD.get(abs(err), NBD_EIO)


def nbd_to_errno(err: int) -> int:
    """Map an NBD error value received from a server to a host errno (positive).

    proto.md: "The client SHOULD treat an unexpected error value as if it had been
    NBD_EINVAL".
    """
    if err == 0:
        return 0
    return _NBD_TO_ERRNO.get(err, _errno.EINVAL)


def describe(value: int, enum: type[IntEnum]) -> str:
    """Name of ``value`` in ``enum`` for log messages, or the number for unknown values."""
    try:
        return enum(value).name
    except ValueError:
        return str(value)


# --- wire layouts ---------------------------------------------------------------------------
# Transmission phase.
REQUEST: Final = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY: Final = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_HEADER: Final = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
#: An ``NBD_REPLY_TYPE_OFFSET_DATA`` chunk up to its data: structured header + offset.
OFFSET_DATA: Final = struct.Struct(">IHHQIQ")
#: A whole ``NBD_REPLY_TYPE_OFFSET_HOLE`` chunk: structured header + offset + hole size.
OFFSET_HOLE: Final = struct.Struct(">IHHQIQI")
#: An error chunk up to its message: structured header + error + message length.
ERROR_CHUNK_HEADER: Final = struct.Struct(">IHHQIIH")
# Handshake phase.
GREETING: Final = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
OPTION_HEADER: Final = struct.Struct(">QII")  # IHAVEOPT, option, length
OPTION_REPLY_HEADER: Final = struct.Struct(">QIII")  # magic, option, reply type, length
EXPORT_NAME_REPLY: Final = struct.Struct(">QH")  # size, transmission flags (then 124 zeroes)
INFO_EXPORT: Final = struct.Struct(">HQH")  # NBD_INFO_EXPORT, size, transmission flags
INFO_BLOCK_SIZE: Final = struct.Struct(">HIII")  # NBD_INFO_BLOCK_SIZE, min, preferred, max


__all__ = [
    "BASE_ALLOCATION",
    "BASE_ALLOCATION_ID",
    "DEFAULT_MAX_BLOCK_SIZE",
    "DEFAULT_MIN_BLOCK_SIZE",
    "DEFAULT_PREFERRED_BLOCK_SIZE",
    "ERROR_CHUNK_HEADER",
    "EXPORT_NAME_REPLY",
    "GREETING",
    "GREETING_SIZE",
    "INFO_BLOCK_SIZE",
    "INFO_EXPORT",
    "MAX_MIN_BLOCK_SIZE",
    "MAX_STRING",
    "NBD_CLISERV_MAGIC",
    "NBD_CMD_BLOCK_STATUS",
    "NBD_CMD_CACHE",
    "NBD_CMD_DISC",
    "NBD_CMD_FLAG_DF",
    "NBD_CMD_FLAG_FAST_ZERO",
    "NBD_CMD_FLAG_FUA",
    "NBD_CMD_FLAG_NO_HOLE",
    "NBD_CMD_FLAG_PAYLOAD_LEN",
    "NBD_CMD_FLAG_REQ_ONE",
    "NBD_CMD_FLUSH",
    "NBD_CMD_READ",
    "NBD_CMD_RESIZE",
    "NBD_CMD_TRIM",
    "NBD_CMD_WRITE",
    "NBD_CMD_WRITE_ZEROES",
    "NBD_EINVAL",
    "NBD_EIO",
    "NBD_ENOMEM",
    "NBD_ENOSPC",
    "NBD_ENOTSUP",
    "NBD_EOVERFLOW",
    "NBD_EPERM",
    "NBD_ESHUTDOWN",
    "NBD_EXTENDED_REPLY_MAGIC",
    "NBD_EXTENDED_REQUEST_MAGIC",
    "NBD_FLAG_BLOCK_STATUS_PAYLOAD",
    "NBD_FLAG_CAN_MULTI_CONN",
    "NBD_FLAG_C_FIXED_NEWSTYLE",
    "NBD_FLAG_C_NO_ZEROES",
    "NBD_FLAG_FIXED_NEWSTYLE",
    "NBD_FLAG_HAS_FLAGS",
    "NBD_FLAG_NO_ZEROES",
    "NBD_FLAG_READ_ONLY",
    "NBD_FLAG_ROTATIONAL",
    "NBD_FLAG_SEND_CACHE",
    "NBD_FLAG_SEND_DF",
    "NBD_FLAG_SEND_FAST_ZERO",
    "NBD_FLAG_SEND_FLUSH",
    "NBD_FLAG_SEND_FUA",
    "NBD_FLAG_SEND_RESIZE",
    "NBD_FLAG_SEND_TRIM",
    "NBD_FLAG_SEND_WRITE_ZEROES",
    "NBD_IHAVEOPT",
    "NBD_INFO_BLOCK_SIZE",
    "NBD_INFO_DESCRIPTION",
    "NBD_INFO_EXPORT",
    "NBD_INFO_NAME",
    "NBD_MAGIC",
    "NBD_OPT_ABORT",
    "NBD_OPT_EXPORT_NAME",
    "NBD_OPT_EXTENDED_HEADERS",
    "NBD_OPT_GO",
    "NBD_OPT_INFO",
    "NBD_OPT_LIST",
    "NBD_OPT_LIST_META_CONTEXT",
    "NBD_OPT_PEEK_EXPORT",
    "NBD_OPT_REPLY_MAGIC",
    "NBD_OPT_SET_META_CONTEXT",
    "NBD_OPT_STARTTLS",
    "NBD_OPT_STRUCTURED_REPLY",
    "NBD_REPLY_FLAG_DONE",
    "NBD_REPLY_TYPE_BLOCK_STATUS",
    "NBD_REPLY_TYPE_BLOCK_STATUS_EXT",
    "NBD_REPLY_TYPE_ERROR",
    "NBD_REPLY_TYPE_ERROR_BIT",
    "NBD_REPLY_TYPE_ERROR_OFFSET",
    "NBD_REPLY_TYPE_NONE",
    "NBD_REPLY_TYPE_OFFSET_DATA",
    "NBD_REPLY_TYPE_OFFSET_HOLE",
    "NBD_REP_ACK",
    "NBD_REP_ERR_BLOCK_SIZE_REQD",
    "NBD_REP_ERR_EXT_HEADER_REQD",
    "NBD_REP_ERR_INVALID",
    "NBD_REP_ERR_PLATFORM",
    "NBD_REP_ERR_POLICY",
    "NBD_REP_ERR_SHUTDOWN",
    "NBD_REP_ERR_TLS_REQD",
    "NBD_REP_ERR_TOO_BIG",
    "NBD_REP_ERR_UNKNOWN",
    "NBD_REP_ERR_UNSUP",
    "NBD_REP_FLAG_ERROR",
    "NBD_REP_INFO",
    "NBD_REP_META_CONTEXT",
    "NBD_REP_SERVER",
    "NBD_REQUEST_MAGIC",
    "NBD_SIMPLE_REPLY_MAGIC",
    "NBD_STATE_HOLE",
    "NBD_STATE_ZERO",
    "NBD_STRUCTURED_REPLY_MAGIC",
    "OFFSET_DATA",
    "OFFSET_HOLE",
    "OPTION_HEADER",
    "OPTION_HEADER_SIZE",
    "OPTION_REPLY_HEADER",
    "OPTION_REPLY_HEADER_SIZE",
    "REQUEST",
    "REQUEST_SIZE",
    "SIMPLE_REPLY",
    "SIMPLE_REPLY_SIZE",
    "STRUCTURED_HEADER",
    "STRUCTURED_REPLY_HEADER_SIZE",
    "ClientFlag",
    "Cmd",
    "CmdFlag",
    "Err",
    "HandshakeFlag",
    "Info",
    "Opt",
    "Rep",
    "ReplyFlag",
    "ReplyType",
    "StateFlag",
    "TxFlag",
    "describe",
    "errno_to_nbd",
    "nbd_to_errno",
]
