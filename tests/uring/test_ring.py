"""The io_uring binding against real files, sockets and eventfds on this kernel."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybdev import uring
from pybdev.uring import abi

pytestmark = pytest.mark.skipif(
    not uring.available(), reason=f"io_uring unavailable: {uring.unavailable_reason()}"
)

# ublk's GET_FEATURES control command: what the ublk layer will send first.
UBLK_U_CMD_GET_FEATURES = 0x80207513
SOCKET_URING_OP_SIOCINQ = 0
SOCKET_URING_OP_GETSOCKOPT = 2


@pytest.fixture
def ring() -> Iterator[uring.Ring]:
    with uring.Ring(32) as r:
        yield r


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


def one(ring: uring.Ring, timeout: float = 5.0) -> uring.Completion:
    """Submit and return exactly one completion."""
    cqes = ring.submit_and_reap(1, timeout=timeout)
    assert len(cqes) == 1, cqes
    return cqes[0]


# --------------------------------------------------------------------------- layout --
def test_struct_layouts_match_cffi() -> None:
    from pybdev.uring._native import load

    ffi = load().ffi
    assert ffi.sizeof("struct io_uring_params") == 120
    assert ffi.sizeof("struct io_uring_sqe") == abi.SQE_STRUCT.size == 64
    assert ffi.sizeof("struct io_uring_cqe") == abi.CQE_STRUCT.size == 16
    assert ffi.sizeof("struct io_uring_getevents_arg") == 24
    # Every field of the flat cdef SQE sits where SQE_STRUCT puts it.
    expected = [0, 1, 2, 4, 8, 16, 24, 28, 32, 40, 42, 44, 48, 56]
    names = ["opcode", "flags", "ioprio", "fd", "off", "addr", "len", "op_flags",
             "user_data", "buf_index", "personality", "file_index", "addr3", "pad2"]
    assert [ffi.offsetof("struct io_uring_sqe", n) for n in names] == expected
    assert ffi.offsetof("struct io_uring_sqe", "addr3") == abi.SQE_CMD_OFFSET
    assert abi.SQE_CMD_STRUCT.size == 64 and abi.SQE128_CMD_STRUCT.size == 128


def _slot(ring: uring.Ring, index: int) -> bytes:
    off = index * ring.sqe_size
    return bytes(ring._sqes[off : off + ring.sqe_size])


def test_hot_path_preps_write_the_fields_the_kernel_reads(ring: uring.Ring) -> None:
    # The prep_* fast paths pack short formats; decode the slot with the full layout.
    ring.prep_read_fixed(7, 0x1122334455, 4096, -1, 3, 0xABCDEF, abi.IOSQE_FIXED_FILE)
    fields = abi.SQE_STRUCT.unpack(_slot(ring, 0))
    assert fields == (abi.IORING_OP_READ_FIXED, abi.IOSQE_FIXED_FILE, 0, 7,
                      2**64 - 1, 0x1122334455, 4096, 0, 0xABCDEF, 3, 0, 0, 0, 0)
    ring.prep_uring_cmd(5, 0xC0107521, b"\x01" * 16, 42, abi.IOSQE_FIXED_FILE)
    raw = _slot(ring, 1)
    fields = abi.SQE_STRUCT.unpack(raw)
    assert fields[:9] == (abi.IORING_OP_URING_CMD, abi.IOSQE_FIXED_FILE, 0, 5,
                          0xC0107521, 0, 0, 0, 42)
    assert raw[48:64] == b"\x01" * 16
    ring._tail -= 2  # discard: these SQEs point at nothing


# ------------------------------------------------------------------------- basics --
def test_nop_round_trip(ring: uring.Ring) -> None:
    ring.prep_nop(0xDEAD_BEEF_0000_0001)
    assert one(ring) == (0xDEAD_BEEF_0000_0001, 0, 0)
    assert ring.reap() == []


def test_ring_geometry() -> None:
    with uring.Ring(5) as r:
        assert r.sq_entries == 8 and r.cq_entries == 16
        assert r.sqe_size == 64
        assert r.features & abi.IORING_FEAT_NODROP
    with uring.Ring(4, cq_entries=64) as r:
        assert r.cq_entries == 64
        assert r.setup_flags & abi.IORING_SETUP_CQSIZE


def test_sqe128_ring(data_file: int) -> None:
    with uring.Ring(4, sqe128=True) as r:
        assert r.sqe_size == 128
        assert r.setup_flags & abi.IORING_SETUP_SQE128
        # Plain ops still work on a big-SQE ring (slots are 128 bytes apart).
        for i in range(10):
            r.prep_nop(i)
        assert [c[0] for c in r.submit_and_reap(10)] == list(range(10))
        # The control-command payload (32-byte ublksrv_ctrl_cmd) fits.
        r.prep_uring_cmd(data_file, UBLK_U_CMD_GET_FEATURES, bytes(32), 9)
        assert one(r) == (9, -errno.EOPNOTSUPP, 0)


def test_cqe32_ring() -> None:
    with uring.Ring(4, cqe32=True) as r:
        for i in range(6):
            r.prep_nop(i)
        assert r.submit_and_reap(6) == [(i, 0, 0) for i in range(6)]


def test_setup_rejects_sqpoll() -> None:
    with pytest.raises(ValueError, match="SQPOLL"):
        uring.Ring(4, flags=abi.IORING_SETUP_SQPOLL)


def test_setup_errors_are_oserrors() -> None:
    with pytest.raises(OSError) as info:
        uring.Ring(4, cq_entries=2)  # CQ smaller than SQ
    assert info.value.errno == errno.EINVAL


def test_close_is_idempotent() -> None:
    r = uring.Ring(4)
    fd = r.fd
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_supported_opcodes(ring: uring.Ring) -> None:
    ops = ring.supported_opcodes()
    assert {abi.IORING_OP_NOP, abi.IORING_OP_READ, abi.IORING_OP_WRITE} <= ops
    assert abi.IORING_OP_URING_CMD in ops  # 5.19+, which this binding targets


# ----------------------------------------------------------------------- file I/O --
def test_write_then_read(ring: uring.Ring, data_file: int) -> None:
    with uring.Buffer(8192) as wbuf, uring.Buffer(8192) as rbuf:
        wbuf.view[:] = os.urandom(8192)
        ring.prep_write(data_file, wbuf.addr, 8192, 4096, 1)
        assert one(ring) == (1, 8192, 0)
        ring.prep_read(data_file, rbuf.addr, 8192, 4096, 2)
        assert one(ring) == (2, 8192, 0)
        assert rbuf.view == wbuf.view
        assert os.pread(data_file, 8192, 4096) == bytes(wbuf.view)
        # Short read at EOF, then 0 past it.
        ring.prep_read(data_file, rbuf.addr, 8192, 8192, 3)
        ring.prep_read(data_file, rbuf.addr, 8192, 1 << 20, 4)
        assert sorted(ring.submit_and_reap(2)) == [(3, 4096, 0), (4, 0, 0)]


def test_read_into_bytearray_via_address_of(ring: uring.Ring, data_file: int) -> None:
    os.pwrite(data_file, b"abcdefgh", 0)
    target = bytearray(8)
    ring.prep_read(data_file, uring.address_of(target), 8, 0, 1)
    assert one(ring) == (1, 8, 0)
    assert target == b"abcdefgh"


def test_bad_fd_gives_ebadf_in_the_cqe(ring: uring.Ring) -> None:
    with uring.Buffer(16) as buf:
        ring.prep_read(987654, buf.addr, 16, 0, 1)
        assert one(ring) == (1, -errno.EBADF, 0)


def test_readv_writev(ring: uring.Ring, data_file: int) -> None:
    parts = [bytearray(os.urandom(n)) for n in (100, 4096, 7)]
    wv = uring.Iovecs(parts, writable=False)
    ring.prep_writev(data_file, wv, 0, 1)
    assert one(ring) == (1, 4203, 0)
    out = [bytearray(n) for n in (3, 4200)]
    rv = uring.Iovecs(out)
    ring.prep_readv(data_file, rv, 0, 2)
    assert one(ring) == (2, 4203, 0)
    assert b"".join(out) == b"".join(parts)
    wv.close()
    rv.close()


def test_fsync(ring: uring.Ring, data_file: int) -> None:
    os.pwrite(data_file, b"x", 0)
    ring.prep_fsync(data_file, 1)
    ring.prep_fsync(data_file, 2, datasync=True)
    assert sorted(ring.submit_and_reap(2)) == [(1, 0, 0), (2, 0, 0)]


def test_fixed_buffers_and_registered_files(ring: uring.Ring, data_file: int) -> None:
    bufs = [uring.Buffer(4096), uring.Buffer(4096)]
    ring.register_buffers(bufs)
    ring.register_files([-1, data_file])  # slot 0 left empty on purpose
    bufs[0].view[:] = b"\x5a" * 4096
    ring.prep_write_fixed(1, bufs[0].addr, 4096, 0, 0, 1, abi.IOSQE_FIXED_FILE)
    assert one(ring) == (1, 4096, 0)
    # A sub-range of registered buffer 1.
    ring.prep_read_fixed(1, bufs[1].addr + 512, 1024, 0, 1, 2, abi.IOSQE_FIXED_FILE)
    assert one(ring) == (2, 1024, 0)
    assert bytes(bufs[1].view[512:1536]) == b"\x5a" * 1024
    # Memory outside the registered buffer is refused.
    ring.prep_read_fixed(1, bufs[0].addr, 4096, 0, 1, 3, abi.IOSQE_FIXED_FILE)
    assert one(ring) == (3, -errno.EFAULT, 0)
    # An empty fixed-file slot.
    ring.prep_read(0, bufs[1].addr, 16, 0, 4, abi.IOSQE_FIXED_FILE)
    assert one(ring) == (4, -errno.EBADF, 0)
    # Fill the slot, then the same SQE works.
    assert ring.update_files(0, [data_file]) == 1
    ring.prep_read(0, bufs[1].addr, 16, 0, 5, abi.IOSQE_FIXED_FILE)
    assert one(ring) == (5, 16, 0)
    ring.unregister_files()
    ring.unregister_buffers()
    ring.close()
    for b in bufs:
        b.close()


def test_registered_buffer_cannot_be_resized(ring: uring.Ring) -> None:
    buf = bytearray(4096)
    ring.register_buffers([buf])
    with pytest.raises(BufferError):
        buf.extend(b"x")  # it would move under the kernel's feet
    ring.unregister_buffers()
    buf.extend(b"x")


# --------------------------------------------------------------- batching, overflow --
def test_batched_submit_is_one_syscall(tmp_path: Path) -> None:
    n = 200
    payload = os.urandom(512 * n)
    (tmp_path / "f").write_bytes(payload)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    with uring.Ring(256) as r, uring.Buffer(512 * n) as buf:
        for i in range(n):
            r.prep_read(fd, buf.addr + 512 * i, 512, 512 * i, i)
        assert r.sq_pending == n
        before = r.enter_calls
        assert r.submit() == n
        assert r.enter_calls == before + 1
        assert r.sq_pending == 0
        got: list[uring.Completion] = []
        while len(got) < n:
            got += r.submit_and_reap(1, timeout=5)
        assert sorted(got) == [(i, 512, 0) for i in range(n)]
        assert bytes(buf.view) == payload
    os.close(fd)


def test_full_sq_submits_to_make_room() -> None:
    with uring.Ring(8) as r:
        for i in range(20):
            r.prep_nop(i)
        assert r.enter_calls == 2  # two automatic flushes of 8
        got = r.submit_and_reap(20)
        assert [c[0] for c in got] == list(range(20))


def test_indices_wrap_many_times() -> None:
    with uring.Ring(8) as r:
        seen = 0
        for batch in range(500):
            for i in range(5):
                r.prep_nop(batch * 5 + i)
            got = r.submit_and_reap(5)
            assert [c[0] for c in got] == [batch * 5 + i for i in range(5)]
            seen += len(got)
        assert seen == 2500


def test_cq_overflow_is_flushed_by_reap() -> None:
    # 8 CQ slots, 24 completions without reaping: 16 are parked by the kernel.
    with uring.Ring(4, cq_entries=8) as r:
        for i in range(24):
            r.prep_nop(i)
            if i % 4 == 3:
                r.submit()
        assert r.cq_ready == 8
        assert r.sq_flags & abi.IORING_SQ_CQ_OVERFLOW
        got = r.reap()
        assert [c[0] for c in got] == list(range(24))  # all of them, in order
        assert not r.sq_flags & abi.IORING_SQ_CQ_OVERFLOW
        assert r.cq_overflow == 0  # nothing was lost


def test_submit_and_wait_timeout(ring: uring.Ring) -> None:
    a, b = socket.socketpair()
    with a, b, uring.Buffer(16) as buf:
        ring.prep_read(a.fileno(), buf.addr, 16, 0, 1)
        t0 = time.monotonic()
        assert ring.submit_and_reap(1, timeout=0.2) == []
        assert 0.15 < time.monotonic() - t0 < 2
        b.send(b"late")
        assert one(ring) == (1, 4, 0)


# ---------------------------------------------------------------------- URING_CMD --
def test_uring_cmd_on_regular_file_is_eopnotsupp(data_file: int) -> None:
    # A regular file has no ->uring_cmd: the kernel answers EOPNOTSUPP (95) for
    # 64-byte and 128-byte SQEs alike.
    for sqe128, payload in ((False, bytes(16)), (True, bytes(32))):
        with uring.Ring(4, sqe128=sqe128) as r:
            r.prep_uring_cmd(data_file, UBLK_U_CMD_GET_FEATURES, payload, 7)
            assert one(r) == (7, -errno.EOPNOTSUPP, 0)


def test_uring_cmd_unknown_op_on_socket_is_eopnotsupp(ring: uring.Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        ring.prep_uring_cmd(a.fileno(), 0xDEAD, b"", 1)
        assert one(ring) == (1, -errno.EOPNOTSUPP, 0)


def test_uring_cmd_payload_limit(ring: uring.Ring) -> None:
    with pytest.raises(ValueError, match="sqe128"):
        ring.prep_uring_cmd(0, UBLK_U_CMD_GET_FEATURES, bytes(32), 1)
    with uring.Ring(4, sqe128=True) as r, pytest.raises(ValueError):
        r.prep_uring_cmd(0, 1, bytes(81), 1)


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        with c, s:
            yield c, s


def test_uring_cmd_reaches_socket_handler(tcp_pair: tuple[socket.socket, socket.socket]
                                          ) -> None:
    # SIOCINQ via URING_CMD proves cmd_op lands where the kernel reads it; GETSOCKOPT
    # proves the command area does (the kernel follows the optval pointer in cmd[0:8]).
    c, s = tcp_pair
    s.sendall(b"12345")
    time.sleep(0.05)
    for sqe128 in (False, True):
        with uring.Ring(4, sqe128=sqe128) as r, uring.Buffer(8) as val:
            r.prep_uring_cmd(c.fileno(), SOCKET_URING_OP_SIOCINQ, b"", 1)
            res = one(r)
            if res[1] == -errno.EOPNOTSUPP:
                pytest.skip("kernel lacks socket uring_cmd (Linux 6.7+)")
            assert res == (1, 5, 0)
            r.prep_sqe(abi.IORING_OP_URING_CMD, c.fileno(), off=SOCKET_URING_OP_GETSOCKOPT,
                       addr=socket.SOL_SOCKET | socket.SO_RCVBUF << 32, file_index=4,
                       cmd=struct.pack("<Q", val.addr), user_data=2)
            assert one(r) == (2, 4, 0)
            value = struct.unpack("<i", val.view[:4])[0]
            assert value == c.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def test_prep_raw(ring: uring.Ring) -> None:
    raw = abi.SQE_STRUCT.pack(abi.IORING_OP_NOP, 0, 0, -1, 0, 0, 0, 0, 99, 0, 0, 0, 0, 0)
    ring.prep_raw(raw)
    assert one(ring) == (99, 0, 0)
    with pytest.raises(ValueError):
        ring.prep_raw(raw[:32])


# ------------------------------------------------------------------ sockets, polls --
def test_socket_read_waits_then_completes(ring: uring.Ring) -> None:
    a, b = socket.socketpair()
    with a, b, uring.Buffer(64) as buf:
        ring.prep_read(a.fileno(), buf.addr, 64, 0, 1)
        assert ring.submit() == 1
        assert ring.reap() == []
        b.send(b"hello")
        assert one(ring) == (1, 5, 0)
        assert bytes(buf.view[:5]) == b"hello"
        ring.prep_write(b.fileno(), buf.addr, 5, 0, 2)
        assert one(ring) == (2, 5, 0)
        assert a.recv(16) == b"hello"


def test_poll_add(ring: uring.Ring) -> None:
    a, b = socket.socketpair()
    with a, b:
        ring.prep_poll_add(a.fileno(), select.POLLIN, 1)
        assert ring.submit_and_reap(0) == []
        b.send(b"!")
        ud, res, _ = one(ring)
        assert ud == 1 and res & select.POLLIN


def test_cancel_pending_read(ring: uring.Ring) -> None:
    a, b = socket.socketpair()
    with a, b, uring.Buffer(16) as buf:
        ring.prep_read(a.fileno(), buf.addr, 16, 0, 1)
        ring.submit()
        ring.prep_cancel(1, 2)
        got: list[uring.Completion] = []
        while len(got) < 2:
            got += ring.submit_and_reap(1, timeout=5)
        assert sorted(got) == [(1, -errno.ECANCELED, 0), (2, 0, 0)]


# ------------------------------------------------------------- threads and asyncio --
def test_waker_wakes_a_blocked_poller() -> None:
    ring = uring.Ring(8)
    waker = uring.Waker(ring)
    woken = threading.Event()
    ready = threading.Event()
    stop = threading.Event()
    wakes = 0

    def poller() -> None:
        nonlocal wakes
        waker.arm()
        ready.set()
        while not stop.is_set():
            for ud, res, _ in ring.submit_and_reap(1):
                assert ud == waker.user_data and res == 8
                wakes += 1
                woken.set()
                waker.arm()

    t = threading.Thread(target=poller)
    t.start()
    assert ready.wait(5)
    time.sleep(0.05)
    # The GIL is free while the poller sleeps in io_uring_enter: this thread runs.
    spins = 0
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline:
        spins += 1
    assert spins > 1000
    assert not woken.is_set()
    waker.wake()
    assert woken.wait(5)
    stop.set()
    waker.wake()
    t.join(5)
    assert not t.is_alive()
    assert wakes >= 1
    ring.close()
    waker.close()


async def test_eventfd_wakes_asyncio_loop() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    ring = uring.Ring(8)
    efd = ring.open_eventfd()
    waiting: dict[int, asyncio.Future[int]] = {}
    wakeups = 0

    def on_completions() -> None:
        nonlocal wakeups
        wakeups += 1
        uring.drain_eventfd(efd)
        for ud, res, _ in ring.reap():
            waiting.pop(ud).set_result(res)

    loop.add_reader(efd, on_completions)
    try:
        with a, b, uring.Buffer(64) as buf:
            waiting[1] = fut = loop.create_future()
            ring.prep_read(a.fileno(), buf.addr, 64, 0, 1)
            ring.submit()
            await asyncio.sleep(0.05)
            assert not fut.done()  # nothing to read yet
            loop.call_later(0.05, b.send, b"ping")
            assert await asyncio.wait_for(fut, 5) == 4
            assert bytes(buf.view[:4]) == b"ping"
            assert wakeups >= 1
            # Several completions, one drain.
            for i in range(10, 20):
                waiting[i] = loop.create_future()
                ring.prep_nop(i)
            ring.submit()
            results = await asyncio.wait_for(
                asyncio.gather(*(waiting[i] for i in range(10, 20))), 5
            )
            assert results == [0] * 10
    finally:
        loop.remove_reader(efd)
        ring.close()
