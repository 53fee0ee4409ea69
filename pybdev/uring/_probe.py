"""Can this process use io_uring? One cached probe, with a human-readable reason if not."""

from __future__ import annotations

import errno
import functools
import os
import platform
import struct
import sys
from typing import Final

#: Set to a non-empty value to make pybdev behave as if io_uring were missing (tests,
#: or a kernel whose io_uring misbehaves).
DISABLE_ENV: Final = "PYBDEV_URING_DISABLE"

# Only architectures whose plain loads/stores give the acquire/release ordering the CQ
# protocol needs (see ring.py); x86-64 is the one pybdev runs on.
_TSO_MACHINES: Final = frozenset({"x86_64", "amd64", "AMD64"})


def _sysctl_io_uring_disabled() -> int | None:
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None  # before 6.6 the sysctl does not exist


def _explain_setup_errno(err: int) -> str:
    name = errno.errorcode.get(err, str(err))
    base = f"io_uring_setup() failed with {name} ({os.strerror(err)})"
    if err == errno.ENOSYS:
        return (
            f"{base}: the kernel has no io_uring (CONFIG_IO_URING off) or a seccomp "
            "filter hides the syscall"
        )
    if err == errno.EPERM:
        sysctl = _sysctl_io_uring_disabled()
        if sysctl == 2:
            return f"{base}: io_uring is disabled by sysctl kernel.io_uring_disabled=2"
        if sysctl == 1:
            return (
                f"{base}: sysctl kernel.io_uring_disabled=1 allows io_uring only to "
                "CAP_SYS_ADMIN or members of kernel.io_uring_group"
            )
        return f"{base}: forbidden by a seccomp filter (e.g. a container profile) or an LSM"
    if err == errno.ENOMEM:
        return f"{base}: out of memory or locked-memory limit (ulimit -l) too low"
    return base


@functools.cache
def unavailable_reason() -> str | None:
    """Why io_uring cannot be used here, or None if it can. Probed once, then cached."""
    if os.environ.get(DISABLE_ENV):
        return f"disabled by the environment variable {DISABLE_ENV}"
    if sys.platform != "linux":
        return f"io_uring is Linux-only (this is {sys.platform})"
    machine = platform.machine()
    if machine not in _TSO_MACHINES:
        return (
            f"the io_uring binding relies on x86-64 memory ordering; this CPU is {machine}"
        )
    if struct.calcsize("P") != 8:
        return "the io_uring binding needs a 64-bit Python"
    try:
        from pybdev.uring._native import load

        native = load()
    except ImportError as exc:
        return f"cffi is not installed ({exc}); pip install cffi"
    except Exception as exc:
        return f"cannot reach the C library's syscall() through cffi: {exc}"

    from pybdev.uring.ring import Ring

    ring = Ring.__new__(Ring)
    try:
        ring._open(native, 2, False, False, None, 0)
    except OSError as exc:
        if exc.errno is not None and "io_uring_setup" in str(exc):
            return _explain_setup_errno(exc.errno)
        return f"cannot set up an io_uring: {exc}"
    except Exception as exc:
        return f"cannot set up an io_uring: {exc}"
    try:
        from pybdev.uring import abi

        if not ring.features & abi.IORING_FEAT_NODROP:
            return "the kernel's io_uring is too old (needs IORING_FEAT_NODROP, Linux 5.5+)"
        # A seccomp filter may allow setup but not enter: prove a full round trip.
        ring.prep_nop(1)
        ring.submit_and_wait(1)
        cqes = ring.reap()
        if cqes != [(1, 0, 0)]:
            return f"io_uring NOP round trip returned {cqes!r} instead of [(1, 0, 0)]"
    except OSError as exc:
        return f"io_uring_enter() does not work here: {exc}"
    finally:
        ring.close()
    return None


def available() -> bool:
    """True when io_uring rings can be created and used in this process."""
    return unavailable_reason() is None
