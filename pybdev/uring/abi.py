"""io_uring UAPI facts: constants, syscall numbers and byte layouts.

Pure Python (no cffi), so it imports everywhere. Values come from the kernel's
``include/uapi/linux/io_uring.h``; only what pybdev uses or may plausibly use is listed.
Layouts are little-endian x86-64; ``tests/uring`` checks them against cffi's own
computation of the C structs declared in ``_native.py``.
"""

from __future__ import annotations

import struct
from typing import Final

# io_uring was added after the syscall-number unification, so every architecture except
# alpha uses these numbers; pybdev only runs the binding on x86-64 anyway (see __init__).
SYS_io_uring_setup: Final = 425
SYS_io_uring_enter: Final = 426
SYS_io_uring_register: Final = 427

# --- io_uring_setup() flags -------------------------------------------------------------
IORING_SETUP_IOPOLL: Final = 1 << 0
IORING_SETUP_SQPOLL: Final = 1 << 1
IORING_SETUP_SQ_AFF: Final = 1 << 2
IORING_SETUP_CQSIZE: Final = 1 << 3
IORING_SETUP_CLAMP: Final = 1 << 4
IORING_SETUP_ATTACH_WQ: Final = 1 << 5
IORING_SETUP_R_DISABLED: Final = 1 << 6
IORING_SETUP_SUBMIT_ALL: Final = 1 << 7
IORING_SETUP_COOP_TASKRUN: Final = 1 << 8
IORING_SETUP_TASKRUN_FLAG: Final = 1 << 9
IORING_SETUP_SQE128: Final = 1 << 10
IORING_SETUP_CQE32: Final = 1 << 11
IORING_SETUP_SINGLE_ISSUER: Final = 1 << 12
IORING_SETUP_DEFER_TASKRUN: Final = 1 << 13
IORING_SETUP_NO_MMAP: Final = 1 << 14
IORING_SETUP_REGISTERED_FD_ONLY: Final = 1 << 15
IORING_SETUP_NO_SQARRAY: Final = 1 << 16

# --- opcodes ----------------------------------------------------------------------------
IORING_OP_NOP: Final = 0
IORING_OP_READV: Final = 1
IORING_OP_WRITEV: Final = 2
IORING_OP_FSYNC: Final = 3
IORING_OP_READ_FIXED: Final = 4
IORING_OP_WRITE_FIXED: Final = 5
IORING_OP_POLL_ADD: Final = 6
IORING_OP_POLL_REMOVE: Final = 7
IORING_OP_SYNC_FILE_RANGE: Final = 8
IORING_OP_SENDMSG: Final = 9
IORING_OP_RECVMSG: Final = 10
IORING_OP_TIMEOUT: Final = 11
IORING_OP_TIMEOUT_REMOVE: Final = 12
IORING_OP_ACCEPT: Final = 13
IORING_OP_ASYNC_CANCEL: Final = 14
IORING_OP_LINK_TIMEOUT: Final = 15
IORING_OP_CONNECT: Final = 16
IORING_OP_FALLOCATE: Final = 17
IORING_OP_OPENAT: Final = 18
IORING_OP_CLOSE: Final = 19
IORING_OP_FILES_UPDATE: Final = 20
IORING_OP_STATX: Final = 21
IORING_OP_READ: Final = 22
IORING_OP_WRITE: Final = 23
IORING_OP_FADVISE: Final = 24
IORING_OP_MADVISE: Final = 25
IORING_OP_SEND: Final = 26
IORING_OP_RECV: Final = 27
IORING_OP_SHUTDOWN: Final = 34
IORING_OP_MSG_RING: Final = 40
IORING_OP_SOCKET: Final = 45
IORING_OP_URING_CMD: Final = 46

# --- sqe->flags -------------------------------------------------------------------------
IOSQE_FIXED_FILE: Final = 1 << 0
IOSQE_IO_DRAIN: Final = 1 << 1
IOSQE_IO_LINK: Final = 1 << 2
IOSQE_IO_HARDLINK: Final = 1 << 3
IOSQE_ASYNC: Final = 1 << 4
IOSQE_BUFFER_SELECT: Final = 1 << 5
IOSQE_CQE_SKIP_SUCCESS: Final = 1 << 6

# --- per-op flags (the u32 union at SQE offset 28, or sqe->len for POLL_ADD) -------------
IORING_FSYNC_DATASYNC: Final = 1 << 0
IORING_URING_CMD_FIXED: Final = 1 << 0
IORING_POLL_ADD_MULTI: Final = 1 << 0
IORING_ASYNC_CANCEL_ALL: Final = 1 << 0
IORING_ASYNC_CANCEL_FD: Final = 1 << 1
IORING_ASYNC_CANCEL_ANY: Final = 1 << 2

# --- cqe->flags -------------------------------------------------------------------------
IORING_CQE_F_BUFFER: Final = 1 << 0
IORING_CQE_F_MORE: Final = 1 << 1
IORING_CQE_F_SOCK_NONEMPTY: Final = 1 << 2
IORING_CQE_F_NOTIF: Final = 1 << 3

# --- mmap offsets -----------------------------------------------------------------------
IORING_OFF_SQ_RING: Final = 0
IORING_OFF_CQ_RING: Final = 0x8000000
IORING_OFF_SQES: Final = 0x10000000

# --- sq_ring->flags ---------------------------------------------------------------------
IORING_SQ_NEED_WAKEUP: Final = 1 << 0
IORING_SQ_CQ_OVERFLOW: Final = 1 << 1
IORING_SQ_TASKRUN: Final = 1 << 2

# --- cq_ring->flags ---------------------------------------------------------------------
IORING_CQ_EVENTFD_DISABLED: Final = 1 << 0

# --- io_uring_enter() flags -------------------------------------------------------------
IORING_ENTER_GETEVENTS: Final = 1 << 0
IORING_ENTER_SQ_WAKEUP: Final = 1 << 1
IORING_ENTER_SQ_WAIT: Final = 1 << 2
IORING_ENTER_EXT_ARG: Final = 1 << 3
IORING_ENTER_REGISTERED_RING: Final = 1 << 4

# --- io_uring_params->features ----------------------------------------------------------
IORING_FEAT_SINGLE_MMAP: Final = 1 << 0
IORING_FEAT_NODROP: Final = 1 << 1
IORING_FEAT_SUBMIT_STABLE: Final = 1 << 2
IORING_FEAT_RW_CUR_POS: Final = 1 << 3
IORING_FEAT_CUR_PERSONALITY: Final = 1 << 4
IORING_FEAT_FAST_POLL: Final = 1 << 5
IORING_FEAT_POLL_32BITS: Final = 1 << 6
IORING_FEAT_SQPOLL_NONFIXED: Final = 1 << 7
IORING_FEAT_EXT_ARG: Final = 1 << 8
IORING_FEAT_NATIVE_WORKERS: Final = 1 << 9
IORING_FEAT_RSRC_TAGS: Final = 1 << 10
IORING_FEAT_CQE_SKIP: Final = 1 << 11
IORING_FEAT_LINKED_FILE: Final = 1 << 12
IORING_FEAT_REG_REG_RING: Final = 1 << 13

# --- io_uring_register() opcodes --------------------------------------------------------
IORING_REGISTER_BUFFERS: Final = 0
IORING_UNREGISTER_BUFFERS: Final = 1
IORING_REGISTER_FILES: Final = 2
IORING_UNREGISTER_FILES: Final = 3
IORING_REGISTER_EVENTFD: Final = 4
IORING_UNREGISTER_EVENTFD: Final = 5
IORING_REGISTER_FILES_UPDATE: Final = 6
IORING_REGISTER_EVENTFD_ASYNC: Final = 7
IORING_REGISTER_PROBE: Final = 8

IO_URING_OP_SUPPORTED: Final = 1 << 0

# --- byte layouts -----------------------------------------------------------------------
SQE_SIZE: Final = 64
SQE128_SIZE: Final = 128
CQE_SIZE: Final = 16
CQE32_SIZE: Final = 32
#: Offset of the URING_CMD payload (``sqe->cmd``) inside an SQE.
SQE_CMD_OFFSET: Final = 48
#: Bytes of command payload: 16 in a 64-byte SQE, 80 in a 128-byte SQE.
SQE_CMD_SIZE: Final = SQE_SIZE - SQE_CMD_OFFSET
SQE128_CMD_SIZE: Final = SQE128_SIZE - SQE_CMD_OFFSET

#: A whole 64-byte SQE: opcode, flags, ioprio, fd, off, addr, len, op_flags, user_data,
#: buf_index, personality, file_index (splice_fd_in), addr3, pad2.
SQE_STRUCT: Final = struct.Struct("<BBHiQQIIQHHiQQ")
#: URING_CMD view of a 64-byte SQE: off splits into cmd_op + pad1, then 16 command bytes.
SQE_CMD_STRUCT: Final = struct.Struct("<BBHiIIQIIQHHi16s")
#: URING_CMD view of a 128-byte SQE (IORING_SETUP_SQE128): 80 command bytes.
SQE128_CMD_STRUCT: Final = struct.Struct("<BBHiIIQIIQHHi80s")
#: (user_data, res, flags) of a 16-byte CQE.
CQE_STRUCT: Final = struct.Struct("<QiI")
#: (user_data, res, flags) of a 32-byte CQE (IORING_SETUP_CQE32), extra words skipped.
CQE32_STRUCT: Final = struct.Struct("<QiI16x")
#: (user_data, res, flags, big_cqe[0], big_cqe[1]) of a 32-byte CQE.
CQE32_BIG_STRUCT: Final = struct.Struct("<QiIQQ")

OPCODE_NAMES: Final = {
    value: name[len("IORING_OP_") :]
    for name, value in dict(globals()).items()
    if name.startswith("IORING_OP_")
}
