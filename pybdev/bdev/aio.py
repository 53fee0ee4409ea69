"""aio: a bdev on a regular file or a block device (SPDK's module/bdev/aio/bdev_aio.c).

I/O never blocks the event loop: every system call on the file (pread, pwrite,
fallocate, fdatasync, and the open itself) runs in a small thread pool shared by all
aio bdevs, and the completion comes back to the loop with ``call_soon_threadsafe``.
(``pybdev.uring`` may later replace the pool; the bdev API would not change.)

Opening: ``O_RDWR`` (``O_RDONLY`` when ``readonly``) plus ``O_DIRECT``, retried without
``O_DIRECT`` when the open refuses it (tmpfs, for example). The open is non-blocking and
only regular files and block devices are served: a FIFO, a character device (``/dev/zero``)
or a directory is refused with -22 (-21 for a directory) instead of blocking a pool
thread or becoming a 0-block bdev; so is an empty file (-22). O_DIRECT needs buffers
aligned to the device's logical block: the pool reads into and writes from
anonymous ``mmap`` buffers, which are page aligned.

Block size, as SPDK decides it: the detected size is the logical sector size of a block
device (``BLKSSZGET``) and 0 for anything else, so a regular file needs ``block_size``
(-22 without). A given size smaller than the detected one, below 512 or not a power of
two is -22, and so is a file size that is not a multiple of it. One addition: a regular
file opened with O_DIRECT is probed with one aligned read of ``block_size`` bytes; if
the filesystem refuses that alignment, the file is reopened without O_DIRECT instead of
failing every request later.

``fallocate`` enables unmap (``FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE``) and
write_zeroes (``FALLOC_FL_ZERO_RANGE``, then punch hole, where the filesystem lacks the
first); both fall back to writing zeros where the file supports neither, so reads after
them always return zeros. Flush is ``fdatasync``; a FUA write uses ``RWF_DSYNC``. So a
write followed by a completed flush survives a crash of the target. Writes, unmaps and
write_zeroes on a ``readonly`` bdev complete with -EROFS (SPDK: a generic failure).
``nowait`` is accepted for block devices only (-95 otherwise), as SPDK does; requests
block in the pool's threads, never on the loop, so RWF_NOWAIT is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import mmap
import os
import stat
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pybdev.bdev.core import Bdev, BdevModule, BdevState, Callback, ReadBuffer
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U32, NameParams, Params, Str, Uuid
from pybdev.tasks import background

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

log = logging.getLogger("pybdev.bdev.aio")

POOL_THREADS = 4
BLKSSZGET = 0x1268
BLKGETSIZE64 = 0x80081272
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
ZERO_CHUNK = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_libc.fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (``os.posix_fallocate`` has none); raises OSError."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ioctl_u(fd: int, request: int, fmt: str) -> int:
    buf = fcntl.ioctl(fd, request, bytes(struct.calcsize(fmt)))
    value: int = struct.unpack(fmt, buf)[0]
    return value


def file_geometry(fd: int) -> tuple[int, int, bool]:
    """(size in bytes, detected block size or 0, is a block device), as spdk_fd_* do."""
    st = os.fstat(fd)
    if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        try:
            size = _ioctl_u(fd, BLKGETSIZE64, "Q")
        except OSError:
            size = 0
        try:
            block = _ioctl_u(fd, BLKSSZGET, "I")
        except OSError:
            block = 0
        return size, block, stat.S_ISBLK(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return st.st_size, 0, False
    return 0, 0, False


@dataclass
class OpenedFile:
    fd: int
    direct: bool
    size: int
    detected_block_size: int
    is_block_device: bool


def _open_nonblocking(filename: str, flags: int) -> int:
    """Open without blocking and keep only regular files and block devices.

    O_NONBLOCK keeps a FIFO (or a device) from holding the pool thread in ``open``
    forever; it is cleared again once ``fstat`` says the file is one we serve.
    """
    fd = os.open(filename, flags | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, "is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise OSError(errno.EINVAL, "not a regular file or a block device")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_file(filename: str, readonly: bool, block_size: int) -> OpenedFile:
    """Open as SPDK does, then make sure O_DIRECT works with ``block_size`` (pool thread)."""
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    direct = True
    try:
        fd = _open_nonblocking(filename, flags | os.O_DIRECT)
    except OSError:
        direct = False
        fd = _open_nonblocking(filename, flags)
    try:
        size, detected, is_blk = file_geometry(fd)
        probe = block_size or detected
        if direct and not is_blk and probe and size >= probe:
            buf = mmap.mmap(-1, probe)
            try:
                os.preadv(fd, [buf], 0)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                log.info("%s: O_DIRECT refuses %d-byte blocks; using buffered I/O",
                         filename, probe)
                os.close(fd)
                fd = -1
                direct = False
                fd = _open_nonblocking(filename, flags)
            finally:
                buf.close()
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return OpenedFile(fd, direct, size, detected, is_blk)


class AioBdev(Bdev):
    product_name = "AIO disk"
    module_name = "aio"
    fua_native = True  # RWF_DSYNC
    read_buffer = ReadBuffer.HELD  # every read gets a buffer of its own

    def __init__(self, name: str, filename: str, opened: OpenedFile, block_size: int,
                 uuid: str | None, *, readonly: bool, fallocate: bool, nowait: bool,
                 block_size_override: bool, pool: ThreadPoolExecutor) -> None:
        io_types = {"read", "write", "flush", "reset"}
        if fallocate:
            io_types |= {"unmap", "write_zeroes"}
        super().__init__(name, block_size, opened.size // block_size, uuid,
                         io_types=frozenset(io_types), write_cache=True)
        self.filename = filename
        self.fd = opened.fd
        self.direct = opened.direct
        self.readonly = readonly
        self.fallocate = fallocate
        self.nowait = nowait
        self.block_size_override = block_size_override
        self.pool = pool
        self.inflight = 0
        self._drained: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- running system calls in the pool ------------------------------------------------
    def _submit(self, cb: Callback, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self.inflight += 1
        complete = self._complete

        def work() -> None:
            try:
                status, result = 0, fn(*args)
            except OSError as e:
                status, result = -(e.errno or errno.EIO), None
            except Exception:
                log.exception("aio request on %s failed", self.name)
                status, result = -errno.EIO, None
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(complete, cb, status, result)

        self.pool.submit(work)

    def _complete(self, cb: Callback, status: int, result: Any) -> None:
        self.inflight -= 1
        try:
            cb(status, result)
        finally:
            if self.inflight == 0 and self._drained:
                waiters, self._drained = self._drained, []
                for waiter in waiters:
                    waiter()

    # -- the system calls (pool threads) ---------------------------------------------
    def _pread(self, offset: int, length: int) -> Any:
        if not self.direct:
            data = os.pread(self.fd, length, offset)
            if len(data) == length:
                return data
            buf: Any = bytearray(data) + bytearray(length - len(data))
            view = memoryview(buf)
            done = len(data)
        else:
            buf = mmap.mmap(-1, length)
            view = memoryview(buf)
            done = 0
        while done < length:
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(errno.EIO, "short read: the file shrank")
            done += n
        return view

    def _pwrite(self, offset: int, data: Any, fua: bool) -> None:
        length = len(data)
        if self.direct:
            buf = mmap.mmap(-1, length)
            buf[:] = data
            view = memoryview(buf)
        else:
            view = memoryview(data).cast("B")
        flags = os.RWF_DSYNC if fua else 0
        done = 0
        while done < length:
            done += os.pwritev(self.fd, [view[done:]], offset + done, flags)

    def _write_zeros(self, offset: int, length: int) -> None:
        zeros = mmap.mmap(-1, min(length, ZERO_CHUNK)) if self.direct else bytes(
            min(length, ZERO_CHUNK))
        end = offset + length
        while offset < end:
            n = min(end - offset, len(zeros))
            self._pwrite_all(offset, memoryview(zeros)[:n])
            offset += n

    def _pwrite_all(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.pwritev(self.fd, [view[done:]], offset + done)

    def _deallocate(self, offset: int, length: int, modes: tuple[int, ...]) -> None:
        for mode in modes:
            try:
                fallocate(self.fd, mode, offset, length)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        self._write_zeros(offset, length)

    # -- requests ---------------------------------------------------------------------
    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        self._submit(cb, self._pread, offset, length)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        if self.readonly:
            cb(-errno.EROFS, None)
            return
        self._submit(cb, self._pwrite, offset, data, fua)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        if self.readonly:
            cb(-errno.EROFS, None)
            return
        self._submit(cb, self._deallocate, offset, length,
                     (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,))

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        if self.readonly:
            cb(-errno.EROFS, None)
            return
        self._submit(cb, self._deallocate, offset, length,
                     (FALLOC_FL_ZERO_RANGE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        self._submit(cb, os.fdatasync, self.fd)

    def submit_reset(self, cb: Callback) -> None:
        # SPDK's aio reset completes once every outstanding request has.
        self.when_drained(lambda: cb(0, None))

    def when_drained(self, fn: Callable[[], None]) -> None:
        if self.inflight == 0:
            fn()
        else:
            self._drained.append(fn)

    # -- lifecycle and output ---------------------------------------------------------
    async def destruct(self) -> None:
        # A request still in a pool thread uses the fd: close it only when they are done.
        if self.inflight:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def drained() -> None:
                if not done.done():
                    done.set_result(None)

            self.when_drained(drained)
            await done
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def driver_specific(self) -> dict[str, Any]:
        return {"aio": {"filename": self.filename, "block_size_override": self.block_size_override,
                        "readonly": self.readonly, "fallocate": self.fallocate,
                        "nowait": self.nowait}}

    def write_config(self) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"name": self.name}
        if self.block_size_override:
            params["block_size"] = self.block_size
        params.update(filename=self.filename, readonly=self.readonly, fallocate=self.fallocate,
                      uuid=self.uuid, nowait=self.nowait)
        return [{"method": "bdev_aio_create", "params": params}]


class AioModule(BdevModule):
    name = "aio"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self._pool: ThreadPoolExecutor | None = None

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="pybdev-aio")
        return self._pool

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def create(self, *, name: str, filename: str, block_size: int = 0,
                     readonly: bool = False, fallocate: bool = False, uuid: str | None = None,
                     nowait: bool = False) -> AioBdev:
        """Open ``filename`` and register an aio bdev on it; raises OperationError.

        -errno of the open (-2 for a missing file), -95 for ``nowait`` on anything but a
        block device, -22 for the block size rules, -17 for a name or UUID clash.
        """
        try:
            opened: OpenedFile = await self._in_pool(_open_file, filename, readonly, block_size)
        except OSError as e:
            raise OperationError(e.errno or errno.EIO, f"cannot open {filename}: "
                                                       f"{e.strerror}") from None
        try:
            if nowait and not opened.is_block_device:
                raise OperationError(errno.EOPNOTSUPP,
                                     f"{filename} is not a block device; nowait needs one")
            if opened.size == 0:
                raise OperationError(errno.EINVAL, f"{filename} is empty: a bdev needs at "
                                                   "least one block")
            detected = opened.detected_block_size
            if block_size == 0:
                if detected == 0:
                    raise OperationError(errno.EINVAL, f"block size of {filename} could not "
                                                       "be detected; give block_size")
                size, override = detected, False
            else:
                if block_size < detected:
                    raise OperationError(errno.EINVAL, f"block_size {block_size} is smaller "
                                                       f"than the device's {detected}")
                size, override = block_size, True
            if size < 512 or size & (size - 1):
                raise OperationError(errno.EINVAL,
                                     f"block_size {size} must be a power of two >= 512")
            if opened.size % size:
                raise OperationError(errno.EINVAL, f"size of {filename} ({opened.size}) is "
                                                   f"not a multiple of block_size {size}")
            bdev = AioBdev(name, filename, opened, size, uuid, readonly=readonly,
                           fallocate=fallocate, nowait=nowait, block_size_override=override,
                           pool=self.pool)
            self.layer.register(bdev)
        except BaseException:
            os.close(opened.fd)
            raise
        log.info("aio bdev %s on %s (%s I/O)", name, filename,
                 "O_DIRECT" if opened.direct else "buffered")
        return bdev

    async def delete(self, name: str) -> None:
        """Unregister an aio bdev and close its file (-19 if ``name`` is not one)."""
        await self.layer.unregister_by_name(name, self.name)

    async def rescan(self, name: str) -> None:
        """Pick up a new size of the file; a size of 0 removes the bdev (hot-remove)."""
        bdev = self.layer.get(name)
        if not isinstance(bdev, AioBdev) or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"no aio bdev named {name}")
        size, _detected, _blk = await self._in_pool(file_geometry, bdev.fd)
        if bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"aio bdev {name} is being deleted")
        if size == 0:
            log.error("%s: hot-remove detected, unregistering bdev", name)
            background(self.layer.unregister(bdev), f"removing aio bdev {name}")
            return
        num_blocks = size // bdev.block_size
        if num_blocks == bdev.num_blocks:
            return
        if num_blocks < bdev.num_blocks and bdev.descriptors:
            raise OperationError(errno.EBUSY, f"bdev {name} is open; it cannot shrink")
        log.info("%s: device is resized: old block count %d, new block count %d",
                 name, bdev.num_blocks, num_blocks)
        self.layer.resize(bdev, num_blocks)

    async def fini(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None





class AioCreateParams(Params):
    name: Str = Field(description="Name of the new bdev")
    filename: Str = Field(description="Path of the file or block device")
    block_size: U32 = Field(
        0, description=(
            "Block size in bytes (0: a block device's logical sector size; a file needs one)"))
    readonly: bool = Field(False, description="Open the file read-only; writes are refused")
    fallocate: bool = Field(
        False, description="Unmap and write-zeroes with fallocate (punch hole, zero range)")
    uuid: Uuid | None = Field(None, description="UUID of the bdev; a random one when omitted")
    nowait: bool = Field(
        False, description="Accepted for block devices only, as SPDK; changes nothing here")


@RPC.method("bdev_aio_create", AioCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_aio_bdev",))
async def bdev_aio_create(module: AioModule, p: AioCreateParams) -> str:
    """Create a bdev on a file or block device; answers its name once examine is done."""
    layer = module.layer
    bdev = await module.create(**p.model_dump())
    await layer.wait_for_examine()
    return bdev.name



@RPC.method("bdev_aio_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_aio_bdev",))
async def bdev_aio_delete(module: AioModule, p: NameParams) -> bool:
    """Delete an aio bdev (and whatever is stacked on it)."""
    await module.delete(p.name)
    return True


@RPC.method("bdev_aio_rescan", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def bdev_aio_rescan(module: AioModule, p: NameParams) -> bool:
    """Re-read the size of an aio bdev's file and resize the bdev to it."""
    await module.rescan(p.name)
    return True
