"""cffi ABI-mode declarations for the parts of librados.so.2 and librbd.so.1 pybdev uses.

ABI mode (``ffi.dlopen``) needs no compiler and no headers at run time, so the binding works
in any venv on a machine that has Debian's ``librados2``/``librbd1``. The declarations are
transcribed from ``rados/librados.h`` and ``rbd/librbd.h`` of Ceph 16 (Pacific); every
function used here exists with the same signature since Ceph 14 except
``rbd_aio_write_zeroes`` (Ceph 16), which is looked up separately so its absence only
switches write-zeroes to an emulation.

Loading happens once, on first use, never at import: importing ``pybdev.ceph`` must work on
machines without Ceph.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

CDEF = """
typedef void *rados_t;
typedef void *rados_ioctx_t;
typedef void *rbd_image_t;
typedef void *rbd_completion_t;
typedef void (*rbd_callback_t)(rbd_completion_t cb, void *arg);
typedef void (*rbd_update_callback_t)(void *arg);

typedef struct {
  uint64_t size;
  uint64_t obj_size;
  uint64_t num_objs;
  int order;
  char block_name_prefix[24];
  int64_t parent_pool;
  char parent_name[96];
} rbd_image_info_t;

typedef struct {
  char *id;
  char *name;
} rbd_image_spec_t;

void rados_version(int *major, int *minor, int *extra);
int rados_create2(rados_t *pcluster, const char *const clustername,
                  const char * const name, uint64_t flags);
int rados_conf_read_file(rados_t cluster, const char *path);
int rados_conf_set(rados_t cluster, const char *option, const char *value);
int rados_conf_get(rados_t cluster, const char *option, char *buf, size_t len);
int rados_connect(rados_t cluster);
void rados_shutdown(rados_t cluster);
int rados_cluster_fsid(rados_t cluster, char *buf, size_t len);
uint64_t rados_get_instance_id(rados_t cluster);
int rados_ioctx_create(rados_t cluster, const char *pool_name, rados_ioctx_t *ioctx);
void rados_ioctx_destroy(rados_ioctx_t io);

void rbd_version(int *major, int *minor, int *extra);
int rbd_create(rados_ioctx_t io, const char *name, uint64_t size, int *order);
int rbd_create2(rados_ioctx_t io, const char *name, uint64_t size,
                uint64_t features, int *order);
int rbd_remove(rados_ioctx_t io, const char *name);
int rbd_list2(rados_ioctx_t io, rbd_image_spec_t *images, size_t *max_images);
void rbd_image_spec_list_cleanup(rbd_image_spec_t *image, size_t num_images);
int rbd_open(rados_ioctx_t io, const char *name, rbd_image_t *image, const char *snap_name);
int rbd_open_read_only(rados_ioctx_t io, const char *name, rbd_image_t *image,
                       const char *snap_name);
int rbd_close(rbd_image_t image);
int rbd_resize(rbd_image_t image, uint64_t size);
int rbd_stat(rbd_image_t image, rbd_image_info_t *info, size_t infosize);
int rbd_get_size(rbd_image_t image, uint64_t *size);
int rbd_get_features(rbd_image_t image, uint64_t *features);
int rbd_get_id(rbd_image_t image, char *id, size_t id_len);

int rbd_aio_create_completion(void *cb_arg, rbd_callback_t complete_cb, rbd_completion_t *c);
ssize_t rbd_aio_get_return_value(rbd_completion_t c);
void *rbd_aio_get_arg(rbd_completion_t c);
void rbd_aio_release(rbd_completion_t c);
int rbd_set_image_notification(rbd_image_t image, int fd, int type);
int rbd_poll_io_events(rbd_image_t image, rbd_completion_t *comps, int numcomp);
int rbd_aio_write(rbd_image_t image, uint64_t off, size_t len, const char *buf,
                  rbd_completion_t c);
int rbd_aio_read(rbd_image_t image, uint64_t off, size_t len, char *buf, rbd_completion_t c);
int rbd_aio_discard(rbd_image_t image, uint64_t off, uint64_t len, rbd_completion_t c);
int rbd_aio_flush(rbd_image_t image, rbd_completion_t c);
int rbd_aio_write_zeroes(rbd_image_t image, uint64_t off, size_t len, rbd_completion_t c,
                         int zero_flags, int op_flags);

int rbd_update_watch(rbd_image_t image, uint64_t *handle, rbd_update_callback_t watch_cb,
                     void *arg);
int rbd_update_unwatch(rbd_image_t image, uint64_t handle);
"""

LIBRADOS = "librados.so.2"
LIBRBD = "librbd.so.1"
# Point these at other files to use another build, or at a missing path to see how pybdev
# behaves without Ceph.
ENV_LIBRADOS = "PYBDEV_LIBRADOS"
ENV_LIBRBD = "PYBDEV_LIBRBD"


@dataclass(frozen=True)
class Libs:
    ffi: Any
    rados: Any
    rbd: Any
    has_write_zeroes: bool
    rados_version: tuple[int, int, int]
    rbd_version: tuple[int, int, int]


_lock = threading.Lock()
_libs: Libs | None = None
_error: str | None = None
_tried = False


def _version(ffi: Any, fn: Any) -> tuple[int, int, int]:
    v = ffi.new("int[3]")
    fn(v, v + 1, v + 2)
    return (v[0], v[1], v[2])


def _load() -> Libs:
    try:
        from cffi import FFI
    except ImportError as e:  # cffi is a dependency, but say so rather than crash
        raise OSError(f"cffi is not installed: {e}") from e
    ffi = FFI()
    ffi.cdef(CDEF)
    rados_path = os.environ.get(ENV_LIBRADOS) or LIBRADOS
    rbd_path = os.environ.get(ENV_LIBRBD) or LIBRBD
    hint = "install Debian's librados2 and librbd1"
    try:
        rados: Any = ffi.dlopen(rados_path)  # cffi Lib: symbols appear at run time
    except OSError as e:
        raise OSError(f"cannot load {rados_path} ({hint}): {e}") from e
    try:
        rbd: Any = ffi.dlopen(rbd_path)
    except OSError as e:
        raise OSError(f"cannot load {rbd_path} ({hint}): {e}") from e
    try:
        rbd.rbd_aio_write_zeroes  # noqa: B018 - probing for the symbol
        has_wz = True
    except AttributeError:
        has_wz = False
    return Libs(
        ffi=ffi, rados=rados, rbd=rbd, has_write_zeroes=has_wz,
        rados_version=_version(ffi, rados.rados_version),
        rbd_version=_version(ffi, rbd.rbd_version),
    )


def libs() -> Libs:
    """The loaded libraries; raises OSError (the same message every time) when they can't be."""
    global _libs, _error, _tried
    if _libs is not None:
        return _libs
    with _lock:
        if not _tried:
            _tried = True
            try:
                _libs = _load()
            except OSError as e:
                _error = str(e)
        if _libs is None:
            raise OSError(_error or "librbd is unavailable")
        return _libs


def unavailable_reason() -> str | None:
    try:
        libs()
    except OSError as e:
        return str(e)
    return None
