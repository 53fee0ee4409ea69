"""Errors of the nbd subsystem that more than one of its modules raise."""

from __future__ import annotations

import errno

from pybdev.rpc.errors import OperationError, RpcError


class IllegalDevice(OperationError):
    """SPDK answers a malformed ``nbd_device`` with -ENODEV "illegal nbd device <path>"."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(errno.ENODEV, f"illegal nbd device {device}: {reason}")
        self.device = device
        self.reason = reason

    def to_rpc(self) -> RpcError:
        return RpcError(-errno.ENODEV, f"illegal nbd device {self.device}: {self.reason}")
