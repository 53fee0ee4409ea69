"""The one exception type of the Ceph binding."""

from __future__ import annotations

import errno as _errno
import os


class CephError(OSError):
    """A librados/librbd call failed. ``rc`` is the negative errno the library returned.

    The message names the call and, where useful, its non-secret arguments (pool, image,
    option name); it never includes option values, so a key cannot leak through it.
    """

    def __init__(self, rc: int, call: str, detail: str = "") -> None:
        code = -rc if rc < 0 else rc or _errno.EIO
        super().__init__(code, os.strerror(code))
        self.rc = -code
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        where = f"{self.call}({self.detail})" if self.detail else self.call
        name = _errno.errorcode.get(self.errno or 0, "?")
        return f"{where}: {self.strerror} ({name}, {self.rc})"


class CephUnavailable(CephError):
    """librados/librbd could not be loaded on this machine (the reason is the detail)."""

    def __init__(self, reason: str) -> None:
        super().__init__(-_errno.ENOSYS, "librbd", reason)

    def __str__(self) -> str:
        return f"Ceph RBD support is unavailable: {self.detail}"
