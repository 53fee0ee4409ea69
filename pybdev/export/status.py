"""One table from a bdev completion status to each protocol's error value.

A bdev completes a request with ``status`` 0 or a negative errno (``pybdev.bdev.core``).
Each export answers its client in its own terms:

* NBD (network and kernel): the error values of the NBD protocol
  (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md, "Error values").
  Anything without an equivalent is ``NBD_EIO``.  The kernel's nbd driver fails the bio
  with EIO whatever the value, so kernel NBD uses the same table.
* ublk: the request's result, a negative errno that the ublk driver turns into a block
  status (``errno_to_blk_status`` in the kernel's ``block/blk-core.c``).  Only errnos
  that have a block status of their own pass; the rest become ``-EIO``.
* NVMe (the NVMe/TCP target, ``pybdev/nvmf``): ``SCT << 8 | SC`` of the NVMe base
  specification's generic command status, with the Do Not Retry bit (0x4000) where a
  retry cannot succeed.  Anything else is Internal Device Error, as SPDK answers a failed
  bdev I/O (``spdk_bdev_io_get_nvme_status``).  A removed bdev is Invalid Namespace: the
  namespace is going (hot-remove) and the host fails the I/O at once.

A lookup is one dict ``get``, done on the error path only: callers test ``status`` for 0
first, so success costs nothing here.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Final

# NBD protocol error values (proto.md, "Error values").
NBD_EPERM: Final = 1
NBD_EIO: Final = 5
NBD_ENOMEM: Final = 12
NBD_EINVAL: Final = 22
NBD_ENOSPC: Final = 28
NBD_EOVERFLOW: Final = 75
NBD_ENOTSUP: Final = 95
NBD_ESHUTDOWN: Final = 108

# NVMe generic command status (SCT 0), as SCT << 8 | SC.
NVME_SUCCESS: Final = 0x000
NVME_INVALID_OPCODE: Final = 0x001
NVME_INVALID_FIELD: Final = 0x002
NVME_INTERNAL_DEVICE_ERROR: Final = 0x006
NVME_INVALID_NAMESPACE: Final = 0x00B
NVME_DNR: Final = 0x4000
NVME_CAPACITY_EXCEEDED: Final = 0x081


class StatusTable:
    """bdev status (0 or -errno) -> one protocol's error value; ``table(status)``."""

    __slots__ = ("default", "errors", "protocol")

    def __init__(self, protocol: str, errors: Mapping[int, int], default: int) -> None:
        assert all(status < 0 for status in errors), "bdev statuses are negative errnos"
        self.protocol = protocol
        self.errors = dict(errors)
        self.default = default

    def __call__(self, status: int) -> int:
        if not status:
            return 0
        return self.errors.get(status, self.default)

    def __repr__(self) -> str:
        return f"<StatusTable {self.protocol}: {len(self.errors)} errnos>"


NBD_STATUS: Final = StatusTable("nbd", {
    -errno.EPERM: NBD_EPERM,
    -errno.EACCES: NBD_EPERM,
    -errno.EROFS: NBD_EPERM,
    -errno.EBADF: NBD_EPERM,  # a write on a read-only descriptor
    -errno.EIO: NBD_EIO,
    -errno.ENOMEM: NBD_ENOMEM,
    -errno.EINVAL: NBD_EINVAL,
    -errno.ENOSPC: NBD_ENOSPC,
    # proto.md: "SHOULD map the EDQUOT and EFBIG errors to NBD_ENOSPC"
    -errno.EDQUOT: NBD_ENOSPC,
    -errno.EFBIG: NBD_ENOSPC,
    -errno.EOVERFLOW: NBD_EOVERFLOW,
    -errno.ENOTSUP: NBD_ENOTSUP,
    -errno.EOPNOTSUPP: NBD_ENOTSUP,
    -errno.ESHUTDOWN: NBD_ESHUTDOWN,
}, NBD_EIO)

UBLK_STATUS: Final = StatusTable("ublk", {
    -errno.EIO: -errno.EIO,
    -errno.ENOSPC: -errno.ENOSPC,  # BLK_STS_NOSPC
    -errno.EDQUOT: -errno.ENOSPC,
    -errno.EFBIG: -errno.ENOSPC,
    -errno.EOPNOTSUPP: -errno.EOPNOTSUPP,  # BLK_STS_NOTSUPP
    -errno.ETIMEDOUT: -errno.ETIMEDOUT,  # BLK_STS_TIMEOUT
    -errno.ENODATA: -errno.ENODATA,  # BLK_STS_MEDIUM
    -errno.EILSEQ: -errno.EILSEQ,  # BLK_STS_PROTECTION
    -errno.ENOMEM: -errno.ENOMEM,  # BLK_STS_RESOURCE
}, -errno.EIO)

NVME_STATUS: Final = StatusTable("nvme", {
    -errno.EINVAL: NVME_INVALID_FIELD | NVME_DNR,
    -errno.EOPNOTSUPP: NVME_INVALID_OPCODE | NVME_DNR,
    -errno.ENODEV: NVME_INVALID_NAMESPACE | NVME_DNR,
    -errno.ENOSPC: NVME_CAPACITY_EXCEEDED,
}, NVME_INTERNAL_DEVICE_ERROR)

#: Every table, by protocol name.
TABLES: Final[Mapping[str, StatusTable]] = {
    t.protocol: t for t in (NBD_STATUS, UBLK_STATUS, NVME_STATUS)}
