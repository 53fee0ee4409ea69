"""One ublk queue: a poller thread that owns the queue's io_uring on /dev/ublkcN.

Thread model (docs/ublk.md): the kernel accepts a tag's COMMIT_AND_FETCH only from the task
that issued its FETCH, so each queue has one thread that issues both. The thread

1. pins itself to its CPU (from the target's cpumask) and sets PR_SET_IO_FLUSHER;
2. creates a ring with the cdev as fixed file 0 and posts FETCH_REQ for every tag;
3. loops on ``submit_and_reap``: every completion is a request (or ABORT); for USER_COPY
   writes the thread first preads the data from the cdev, without USER_COPY the kernel
   has already copied it into the tag's buffer;
4. offers the pass's requests to ``serve_here`` (set by the device when its bdev declares
   ``thread_safe_submit``): what it serves completes on this thread, with no hop to the
   event loop (docs/decisions/ublk-queue-serving.md); the rest go to the event loop in
   one ``call_soon_threadsafe``;
5. the event loop runs the bdev I/O and calls :meth:`UblkQueue.complete`, which queues the
   result and wakes the thread (eventfd, only when the queue of results was empty); the
   thread issues COMMIT_AND_FETCH for every queued result in its next pass, in the same
   ``io_uring_enter`` that waits for new completions.

The thread ends when every tag was aborted by the kernel (after STOP_DEV) or when told to
stop by force (a start that failed, shutdown); closing the ring cancels pending FETCHes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import mmap
import os
import threading
from collections.abc import Callable
from typing import Any, Final

from pybdev import uring
from pybdev.ublk import uapi
from pybdev.ublk.process import set_io_flusher

log = logging.getLogger("pybdev.ublk")

_TAG_MASK: Final = 0xFFFF
# A request handed to the event loop: (tag, op_flags, nr_sectors, start_sector, data).
Request = tuple[int, int, int, int, Any]
BatchHandler = Callable[["UblkQueue", list[Request]], None]
# Serves what it can of a pass's requests on the queue thread; returns the rest (or None).
ThreadServer = Callable[["UblkQueue", list[Request]], "list[Request] | None"]

_FETCH = uapi.UBLK_U_IO_FETCH_REQ
_COMMIT = uapi.UBLK_U_IO_COMMIT_AND_FETCH_REQ
_GET_DATA = uapi.UBLK_U_IO_NEED_GET_DATA
_IO_CMD = uapi.IO_CMD
_IO_DESC = uapi.IO_DESC
_OP_WRITE = uapi.UBLK_IO_OP_WRITE
_FIXED = uring.IOSQE_FIXED_FILE


class UblkQueue:
    """Queue ``q_id`` of a device whose cdev is ``cdev_fd``; I/O goes to ``handler``."""

    def __init__(self, *, dev_id: int, q_id: int, depth: int, cdev_fd: int, user_copy: bool,
                 max_io: int, cpu: int | None, loop: asyncio.AbstractEventLoop,
                 handler: BatchHandler, serve_here: ThreadServer | None = None) -> None:
        self.dev_id = dev_id
        self.q_id = q_id
        self.depth = depth
        self.cdev_fd = cdev_fd
        self.user_copy = user_copy
        self.max_io = max_io
        self.cpu = cpu
        self.loop = loop
        self.handler = handler
        self.serve_here = serve_here
        self.served_here = 0  # requests served on the queue thread (the rest: the loop)
        self.done: collections.deque[tuple[int, int]] = collections.deque()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.requests = 0
        self._force_stop = False
        self._waker: uring.Waker | None = None
        self._closed = False
        self.iod = mmap.mmap(cdev_fd, uapi.desc_area_length(depth), mmap.MAP_SHARED,
                             mmap.PROT_READ, offset=uapi.desc_area_offset(q_id))
        # Without USER_COPY the kernel copies data to/from a buffer per tag that we name in
        # every FETCH/COMMIT; anonymous memory, touched only as far as requests reach.
        self.bufs: mmap.mmap | None = None
        self._buf_base = 0
        if not user_copy:
            self.bufs = mmap.mmap(-1, depth * max_io)
            self._buf_base = uring.address_of(self.bufs)
        self.thread = threading.Thread(target=self._run, name=f"ublk{dev_id}q{q_id}",
                                       daemon=True)

    # -- called on the event loop --------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def complete(self, tag: int, result: int) -> None:
        """Hand a request's result back to the poller (event loop thread only)."""
        if self._closed:
            return
        done = self.done
        done.append((tag, result))
        # Only the empty -> non-empty transition needs a wake-up: otherwise the poller has
        # not finished draining yet and will see this entry too.
        if len(done) == 1:
            waker = self._waker
            if waker is not None:
                with contextlib.suppress(OSError):
                    waker.wake()

    def buffer(self, tag: int) -> int:
        return self._buf_base + tag * self.max_io

    def stop(self) -> None:
        """Make the poller exit now (its ring closes, cancelling pending FETCHes)."""
        self._force_stop = True
        waker = self._waker
        if waker is not None:
            with contextlib.suppress(OSError):
                waker.wake()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def close(self) -> None:
        """Release the mappings once the thread is gone (the cdev is closed by the owner)."""
        self._closed = True
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        self.iod.close()
        if self.bufs is not None:
            try:
                self.bufs.close()
            except BufferError:
                log.warning("ublk%d q%d: buffers still referenced", self.dev_id, self.q_id)

    # -- the poller thread ---------------------------------------------------------------
    def _setup_thread(self) -> None:
        if self.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.cpu})
            except OSError as e:
                log.warning("ublk%d q%d: cannot pin to CPU %d: %s", self.dev_id, self.q_id,
                            self.cpu, e.strerror)
        try:
            set_io_flusher()
        except OSError as e:
            log.debug("ublk%d q%d: %s", self.dev_id, self.q_id, e)

    def _run(self) -> None:
        try:
            self._setup_thread()
            ring = uring.Ring(self.depth + 2)
        except BaseException as e:
            self.error = e
            self.ready.set()
            return
        try:
            self._serve(ring)
        except BaseException as e:
            log.exception("ublk%d q%d poller failed", self.dev_id, self.q_id)
            self.error = e
        finally:
            self.ready.set()
            # The waker's eventfd stays open until close() on the event loop thread, so a
            # late wake() never writes to a recycled descriptor number.
            ring.close()
            log.debug("ublk%d q%d poller exits", self.dev_id, self.q_id)

    def _serve(self, ring: uring.Ring) -> None:
        q_id = self.q_id
        user_copy = self.user_copy
        ring.register_files([self.cdev_fd])
        waker = uring.Waker(ring)
        waker.arm()
        for tag in range(self.depth):
            addr = 0 if user_copy else self.buffer(tag)
            ring.prep_uring_cmd(0, _FETCH, _IO_CMD.pack(q_id, tag, 0, addr), tag, _FIXED)
        ring.submit()
        self._waker = waker
        self.ready.set()
        live = self.depth
        iod = self.iod
        cdev = self.cdev_fd
        loop = self.loop
        handler = self.handler
        done = self.done
        waker_ud = waker.user_data
        serve_here = self.serve_here
        max_io = self.max_io
        bufs_view = memoryview(self.bufs) if self.bufs is not None else memoryview(b"")
        while live > 0 and not self._force_stop:
            batch: list[Request] = []
            for user_data, res, _flags in ring.submit_and_reap(1):
                if user_data == waker_ud:
                    waker.arm()
                    continue
                tag = user_data & _TAG_MASK
                if res == uapi.UBLK_IO_RES_OK:
                    op_flags, nr_sectors, start, _addr = _IO_DESC.unpack_from(iod, tag * 24)
                    data: Any = None
                    if (op_flags & 0xFF) == _OP_WRITE:
                        length = nr_sectors << 9
                        if user_copy:
                            try:
                                data = os.pread(cdev, length, uapi.user_copy_offset(q_id, tag))
                            except OSError as e:
                                log.error("ublk%d q%d tag %d: user copy failed: %s",
                                          self.dev_id, q_id, tag, e.strerror)
                                data = b""
                            if len(data) != length:
                                done.append((tag, -errno.EIO))
                                continue
                        else:
                            # A view: the tag's buffer is not reused before its COMMIT. The
                            # event loop path copies it (an asynchronous bdev may keep it).
                            at = tag * max_io
                            data = bufs_view[at:at + length]
                    batch.append((tag, op_flags, nr_sectors, start, data))
                elif res == uapi.UBLK_IO_RES_NEED_GET_DATA:
                    # Only for a device added with NEED_GET_DATA (an earlier pybdev's,
                    # taken over by recovery): name the buffer again.
                    ring.prep_uring_cmd(0, _GET_DATA, _IO_CMD.pack(q_id, tag, 0,
                                                                   self.buffer(tag)),
                                        tag, _FIXED)
                else:
                    # ABORT (-ENODEV) after STOP_DEV, or an error: this tag is finished.
                    if res != uapi.UBLK_IO_RES_ABORT:
                        log.debug("ublk%d q%d tag %d: command failed %d", self.dev_id, q_id,
                                  tag, res)
                    live -= 1
            if batch:
                self.requests += len(batch)
                if serve_here is not None:
                    n = len(batch)
                    batch = serve_here(self, batch) or []
                    self.served_here += n - len(batch)
                if batch and not user_copy:
                    batch = [r if r[4] is None else (*r[:4], bytes(r[4])) for r in batch]
            if batch:
                try:
                    loop.call_soon_threadsafe(handler, self, batch)
                except RuntimeError:  # the loop is closed: nobody will complete these
                    return
            while done:
                tag, result = done.popleft()
                addr = 0 if user_copy else self.buffer(tag)
                ring.prep_uring_cmd(0, _COMMIT, _IO_CMD.pack(q_id, tag, result, addr),
                                    tag, _FIXED)
