"""The ublk control path: ``URING_CMD``s with 128-byte SQEs on ``/dev/ublk-control``.

Every command runs on a worker thread of the target's executor, never on the event loop:
the driver punts control commands to an io-wq worker and some of them wait for a long time
(START_DEV until every queue fetched, STOP_DEV until in-flight I/O committed, DEL_DEV
until the char device is released). Each command gets its own small ring, so commands for
different devices do not queue behind one another, and each is bounded by a timeout: on
expiry the command is cancelled (which interrupts the io-wq worker's interruptible wait),
the ring closed, and ``ETIMEDOUT`` raised. Kernels have shipped where ADD_DEV never
completes; a hung control command must not hang an RPC forever.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final

from pybdev import uring
from pybdev.ublk import uapi

log = logging.getLogger("pybdev.ublk")

CONTROL_PATH: Final = "/dev/ublk-control"
DEFAULT_TIMEOUT: Final = 30.0
CANCEL_GRACE: Final = 2.0
_USER_DATA: Final = 1
_CANCEL_USER_DATA: Final = 2

COMMAND_NAMES: Final = {
    uapi.UBLK_CMD_GET_DEV_INFO: "GET_DEV_INFO", uapi.UBLK_CMD_ADD_DEV: "ADD_DEV",
    uapi.UBLK_CMD_DEL_DEV: "DEL_DEV", uapi.UBLK_CMD_START_DEV: "START_DEV",
    uapi.UBLK_CMD_STOP_DEV: "STOP_DEV", uapi.UBLK_CMD_SET_PARAMS: "SET_PARAMS",
    uapi.UBLK_CMD_GET_PARAMS: "GET_PARAMS",
    uapi.UBLK_CMD_START_USER_RECOVERY: "START_USER_RECOVERY",
    uapi.UBLK_CMD_END_USER_RECOVERY: "END_USER_RECOVERY",
    uapi.UBLK_CMD_GET_FEATURES: "GET_FEATURES",
}
# nr -> ioctl-encoded op
_ENCODED: Final = {
    uapi.UBLK_CMD_GET_DEV_INFO: uapi.UBLK_U_CMD_GET_DEV_INFO,
    uapi.UBLK_CMD_ADD_DEV: uapi.UBLK_U_CMD_ADD_DEV,
    uapi.UBLK_CMD_DEL_DEV: uapi.UBLK_U_CMD_DEL_DEV,
    uapi.UBLK_CMD_START_DEV: uapi.UBLK_U_CMD_START_DEV,
    uapi.UBLK_CMD_STOP_DEV: uapi.UBLK_U_CMD_STOP_DEV,
    uapi.UBLK_CMD_SET_PARAMS: uapi.UBLK_U_CMD_SET_PARAMS,
    uapi.UBLK_CMD_GET_PARAMS: uapi.UBLK_U_CMD_GET_PARAMS,
    uapi.UBLK_CMD_START_USER_RECOVERY: uapi.UBLK_U_CMD_START_USER_RECOVERY,
    uapi.UBLK_CMD_END_USER_RECOVERY: uapi.UBLK_U_CMD_END_USER_RECOVERY,
    uapi.UBLK_CMD_GET_FEATURES: uapi.UBLK_U_CMD_GET_FEATURES,
}


class ControlError(OSError):
    """A control command failed (``errno`` is the kernel's) or timed out (ETIMEDOUT)."""


def open_control(path: str = CONTROL_PATH) -> int:
    """Open the control device; the OSError says why in words a user can act on."""
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{path} missing (ublk_drv not loaded)",
                                path) from None
    except PermissionError:
        raise PermissionError(errno.EACCES, f"{path}: permission denied (ublk needs root)",
                              path) from None


class Control:
    """Commands on one open ``/dev/ublk-control``; ``ioctl_encode`` picks the op numbers."""

    def __init__(self, fd: int, executor: Executor, *, ioctl_encode: bool = True,
                 ring_factory: Callable[..., Any] | None = None) -> None:
        self.fd = fd
        self.executor = executor
        self.ioctl_encode = ioctl_encode
        # Tests substitute a fake ring; the real one is a 128-byte-SQE io_uring.
        self._ring_factory = ring_factory or (lambda: uring.Ring(4, sqe128=True))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def op(self, nr: int) -> int:
        if nr == uapi.UBLK_CMD_GET_FEATURES or self.ioctl_encode:
            return _ENCODED[nr]
        return nr

    # -- synchronous core (runs on a worker thread) -------------------------------------
    def run_sync(self, nr: int, dev_id: int, *, buf: bytearray | None = None, data: int = 0,
                 timeout: float = DEFAULT_TIMEOUT) -> int:
        """Issue one command and wait for it; returns the CQE result (>= 0) or raises."""
        name = COMMAND_NAMES.get(nr, hex(nr))
        addr = uring.address_of(buf) if buf is not None else 0
        cmd = uapi.pack_ctrl_cmd(dev_id, length=len(buf) if buf is not None else 0,
                                 addr=addr, data=data)
        ring = self._ring_factory()
        try:
            ring.prep_uring_cmd(self.fd, self.op(nr), cmd, _USER_DATA)
            res: int | None = None
            for user_data, r, _flags in ring.submit_and_reap(1, timeout):
                if user_data == _USER_DATA:
                    res = r
            if res is None:
                ring.prep_cancel(_USER_DATA, _CANCEL_USER_DATA)
                for user_data, r, _flags in ring.submit_and_reap(2, CANCEL_GRACE):
                    if user_data == _USER_DATA and r != -errno.ECANCELED:
                        res = r
                if res is None:
                    log.error("ublk control command %s for device %d timed out after %.0f s",
                              name, dev_id, timeout)
                    raise ControlError(errno.ETIMEDOUT,
                                       f"{name} timed out after {timeout:.0f} s")
        finally:
            ring.close()
        if res < 0:
            log.debug("ublk %s on device %d failed: %s", name, dev_id, os.strerror(-res))
            raise ControlError(-res, f"{name} failed: {os.strerror(-res)}")
        log.debug("ublk %s on device %d -> %d", name, dev_id, res)
        return res

    def get_features_sync(self, timeout: float = 5.0) -> int:
        buf = bytearray(uapi.UBLK_FEATURES_LEN)
        self.run_sync(uapi.UBLK_CMD_GET_FEATURES, 0, buf=buf, timeout=timeout)
        return int.from_bytes(buf, "little")

    # -- asynchronous wrappers (event loop) ---------------------------------------------
    async def run(self, nr: int, dev_id: int, *, buf: bytearray | None = None, data: int = 0,
                  timeout: float = DEFAULT_TIMEOUT) -> int:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, lambda: self.run_sync(nr, dev_id, buf=buf, data=data,
                                                 timeout=timeout))

    async def add_dev(self, info: uapi.DevInfo, timeout: float = DEFAULT_TIMEOUT
                      ) -> uapi.DevInfo:
        buf = bytearray(info.pack())
        await self.run(uapi.UBLK_CMD_ADD_DEV, info.dev_id, buf=buf, timeout=timeout)
        return uapi.DevInfo.unpack(buf)

    async def set_params(self, dev_id: int, params: uapi.Params) -> None:
        await self.run(uapi.UBLK_CMD_SET_PARAMS, dev_id, buf=bytearray(params.pack()))

    async def get_dev_info(self, dev_id: int) -> uapi.DevInfo:
        buf = bytearray(uapi.DEV_INFO.size)
        await self.run(uapi.UBLK_CMD_GET_DEV_INFO, dev_id, buf=buf)
        return uapi.DevInfo.unpack(buf)

    async def start_dev(self, dev_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.run(uapi.UBLK_CMD_START_DEV, dev_id, data=os.getpid(), timeout=timeout)

    async def stop_dev(self, dev_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.run(uapi.UBLK_CMD_STOP_DEV, dev_id, timeout=timeout)

    async def del_dev(self, dev_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.run(uapi.UBLK_CMD_DEL_DEV, dev_id, timeout=timeout)

    async def start_user_recovery(self, dev_id: int) -> None:
        await self.run(uapi.UBLK_CMD_START_USER_RECOVERY, dev_id)

    async def end_user_recovery(self, dev_id: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        await self.run(uapi.UBLK_CMD_END_USER_RECOVERY, dev_id, data=os.getpid(),
                       timeout=timeout)
