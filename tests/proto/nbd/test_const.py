"""Values of the NBD protocol constants, enums and errno conversion (pybdev.proto.nbd.const)."""

from __future__ import annotations

import errno
import struct

import pytest

from pybdev.proto import nbd


def test_magic_values() -> None:
    assert struct.pack(">Q", nbd.NBD_MAGIC) == b"NBDMAGIC"
    assert struct.pack(">Q", nbd.NBD_IHAVEOPT) == b"IHAVEOPT"
    assert nbd.NBD_OPT_REPLY_MAGIC == 0x3E889045565A9
    assert nbd.NBD_REQUEST_MAGIC == 0x25609513
    assert nbd.NBD_SIMPLE_REPLY_MAGIC == 0x67446698
    assert nbd.NBD_STRUCTURED_REPLY_MAGIC == 0x668E33EF


def test_constant_values_match_proto_md() -> None:
    assert [nbd.NBD_OPT_EXPORT_NAME, nbd.NBD_OPT_ABORT, nbd.NBD_OPT_LIST] == [1, 2, 3]
    assert [nbd.NBD_OPT_STARTTLS, nbd.NBD_OPT_INFO, nbd.NBD_OPT_GO] == [5, 6, 7]
    assert nbd.NBD_OPT_STRUCTURED_REPLY == 8
    assert (nbd.NBD_OPT_LIST_META_CONTEXT, nbd.NBD_OPT_SET_META_CONTEXT) == (9, 10)
    assert [nbd.NBD_REP_ACK, nbd.NBD_REP_SERVER, nbd.NBD_REP_INFO, nbd.NBD_REP_META_CONTEXT] == [
        1,
        2,
        3,
        4,
    ]
    assert nbd.NBD_REP_ERR_UNSUP == 2**31 + 1
    assert nbd.NBD_REP_ERR_UNKNOWN == 2**31 + 6
    assert nbd.NBD_REP_ERR_TOO_BIG == 2**31 + 9
    assert [nbd.NBD_INFO_EXPORT, nbd.NBD_INFO_NAME, nbd.NBD_INFO_DESCRIPTION] == [0, 1, 2]
    assert nbd.NBD_INFO_BLOCK_SIZE == 3
    assert list(nbd.Cmd)[:8] == list(range(8))
    assert [int(f) for f in nbd.CmdFlag] == [1, 2, 4, 8, 16, 32]
    assert nbd.NBD_FLAG_CAN_MULTI_CONN == 256 and nbd.NBD_FLAG_SEND_FAST_ZERO == 2048
    assert nbd.NBD_REPLY_TYPE_ERROR == 32769 and nbd.NBD_REPLY_TYPE_ERROR_OFFSET == 32770
    assert nbd.NBD_REPLY_TYPE_BLOCK_STATUS == 5
    assert [int(e) for e in nbd.Err] == [1, 5, 12, 22, 28, 75, 95, 108]
    assert (nbd.NBD_STATE_HOLE, nbd.NBD_STATE_ZERO) == (1, 2)
    assert nbd.BASE_ALLOCATION == "base:allocation"


def test_enums_equal_plain_ints() -> None:
    assert nbd.Cmd.WRITE_ZEROES == nbd.NBD_CMD_WRITE_ZEROES
    assert nbd.TxFlag.SEND_FUA | nbd.TxFlag.SEND_FLUSH == 12
    assert nbd.describe(nbd.NBD_REP_ERR_POLICY, nbd.Rep) == "ERR_POLICY"
    assert nbd.describe(12345, nbd.Opt) == "12345"


@pytest.mark.parametrize(
    ("host", "wire"),
    [
        (0, 0),
        (errno.EPERM, 1),
        (errno.EROFS, 1),
        (errno.EACCES, 1),
        (errno.EIO, 5),
        (errno.ENOMEM, 12),
        (errno.EINVAL, 22),
        (errno.ENOSPC, 28),
        (errno.EDQUOT, 28),
        (errno.EFBIG, 28),
        (-errno.EOVERFLOW, 75),
        (errno.EOPNOTSUPP, 95),
        (errno.ESHUTDOWN, 108),
        (errno.EBADF, 5),
        (errno.ENOENT, 5),
    ],
)
def test_errno_to_nbd(host: int, wire: int) -> None:
    assert nbd.errno_to_nbd(host) == wire


def test_nbd_to_errno() -> None:
    assert nbd.nbd_to_errno(0) == 0
    assert nbd.nbd_to_errno(nbd.NBD_ENOSPC) == errno.ENOSPC
    assert nbd.nbd_to_errno(nbd.NBD_ESHUTDOWN) == errno.ESHUTDOWN
    # proto.md: unexpected values are treated as NBD_EINVAL.
    assert nbd.nbd_to_errno(9999) == errno.EINVAL
