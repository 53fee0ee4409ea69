"""io_uring for pybdev: a cffi ABI-mode binding of the raw syscalls (no compiler, no liburing).

Used by the ublk export (control ring with 128-byte SQEs and URING_CMD on
/dev/ublk-control; one ring per queue with FETCH/COMMIT_AND_FETCH on /dev/ublkcN) and
available to the file bdev. Why this design: ``docs/decisions/io_uring-binding.md``.

Availability
------------
Importing this package never raises, and nothing else in pybdev needs it::

    from pybdev import uring
    if not uring.available():
        print("no io_uring:", uring.unavailable_reason())

``unavailable_reason()`` explains: not Linux / not x86-64, cffi missing, ENOSYS (kernel
without io_uring or a seccomp filter), EPERM (``kernel.io_uring_disabled`` sysctl,
seccomp, LSM), a failing NOP round trip, or ``PYBDEV_URING_DISABLE`` set in the
environment. The probe runs once per process (a 2-entry ring and a NOP). Creating a
``Ring`` where io_uring is unavailable raises ``UringUnavailableError`` (an OSError).

The Ring
--------
``Ring(entries, *, sqe128=False, cqe32=False, cq_entries=None, flags=0)``

* ``entries``: SQ size (rounded up to a power of two). The CQ defaults to twice that.
* ``sqe128=True`` (IORING_SETUP_SQE128): 128-byte SQEs, 80 bytes of URING_CMD payload;
  required by /dev/ublk-control. 64-byte SQEs carry 16 bytes (enough for ublk I/O
  commands). ``cq_entries`` sets IORING_SETUP_CQSIZE. ``flags`` ORs in other
  ``IORING_SETUP_*`` bits; SQPOLL is refused (see memory ordering below).
* Attributes: ``fd``, ``sq_entries``, ``cq_entries``, ``sqe_size``, ``features``
  (``IORING_FEAT_*``), ``setup_flags``, ``enter_calls`` (io_uring_enter count, for tests).
* ``close()`` / context manager. One thread owns a ring at a time; there are no locks.

Preparing SQEs (nothing reaches the kernel until a submit; ``user_data`` is any u64 and
comes back in the completion; ``sqe_flags`` takes ``IOSQE_*``, e.g. ``IOSQE_FIXED_FILE``
to make ``fd`` an index into the registered files)::

    prep_nop(user_data, sqe_flags=0)
    prep_read(fd, addr, length, offset, user_data, sqe_flags=0)     # offset -1: file pos
    prep_write(fd, addr, length, offset, user_data, sqe_flags=0)
    prep_read_fixed(fd, addr, length, offset, buf_index, user_data, sqe_flags=0)
    prep_write_fixed(fd, addr, length, offset, buf_index, user_data, sqe_flags=0)
    prep_readv(fd, iovecs, offset, user_data, sqe_flags=0)          # iovecs: Iovecs
    prep_writev(fd, iovecs, offset, user_data, sqe_flags=0)
    prep_fsync(fd, user_data, *, datasync=False, sqe_flags=0)
    prep_poll_add(fd, events, user_data, *, multishot=False, sqe_flags=0)
    prep_cancel(target_user_data, user_data, *, flags=0)
    prep_uring_cmd(fd, cmd_op, cmd: bytes, user_data, sqe_flags=0)  # the ublk fast path
    prep_raw(sqe: bytes)                                            # a prebuilt SQE
    prep_sqe(opcode, fd=-1, *, off, addr, length, op_flags, user_data, sqe_flags,
             ioprio, buf_index, personality, file_index, cmd)      # anything else

Addresses are plain ints: use ``Buffer(size)`` (page-aligned anonymous memory with
``.addr`` and ``.view``) or ``address_of(obj)``; the memory must stay alive until the
operation completes. A prep that finds the SQ full first submits what is queued.

Submitting and completing (each is at most one ``io_uring_enter``; cffi releases the GIL
during the call, so a thread blocked in a wait stalls no other thread)::

    submit() -> int                                     # submit all prepared SQEs
    submit_and_wait(wait_nr=1, timeout=None) -> int     # ... and wait for wait_nr CQEs
    submit_and_reap(wait_nr=1, timeout=None) -> list[(user_data, res, flags)]
    reap() -> list[(user_data, res, flags)]             # never blocks
    get_events()                                        # flush overflow / task work

``res`` is the result or ``-errno`` (operation errors never raise; syscall errors raise
OSError). ``timeout`` (seconds, Linux 5.11+) bounds a wait, e.g. for ublk control
commands; on expiry the call returns normally and the reaped list is simply short.
CQ overflow needs no handling: the kernel parks excess CQEs (IORING_FEAT_NODROP) and
``reap()`` flushes and returns them too. Properties: ``sq_pending``, ``sq_space``,
``cq_ready``, ``cq_overflow`` (dropped CQEs; stays 0), ``sq_dropped``.

Registration::

    register_files(fds) / update_files(offset, fds) -> int / unregister_files()
    register_buffers(buffers) / unregister_buffers()   # index = position in the list
    register_eventfd(fd, *, async_only=False) / unregister_eventfd()
    open_eventfd() -> int    # non-blocking eventfd, registered, closed with the ring
    supported_opcodes() -> frozenset[int]

Example: a ublk queue poller thread
-----------------------------------
The thread that issued a tag's FETCH must issue its COMMIT_AND_FETCH, so the poller thread
owns the ring; bdev I/O runs elsewhere (the asyncio loop), which hands results back
through a deque and ``Waker.wake()`` (thread-safe; wakes the blocked
``submit_and_reap``)::

    import collections, struct
    from pybdev import uring

    IO_CMD = struct.Struct("<HHiQ")                # struct ublksrv_io_cmd (16 bytes)
    FETCH, COMMIT_AND_FETCH = 0xC0107520, 0xC0107521  # UBLK_U_IO_* (ioctl-encoded)

    def poller(cdev_fd, q_id, depth, start_io, done: collections.deque, stop) -> None:
        with uring.Ring(depth * 2) as ring:
            ring.register_files([cdev_fd])                 # fixed file 0: /dev/ublkcN
            waker = uring.Waker(ring)                      # others call waker.wake()
            waker.arm()
            for tag in range(depth):
                ring.prep_uring_cmd(0, FETCH, IO_CMD.pack(q_id, tag, 0, 0), tag,
                                    uring.IOSQE_FIXED_FILE)
            while not stop.is_set():
                for user_data, res, _flags in ring.submit_and_reap(1):
                    if user_data == waker.user_data:
                        waker.arm()
                    else:
                        start_io(user_data, res)           # res: UBLK_IO_RES_* for the tag
                while done:                                # filled by the I/O side
                    tag, result = done.popleft()
                    ring.prep_uring_cmd(0, COMMIT_AND_FETCH,
                                        IO_CMD.pack(q_id, tag, result, 0), tag,
                                        uring.IOSQE_FIXED_FILE)
            waker.close()

Each loop pass is one io_uring_enter that submits every queued COMMIT_AND_FETCH and
sleeps until at least one completion arrives. To stop the thread: ``stop.set()`` then
``waker.wake()`` (with ublk, STOP_DEV also completes the fetches with -ENODEV). Close the
ring before freeing buffers the kernel may still write to.

Example: asyncio
----------------
::

    ring = uring.Ring(64)
    efd = ring.open_eventfd()
    waiting: dict[int, asyncio.Future[int]] = {}

    def on_completions() -> None:
        uring.drain_eventfd(efd)          # drain first, then reap: no lost wake-up
        for user_data, res, _flags in ring.reap():
            waiting.pop(user_data).set_result(res)

    loop.add_reader(efd, on_completions)
    buf = uring.Buffer(4096)
    waiting[1] = fut = loop.create_future()
    ring.prep_read(fd, buf.addr, 4096, 0, 1)
    ring.submit()
    nread = await fut

Memory ordering
---------------
The rings are shared memory accessed from Python. Without SQPOLL the kernel reads the
SQ only inside our own io_uring_enter, so the SQ side is ordered by the syscall. The CQ
needs an acquire load of its tail and a release store of its head; on x86-64 (TSO) the
plain aligned 32-bit accesses used here have those semantics, elsewhere they do not, so
the binding declares itself unavailable on other CPUs. Details in ``ring.py``.
"""

from __future__ import annotations

from pybdev.uring._probe import DISABLE_ENV, available, unavailable_reason
from pybdev.uring.abi import (
    IORING_ASYNC_CANCEL_ALL,
    IORING_CQE_F_MORE,
    IORING_FSYNC_DATASYNC,
    IORING_OP_NOP,
    IORING_OP_READ,
    IORING_OP_URING_CMD,
    IORING_OP_WRITE,
    IORING_SETUP_CQE32,
    IORING_SETUP_CQSIZE,
    IORING_SETUP_SQE128,
    IOSQE_ASYNC,
    IOSQE_CQE_SKIP_SUCCESS,
    IOSQE_FIXED_FILE,
    IOSQE_IO_DRAIN,
    IOSQE_IO_HARDLINK,
    IOSQE_IO_LINK,
)
from pybdev.uring.ring import (
    WAKER_USER_DATA,
    Buffer,
    BufferLike,
    Completion,
    Iovecs,
    Ring,
    UringUnavailableError,
    Waker,
    address_of,
    drain_eventfd,
)

__all__ = [
    "DISABLE_ENV",
    "IORING_ASYNC_CANCEL_ALL",
    "IORING_CQE_F_MORE",
    "IORING_FSYNC_DATASYNC",
    "IORING_OP_NOP",
    "IORING_OP_READ",
    "IORING_OP_URING_CMD",
    "IORING_OP_WRITE",
    "IORING_SETUP_CQE32",
    "IORING_SETUP_CQSIZE",
    "IORING_SETUP_SQE128",
    "IOSQE_ASYNC",
    "IOSQE_CQE_SKIP_SUCCESS",
    "IOSQE_FIXED_FILE",
    "IOSQE_IO_DRAIN",
    "IOSQE_IO_HARDLINK",
    "IOSQE_IO_LINK",
    "WAKER_USER_DATA",
    "Buffer",
    "BufferLike",
    "Completion",
    "Iovecs",
    "Ring",
    "UringUnavailableError",
    "Waker",
    "address_of",
    "available",
    "drain_eventfd",
    "unavailable_reason",
]
