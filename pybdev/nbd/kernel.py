"""The kernel NBD export: a bdev as ``/dev/nbdN`` through the kernel's ``nbd`` driver.

SPDK's ``lib/nbd/nbd.c`` sequence: the kernel gets one end of a socketpair with
``NBD_SET_SOCK``, the size, block size, timeout and transmission flags, and a thread
blocks in ``NBD_DO_IT`` for as long as the device lives.  The other end is served on the
event loop by :class:`KernelConnection`: the network export's transmission phase
(:mod:`pybdev.nbd.transmission`), entered at once since the ioctls replace the handshake.

Beyond SPDK, ``num_connections`` > 1 hands the kernel several socketpairs (one
``NBD_SET_SOCK`` each, from the same thread, as the driver requires) and advertises
``CAN_MULTI_CONN``: the driver then makes one hardware queue per socket, each with its
own receive worker (docs/decisions/nbd-fast-paths.md).

Stop: ``NBD_DISCONNECT`` (in a thread: it writes ``NBD_CMD_DISC`` into the socket and can
block while the socket is full), the server answers what is in flight and closes its
end, which is what makes ``NBD_DO_IT`` return; then ``NBD_CLEAR_QUE``/``NBD_CLEAR_SOCK``
and close.  A bdev hot-remove takes the same path, with the bdev already failing I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import Bdev
from pybdev.errors import OperationError
from pybdev.export.base import refuse_interleaved_md
from pybdev.nbd.errors import IllegalDevice
from pybdev.nbd.export import NbdExport
from pybdev.nbd.transmission import DEFAULT_MAX_BUFFERED, PayloadBudget, Transmission
from pybdev.proto import nbd as proto

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

log = logging.getLogger("pybdev.nbd")

# <linux/nbd.h>: _IO(0xab, n)
NBD_SET_SOCK = 0xAB00
NBD_SET_BLKSIZE = 0xAB01
NBD_DO_IT = 0xAB03
NBD_CLEAR_SOCK = 0xAB04
NBD_CLEAR_QUE = 0xAB05
NBD_SET_SIZE_BLOCKS = 0xAB07
NBD_DISCONNECT = 0xAB08
NBD_SET_TIMEOUT = 0xAB09
NBD_SET_FLAGS = 0xAB0A

PR_SET_IO_FLUSHER = 57

# Paths, module-level so host unit tests can point them at a fake tree.
DEV_DIR = "/dev"
SYS_BLOCK = "/sys/block"
SYS_MODULE = "/sys/module/nbd"

DEVICE_RE = re.compile(r"/dev/nbd(0|[1-9][0-9]*)")
NBD_TIMEOUT = 60  # seconds, as SPDK; the kernel fails a request unanswered for longer
BUSY_POLL = 0.02  # NBD_SET_SOCK EBUSY retry interval and ...
BUSY_WAIT = 1.0  # ... total, as SPDK (NBD_BUSY_POLLING_INTERVAL_US, *_BUSY_WAITING_MS)
READY_TIMEOUT = 10.0  # NBD_DO_IT running -> device sized; generous under emulation
DRAIN_TIMEOUT = 5.0  # NBD_CMD_DISC -> in-flight answered, before the socket is cut
DO_IT_TIMEOUT = 10.0  # socket closed -> NBD_DO_IT returned (SPDK waits 10 s too)
MAX_CONNECTIONS = 16  # sockets per device; each costs a connection's buffer (docs/guide.md)
# The kernel caps a request at max_hw_sectors (65536 sectors = 32 MiB on 6.12); leave room.
MAX_PAYLOAD = 64 * 1024 * 1024


class NbdError(OperationError):
    """An error answered with SPDK's exact message (``nbd device not found``)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message, message=message)


# ============================================================================================
# Pure helpers (host unit-tested)
# ============================================================================================


def parse_device(path: str) -> int:
    """The index N of ``/dev/nbdN``; anything else is SPDK's -ENODEV "illegal nbd device"."""
    m = DEVICE_RE.fullmatch(path)
    if m is None:
        raise IllegalDevice(path, "expected /dev/nbd<number>")
    return int(m.group(1))


def device_path(index: int) -> str:
    return f"{DEV_DIR}/nbd{index}"


def kernel_flags(bdev: Bdev, num_connections: int = 1) -> int:
    """``NBD_SET_FLAGS`` for a bdev: what it supports and the 6.12 driver acts on.

    FLUSH and TRIM as SPDK.  Beyond SPDK, the 6.12 driver also honours FUA (only together
    with FLUSH: it advertises a write cache only then), WRITE_ZEROES (``REQ_OP_WRITE_ZEROES``,
    with ``NO_HOLE`` for ``REQ_NOUNMAP``) and READ_ONLY (``set_disk_ro``).  MULTI_CONN is
    required for several sockets (``NBD_DO_IT`` fails with EINVAL without it) and true of
    every connection here: they share one descriptor, so a flush on one covers writes
    completed on any.  The driver ignores the rest (CACHE, DF), so they are not advertised.
    """
    flags = proto.NBD_FLAG_HAS_FLAGS
    if num_connections > 1:
        flags |= proto.NBD_FLAG_CAN_MULTI_CONN
    if not bdev.supports("write"):
        return flags | proto.NBD_FLAG_READ_ONLY
    if bdev.supports("flush"):
        flags |= proto.NBD_FLAG_SEND_FLUSH | proto.NBD_FLAG_SEND_FUA
    if bdev.supports("unmap"):
        flags |= proto.NBD_FLAG_SEND_TRIM
    if bdev.supports("write_zeroes"):
        flags |= proto.NBD_FLAG_SEND_WRITE_ZEROES
    return flags


def module_loaded() -> bool:
    return os.path.isdir(SYS_MODULE)


def check_available(path: str, index: int) -> None:
    """SPDK's ``check_available_nbd_disk``: EBUSY when anyone has connected the device."""
    try:
        with open(f"{SYS_BLOCK}/nbd{index}/pid"):
            pass
    except FileNotFoundError:
        return  # possibly available
    except OSError as e:
        why = f"cannot check {SYS_BLOCK}/nbd{index}/pid: {e.strerror}"
        raise IllegalDevice(path, why) from None
    raise OperationError(errno.EBUSY, f"{path} is connected ({SYS_BLOCK}/nbd{index}/pid exists)")


def missing_device_error(path: str) -> OperationError:
    """``/dev/nbdN`` is absent: say whether the module is missing or N is too large."""
    if not module_loaded():
        return OperationError(errno.ENOENT,
                              f"nbd kernel module not loaded ({path} does not exist; modprobe nbd)")
    return OperationError(errno.ENOENT, f"{path} does not exist (see nbd's nbds_max parameter)")


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


# ============================================================================================
# PR_SET_IO_FLUSHER while kernel devices are served
# ============================================================================================

_flusher_users = 0


def _prctl_io_flusher(on: bool) -> None:
    # The flag keeps the kernel from recursing into this process's own block device to
    # reclaim memory it needs to answer (a deadlock under pressure).  It applies to the
    # calling thread: the event loop's, which serves every request.  Needs
    # CAP_SYS_RESOURCE; without it serving still works, only without that guarantee.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_IO_FLUSHER, int(on), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            log.debug("prctl(PR_SET_IO_FLUSHER, %d) failed: %s", on, os.strerror(err))
    except (OSError, AttributeError) as e:
        log.debug("prctl unavailable: %s", e)


def io_flusher_acquire() -> None:
    global _flusher_users
    _flusher_users += 1
    if _flusher_users == 1:
        _prctl_io_flusher(True)


def io_flusher_release() -> None:
    global _flusher_users
    if _flusher_users <= 0:
        return
    _flusher_users -= 1
    if _flusher_users == 0:
        _prctl_io_flusher(False)


def _in_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run ``fn`` in a daemon thread; its result or exception lands in a future.

    Not the default executor: a call stuck in the kernel must neither occupy an executor
    worker nor hold up interpreter exit (the executor joins its threads at shutdown).
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def run() -> None:
        try:
            result: tuple[bool, Any] = (True, fn())
        except BaseException as e:  # handed to the loop, whatever it is
            result = (False, e)
        with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, *result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return fut


# ============================================================================================
# The export
# ============================================================================================


class KernelExport(NbdExport):
    """A bdev exported as ``/dev/nbdN``."""

    kind = "kernel"

    def __init__(self, subsystem: NbdSubsystem, bdev_name: str, nbd_device: str | None,
                 num_connections: int = 1) -> None:
        super().__init__(subsystem, bdev_name, nbd_device)
        self.num_connections = num_connections
        self.index = -1
        self.fd = -1
        self.conns: list[KernelConnection] = []
        self._do_it: asyncio.Future[Any] | None = None
        self._disc: asyncio.Future[Any] | None = None
        self._flusher = False

    # -- NbdExport ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.nbd_device:
            index = parse_device(self.nbd_device)
            check_available(self.nbd_device, index)
            if not os.path.exists(device_path(index)):
                raise missing_device_error(self.nbd_device)
            self.open_bdev()
            try:
                await self._start_on(index)
            except BaseException:
                self.close_bdev()
                raise
            return
        self.open_bdev()
        try:
            await self._auto_start()
        except BaseException:
            self.close_bdev()
            raise

    async def _auto_start(self) -> None:
        """SPDK's ``find_available_nbd_disk``: the first free device; on EBUSY the next."""
        index = 0
        while True:
            path = device_path(index)
            if not os.path.exists(path):
                detail = "" if module_loaded() or index else ": nbd kernel module not loaded"
                raise NbdError(errno.ENODEV, "nbd device not found" + detail)
            name = f"/dev/nbd{index}"
            if self.subsystem.reserve(name):
                try:
                    check_available(name, index)
                    self.nbd_device = name
                    await self._start_on(index)
                    return
                except OperationError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    log.debug("%s busy (%s); trying the next device", name, e)
                finally:
                    # Released before the subsystem records the export, with no await in
                    # between, so nobody can take the name in the gap.
                    self.subsystem.release(name)
            index += 1

    async def _start_on(self, index: int) -> None:
        assert self.desc is not None
        bdev = self.desc.bdev
        refuse_interleaved_md(bdev, "the kernel's NBD")
        path = device_path(index)
        self.index = index
        self.nbd_device = f"/dev/nbd{index}"
        pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                 for _ in range(self.num_connections)]
        try:
            try:
                self.fd = await _in_thread(lambda: os.open(path, os.O_RDWR | os.O_CLOEXEC),
                                           f"nbd-open-{index}")
            except FileNotFoundError:
                raise missing_device_error(self.nbd_device) from None
            except OSError as e:
                raise OperationError(e.errno or errno.EIO,
                                     f"cannot open {path}: {e.strerror}") from None
            for _, kernel_end in pairs:
                await self._set_sock(kernel_end)
                kernel_end.close()  # the kernel holds its own reference now
            flags = kernel_flags(bdev, self.num_connections)
            for req, arg, what in ((NBD_SET_BLKSIZE, bdev.block_size, "block size"),
                                   (NBD_SET_SIZE_BLOCKS, bdev.num_blocks, "size"),
                                   (NBD_SET_TIMEOUT, NBD_TIMEOUT, "timeout"),
                                   (NBD_SET_FLAGS, flags, "flags")):
                try:
                    fcntl.ioctl(self.fd, req, arg)
                except OSError as e:
                    raise OperationError(e.errno or errno.EIO,
                                         f"{path}: cannot set {what} {arg}: {e.strerror}") from None
            # Serve before NBD_DO_IT: the kernel reads the partition table right away.
            loop = asyncio.get_running_loop()
            network = self.subsystem.network
            for server, _ in pairs:
                server.setblocking(False)
                _, conn = await loop.connect_accepted_socket(
                    lambda: KernelConnection(self, bdev, flags, network.budget, network.poll_us),
                    sock=server)
                self.conns.append(conn)
            self._flusher = True
            io_flusher_acquire()
            fd = self.fd
            self._do_it = _in_thread(lambda: fcntl.ioctl(fd, NBD_DO_IT), f"nbd-do-it-{index}")
            await self._wait_ready(index)
        except BaseException:
            for _, kernel_end in pairs:
                kernel_end.close()
            for server, _ in pairs[len(self.conns):]:
                server.close()  # the others close with their connection
            # The bdev stays open: auto-pick may go on with the next device.
            await self._release_device()
            self.conns = []
            self._do_it = None
            raise
        self._do_it.add_done_callback(self._do_it_returned)
        log.info("%s: bdev %s, %d x %d bytes, flags 0x%x, %d connection(s)", self.nbd_device,
                 bdev.name, bdev.num_blocks, bdev.block_size, flags, len(self.conns))

    async def _set_sock(self, kernel_end: socket.socket) -> None:
        # EBUSY: the previous user of the device is still tearing it down.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BUSY_WAIT
        while True:
            try:
                fcntl.ioctl(self.fd, NBD_SET_SOCK, kernel_end.fileno())
                return
            except OSError as e:
                if e.errno != errno.EBUSY or loop.time() >= deadline:
                    raise OperationError(e.errno or errno.EIO,
                                         f"{self.nbd_device}: NBD_SET_SOCK: {e.strerror}") from None
            await asyncio.sleep(BUSY_POLL)

    async def _wait_ready(self, index: int) -> None:
        """Return once the kernel has sized the device: it takes I/O from then on."""
        assert self._do_it is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        size_file = f"{SYS_BLOCK}/nbd{index}/size"
        while True:
            if self._do_it.done():
                exc = self._do_it.exception()
                err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
                why = os.strerror(err) if exc is not None else "returned at once"
                raise OperationError(err, f"{self.nbd_device}: NBD_DO_IT: {why}")
            if _read_int(size_file) > 0:
                return
            if loop.time() >= deadline:
                raise OperationError(errno.ETIMEDOUT,
                                     f"{self.nbd_device} did not come up in {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.01)

    def _do_it_returned(self, fut: asyncio.Future[Any]) -> None:
        if self.stopping:
            return
        # Someone else ended the device (nbd-client -d, a timeout, a signal).
        exc = None if fut.cancelled() else fut.exception()
        log.warning("%s: NBD_DO_IT returned on its own (%s)", self.nbd_device,
                    exc or "no error")
        self.end_by_itself(False, "NBD_DO_IT returned")

    def info(self) -> dict[str, Any]:
        return self._with_connections(super().info())

    def config(self) -> dict[str, Any]:
        entry = super().config()
        self._with_connections(entry["params"])
        return entry

    def _with_connections(self, params: dict[str, Any]) -> dict[str, Any]:
        # Only when not SPDK's one socket, so SPDK's tools read the usual entry.
        if self.num_connections > 1:
            params["num_connections"] = self.num_connections
        return params

    def on_resize(self, bdev: Bdev) -> None:
        for conn in self.conns:
            conn.resized(bdev.size)
        if self.fd >= 0:
            # Takes effect while running on 6.12 (nbd_set_size updates the capacity).
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.fd, NBD_SET_SIZE_BLOCKS, bdev.num_blocks)

    # -- stop hooks (pybdev.export.base), in SPDK's order -------------------------------------
    async def stop_accepting(self, drain: bool) -> None:
        do_it = self._do_it
        if do_it is not None and not do_it.done() and self.fd >= 0:
            # In a thread: it writes NBD_CMD_DISC into the socket and can block while the
            # socket is full.
            fd = self.fd
            self._disc = _in_thread(lambda: fcntl.ioctl(fd, NBD_DISCONNECT),
                                    f"nbd-disc-{self.index}")

    async def drain(self, drain: bool) -> None:
        conns, disc, do_it = self.conns, self._disc, self._do_it
        for conn in conns:
            if not drain:
                conn.abort()
            elif disc is None:
                conn.shutdown(True)  # no NBD_CMD_DISC will come: close once answered
        if conns:
            closed = [conn.closed for conn in conns]
            _, pending = await asyncio.wait(closed, timeout=DRAIN_TIMEOUT)
            if pending:
                log.warning("%s: requests still in flight after %.0f s; cutting the socket",
                            self.nbd_device, DRAIN_TIMEOUT)
                for conn in conns:
                    conn.abort()
                await asyncio.wait(closed, timeout=1.0)
        if disc is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(asyncio.shield(disc), 1.0)
        if do_it is not None:
            # The server end is closed: NBD_DO_IT sees the connection end and returns.
            try:
                await asyncio.wait_for(asyncio.shield(do_it), DO_IT_TIMEOUT)
            except TimeoutError:
                log.error("%s: NBD_DO_IT did not return in %.0f s", self.nbd_device,
                          DO_IT_TIMEOUT)
            except OSError as e:
                log.debug("%s: NBD_DO_IT ended with %s", self.nbd_device, e)

    def abort(self) -> None:
        for conn in self.conns:
            conn.abort()

    async def release(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            for req in (NBD_CLEAR_QUE, NBD_CLEAR_SOCK):
                with contextlib.suppress(OSError):
                    fcntl.ioctl(fd, req)
            os.close(fd)
        if self._flusher:
            self._flusher = False
            io_flusher_release()

    async def _release_device(self) -> None:
        """A failed start on one device: undo it, keeping the bdev for the next one."""
        try:
            await self.stop_accepting(False)
            await self.drain(False)
        except Exception:
            log.exception("%s: error while releasing", self.nbd_device)
        await self.release()
        self._disc = None


# ============================================================================================
# The server end of the socketpair
# ============================================================================================


class KernelConnection(Transmission):
    """The server end of the device's socketpair: NBD's transmission phase, no handshake.

    The ioctls replaced the handshake, so the connection starts in transmission with
    simple replies, and gets the network export's hot path, limits and large-write
    handling (:mod:`pybdev.nbd.transmission`). The kernel never sends a request the
    validator refuses; a stream that breaks the protocol cannot be resynchronised, so the
    socket closes, which ends the device.
    """

    def __init__(self, export: KernelExport, bdev: Bdev, flags: int,
                 budget: PayloadBudget | None = None, poll_us: int = 0) -> None:
        super().__init__(budget or PayloadBudget(DEFAULT_MAX_BUFFERED), poll_us)
        self._kernel = export
        self.peer = self.peer_host = export.nbd_device
        bs = bdev.block_size
        self._kernel_validator = proto.RequestValidator(
            bdev.size, flags, min_block_size=min(bs & -bs, 4096), max_payload=MAX_PAYLOAD)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        desc = self._kernel.desc
        assert desc is not None
        self._begin(self._kernel, desc, self._kernel_validator, structured=False)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if exc is not None and not self._kernel.stopping:
            log.warning("%s: device socket lost: %s", self.peer, exc)

    def _protocol_error(self, error: str) -> None:
        log.error("%s: %s; closing the device socket", self.peer, error)
