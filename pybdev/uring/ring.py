"""The io_uring ring: setup, SQE preparation, submission, completion reaping, registration.

Design notes (the why; the API is documented in ``pybdev/uring/__init__.py``):

* The kernel rings are mapped with Python's ``mmap`` and accessed through memoryviews:
  ``struct.pack_into`` writes one whole SQE per call, ``struct.iter_unpack`` turns a run
  of CQEs into ``(user_data, res, flags)`` tuples, and ring indexes are read and written
  through a ``memoryview.cast("I")``, which CPython implements as one aligned 32-bit
  load/store (a ``memcpy`` of a constant 4 bytes), so the kernel never sees a torn index.
  cffi is used only for the syscalls and for buffer addresses.

* Memory ordering. There is no SQ polling thread (``IORING_SETUP_SQPOLL`` is refused), so
  the kernel reads the SQ tail and SQEs only inside our own ``io_uring_enter`` call, in
  this thread: the syscall orders everything and the SQ side is correct on any
  architecture. The CQ side is shared with other CPUs (io-wq workers and interrupt-time
  completions post CQEs concurrently). The protocol needs an acquire load of the CQ tail
  before reading CQEs and a release store of the CQ head after reading them. On x86-64
  (TSO) every plain load has acquire and every plain store has release semantics, and the
  Python interpreter performs these accesses in program order, so plain accesses suffice.
  On weakly ordered CPUs (arm64, ppc64, riscv) they do not: ``available()`` reports the
  binding unavailable there until barriers are added.

* A ring belongs to one thread at a time. Nothing here takes locks; the only
  thread-safe operation is ``Waker.wake()``.
"""

from __future__ import annotations

import array
import contextlib
import errno
import mmap
import os
import struct
import time
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

from pybdev.uring import abi
from pybdev.uring._native import Native, load

_M32: Final = 0xFFFFFFFF
_M64: Final = 0xFFFFFFFFFFFFFFFF

#: A completion: (user_data, res, flags). ``res`` is the operation's result or ``-errno``.
Completion: TypeAlias = tuple[int, int, int]

#: User data the Waker uses unless told otherwise; callers choose theirs below it.
WAKER_USER_DATA: Final = _M64

_UNSUPPORTED_SETUP: Final = (
    abi.IORING_SETUP_SQPOLL
    | abi.IORING_SETUP_NO_MMAP
    | abi.IORING_SETUP_REGISTERED_FD_ONLY
    | abi.IORING_SETUP_NO_SQARRAY
)
_NEEDS_ENTER: Final = abi.IORING_SQ_CQ_OVERFLOW | abi.IORING_SQ_TASKRUN

# Hot-path SQE layouts. Fields a prep never sets are struct pad bytes ("x"), which
# pack_into zero-fills without taking arguments: each argument costs ~8 ns, so these
# shorter formats make a prep ~70 ns cheaper than packing all fifteen fields. "q" (signed)
# for the offset lets -1 ("current file position") through without masking.
#   NOP:      opcode, flags | user_data @32
_pack_nop = struct.Struct("<BB30xQ24x").pack_into
#   READ/WRITE: opcode, flags, ioprio, fd, off, addr, len | user_data @32
_pack_rw = struct.Struct("<BBHiqQI4xQ24x").pack_into
#   READ/WRITE_FIXED: as above plus buf_index @40
_pack_rw_fixed = struct.Struct("<BBHiqQI4xQH22x").pack_into
#   URING_CMD: opcode, flags, ioprio, fd, cmd_op @8 | user_data @32 | cmd @48
_pack_cmd16 = struct.Struct("<BBHiI20xQ8x16s").pack_into
_pack_cmd80 = struct.Struct("<BBHiI20xQ8x80s").pack_into
# Every field, with the command area as bytes (prep_sqe): the abi.SQE*_CMD_STRUCT layouts.
_pack_any16 = abi.SQE_CMD_STRUCT.pack_into
_pack_any80 = abi.SQE128_CMD_STRUCT.pack_into
_OP_NOP: Final = abi.IORING_OP_NOP
_OP_READ: Final = abi.IORING_OP_READ
_OP_WRITE: Final = abi.IORING_OP_WRITE
_OP_READV: Final = abi.IORING_OP_READV
_OP_WRITEV: Final = abi.IORING_OP_WRITEV
_OP_READ_FIXED: Final = abi.IORING_OP_READ_FIXED
_OP_WRITE_FIXED: Final = abi.IORING_OP_WRITE_FIXED
_OP_FSYNC: Final = abi.IORING_OP_FSYNC
_OP_URING_CMD: Final = abi.IORING_OP_URING_CMD
_SYS_ENTER: Final = abi.SYS_io_uring_enter
_GETEVENTS: Final = abi.IORING_ENTER_GETEVENTS
_GETEVENTS_ARG_SIZE: Final = 24  # sizeof(struct io_uring_getevents_arg)


class UringUnavailableError(OSError):
    """io_uring cannot be used in this process; the message says why."""


def _native() -> Native:
    # Deferred import: _probe imports this module.
    from pybdev.uring._probe import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise UringUnavailableError(reason)
    return load()


def _oserror(err: int, what: str) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}")


class Buffer:
    """Page-aligned, zero-filled memory at a fixed address (an anonymous ``mmap``).

    Use it for I/O buffers handed to the kernel by address (``prep_read`` and friends,
    registered buffers, O_DIRECT). ``view`` is a writable memoryview of the whole buffer;
    ``addr`` its address. The memory lives until ``close()``; never close a buffer the
    kernel may still be using.
    """

    __slots__ = ("_cdata", "_mm", "addr", "size", "view")

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError(f"buffer size must be positive, not {size}")
        ffi = load().ffi
        self.size: int = size
        self._mm: mmap.mmap = mmap.mmap(-1, size)
        self.view: memoryview = memoryview(self._mm)
        self._cdata: Any = ffi.from_buffer(self._mm)
        self.addr: int = int(ffi.cast("uintptr_t", self._cdata))

    def __len__(self) -> int:
        return self.size

    def close(self) -> None:
        if self._mm.closed:
            return
        load().ffi.release(self._cdata)
        self.view.release()
        self._mm.close()

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Anything with the buffer protocol, or a Buffer.
BufferLike: TypeAlias = "Buffer | bytes | bytearray | memoryview | mmap.mmap | array.array[Any]"


def _from_buffer(ffi: Any, buf: BufferLike, writable: bool) -> Any:
    obj = buf.view if isinstance(buf, Buffer) else buf
    return ffi.from_buffer(obj, require_writable=writable)


def address_of(buf: BufferLike, *, writable: bool = True) -> int:
    """The address of ``buf``'s memory, for ``prep_read``/``prep_write`` and friends.

    The address stays valid only while ``buf`` is alive and not resized (a bytearray that
    grows moves); keep a reference until the operation completes. ``Buffer.addr`` is the
    cheaper and safer choice for buffers that are reused.
    """
    ffi = load().ffi
    return int(ffi.cast("uintptr_t", _from_buffer(ffi, buf, writable)))


class Iovecs:
    """A C ``struct iovec`` array for ``prep_readv``/``prep_writev``.

    Holds references to the buffers (they cannot be resized meanwhile) until ``close()``
    or garbage collection. ``addr`` and ``count`` go into the SQE.
    """

    __slots__ = ("_array", "_refs", "addr", "count")

    def __init__(self, buffers: Sequence[BufferLike], *, writable: bool = True) -> None:
        ffi = load().ffi
        self._refs: list[Any] = [_from_buffer(ffi, b, writable) for b in buffers]
        self._array: Any = ffi.new("struct iovec[]", max(1, len(self._refs)))
        for i, ref in enumerate(self._refs):
            self._array[i].iov_base = ref
            self._array[i].iov_len = len(ref)
        self.count: int = len(self._refs)
        self.addr: int = int(ffi.cast("uintptr_t", self._array))

    def close(self) -> None:
        ffi = load().ffi
        for ref in self._refs:
            ffi.release(ref)
        self._refs.clear()


class Ring:
    """One io_uring instance. See the package docstring for a tour.

    ``entries`` is the SQ size (the kernel rounds it up to a power of two). ``sqe128``
    gives 128-byte SQEs with an 80-byte URING_CMD payload (needed by /dev/ublk-control);
    ``cqe32`` 32-byte CQEs; ``cq_entries`` sets the CQ size (default: twice the SQ);
    ``flags`` adds raw ``IORING_SETUP_*`` bits (SQPOLL is refused: see the module notes).
    """

    __slots__ = (
        "_arg",
        "_arg_addr",
        "_buffer_refs",
        "_cmd_size",
        "_cq_bytes",
        "_cq_entries_mask",
        "_cq_flags_i",
        "_cq_head",
        "_cq_khead_i",
        "_cq_ktail_i",
        "_cq_mm",
        "_cq_overflow_i",
        "_cq_u32",
        "_cqe_shift",
        "_cqe_size",
        "_cqes",
        "_eventfd",
        "_ffi",
        "_iter_unpack",
        "_limit",
        "_pack_any",
        "_pack_cmd",
        "_sq_dropped_i",
        "_sq_flags_i",
        "_sq_khead_i",
        "_sq_ktail_i",
        "_sq_mask",
        "_sq_mm",
        "_sq_u32",
        "_sqe_mm",
        "_sqe_shift",
        "_sqes",
        "_syscall",
        "_tail",
        "_ts",
        "cq_entries",
        "enter_calls",
        "fd",
        "features",
        "setup_flags",
        "sq_entries",
        "sqe_size",
    )

    def __init__(
        self,
        entries: int,
        *,
        sqe128: bool = False,
        cqe32: bool = False,
        cq_entries: int | None = None,
        flags: int = 0,
    ) -> None:
        self._open(_native(), entries, sqe128, cqe32, cq_entries, flags)

    # ----------------------------------------------------------------------- setup --
    def _open(
        self,
        native: Native,
        entries: int,
        sqe128: bool,
        cqe32: bool,
        cq_entries: int | None,
        flags: int,
    ) -> None:
        self.fd = -1  # close() must work whatever fails below
        self._sq_mm = self._cq_mm = self._sqe_mm = None
        self._eventfd = -1
        if flags & _UNSUPPORTED_SETUP:
            raise ValueError(
                "SQPOLL, NO_MMAP, REGISTERED_FD_ONLY and NO_SQARRAY rings are not supported"
            )
        if entries <= 0:
            raise ValueError(f"entries must be positive, not {entries}")
        ffi, lib = native.ffi, native.lib
        self._ffi = ffi
        self._syscall = lib.syscall
        if sqe128:
            flags |= abi.IORING_SETUP_SQE128
        if cqe32:
            flags |= abi.IORING_SETUP_CQE32
        params = ffi.new("struct io_uring_params *")
        if cq_entries is not None:
            flags |= abi.IORING_SETUP_CQSIZE
            params.cq_entries = cq_entries
        # SUBMIT_ALL (5.18) keeps submitting past an SQE that fails early, so one bad SQE
        # cannot strand the ones behind it; older kernels reject the flag with EINVAL.
        fd = -1
        for extra in (abi.IORING_SETUP_SUBMIT_ALL, 0):
            params.flags = flags | extra
            fd = lib.syscall(abi.SYS_io_uring_setup, entries, _addr(ffi, params), 0, 0, 0, 0)
            if fd >= 0 or ffi.errno != errno.EINVAL or not extra:
                break
        if fd < 0:
            raise _oserror(ffi.errno, "io_uring_setup")
        self.fd = fd
        self.setup_flags: int = params.flags
        self.features: int = params.features
        self.sq_entries: int = params.sq_entries
        self.cq_entries: int = params.cq_entries
        self.sqe_size = abi.SQE128_SIZE if flags & abi.IORING_SETUP_SQE128 else abi.SQE_SIZE
        self._sqe_shift = 7 if self.sqe_size == abi.SQE128_SIZE else 6
        self._cqe_size = abi.CQE32_SIZE if flags & abi.IORING_SETUP_CQE32 else abi.CQE_SIZE
        self._cqe_shift = 5 if self._cqe_size == abi.CQE32_SIZE else 4
        self._cmd_size = self.sqe_size - abi.SQE_CMD_OFFSET
        big = self.sqe_size == abi.SQE128_SIZE
        self._pack_cmd = _pack_cmd80 if big else _pack_cmd16
        self._pack_any = _pack_any80 if big else _pack_any16
        cqe_struct = abi.CQE32_STRUCT if self._cqe_size == abi.CQE32_SIZE else abi.CQE_STRUCT
        self._iter_unpack = cqe_struct.iter_unpack

        sq, cq = params.sq_off, params.cq_off
        sq_len = sq.array + self.sq_entries * 4
        cq_len = cq.cqes + self.cq_entries * self._cqe_size
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        mflags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        try:
            if self.features & abi.IORING_FEAT_SINGLE_MMAP:
                self._sq_mm = mmap.mmap(
                    fd, max(sq_len, cq_len), flags=mflags, prot=prot,
                    offset=abi.IORING_OFF_SQ_RING,
                )
                self._cq_mm = self._sq_mm
            else:
                self._sq_mm = mmap.mmap(
                    fd, sq_len, flags=mflags, prot=prot, offset=abi.IORING_OFF_SQ_RING
                )
                self._cq_mm = mmap.mmap(
                    fd, cq_len, flags=mflags, prot=prot, offset=abi.IORING_OFF_CQ_RING
                )
            self._sqe_mm = mmap.mmap(
                fd, self.sq_entries * self.sqe_size, flags=mflags, prot=prot,
                offset=abi.IORING_OFF_SQES,
            )
        except BaseException:
            self.close()
            raise
        self._sq_u32 = memoryview(self._sq_mm).cast("I")
        self._cq_u32 = memoryview(self._cq_mm).cast("I")
        self._sqes = memoryview(self._sqe_mm)
        self._cqes = memoryview(self._cq_mm)[cq.cqes : cq_len]
        self._cq_bytes = cq_len - cq.cqes
        self._sq_khead_i = sq.head // 4
        self._sq_ktail_i = sq.tail // 4
        self._sq_flags_i = sq.flags // 4
        self._sq_dropped_i = sq.dropped // 4
        self._sq_mask = self._sq_u32[sq.ring_mask // 4]
        self._cq_khead_i = cq.head // 4
        self._cq_ktail_i = cq.tail // 4
        self._cq_flags_i = cq.flags // 4
        self._cq_overflow_i = cq.overflow // 4
        self._cq_entries_mask = self._cq_u32[cq.ring_mask // 4]
        # The SQ index array indirection is never used: slot i always holds SQE i.
        ident = array.array("I", range(self.sq_entries))
        memoryview(self._sq_mm)[sq.array : sq.array + len(ident) * 4] = ident.tobytes()
        # Local, unwrapped SQ tail; _limit is the first tail value with no free slot.
        self._tail = self._sq_u32[self._sq_ktail_i]
        self._limit = self._tail + self.sq_entries
        self._cq_head = self._cq_u32[self._cq_khead_i]
        self._buffer_refs: list[Any] = []
        self.enter_calls = 0
        # Preallocated EXT_ARG block for timed waits: a wait must not allocate.
        self._ts = ffi.new("struct __kernel_timespec *")
        self._arg = ffi.new("struct io_uring_getevents_arg *")
        self._arg.ts = _addr(ffi, self._ts)
        self._arg_addr = _addr(ffi, self._arg)

    def close(self) -> None:
        """Unmap the rings and close the ring fd (and the eventfd from ``open_eventfd``).

        In-flight operations are cancelled by the kernel; buffers they point to must stay
        valid until then, so close rings before freeing their buffers.
        """
        for name in ("_sq_u32", "_cq_u32", "_sqes", "_cqes"):
            view = getattr(self, name, None)
            if view is not None:
                view.release()
                setattr(self, name, None)
        for name in ("_sqe_mm", "_cq_mm", "_sq_mm"):
            mm = getattr(self, name, None)
            if mm is not None:
                mm.close()
                setattr(self, name, None)
        if getattr(self, "_eventfd", -1) >= 0:
            os.close(self._eventfd)
            self._eventfd = -1
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1
        self._buffer_refs = []

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def __enter__(self) -> Ring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Last resort against fd leaks; owners are expected to call close(). At
        # interpreter exit module globals may already be gone: nothing to report then.
        if getattr(self, "fd", -1) >= 0:
            with contextlib.suppress(Exception):
                self.close()

    def __repr__(self) -> str:
        return (
            f"<Ring fd={self.fd} sq={getattr(self, 'sq_entries', 0)} "
            f"cq={getattr(self, 'cq_entries', 0)} sqe={getattr(self, 'sqe_size', 0)}B>"
        )

    # --------------------------------------------------------------- SQE preparation --
    # Every prep_* writes one SQE into the next free slot; nothing reaches the kernel until
    # submit()/submit_and_wait()/submit_and_reap(). If the SQ is full, the prepared SQEs
    # are submitted first (one io_uring_enter) to make room.

    def _make_room(self) -> int:
        self.submit()
        self._after_submit()
        if self._tail >= self._limit:
            raise BlockingIOError(errno.EAGAIN, "io_uring SQ is full and the kernel took none")
        return self._tail

    def prep_nop(self, user_data: int, sqe_flags: int = 0) -> None:
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        _pack_nop(self._sqes, (t & self._sq_mask) << self._sqe_shift,
                  _OP_NOP, sqe_flags, user_data)
        self._tail = t + 1

    def prep_read(self, fd: int, addr: int, length: int, offset: int, user_data: int,
                  sqe_flags: int = 0) -> None:
        """Read ``length`` bytes at ``offset`` into memory at ``addr`` (IORING_OP_READ).

        With ``sqe_flags=IOSQE_FIXED_FILE`` ``fd`` is an index into the registered files.
        ``offset=-1`` means the file position. res = bytes read or -errno.
        """
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        _pack_rw(self._sqes, (t & self._sq_mask) << self._sqe_shift,
                 _OP_READ, sqe_flags, 0, fd, offset, addr, length, user_data)
        self._tail = t + 1

    def prep_write(self, fd: int, addr: int, length: int, offset: int, user_data: int,
                   sqe_flags: int = 0) -> None:
        """Write ``length`` bytes from ``addr`` at ``offset`` (IORING_OP_WRITE)."""
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        _pack_rw(self._sqes, (t & self._sq_mask) << self._sqe_shift,
                 _OP_WRITE, sqe_flags, 0, fd, offset, addr, length, user_data)
        self._tail = t + 1

    def prep_read_fixed(self, fd: int, addr: int, length: int, offset: int, buf_index: int,
                        user_data: int, sqe_flags: int = 0) -> None:
        """READ_FIXED: ``addr``..``addr+length`` must lie inside registered buffer
        ``buf_index`` (see ``register_buffers``)."""
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        _pack_rw_fixed(self._sqes, (t & self._sq_mask) << self._sqe_shift,
                       _OP_READ_FIXED, sqe_flags, 0, fd, offset, addr, length, user_data,
                       buf_index)
        self._tail = t + 1

    def prep_write_fixed(self, fd: int, addr: int, length: int, offset: int, buf_index: int,
                         user_data: int, sqe_flags: int = 0) -> None:
        """WRITE_FIXED from registered buffer ``buf_index``."""
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        _pack_rw_fixed(self._sqes, (t & self._sq_mask) << self._sqe_shift,
                       _OP_WRITE_FIXED, sqe_flags, 0, fd, offset, addr, length, user_data,
                       buf_index)
        self._tail = t + 1

    def prep_readv(self, fd: int, iovecs: Iovecs, offset: int, user_data: int,
                   sqe_flags: int = 0) -> None:
        """READV into the buffers of ``iovecs`` (keep it alive until completion)."""
        self.prep_sqe(_OP_READV, fd, off=offset, addr=iovecs.addr, length=iovecs.count,
                      user_data=user_data, sqe_flags=sqe_flags)

    def prep_writev(self, fd: int, iovecs: Iovecs, offset: int, user_data: int,
                    sqe_flags: int = 0) -> None:
        """WRITEV from the buffers of ``iovecs`` (keep it alive until completion)."""
        self.prep_sqe(_OP_WRITEV, fd, off=offset, addr=iovecs.addr, length=iovecs.count,
                      user_data=user_data, sqe_flags=sqe_flags)

    def prep_fsync(self, fd: int, user_data: int, *, datasync: bool = False,
                   sqe_flags: int = 0) -> None:
        """FSYNC (or fdatasync with ``datasync=True``) of the whole file."""
        self.prep_sqe(_OP_FSYNC, fd, op_flags=abi.IORING_FSYNC_DATASYNC if datasync else 0,
                      user_data=user_data, sqe_flags=sqe_flags)

    def prep_poll_add(self, fd: int, events: int, user_data: int, *, multishot: bool = False,
                      sqe_flags: int = 0) -> None:
        """POLL_ADD for ``select.POLL*`` ``events``; res = the ready events mask."""
        self.prep_sqe(abi.IORING_OP_POLL_ADD, fd, op_flags=events,
                      length=abi.IORING_POLL_ADD_MULTI if multishot else 0,
                      user_data=user_data, sqe_flags=sqe_flags)

    def prep_cancel(self, target_user_data: int, user_data: int, *, flags: int = 0) -> None:
        """ASYNC_CANCEL of the request(s) submitted with ``target_user_data``.

        ``flags`` takes ``IORING_ASYNC_CANCEL_*`` (e.g. ALL). res = 0, -ENOENT (not found)
        or -EALREADY (already running); the cancelled request completes with -ECANCELED.
        """
        self.prep_sqe(abi.IORING_OP_ASYNC_CANCEL, -1, addr=target_user_data,
                      op_flags=flags, user_data=user_data)

    def prep_uring_cmd(self, fd: int, cmd_op: int, cmd: bytes, user_data: int,
                       sqe_flags: int = 0) -> None:
        """IORING_OP_URING_CMD: ``cmd_op`` with payload ``cmd`` (zero-padded).

        ``cmd`` is at most 16 bytes on a 64-byte-SQE ring and 80 bytes with ``sqe128``;
        it lands at ``sqe->cmd`` (byte 48). This is the ublk fast path: build the 16-byte
        ``ublksrv_io_cmd`` (or 32-byte ``ublksrv_ctrl_cmd``) with a precompiled
        ``struct.Struct`` and pass it here. ``addr``/``len``/``buf_index`` stay 0; use
        ``prep_sqe`` for commands that need them.
        """
        if len(cmd) > self._cmd_size:
            raise ValueError(
                f"uring_cmd payload of {len(cmd)} bytes does not fit a {self.sqe_size}-byte "
                f"SQE ({self._cmd_size} bytes; 128-byte SQEs need sqe128=True)"
            )
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        self._pack_cmd(self._sqes, (t & self._sq_mask) << self._sqe_shift,
                       _OP_URING_CMD, sqe_flags, 0, fd, cmd_op, user_data, cmd)
        self._tail = t + 1

    def prep_raw(self, sqe: bytes) -> None:
        """Copy a prebuilt SQE (``sqe_size`` bytes, or 64 on a 128-byte ring) verbatim."""
        n = len(sqe)
        if n != self.sqe_size and n != abi.SQE_SIZE:
            raise ValueError(f"an SQE is {self.sqe_size} bytes here, not {n}")
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        off = (t & self._sq_mask) << self._sqe_shift
        self._sqes[off : off + n] = sqe
        self._tail = t + 1

    def prep_sqe(
        self,
        opcode: int,
        fd: int = -1,
        *,
        off: int = 0,
        addr: int = 0,
        length: int = 0,
        op_flags: int = 0,
        user_data: int = 0,
        sqe_flags: int = 0,
        ioprio: int = 0,
        buf_index: int = 0,
        personality: int = 0,
        file_index: int = 0,
        cmd: bytes = b"",
    ) -> None:
        """Any SQE, field by field (slower; for ops without a dedicated prep_*).

        ``off`` doubles as ``cmd_op`` (low 32 bits) for URING_CMD; ``addr3`` and the
        command payload share ``cmd`` (up to 16 bytes, or 80 with ``sqe128``).
        """
        if len(cmd) > self._cmd_size:
            raise ValueError(f"cmd of {len(cmd)} bytes exceeds {self._cmd_size}")
        t = self._tail
        if t >= self._limit:
            t = self._make_room()
        pos = (t & self._sq_mask) << self._sqe_shift
        self._pack_any(self._sqes, pos, opcode, sqe_flags, ioprio, fd, off & _M32,
                       (off & _M64) >> 32, addr & _M64, length, op_flags, user_data,
                       buf_index, personality, file_index, cmd)
        self._tail = t + 1

    # ------------------------------------------------------------------- submission --
    @property
    def sq_pending(self) -> int:
        """SQEs prepared but not yet taken by the kernel."""
        return (self._tail - self._sq_u32[self._sq_khead_i]) & _M32

    @property
    def sq_space(self) -> int:
        """Free SQ slots before a prep_* would have to submit."""
        return self._limit - self._tail

    def _enter(self, to_submit: int, min_complete: int, flags: int,
               timeout: float | None) -> int:
        """io_uring_enter with the slow-path handling: timeouts, EINTR, errors."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            argp = argsz = 0
            if deadline is not None:
                remaining = max(0.0, deadline - time.monotonic())
                sec = int(remaining)
                self._ts.tv_sec = sec
                self._ts.tv_nsec = int((remaining - sec) * 1e9)
                flags |= abi.IORING_ENTER_EXT_ARG
                argp, argsz = self._arg_addr, _GETEVENTS_ARG_SIZE
            self.enter_calls += 1
            # cffi releases the GIL around the call, so a blocking wait stalls nobody else.
            ret = self._syscall(_SYS_ENTER, self.fd, to_submit, min_complete, flags, argp, argsz)
            if ret >= 0:
                return ret
            err = self._ffi.errno
            if err == errno.ETIME:
                return 0
            if err == errno.EINTR:
                # Python-level retry: on the main thread, pending signal handlers run
                # between iterations, so Ctrl-C still raises KeyboardInterrupt.
                to_submit = (self._tail - self._sq_u32[self._sq_khead_i]) & _M32
                continue
            raise _oserror(err, "io_uring_enter")

    def _publish(self) -> int:
        tail = self._tail
        n = (tail - self._sq_u32[self._sq_khead_i]) & _M32
        if n:
            # x86-64 TSO keeps the SQE stores above ordered before this store; and without
            # SQPOLL the kernel reads it only inside our io_uring_enter anyway.
            self._sq_u32[self._sq_ktail_i] = tail & _M32
        return n

    def _after_submit(self) -> None:
        # The kernel head (wrapped u32) lags our unwrapped tail by what it has not taken.
        tail = self._tail
        self._limit = tail - ((tail - self._sq_u32[self._sq_khead_i]) & _M32) + self.sq_entries

    def submit(self) -> int:
        """Submit every prepared SQE with one io_uring_enter; returns how many it took."""
        n = self._publish()
        if not n:
            return 0
        ret = self._enter(n, 0, 0, None)
        self._after_submit()
        return ret

    def submit_and_wait(self, wait_nr: int = 1, timeout: float | None = None) -> int:
        """Submit what is prepared and wait until ``wait_nr`` CQEs are ready (or
        ``timeout`` seconds pass; needs Linux 5.11). One syscall; returns the number
        submitted. Completions are then read with ``reap()``."""
        n = self._publish()
        ret = self._enter(n, wait_nr, _GETEVENTS, timeout)
        self._after_submit()
        return ret

    def submit_and_reap(self, wait_nr: int = 1, timeout: float | None = None
                        ) -> list[Completion]:
        """Submit, wait for ``wait_nr`` completions (skipping the wait when enough are
        already there), and return all ready ones: the body of a queue poller loop.

        At most one io_uring_enter. ``wait_nr=0`` submits without waiting.
        """
        n = self._publish()
        if wait_nr and ((self._cq_u32[self._cq_ktail_i] - self._cq_head) & _M32) < wait_nr:
            if timeout is not None or self._syscall(
                _SYS_ENTER, self.fd, n, wait_nr, _GETEVENTS, 0, 0
            ) < 0:
                # Timed wait, or the fast call failed: the slow path sorts out EINTR/ETIME.
                self._enter(n, wait_nr, _GETEVENTS, timeout)
            self.enter_calls += 1
            self._after_submit()
        elif n:
            if self._syscall(_SYS_ENTER, self.fd, n, 0, 0, 0, 0) < 0:
                self._enter(n, 0, 0, None)
            self.enter_calls += 1
            self._after_submit()
        return self.reap()

    def get_events(self) -> None:
        """Enter the kernel only to flush overflowed CQEs and run pending task work."""
        self._enter(0, 0, _GETEVENTS, None)

    # --------------------------------------------------------------------- completion --
    @property
    def cq_ready(self) -> int:
        """CQEs waiting in the CQ ring."""
        return (self._cq_u32[self._cq_ktail_i] - self._cq_head) & _M32

    @property
    def cq_overflow(self) -> int:
        """CQEs the kernel had to drop (stays 0 with IORING_FEAT_NODROP, 5.5+)."""
        return self._cq_u32[self._cq_overflow_i]

    @property
    def sq_flags(self) -> int:
        """The SQ ring's flags word (``IORING_SQ_CQ_OVERFLOW``, ``IORING_SQ_TASKRUN``)."""
        return self._sq_u32[self._sq_flags_i]

    @property
    def sq_dropped(self) -> int:
        """SQEs the kernel rejected as invalid (counter in the SQ ring)."""
        return self._sq_u32[self._sq_dropped_i]

    def reap(self) -> list[Completion]:
        """All ready completions as ``(user_data, res, flags)``, oldest first.

        Never blocks. Marks them consumed. If CQEs overflowed the ring (the kernel then
        parks them internally and raises IORING_SQ_CQ_OVERFLOW), they are flushed in and
        returned too, so callers need no overflow handling of their own.
        """
        head = self._cq_head
        tail = self._cq_u32[self._cq_ktail_i]
        if tail == head:
            if self._sq_u32[self._sq_flags_i] & _NEEDS_ENTER:
                return self._flush_and_reap()
            return []
        shift = self._cqe_shift
        start = (head & self._cq_entries_mask) << shift
        end = start + (((tail - head) & _M32) << shift)
        cqes = self._cqes
        if end <= self._cq_bytes:
            out = list(self._iter_unpack(cqes[start:end]))
        else:  # the run wraps around the end of the ring
            out = list(self._iter_unpack(cqes[start:]))
            out += self._iter_unpack(cqes[: end - self._cq_bytes])
        # Stored only after the CQEs were copied out: TSO keeps those loads before it.
        self._cq_u32[self._cq_khead_i] = tail
        self._cq_head = tail
        if self._sq_u32[self._sq_flags_i] & _NEEDS_ENTER:
            out += self._flush_and_reap()
        return out

    def _flush_and_reap(self) -> list[Completion]:
        # CQEs that did not fit were parked by the kernel (IORING_SQ_CQ_OVERFLOW), or task
        # work is pending (IORING_SQ_TASKRUN): one GETEVENTS enter moves them into the ring.
        self._enter(0, 0, _GETEVENTS, None)
        if self._cq_u32[self._cq_ktail_i] == self._cq_head:
            return []
        return self.reap()

    # ------------------------------------------------------------------- registration --
    def _register(self, opcode: int, arg: int, nr: int, what: str) -> int:
        while True:
            ret = self._syscall(abi.SYS_io_uring_register, self.fd, opcode, arg, nr, 0, 0)
            if ret >= 0:
                return ret
            err = self._ffi.errno
            if err != errno.EINTR:
                raise _oserror(err, what)

    def register_buffers(self, buffers: Sequence[BufferLike]) -> None:
        """Register writable buffers for READ_FIXED/WRITE_FIXED (index = position).

        The ring keeps references (and buffer exports, so bytearrays cannot be resized)
        until ``unregister_buffers()`` or ``close()``.
        """
        iov = Iovecs(buffers)
        self._register(abi.IORING_REGISTER_BUFFERS, iov.addr, iov.count, "register buffers")
        self._buffer_refs = [iov]

    def unregister_buffers(self) -> None:
        self._register(abi.IORING_UNREGISTER_BUFFERS, 0, 0, "unregister buffers")
        for iov in self._buffer_refs:
            iov.close()
        self._buffer_refs = []

    def register_files(self, fds: Sequence[int]) -> None:
        """Register fds as fixed files 0..n-1 (-1 leaves a slot empty for update_files)."""
        arr = self._ffi.new("int32_t[]", list(fds))
        self._register(abi.IORING_REGISTER_FILES, _addr(self._ffi, arr), len(fds),
                       "register files")

    def update_files(self, offset: int, fds: Sequence[int]) -> int:
        """Replace fixed-file slots from ``offset`` on (-1 clears a slot)."""
        ffi = self._ffi
        arr = ffi.new("int32_t[]", list(fds))
        upd = ffi.new("struct io_uring_files_update *")
        upd.offset = offset
        upd.fds = _addr(ffi, arr)
        return self._register(abi.IORING_REGISTER_FILES_UPDATE, _addr(ffi, upd), len(fds),
                              "update files")

    def unregister_files(self) -> None:
        self._register(abi.IORING_UNREGISTER_FILES, 0, 0, "unregister files")

    def register_eventfd(self, fd: int, *, async_only: bool = False) -> None:
        """Have the kernel signal eventfd ``fd`` when CQEs are posted.

        ``async_only`` signals only for completions that did not finish inline.
        """
        arr = self._ffi.new("int32_t *", fd)
        opcode = abi.IORING_REGISTER_EVENTFD_ASYNC if async_only else abi.IORING_REGISTER_EVENTFD
        self._register(opcode, _addr(self._ffi, arr), 1, "register eventfd")

    def unregister_eventfd(self) -> None:
        self._register(abi.IORING_UNREGISTER_EVENTFD, 0, 0, "unregister eventfd")

    def open_eventfd(self) -> int:
        """Create a non-blocking eventfd, register it, and return it (owned by the ring).

        For asyncio: ``loop.add_reader(fd, cb)`` where ``cb`` first calls
        ``drain_eventfd(fd)`` and then ``ring.reap()`` (in that order, so a CQE posted
        between the two re-arms the reader instead of being missed).
        """
        if self._eventfd >= 0:
            return self._eventfd
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self.register_eventfd(efd)
        except BaseException:
            os.close(efd)
            raise
        self._eventfd = efd
        return efd

    def supported_opcodes(self) -> frozenset[int]:
        """Opcodes this kernel supports (IORING_REGISTER_PROBE, 5.6+)."""
        ffi = self._ffi
        nops = 256
        probe = ffi.new("struct io_uring_probe *", {"ops": nops})
        self._register(abi.IORING_REGISTER_PROBE, _addr(ffi, probe), nops, "probe")
        return frozenset(
            probe.ops[i].op
            for i in range(probe.ops_len)
            if probe.ops[i].flags & abi.IO_URING_OP_SUPPORTED
        )


def _addr(ffi: Any, cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


def drain_eventfd(fd: int) -> int:
    """Read and reset a non-blocking eventfd; 0 if it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


class Waker:
    """Wakes the thread that owns ``ring`` from any other thread.

    The owner thread calls ``arm()`` once (it queues an 8-byte READ of a private
    blocking eventfd with ``user_data``), other threads call ``wake()``; the owner's
    ``submit_and_reap()`` then returns a completion with ``user_data``, on which it calls
    ``arm()`` again and looks at whatever work the other threads queued for it. Wakes
    that happen before the owner reaps coalesce into one completion.
    """

    __slots__ = ("_buf", "_buf_addr", "_ring", "fd", "user_data")

    def __init__(self, ring: Ring, user_data: int = WAKER_USER_DATA) -> None:
        ffi = load().ffi
        self._ring = ring
        self.user_data = user_data
        # Blocking on purpose: io_uring completes reads of an O_NONBLOCK file with
        # -EAGAIN instead of waiting for it to become readable.
        self.fd = os.eventfd(0, os.EFD_CLOEXEC)
        self._buf: Any = ffi.new("uint64_t *")
        self._buf_addr = _addr(ffi, self._buf)

    def arm(self) -> None:
        self._ring.prep_read(self.fd, self._buf_addr, 8, 0, self.user_data)

    def wake(self) -> None:
        os.eventfd_write(self.fd, 1)

    def close(self) -> None:
        """Close the eventfd; close the ring first if a READ may still be pending."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

