"""The bdev status table: each protocol's values, and NBD errors end to end through a real peer."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from pybdev.export import status
from pybdev.export.status import NBD_STATUS, NVME_STATUS, TABLES, UBLK_STATUS
from pybdev.proto import nbd as proto
from tests.conftest import Target
from tests.nbd.conftest import Peer, need, peers, sockdir, unix_uri
from tests.nbd.rawclient import RawClient

__all__ = ["peers", "sockdir"]  # fixtures

# errno_to_blk_status() in the kernel's block/blk-core.c: errnos with a block status of
# their own (anything else becomes BLK_STS_IOERR).
BLK_ERRNOS = {errno.EOPNOTSUPP, errno.ETIMEDOUT, errno.ENOSPC, errno.ENOLINK, errno.EREMOTEIO,
              errno.EBADE, errno.ENODATA, errno.EILSEQ, errno.ENOMEM, errno.EBUSY, errno.EAGAIN,
              errno.ENODEV, errno.EIO}


def test_nbd_error_values_are_the_protocols() -> None:
    for name in ("NBD_EPERM", "NBD_EIO", "NBD_ENOMEM", "NBD_EINVAL", "NBD_ENOSPC",
                 "NBD_EOVERFLOW", "NBD_ENOTSUP", "NBD_ESHUTDOWN"):
        assert getattr(status, name) == getattr(proto, name), name


@pytest.mark.parametrize(("bdev_status", "wire"), [
    (0, 0),
    (-errno.EPERM, proto.NBD_EPERM),
    (-errno.EROFS, proto.NBD_EPERM),
    (-errno.EBADF, proto.NBD_EPERM),
    (-errno.EIO, proto.NBD_EIO),
    (-errno.ENOMEM, proto.NBD_ENOMEM),
    (-errno.EINVAL, proto.NBD_EINVAL),
    (-errno.ENOSPC, proto.NBD_ENOSPC),
    (-errno.EDQUOT, proto.NBD_ENOSPC),
    (-errno.EFBIG, proto.NBD_ENOSPC),
    (-errno.EOVERFLOW, proto.NBD_EOVERFLOW),
    (-errno.EOPNOTSUPP, proto.NBD_ENOTSUP),
    (-errno.ESHUTDOWN, proto.NBD_ESHUTDOWN),
    (-errno.ENODEV, proto.NBD_EIO),  # a removed bdev: no NBD equivalent
    (-errno.EXDEV, proto.NBD_EIO),
])
def test_nbd(bdev_status: int, wire: int) -> None:
    assert NBD_STATUS(bdev_status) == wire


def test_every_nbd_value_is_one_the_protocol_defines() -> None:
    defined = {proto.NBD_EPERM, proto.NBD_EIO, proto.NBD_ENOMEM, proto.NBD_EINVAL,
               proto.NBD_ENOSPC, proto.NBD_EOVERFLOW, proto.NBD_ENOTSUP, proto.NBD_ESHUTDOWN}
    assert set(NBD_STATUS.errors.values()) | {NBD_STATUS.default} <= defined


def test_ublk_results_are_negative_errnos_the_block_layer_knows() -> None:
    assert UBLK_STATUS(0) == 0
    assert UBLK_STATUS(-errno.ENOSPC) == -errno.ENOSPC
    assert UBLK_STATUS(-errno.EOPNOTSUPP) == -errno.EOPNOTSUPP
    assert UBLK_STATUS(-errno.EDQUOT) == -errno.ENOSPC
    assert UBLK_STATUS(-errno.EINVAL) == -errno.EIO
    assert UBLK_STATUS(-errno.ENODEV) == -errno.EIO
    for result in [*UBLK_STATUS.errors.values(), UBLK_STATUS.default]:
        assert result < 0 and -result in BLK_ERRNOS


def test_nvme_slot_has_a_generic_default() -> None:
    assert NVME_STATUS(0) == status.NVME_SUCCESS
    assert NVME_STATUS(-errno.EOPNOTSUPP) == status.NVME_INVALID_OPCODE | status.NVME_DNR
    assert NVME_STATUS(-errno.ENODEV) == status.NVME_INVALID_NAMESPACE | status.NVME_DNR
    assert NVME_STATUS(-errno.EXDEV) == status.NVME_INTERNAL_DEVICE_ERROR
    assert set(TABLES) == {"nbd", "ublk", "nvme"}


def test_tables_take_only_negative_statuses() -> None:
    with pytest.raises(AssertionError):
        status.StatusTable("bad", {errno.EIO: 1}, 0)


@need("nbdkit")
def test_peer_errors_cross_two_nbd_hops_intact(start_target: Callable[..., Target],
                                               peers: Callable[..., Peer],
                                               sockdir: Path) -> None:
    """nbdkit's error -> client bdev status -> this table -> the NBD export's reply."""
    peer = peers("nbdkit", "--filter=error", "memory", "4M",
                 "error-pread=EPERM", "error-pread-rate=100%",
                 "error-pwrite=ENOSPC", "error-pwrite-rate=100%",
                 "error-zero=EINVAL", "error-zero-rate=100%")
    t = start_target()
    t.rpc("bdev_nbd_create", {"name": "Err0", "uri": unix_uri("", peer.sock)})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Err0",
                                   "nbd_device": unix_uri("Err0", sockdir / "e.sock")})
    c = RawClient(uri.split("socket=")[1], "Err0")
    try:
        assert c.call(proto.NBD_CMD_READ, 0, 4096)["error"] == proto.NBD_EPERM
        assert c.call(proto.NBD_CMD_WRITE, 0, 4096,
                      payload=bytes(4096))["error"] == proto.NBD_ENOSPC
        assert c.call(proto.NBD_CMD_WRITE_ZEROES, 0, 4096)["error"] == proto.NBD_EINVAL
        assert c.call(proto.NBD_CMD_FLUSH)["error"] == 0
    finally:
        c.close()
