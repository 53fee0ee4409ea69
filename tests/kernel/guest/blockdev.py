"""Helpers shared by the guest-side kernel tests: block-device ioctls, targets, waiting."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tests.conftest import Target
from tests.conftest import wait_until as wait_for  # noqa: F401  (re-exported)

BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
BLKGETSIZE64 = 0x80081272
MiB = 1 << 20


def start(targets: list[Target], tmp_path: Path, *args: str, timeout: float = 90) -> Target:
    """Start ``python -m pybdev`` with ``args``; the ``targets`` fixture stops it."""
    n = len(targets)
    t = Target(tmp_path / f"t{n}.sock", list(args), tmp_path / f"t{n}.log")
    targets.append(t)
    return t.wait_ready(timeout=timeout)



def dev_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, BLKGETSIZE64, buf)
        return int.from_bytes(buf, "little")
    finally:
        os.close(fd)
