"""Process set-up a ublk server needs: its own mount namespace and PR_SET_IO_FLUSHER.

Why (``spec/ublk.md``, lessons of other ublk servers):

- A server that shares a mount namespace with a file system mounted on its own device can
  deadlock at exit: tearing the namespace down unmounts the file system, whose flush needs
  the server that is exiting. A private namespace (with private propagation, so later
  mounts of /dev/ublkbN elsewhere do not propagate into it) breaks the cycle.
- Writeback to /dev/ublkbN under memory pressure waits for the server; if the server's own
  allocations then enter reclaim and write back to the same device, it deadlocks.
  ``PR_SET_IO_FLUSHER`` makes the kernel allocate for the calling *thread* with GFP_NOIO, so
  every thread that serves I/O (the event loop, every queue poller) sets it.

Both are per task in Linux: unshare(CLONE_NEWNS) changes the calling thread and the threads
it creates afterwards, so it is called from the event loop thread before the ublk threads
exist. Python 3.11 has no ``os.unshare`` (3.12 does), hence ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from typing import Final

log = logging.getLogger("pybdev.ublk")

CLONE_NEWNS: Final = 0x00020000
PR_SET_IO_FLUSHER: Final = 57
PR_GET_IO_FLUSHER: Final = 58
MS_REC: Final = 16384
MS_PRIVATE: Final = 1 << 18

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno() or errno.EPERM
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare_mount_namespace() -> None:
    """Give the calling thread (and threads it creates later) a private mount namespace."""
    unshare = getattr(os, "unshare", None)
    if unshare is not None:  # Python 3.12+
        unshare(CLONE_NEWNS)
    else:
        libc = _lib()
        libc.unshare.argtypes = [ctypes.c_int]
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    libc = _lib()
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_void_p]
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None),
           "mount --make-rprivate /")


def set_io_flusher() -> None:
    """PR_SET_IO_FLUSHER for the calling thread (needs CAP_SYS_RESOURCE)."""
    libc = _lib()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    _check(libc.prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0), "prctl(PR_SET_IO_FLUSHER)")


def io_flusher() -> bool:
    libc = _lib()
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                           ctypes.c_ulong]
    return libc.prctl(PR_GET_IO_FLUSHER, 0, 0, 0, 0) == 1


def mount_namespace_id(pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")
