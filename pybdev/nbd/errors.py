"""Errors of the nbd subsystem that more than one of its modules raise."""

from __future__ import annotations

import errno

from pybdev.errors import OperationError


class IllegalDevice(OperationError):
    """SPDK answers a malformed ``nbd_device`` with -ENODEV "illegal nbd device <path>"."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(errno.ENODEV, reason, message=f"illegal nbd device {device}: {reason}")
        self.device = device
        self.reason = reason
