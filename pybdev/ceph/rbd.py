"""librbd: image management (blocking) and asynchronous image I/O delivered to asyncio.

Threading model. ``rbd_aio_*`` calls return at once; librbd completes each request on one
of its own threads by calling a C callback. That callback (one ``ffi.callback`` for the
whole process, told apart by a ``ffi.new_handle`` argument) only reads the return value,
releases the completion, appends the request to its image's queue, and, when the queue was
idle, wakes the event loop with ``call_soon_threadsafe``. So a burst of completions costs one
wake-up, and user callbacks always run on the loop thread, never on librbd's.

Every request keeps what librbd may still touch (its handle and its buffer) reachable from
the image's in-flight set until its callback ran, and every callback runs exactly once:
errors found at submission (closed image, librbd refusing the request) are delivered the same
way, on the loop, with a negative errno.

Blocking calls (open, close, create, remove, resize, stat, get_size — which may refresh the
image header over the network) are plain methods: run them in a thread from a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pybdev.ceph.errors import CephError
from pybdev.ceph.rados import Ioctx, libs

Callback = Callable[[int], None]
"""An I/O completion callback: bytes read (reads), 0 (other successes), or a negative errno."""

RBD_FEATURE_LAYERING = 1 << 0
RBD_FEATURE_EXCLUSIVE_LOCK = 1 << 2
RBD_FEATURE_OBJECT_MAP = 1 << 3
RBD_FEATURE_FAST_DIFF = 1 << 4
RBD_FEATURE_DEEP_FLATTEN = 1 << 5


@dataclass(frozen=True)
class ImageInfo:
    """What ``rbd_stat`` reports (the deprecated fields left out)."""

    size: int
    obj_size: int
    num_objs: int
    order: int


class _Runtime:
    """The process-wide C callbacks and hot-path function references, made once."""

    def __init__(self) -> None:
        L = libs()
        self.ffi = ffi = L.ffi
        self.rbd = rbd = L.rbd
        self.has_write_zeroes = L.has_write_zeroes
        from_handle = ffi.from_handle
        get_ret = rbd.rbd_aio_get_return_value
        release = rbd.rbd_aio_release

        # Runs on a librbd thread with the GIL taken by cffi: keep it short.
        def on_complete(c: Any, arg: Any) -> None:
            req = from_handle(arg)
            req.ret = get_ret(c)
            release(c)
            req.sink.push(req)

        def on_update(arg: Any) -> None:
            from_handle(arg).fire()

        # These two objects are never freed: librbd may call them until the process ends.
        self.complete_cb = ffi.callback("rbd_callback_t", on_complete)
        self.update_cb = ffi.callback("rbd_update_callback_t", on_update)


_rt: _Runtime | None = None
_rt_lock = threading.Lock()


def _runtime() -> _Runtime:
    global _rt
    if _rt is None:
        with _rt_lock:
            if _rt is None:
                _rt = _Runtime()
    return _rt


class _Req:
    __slots__ = ("cb", "handle", "keep", "ret", "sink")

    def __init__(self, sink: _Sink, cb: Callback, keep: Any) -> None:
        self.sink = sink
        self.cb = cb
        self.keep = keep
        self.ret = 0
        self.handle: Any = None


class _Sink:
    """Completions of one image on their way to one event loop."""

    __slots__ = ("armed", "inflight", "loop", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ready: deque[_Req] = deque()
        self.armed = False
        self.inflight: set[_Req] = set()

    def push(self, req: _Req) -> None:
        # Any thread. Appending before testing ``armed`` (and drain clearing it before
        # popping) means no request can be left in the queue without a drain scheduled.
        self.ready.append(req)
        if not self.armed:
            self.armed = True
            try:  # noqa: SIM105 - cheaper than contextlib.suppress on the I/O path
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:
                pass  # the loop is closed: nobody is left to tell

    def drain(self) -> None:
        self.armed = False
        ready = self.ready
        inflight = self.inflight
        while ready:
            req = ready.popleft()
            inflight.discard(req)
            # Drop the buffer (ends a bytearray's export) and the handle (breaks the
            # req <-> handle cycle so the request is freed now, not by the cyclic GC).
            req.keep = None
            req.handle = None
            try:
                req.cb(req.ret)
            except Exception as e:  # one bad callback must not lose the others
                self.loop.call_exception_handler(
                    {"message": "exception in an rbd completion callback", "exception": e}
                )


class _Watch:
    __slots__ = ("cb", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, cb: Callable[[], None]) -> None:
        self.loop = loop
        self.cb = cb

    def fire(self) -> None:  # a librbd thread
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is left to tell
            self.loop.call_soon_threadsafe(self.cb)


def create_image(
    ioctx: Ioctx, name: str, size: int, *, order: int = 0, features: int | None = None
) -> None:
    """``rbd_create`` (librbd's default features) or ``rbd_create2`` (explicit features)."""
    L = libs()
    porder = L.ffi.new("int *", order)
    if features is None:
        rc = L.rbd.rbd_create(ioctx.handle, name.encode(), size, porder)
    else:
        rc = L.rbd.rbd_create2(ioctx.handle, name.encode(), size, features, porder)
    if rc < 0:
        raise CephError(rc, "rbd_create", f"{ioctx.pool}/{name}")


def remove_image(ioctx: Ioctx, name: str) -> None:
    rc = libs().rbd.rbd_remove(ioctx.handle, name.encode())
    if rc < 0:
        raise CephError(rc, "rbd_remove", f"{ioctx.pool}/{name}")


def list_images(ioctx: Ioctx) -> list[str]:
    L = libs()
    ffi = L.ffi
    n = 32
    while True:
        pn = ffi.new("size_t *", n)
        specs = ffi.new("rbd_image_spec_t[]", n)
        rc = L.rbd.rbd_list2(ioctx.handle, specs, pn)
        if rc == -errno.ERANGE:
            n = max(int(pn[0]), n * 2)
            continue
        if rc < 0:
            raise CephError(rc, "rbd_list2", ioctx.pool)
        count = int(pn[0])
        try:
            return [ffi.string(specs[i].name).decode() for i in range(count)]
        finally:
            L.rbd.rbd_image_spec_list_cleanup(specs, count)


def open_image(
    ioctx: Ioctx,
    name: str,
    *,
    read_only: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Image:
    """Open ``name`` in ``ioctx`` (blocks). Completions go to ``loop``, or to the loop running
    when the first asynchronous request is made."""
    L = libs()
    _runtime()
    pimg = L.ffi.new("rbd_image_t *")
    fn = L.rbd.rbd_open_read_only if read_only else L.rbd.rbd_open
    rc = fn(ioctx.handle, name.encode(), pimg, L.ffi.NULL)
    if rc < 0:
        raise CephError(rc, "rbd_open", f"{ioctx.pool}/{name}")
    img = Image(ioctx, name, pimg[0], read_only, loop)
    ioctx._adopt(img)
    return img


class Image:
    """An open RBD image. Made by ``open_image``; ``close()`` when done."""

    def __init__(
        self,
        ioctx: Ioctx,
        name: str,
        handle: Any,
        read_only: bool,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        rt = _runtime()
        self.ioctx = ioctx
        self.name = name
        self.read_only = read_only
        self._h: Any = handle
        # Held around every call that uses the handle, so close() cannot free it while
        # another thread is inside librbd with it. Uncontended on the I/O path.
        self._lock = threading.Lock()
        self._sink: _Sink | None = _Sink(loop) if loop is not None else None
        self._watches: dict[int, tuple[_Watch, Any]] = {}
        self._ffi = rt.ffi
        self._rbd = rt.rbd
        self._new = rt.ffi.new
        self._new_handle = rt.ffi.new_handle
        self._from_buffer = rt.ffi.from_buffer
        self._create_completion = rt.rbd.rbd_aio_create_completion
        self._complete_cb = rt.complete_cb
        self.write_zeroes_native = rt.has_write_zeroes

    def __repr__(self) -> str:
        state = "open" if self._h is not None else "closed"
        return f"<Image {self.ioctx.pool}/{self.name} {state}>"

    @property
    def closed(self) -> bool:
        return self._h is None

    @property
    def inflight(self) -> int:
        """Requests submitted whose callback has not run yet."""
        return len(self._sink.inflight) if self._sink is not None else 0

    # ---- blocking calls -------------------------------------------------------------

    def _handle(self, call: str) -> Any:
        h = self._h
        if h is None:
            raise CephError(-errno.EBADF, call, f"{self.ioctx.pool}/{self.name} is closed")
        return h

    def get_size(self) -> int:
        psize = self._new("uint64_t *")
        with self._lock:
            rc = self._rbd.rbd_get_size(self._handle("rbd_get_size"), psize)
        if rc < 0:
            raise CephError(rc, "rbd_get_size", self.name)
        return int(psize[0])

    def stat(self) -> ImageInfo:
        info = self._new("rbd_image_info_t *")
        with self._lock:
            rc = self._rbd.rbd_stat(
                self._handle("rbd_stat"), info, self._ffi.sizeof("rbd_image_info_t")
            )
        if rc < 0:
            raise CephError(rc, "rbd_stat", self.name)
        return ImageInfo(int(info.size), int(info.obj_size), int(info.num_objs), int(info.order))

    def features(self) -> int:
        pf = self._new("uint64_t *")
        with self._lock:
            rc = self._rbd.rbd_get_features(self._handle("rbd_get_features"), pf)
        if rc < 0:
            raise CephError(rc, "rbd_get_features", self.name)
        return int(pf[0])

    def image_id(self) -> str:
        buf = self._new("char[]", 64)
        with self._lock:
            rc = self._rbd.rbd_get_id(self._handle("rbd_get_id"), buf, 64)
        if rc < 0:
            raise CephError(rc, "rbd_get_id", self.name)
        return str(self._ffi.string(buf).decode())

    def resize(self, size: int) -> None:
        with self._lock:
            rc = self._rbd.rbd_resize(self._handle("rbd_resize"), size)
        if rc < 0:
            raise CephError(rc, "rbd_resize", f"{self.name} to {size}")

    def close(self) -> None:
        """Unregister watches, wait for in-flight requests (librbd completes them all, their
        callbacks then run on the loop) and close. Idempotent."""
        with self._lock:
            h, self._h = self._h, None
        if h is None:
            return
        for handle in list(self._watches):
            self._rbd.rbd_update_unwatch(h, handle)
        self._watches.clear()
        rc = self._rbd.rbd_close(h)
        self.ioctx._forget(self)
        if rc < 0:
            raise CephError(rc, "rbd_close", self.name)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # ---- resize and other header changes ----------------------------------------------

    def watch(self, cb: Callable[[], None]) -> int:
        """Call ``cb()`` on the loop whenever the image header changes (resize by anyone,
        snapshots, features...). Returns a handle for ``unwatch``. ``get_size()`` after it
        may refresh the header over the network, so call that in a thread."""
        sink = self._sink or self._bind()
        w = _Watch(sink.loop, cb)
        arg = self._new_handle(w)
        ph = self._new("uint64_t *")
        rt = _runtime()
        with self._lock:
            rc = self._rbd.rbd_update_watch(self._handle("rbd_update_watch"), ph, rt.update_cb, arg)
        if rc < 0:
            raise CephError(rc, "rbd_update_watch", self.name)
        handle = int(ph[0])
        self._watches[handle] = (w, arg)
        return handle

    def unwatch(self, handle: int) -> None:
        """Blocks until a callback being delivered for this watch returned (briefly)."""
        if handle not in self._watches:
            return
        with self._lock:
            rc = self._rbd.rbd_update_unwatch(self._handle("rbd_update_unwatch"), handle)
        self._watches.pop(handle, None)
        if rc < 0:
            raise CephError(rc, "rbd_update_unwatch", self.name)

    # ---- asynchronous I/O: callbacks ------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver completions to ``loop`` (before the first request only)."""
        if self._sink is not None and self._sink.loop is not loop:
            raise RuntimeError("this image already delivers to another event loop")
        if self._sink is None:
            self._sink = _Sink(loop)

    def _bind(self) -> _Sink:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "rbd aio needs an event loop: open the image with loop=, call bind_loop(), "
                "or make the first request from a coroutine"
            ) from None
        self._sink = _Sink(loop)
        return self._sink

    def _prepare(self, cb: Callback, keep: Any) -> tuple[_Req, Any]:
        sink = self._sink or self._bind()
        req = _Req(sink, cb, keep)
        req.handle = self._new_handle(req)
        pc = self._new("rbd_completion_t *")
        rc = self._create_completion(req.handle, self._complete_cb, pc)
        if rc < 0:
            req.ret = rc
            sink.inflight.add(req)
            sink.push(req)
            return req, None
        sink.inflight.add(req)
        return req, pc[0]

    def _failed(self, req: _Req, c: Any, rc: int) -> None:
        # librbd refused the request, so it will never complete it.
        self._rbd.rbd_aio_release(c)
        req.ret = rc
        req.sink.push(req)

    def aio_read(self, offset: int, buf: Any, cb: Callback) -> None:
        """Read ``len(buf)`` bytes at ``offset`` into the writable buffer ``buf``; ``cb(n)``
        with the number of bytes read (short at the end of the image) or ``-errno``."""
        if offset < 0:
            raise ValueError("negative offset")
        cbuf = self._from_buffer(buf, require_writable=True)
        req, c = self._prepare(cb, (cbuf, buf))
        if c is None:
            return
        with self._lock:
            h = self._h
            rc = (
                self._rbd.rbd_aio_read(h, offset, len(cbuf), cbuf, c)
                if h is not None else -errno.EBADF
            )
        if rc < 0:
            self._failed(req, c, rc)

    def aio_write(self, offset: int, data: Any, cb: Callback) -> None:
        """Write the bytes-like ``data`` at ``offset``; ``cb(0)`` or ``cb(-errno)``.
        ``data`` must not change until ``cb`` ran."""
        if offset < 0:
            raise ValueError("negative offset")
        cbuf = self._from_buffer(data)
        req, c = self._prepare(cb, (cbuf, data))
        if c is None:
            return
        with self._lock:
            h = self._h
            rc = (
                self._rbd.rbd_aio_write(h, offset, len(cbuf), cbuf, c)
                if h is not None else -errno.EBADF
            )
        if rc < 0:
            self._failed(req, c, rc)

    def aio_discard(self, offset: int, length: int, cb: Callback) -> None:
        """Discard (unmap). With librbd's defaults (``rbd_skip_partial_discard``) only whole
        objects are guaranteed to read back as zeros; use ``aio_write_zeroes`` for zeros."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        req, c = self._prepare(cb, None)
        if c is None:
            return
        with self._lock:
            h = self._h
            rc = (
                self._rbd.rbd_aio_discard(h, offset, length, c)
                if h is not None else -errno.EBADF
            )
        if rc < 0:
            self._failed(req, c, rc)

    def aio_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        """Make the range read back as zeros (``rbd_aio_write_zeroes``, Ceph >= 16; on older
        librbd, a write of a zero-filled buffer)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if not self.write_zeroes_native:
            self.aio_write(offset, bytes(length), cb)
            return
        req, c = self._prepare(cb, None)
        if c is None:
            return
        with self._lock:
            h = self._h
            rc = (
                self._rbd.rbd_aio_write_zeroes(h, offset, length, c, 0, 0)
                if h is not None else -errno.EBADF
            )
        if rc < 0:
            self._failed(req, c, rc)

    def aio_flush(self, cb: Callback) -> None:
        req, c = self._prepare(cb, None)
        if c is None:
            return
        with self._lock:
            h = self._h
            rc = self._rbd.rbd_aio_flush(h, c) if h is not None else -errno.EBADF
        if rc < 0:
            self._failed(req, c, rc)

    # ---- asynchronous I/O: coroutines (raise CephError) -----------------------------

    @staticmethod
    def _future() -> tuple[asyncio.Future[int], Callback]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def done(ret: int) -> None:
            if not fut.done():  # the awaiting task may have been cancelled
                fut.set_result(ret)

        return fut, done

    async def read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        fut, done = self._future()
        self.aio_read(offset, buf, done)
        ret = await fut
        if ret < 0:
            raise CephError(ret, "rbd_aio_read", f"{self.name} {offset}+{length}")
        del buf[ret:]
        return buf

    async def write(self, offset: int, data: Any) -> None:
        fut, done = self._future()
        self.aio_write(offset, data, done)
        ret = await fut
        if ret < 0:
            raise CephError(ret, "rbd_aio_write", f"{self.name} {offset}+{len(data)}")

    async def discard(self, offset: int, length: int) -> None:
        fut, done = self._future()
        self.aio_discard(offset, length, done)
        ret = await fut
        if ret < 0:
            raise CephError(ret, "rbd_aio_discard", f"{self.name} {offset}+{length}")

    async def write_zeroes(self, offset: int, length: int) -> None:
        fut, done = self._future()
        self.aio_write_zeroes(offset, length, done)
        ret = await fut
        if ret < 0:
            raise CephError(ret, "rbd_aio_write_zeroes", f"{self.name} {offset}+{length}")

    async def flush(self) -> None:
        fut, done = self._future()
        self.aio_flush(done)
        ret = await fut
        if ret < 0:
            raise CephError(ret, "rbd_aio_flush", self.name)
