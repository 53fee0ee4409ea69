"""librbd: image management (blocking) and asynchronous image I/O delivered to asyncio.

How completions reach the event loop. Each open image has an eventfd registered with librbd
(``rbd_set_image_notification``); requests are made with a NULL C callback, so when one
completes librbd's thread only queues it inside librbd and bumps the eventfd — no Python,
no GIL on librbd's threads. The loop watches the eventfd (``add_reader``) and, on the loop
thread, collects finished requests in batches with ``rbd_poll_io_events`` and runs their
callbacks. A cffi callback per completion was measured first: every completion then took
the GIL on a librbd thread, and the GIL handoffs between that thread and the loop cost more
CPU and latency than the rest of the binding (docs/decisions/rbd-binding.md).

Every request keeps what librbd may still touch (its buffer, its ``ffi.new_handle``) in the
image's in-flight set until it was collected, and every callback runs exactly once, on the
loop: errors found at submission (closed image, librbd refusing the request) are delivered
the same way, later, with a negative errno. ``close()`` stops new requests, collects the
ones still owed and only then frees the image.

Submit from the loop thread only. Blocking calls (open, close, create, remove, resize, stat,
get_size — which may refresh the image header over the network) are plain methods: run them
in a thread from a loop. Header-change watches (``watch``) are rare and use a cffi callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import threading
from collections.abc import Callable, Iterable
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


EVENT_TYPE_EVENTFD = 2  # librbd.h: rbd_set_image_notification's fd type
_POLL_BATCH = 64


class _Runtime:
    """The process-wide watch callback and library references, made once."""

    def __init__(self) -> None:
        L = libs()
        self.ffi = ffi = L.ffi
        self.rbd = L.rbd
        self.has_write_zeroes = L.has_write_zeroes
        from_handle = ffi.from_handle

        def on_update(arg: Any) -> None:  # a librbd thread
            from_handle(arg).fire()

        # Never freed: librbd may call it until the process ends.
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
    __slots__ = ("cb", "handle", "keep", "ret")

    def __init__(self, cb: Callback, keep: Any) -> None:
        self.cb = cb
        self.keep = keep
        self.ret = 0
        self.handle: Any = None


def _write_zeroes(rbd: Any) -> Callable[..., int]:
    # rbd_aio_write_zeroes takes flags after the completion; _start appends the completion.
    def call(h: Any, off: int, length: int, c: Any) -> int:
        return int(rbd.rbd_aio_write_zeroes(h, off, length, c, 0, 0))
    return call


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
    try:
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    except OSError:
        L.rbd.rbd_close(pimg[0])
        raise
    rc = L.rbd.rbd_set_image_notification(pimg[0], efd, EVENT_TYPE_EVENTFD)
    if rc < 0:
        L.rbd.rbd_close(pimg[0])
        os.close(efd)
        raise CephError(rc, "rbd_set_image_notification", f"{ioctx.pool}/{name}")
    img = Image(ioctx, name, pimg[0], efd, read_only, loop)
    ioctx._adopt(img)
    return img


class Image:
    """An open RBD image. Made by ``open_image``; ``close()`` when done."""

    def __init__(
        self,
        ioctx: Ioctx,
        name: str,
        handle: Any,
        efd: int,
        read_only: bool,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        rt = _runtime()
        self.ioctx = ioctx
        self.name = name
        self.read_only = read_only
        self._h: Any = handle
        self._efd = efd
        # Held around every use of the handle and of the completion queue, so close() in
        # another thread cannot free the image under a request. Uncontended on the I/O path.
        self._lock = threading.Lock()
        self._closing = False
        self._pending = 0  # submitted to librbd and not yet collected
        self._inflight: set[_Req] = set()
        self._loop = loop
        self._reading = False  # the loop watches the eventfd
        self._watches: dict[int, tuple[_Watch, Any]] = {}
        ffi, rbd = rt.ffi, rt.rbd
        self._ffi = ffi
        self._rbd = rbd
        self._new = ffi.new
        self._new_handle = ffi.new_handle
        self._from_handle = ffi.from_handle
        self._from_buffer = ffi.from_buffer
        self._null = ffi.NULL
        self._create_completion = rbd.rbd_aio_create_completion
        self._release = rbd.rbd_aio_release
        self._comps = ffi.new("rbd_completion_t[]", _POLL_BATCH)
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
        return len(self._inflight)

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
        """Refuse new requests, wait until librbd finished every request in flight (their
        callbacks run on the loop afterwards), unregister watches and close. Blocks for as
        long as the slowest request (bounded by ``osd_op_timeout`` when it is set).
        Idempotent."""
        with self._lock:
            if self._h is None or self._closing:
                return
            self._closing = True
        # A completion left in librbd's queue when the image is freed would be lost with
        # its callback, so collect until librbd owes nothing.
        while True:
            with self._lock:
                reqs = self._reap(self._h)
                pending = self._pending
            if reqs:
                self._post(reqs)
            if pending == 0:
                break
            select.select([self._efd], [], [], 0.05)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._efd)
        with self._lock:
            h, self._h = self._h, None
        for handle in list(self._watches):
            self._rbd.rbd_update_unwatch(h, handle)
        self._watches.clear()
        rc = self._rbd.rbd_close(h)
        self.ioctx._forget(self)
        self._drop_eventfd()
        if rc < 0:
            raise CephError(rc, "rbd_close", self.name)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def _drop_eventfd(self) -> None:
        efd, self._efd = self._efd, -1
        loop = self._loop
        if not self._reading or loop is None or loop.is_closed():
            os.close(efd)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None

        def drop() -> None:
            loop.remove_reader(efd)
            os.close(efd)

        if running is loop or not loop.is_running():
            # On the loop, or nobody runs it: its selector is not in use elsewhere.
            drop()
        else:
            try:
                loop.call_soon_threadsafe(drop)
            except RuntimeError:  # closed meanwhile
                os.close(efd)

    # ---- resize and other header changes ----------------------------------------------

    def watch(self, cb: Callable[[], None]) -> int:
        """Call ``cb()`` on the loop whenever the image header changes (resize by anyone,
        snapshots, features...). Returns a handle for ``unwatch``. ``get_size()`` after it
        may refresh the header over the network, so call that in a thread."""
        loop = self._loop or self._running_loop()
        self._loop = loop
        w = _Watch(loop, cb)
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
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("this image already delivers to another event loop")
        self._loop = loop

    @staticmethod
    def _running_loop() -> asyncio.AbstractEventLoop:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "rbd aio needs an event loop: open the image with loop=, call bind_loop(), "
                "or make the first request from a coroutine"
            ) from None

    def _start_reading(self) -> None:
        # On the loop thread, at the first request: add_reader is not thread-safe, and
        # open_image usually runs in a worker thread.
        loop = self._loop or self._running_loop()
        self._loop = loop
        if self._efd >= 0:
            loop.add_reader(self._efd, self._on_event)
        self._reading = True

    def _on_event(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        with self._lock:
            h = self._h
            if h is None:
                return
            reqs = self._reap(h)
        self._deliver(reqs)

    def _reap(self, h: Any) -> list[_Req]:
        """Collect finished requests from librbd. Caller holds the lock."""
        out: list[_Req] = []
        if h is None or self._pending == 0:
            return out
        comps = self._comps
        rbd = self._rbd
        poll, get_arg, get_ret, release = (
            rbd.rbd_poll_io_events, rbd.rbd_aio_get_arg, rbd.rbd_aio_get_return_value,
            self._release,
        )
        from_handle = self._from_handle
        while True:
            n = poll(h, comps, _POLL_BATCH)
            if n <= 0:
                break
            for i in range(n):
                c = comps[i]
                req = from_handle(get_arg(c))
                req.ret = get_ret(c)
                release(c)
                out.append(req)
            self._pending -= n
            if n < _POLL_BATCH:
                break
        return out

    def _deliver(self, reqs: Iterable[_Req]) -> None:
        """Run callbacks (loop thread)."""
        inflight = self._inflight
        for req in reqs:
            inflight.discard(req)
            # Drop the buffer now (ends a bytearray's export) and the handle (breaks the
            # req <-> handle cycle so the request is freed at once, not by the cyclic GC).
            req.keep = None
            req.handle = None
            try:
                req.cb(req.ret)
            except Exception as e:  # one bad callback must not lose the others
                loop = self._loop
                if loop is not None:
                    loop.call_exception_handler(
                        {"message": "exception in an rbd completion callback",
                         "exception": e}
                    )

    def _post(self, reqs: list[_Req]) -> None:
        """Have the loop run these callbacks (any thread)."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is left to tell
            loop.call_soon_threadsafe(self._deliver, reqs)

    def _start(self, cb: Callback, keep: Any, call: Callable[..., int], *args: Any) -> None:
        """Submit ``call(image, *args, completion)``; ``cb`` runs exactly once."""
        if not self._reading:
            self._start_reading()
        req = _Req(cb, keep)
        req.handle = handle = self._new_handle(req)
        pc = self._new("rbd_completion_t *")
        rc = self._create_completion(handle, self._null, pc)
        if rc < 0:
            req.ret = rc
            self._post([req])
            return
        c = pc[0]
        with self._lock:
            h = self._h
            if h is None or self._closing:
                rc = -errno.EBADF
            else:
                rc = call(h, *args, c)
                if rc >= 0:
                    self._pending += 1
                    self._inflight.add(req)
        if rc < 0:
            # librbd refused the request, so it will never complete it.
            self._release(c)
            req.ret = rc
            self._post([req])

    def aio_read(self, offset: int, buf: Any, cb: Callback) -> None:
        """Read ``len(buf)`` bytes at ``offset`` into the writable buffer ``buf``; ``cb(n)``
        with the number of bytes read (short at the end of the image) or ``-errno``."""
        if offset < 0:
            raise ValueError("negative offset")
        cbuf = self._from_buffer(buf, require_writable=True)
        self._start(cb, (cbuf, buf), self._rbd.rbd_aio_read, offset, len(cbuf), cbuf)

    def aio_write(self, offset: int, data: Any, cb: Callback) -> None:
        """Write the bytes-like ``data`` at ``offset``; ``cb(0)`` or ``cb(-errno)``.
        ``data`` must not change until ``cb`` ran."""
        if offset < 0:
            raise ValueError("negative offset")
        cbuf = self._from_buffer(data)
        self._start(cb, (cbuf, data), self._rbd.rbd_aio_write, offset, len(cbuf), cbuf)

    def aio_discard(self, offset: int, length: int, cb: Callback) -> None:
        """Discard (unmap). With librbd's defaults (``rbd_skip_partial_discard``) only whole
        objects are guaranteed to read back as zeros; use ``aio_write_zeroes`` for zeros."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        self._start(cb, None, self._rbd.rbd_aio_discard, offset, length)

    def aio_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        """Make the range read back as zeros (``rbd_aio_write_zeroes``, Ceph >= 16; on older
        librbd, a write of a zero-filled buffer)."""
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if not self.write_zeroes_native:
            self.aio_write(offset, bytes(length), cb)
            return
        self._start(cb, None, _write_zeroes(self._rbd), offset, length)

    def aio_flush(self, cb: Callback) -> None:
        self._start(cb, None, self._rbd.rbd_aio_flush)

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
