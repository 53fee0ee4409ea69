"""Ceph RADOS/RBD client binding: cffi in ABI mode over librados.so.2 and librbd.so.1.

Importing this package never fails and loads nothing: the libraries are opened on first use.
``available()`` and ``unavailable_reason()`` tell whether they can be, so callers (the rbd
bdev module, its RPC methods) can say why RBD is not offered on this machine.

    cluster = Cluster({"mon_host": "...", "key": "..."}, "admin", connect_timeout=10)
    await asyncio.to_thread(cluster.connect)
    ioctx = await asyncio.to_thread(cluster.open_ioctx, "rbd")
    image = await asyncio.to_thread(open_image, ioctx, "disk0")
    image.aio_write(0, data, lambda ret: ...)      # ret: bytes or -errno, on the loop
    await image.write(4096, data)                  # coroutine form, raises CephError
    await image.aclose(); ioctx.close(); cluster.shutdown()
"""

from __future__ import annotations

from pybdev.ceph import _ffi
from pybdev.ceph.errors import CephError, CephUnavailable
from pybdev.ceph.rados import REDACTED, Cluster, Ioctx, is_secret, redact
from pybdev.ceph.rbd import (
    Callback,
    Image,
    ImageInfo,
    create_image,
    list_images,
    open_image,
    remove_image,
)

__all__ = [
    "REDACTED",
    "Callback",
    "CephError",
    "CephUnavailable",
    "Cluster",
    "Image",
    "ImageInfo",
    "Ioctx",
    "available",
    "create_image",
    "is_secret",
    "list_images",
    "open_image",
    "redact",
    "remove_image",
    "unavailable_reason",
    "versions",
]


def unavailable_reason() -> str | None:
    """Why librados/librbd cannot be used here, or None when they can (loads them once)."""
    return _ffi.unavailable_reason()


def available() -> bool:
    return _ffi.unavailable_reason() is None


def versions() -> dict[str, str]:
    """The loaded libraries' versions, e.g. ``{"librados": "3.0.0", "librbd": "1.16.0"}``."""
    L = _ffi.libs()
    return {
        "librados": ".".join(map(str, L.rados_version)),
        "librbd": ".".join(map(str, L.rbd_version)),
    }
