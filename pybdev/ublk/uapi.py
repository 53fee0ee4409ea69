"""The ublk kernel UAPI (``linux/ublk_cmd.h``) as pybdev uses it: constants, layouts, ioctls.

pybdev carries its own copy on purpose: Debian 12's ``linux-libc-dev`` (6.1) predates
ioctl-encoded commands, USER_COPY and the queue/tag offset macros, so the installed header
cannot be trusted. Layouts are little-endian x86-64 and are checked against the spec's
offset table by ``tests/ublk/test_uapi.py``. Queried feature bits decide what is used at run
time (``UBLK_U_CMD_GET_FEATURES``), never kernel versions.
"""

from __future__ import annotations

import dataclasses
import errno
import struct
from typing import Final

# -- ioctl number encoding (asm-generic/ioctl.h) ------------------------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return ((direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT)
            | (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT))


def ior(type_: int, nr: int, size: int) -> int:
    return ioc(IOC_READ, type_, nr, size)


def iowr(type_: int, nr: int, size: int) -> int:
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


# -- structures -----------------------------------------------------------------------------
# struct ublksrv_ctrl_cmd: dev_id, queue_id, len, addr, data[0], dev_path_len, pad, reserved
CTRL_CMD = struct.Struct("<IHHQQHHI")
# struct ublksrv_ctrl_dev_info
DEV_INFO = struct.Struct("<HHHHIIiIQQIIQQ")
# struct ublksrv_io_desc: op_flags, nr_sectors, start_sector, addr
IO_DESC = struct.Struct("<IIQQ")
# struct ublksrv_io_cmd: q_id, tag, result, addr
IO_CMD = struct.Struct("<HHiQ")
# struct ublk_param_basic
PARAM_BASIC = struct.Struct("<IBBBBIIQQ")
# struct ublk_param_discard
PARAM_DISCARD = struct.Struct("<IIIIHH")
# struct ublk_params header: len, types
PARAMS_HEADER = struct.Struct("<II")
PARAMS_BASIC_OFFSET: Final = 8
PARAMS_DISCARD_OFFSET: Final = 40
PARAMS_DEVT_OFFSET: Final = 60
# The kernel copies only `len` bytes, so sending basic+discard needs no newer fields.
PARAMS_LEN_BASIC_DISCARD: Final = PARAMS_DEVT_OFFSET

QUEUE_ID_NONE: Final = 0xFFFF
IOCTL_TYPE: Final = ord("u")

# -- control commands ---------------------------------------------------------------------
UBLK_CMD_GET_QUEUE_AFFINITY: Final = 0x01
UBLK_CMD_GET_DEV_INFO: Final = 0x02
UBLK_CMD_ADD_DEV: Final = 0x04
UBLK_CMD_DEL_DEV: Final = 0x05
UBLK_CMD_START_DEV: Final = 0x06
UBLK_CMD_STOP_DEV: Final = 0x07
UBLK_CMD_SET_PARAMS: Final = 0x08
UBLK_CMD_GET_PARAMS: Final = 0x09
UBLK_CMD_START_USER_RECOVERY: Final = 0x10
UBLK_CMD_END_USER_RECOVERY: Final = 0x11
UBLK_CMD_GET_DEV_INFO2: Final = 0x12
UBLK_CMD_GET_FEATURES: Final = 0x13

_C = CTRL_CMD.size
UBLK_U_CMD_GET_QUEUE_AFFINITY: Final = ior(IOCTL_TYPE, UBLK_CMD_GET_QUEUE_AFFINITY, _C)
UBLK_U_CMD_GET_DEV_INFO: Final = ior(IOCTL_TYPE, UBLK_CMD_GET_DEV_INFO, _C)
UBLK_U_CMD_ADD_DEV: Final = iowr(IOCTL_TYPE, UBLK_CMD_ADD_DEV, _C)
UBLK_U_CMD_DEL_DEV: Final = iowr(IOCTL_TYPE, UBLK_CMD_DEL_DEV, _C)
UBLK_U_CMD_START_DEV: Final = iowr(IOCTL_TYPE, UBLK_CMD_START_DEV, _C)
UBLK_U_CMD_STOP_DEV: Final = iowr(IOCTL_TYPE, UBLK_CMD_STOP_DEV, _C)
UBLK_U_CMD_SET_PARAMS: Final = iowr(IOCTL_TYPE, UBLK_CMD_SET_PARAMS, _C)
UBLK_U_CMD_GET_PARAMS: Final = ior(IOCTL_TYPE, UBLK_CMD_GET_PARAMS, _C)
UBLK_U_CMD_START_USER_RECOVERY: Final = iowr(IOCTL_TYPE, UBLK_CMD_START_USER_RECOVERY, _C)
UBLK_U_CMD_END_USER_RECOVERY: Final = iowr(IOCTL_TYPE, UBLK_CMD_END_USER_RECOVERY, _C)
UBLK_U_CMD_GET_DEV_INFO2: Final = ior(IOCTL_TYPE, UBLK_CMD_GET_DEV_INFO2, _C)
UBLK_U_CMD_GET_FEATURES: Final = ior(IOCTL_TYPE, UBLK_CMD_GET_FEATURES, _C)
UBLK_FEATURES_LEN: Final = 8

# -- I/O commands ---------------------------------------------------------------------------
UBLK_IO_FETCH_REQ: Final = 0x20
UBLK_IO_COMMIT_AND_FETCH_REQ: Final = 0x21
UBLK_IO_NEED_GET_DATA: Final = 0x22
_I = IO_CMD.size
UBLK_U_IO_FETCH_REQ: Final = iowr(IOCTL_TYPE, UBLK_IO_FETCH_REQ, _I)
UBLK_U_IO_COMMIT_AND_FETCH_REQ: Final = iowr(IOCTL_TYPE, UBLK_IO_COMMIT_AND_FETCH_REQ, _I)
UBLK_U_IO_NEED_GET_DATA: Final = iowr(IOCTL_TYPE, UBLK_IO_NEED_GET_DATA, _I)

UBLK_IO_RES_OK: Final = 0
UBLK_IO_RES_NEED_GET_DATA: Final = 1
UBLK_IO_RES_ABORT: Final = -errno.ENODEV

# -- feature flags (UBLK_F_*) ---------------------------------------------------------------
UBLK_F_SUPPORT_ZERO_COPY: Final = 1 << 0
UBLK_F_URING_CMD_COMP_IN_TASK: Final = 1 << 1
UBLK_F_NEED_GET_DATA: Final = 1 << 2
UBLK_F_USER_RECOVERY: Final = 1 << 3
UBLK_F_USER_RECOVERY_REISSUE: Final = 1 << 4
UBLK_F_UNPRIVILEGED_DEV: Final = 1 << 5
UBLK_F_CMD_IOCTL_ENCODE: Final = 1 << 6
UBLK_F_USER_COPY: Final = 1 << 7
UBLK_F_ZONED: Final = 1 << 8
UBLK_F_USER_RECOVERY_FAIL_IO: Final = 1 << 9

FEATURE_NAMES: Final = (
    "SUPPORT_ZERO_COPY", "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA", "USER_RECOVERY",
    "USER_RECOVERY_REISSUE", "UNPRIVILEGED_DEV", "CMD_IOCTL_ENCODE", "USER_COPY", "ZONED",
    "USER_RECOVERY_FAIL_IO", "UPDATE_SIZE", "AUTO_BUF_REG", "QUIESCE", "PER_IO_DAEMON",
    "BUF_REG_OFF_DAEMON", "BATCH_IO", "INTEGRITY", "SAFE_STOP_DEV", "NO_AUTO_PART_SCAN",
    "SHMEM_ZC",
)


def feature_names(flags: int) -> list[str]:
    return [n for bit, n in enumerate(FEATURE_NAMES) if flags >> bit & 1] + [
        f"bit{bit}" for bit in range(len(FEATURE_NAMES), 64) if flags >> bit & 1]


# -- device states, attributes, parameter types -----------------------------------------------
UBLK_S_DEV_DEAD: Final = 0
UBLK_S_DEV_LIVE: Final = 1
UBLK_S_DEV_QUIESCED: Final = 2
UBLK_S_DEV_FAIL_IO: Final = 3

UBLK_ATTR_READ_ONLY: Final = 1 << 0
UBLK_ATTR_ROTATIONAL: Final = 1 << 1
UBLK_ATTR_VOLATILE_CACHE: Final = 1 << 2
UBLK_ATTR_FUA: Final = 1 << 3

UBLK_PARAM_TYPE_BASIC: Final = 1 << 0
UBLK_PARAM_TYPE_DISCARD: Final = 1 << 1

# -- I/O ops and flags ------------------------------------------------------------------------
UBLK_IO_OP_READ: Final = 0
UBLK_IO_OP_WRITE: Final = 1
UBLK_IO_OP_FLUSH: Final = 2
UBLK_IO_OP_DISCARD: Final = 3
UBLK_IO_OP_WRITE_SAME: Final = 4
UBLK_IO_OP_WRITE_ZEROES: Final = 5
UBLK_IO_F_FUA: Final = 1 << 13
UBLK_IO_F_NOUNMAP: Final = 1 << 15

# -- limits and mmap/pread offsets --------------------------------------------------------
UBLK_MAX_QUEUE_DEPTH: Final = 4096
UBLK_MAX_NR_QUEUES: Final = 4096
UBLKSRV_CMD_BUF_OFFSET: Final = 0
UBLKSRV_IO_BUF_OFFSET: Final = 0x80000000
UBLK_IO_BUF_BITS: Final = 25
UBLK_TAG_OFF: Final = UBLK_IO_BUF_BITS
UBLK_TAG_BITS: Final = 16
UBLK_QID_OFF: Final = UBLK_TAG_OFF + UBLK_TAG_BITS
UBLK_QID_BITS: Final = 12
PAGE_SIZE: Final = 4096


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def desc_area_offset(q_id: int) -> int:
    """mmap offset of queue ``q_id``'s descriptor array (the kernel spaces queues by the
    maximum depth, whatever the device's depth)."""
    return UBLKSRV_CMD_BUF_OFFSET + q_id * round_up(UBLK_MAX_QUEUE_DEPTH * IO_DESC.size,
                                                    PAGE_SIZE)


def desc_area_length(depth: int) -> int:
    return round_up(depth * IO_DESC.size, PAGE_SIZE)


def user_copy_offset(q_id: int, tag: int, byte_off: int = 0) -> int:
    """pread/pwrite position on /dev/ublkcN of a request's data (USER_COPY)."""
    return UBLKSRV_IO_BUF_OFFSET + (q_id << UBLK_QID_OFF) + (tag << UBLK_TAG_OFF) + byte_off


# -- packed helpers -------------------------------------------------------------------------
@dataclasses.dataclass
class DevInfo:
    """``struct ublksrv_ctrl_dev_info`` (the fields pybdev reads or writes)."""

    nr_hw_queues: int = 0
    queue_depth: int = 0
    state: int = 0
    max_io_buf_bytes: int = 0
    dev_id: int = 0
    ublksrv_pid: int = 0
    flags: int = 0
    ublksrv_flags: int = 0
    owner_uid: int = 0
    owner_gid: int = 0

    def pack(self) -> bytes:
        return DEV_INFO.pack(self.nr_hw_queues, self.queue_depth, self.state, 0,
                             self.max_io_buf_bytes, self.dev_id, self.ublksrv_pid, 0,
                             self.flags, self.ublksrv_flags, self.owner_uid, self.owner_gid,
                             0, 0)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> DevInfo:
        (q, d, state, _p0, maxio, dev_id, pid, _p1, flags, sflags, uid, gid, _r1,
         _r2) = DEV_INFO.unpack_from(data)
        return cls(q, d, state, maxio, dev_id, pid, flags, sflags, uid, gid)


def pack_ctrl_cmd(dev_id: int, *, queue_id: int = QUEUE_ID_NONE, length: int = 0,
                  addr: int = 0, data: int = 0) -> bytes:
    return CTRL_CMD.pack(dev_id & 0xFFFF_FFFF, queue_id, length, addr, data, 0, 0, 0)


@dataclasses.dataclass
class Params:
    """``struct ublk_params`` restricted to basic (+ discard); ``pack`` gives the bytes and
    ``len`` the kernel should copy."""

    logical_bs_shift: int
    physical_bs_shift: int
    io_min_shift: int
    io_opt_shift: int
    max_sectors: int
    dev_sectors: int
    attrs: int = 0
    chunk_sectors: int = 0
    virt_boundary_mask: int = 0
    discard: tuple[int, int, int, int, int] | None = None  # align, gran, max, max_wz, segs

    @property
    def types(self) -> int:
        return UBLK_PARAM_TYPE_BASIC | (UBLK_PARAM_TYPE_DISCARD if self.discard else 0)

    def pack(self) -> bytes:
        length = PARAMS_LEN_BASIC_DISCARD
        buf = bytearray(length)
        PARAMS_HEADER.pack_into(buf, 0, length, self.types)
        PARAM_BASIC.pack_into(buf, PARAMS_BASIC_OFFSET, self.attrs, self.logical_bs_shift,
                              self.physical_bs_shift, self.io_opt_shift, self.io_min_shift,
                              self.max_sectors, self.chunk_sectors, self.dev_sectors,
                              self.virt_boundary_mask)
        if self.discard:
            align, gran, max_d, max_wz, segs = self.discard
            PARAM_DISCARD.pack_into(buf, PARAMS_DISCARD_OFFSET, align, gran, max_d, max_wz,
                                    segs, 0)
        return bytes(buf)
