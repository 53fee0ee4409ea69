"""Host-side tests of the kernel NBD export (pybdev.nbd.kernel) that need no nbd.ko.

The real device is exercised in the VM (tests/kernel/test_nbd_kernel.py); here: device
path validation, flags, availability checks against a fake /sys, the server end of the
socketpair driven byte by byte, and the RPC errors on this host (no nbd module).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import ReadBuffer
from pybdev.errors import OperationError
from pybdev.nbd import kernel
from pybdev.nbd.subsystem import IllegalDevice
from pybdev.proto import nbd as proto
from tests.conftest import Target


class FakeBdev:
    read_buffer = ReadBuffer.CALLBACK  # a FakeDesc's read data changes with later writes
    reports_holes = False

    def __init__(self, io_types: set[str], block_size: int = 512, num_blocks: int = 2048) -> None:
        self.io_types = io_types
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.name = "Fake0"

    @property
    def size(self) -> int:
        return self.block_size * self.num_blocks

    def supports(self, io_type: str) -> bool:
        if io_type == "write_zeroes":
            return "write_zeroes" in self.io_types or "write" in self.io_types
        return io_type in self.io_types


# -- device paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("path,index", [("/dev/nbd0", 0), ("/dev/nbd7", 7), ("/dev/nbd15", 15),
                                        ("/dev/nbd128", 128)])
def test_parse_device_accepts(path: str, index: int) -> None:
    assert kernel.parse_device(path) == index


@pytest.mark.parametrize("path", ["/dev/nbd", "/dev/nbdx", "/dev/nbd0p1", "/dev/nbd-1",
                                  "/dev/nbd 1", "nbd0", "/dev/sda", "/dev//nbd0", "/dev/nbd01",
                                  "/dev/nbd0/", "/tmp/nbd0", ""])
def test_parse_device_rejects(path: str) -> None:
    with pytest.raises(IllegalDevice) as info:
        kernel.parse_device(path)
    assert info.value.errno == errno.ENODEV
    assert info.value.message.startswith(f"illegal nbd device {path}")


# -- flags -------------------------------------------------------------------------------------


def test_flags_malloc_like() -> None:
    flags = kernel.kernel_flags(FakeBdev({"read", "write", "flush", "unmap", "write_zeroes"}))
    assert flags == (proto.NBD_FLAG_HAS_FLAGS | proto.NBD_FLAG_SEND_FLUSH | proto.NBD_FLAG_SEND_FUA
                     | proto.NBD_FLAG_SEND_TRIM | proto.NBD_FLAG_SEND_WRITE_ZEROES)


def test_flags_without_flush_has_no_fua() -> None:
    flags = kernel.kernel_flags(FakeBdev({"read", "write"}))
    assert flags & proto.NBD_FLAG_HAS_FLAGS
    assert not flags & (proto.NBD_FLAG_SEND_FLUSH | proto.NBD_FLAG_SEND_FUA
                        | proto.NBD_FLAG_SEND_TRIM)
    # emulated with writes by the bdev layer
    assert flags & proto.NBD_FLAG_SEND_WRITE_ZEROES


def test_flags_read_only() -> None:
    flags = kernel.kernel_flags(FakeBdev({"read"}))
    assert flags == proto.NBD_FLAG_HAS_FLAGS | proto.NBD_FLAG_READ_ONLY


def test_flags_never_advertise_what_the_kernel_ignores() -> None:
    flags = kernel.kernel_flags(FakeBdev({"read", "write", "flush", "unmap", "zcopy"}))
    assert not flags & (proto.NBD_FLAG_SEND_CACHE | proto.NBD_FLAG_SEND_DF
                        | proto.NBD_FLAG_CAN_MULTI_CONN)


def test_flags_for_several_sockets_promise_multi_conn() -> None:
    # The driver refuses NBD_DO_IT with several sockets unless the server promises it.
    bdev = FakeBdev({"read", "write", "flush"})
    assert kernel.kernel_flags(bdev, 2) == (kernel.kernel_flags(bdev)
                                            | proto.NBD_FLAG_CAN_MULTI_CONN)


def test_ioctl_numbers() -> None:
    assert (kernel.NBD_SET_SOCK, kernel.NBD_DO_IT, kernel.NBD_DISCONNECT,
            kernel.NBD_SET_FLAGS) == (0xAB00, 0xAB03, 0xAB08, 0xAB0A)


# -- availability against a fake /sys ------------------------------------------------------------


@pytest.fixture
def fake_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(kernel, "SYS_BLOCK", str(tmp_path / "block"))
    monkeypatch.setattr(kernel, "SYS_MODULE", str(tmp_path / "module" / "nbd"))
    monkeypatch.setattr(kernel, "DEV_DIR", str(tmp_path / "dev"))
    for i in range(3):
        (tmp_path / "block" / f"nbd{i}").mkdir(parents=True)
    return tmp_path


def test_available_without_pid_file(fake_sys: Path) -> None:
    kernel.check_available("/dev/nbd1", 1)


def test_busy_with_pid_file(fake_sys: Path) -> None:
    (fake_sys / "block" / "nbd1" / "pid").write_text("1234\n")
    with pytest.raises(OperationError) as info:
        kernel.check_available("/dev/nbd1", 1)
    assert info.value.errno == errno.EBUSY


def test_unreadable_pid_file_is_illegal(fake_sys: Path) -> None:
    (fake_sys / "block" / "nbd1" / "pid").mkdir()  # open() fails with EISDIR
    with pytest.raises(IllegalDevice):
        kernel.check_available("/dev/nbd1", 1)


def test_missing_device_messages(fake_sys: Path) -> None:
    err = kernel.missing_device_error("/dev/nbd0")
    assert err.errno == errno.ENOENT and "nbd kernel module not loaded" in str(err)
    (fake_sys / "module" / "nbd").mkdir(parents=True)
    err = kernel.missing_device_error("/dev/nbd99")
    assert err.errno == errno.ENOENT and "nbds_max" in str(err)


# -- the server end of the socketpair --------------------------------------------------------------


class FakeDesc:
    """A descriptor over a bytearray; completes inline or later (``defer``)."""

    def __init__(self, size: int, defer: bool = False) -> None:
        self.data = bytearray(size)
        self.defer = defer
        self.flushes = 0
        self.fail = False

    def _complete(self, cb: Any, status: int, data: Any) -> None:
        if self.defer:
            asyncio.get_running_loop().call_later(0.001, cb, status, data)
        else:
            cb(status, data)

    def read(self, offset: int, length: int, cb: Any) -> None:
        if self.fail:
            self._complete(cb, -errno.ENODEV, None)
            return
        self._complete(cb, 0, memoryview(self.data)[offset:offset + length])

    def write(self, offset: int, data: Any, cb: Any, fua: bool = False) -> None:
        if self.fail:
            self._complete(cb, -errno.ENODEV, None)
            return
        payload = bytes(data)

        def apply(status: int, _: Any) -> None:
            # Deferred writes read their payload only now: it must still be intact.
            self.data[offset:offset + len(payload)] = bytes(data)
            cb(status, None)

        self._complete(apply, 0, None)
        assert payload == bytes(data)

    def zcopy_buffer(self, offset: int, length: int) -> memoryview | None:
        return None  # no memory to lend: large writes arrive in pieces

    def flush(self, offset: int, length: int, cb: Any) -> None:
        self.flushes += 1
        self._complete(cb, 0, None)

    def unmap(self, offset: int, length: int, cb: Any, fua: bool = False) -> None:
        self.data[offset:offset + length] = bytes(length)
        self._complete(cb, 0, None)

    def write_zeroes(self, offset: int, length: int, cb: Any, fua: bool = False) -> None:
        self.unmap(offset, length, cb)


class FakeExport:
    def __init__(self, desc: FakeDesc) -> None:
        self.desc = desc
        self.nbd_device = "/dev/nbd-test"
        self.stopping = False
        self.bytes_read = self.bytes_written = 0


def request(typ: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">IHHQQI", 0x25609513, flags, typ, cookie, offset, length)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "server closed early"
        out += chunk
    return out


def reply(sock: socket.socket) -> tuple[int, int]:
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(sock, 16))
    assert magic == 0x67446698
    return err, cookie


async def _serve(defer: bool, chunk: int, client_fn: Any, num_blocks: int = 256) -> FakeDesc:
    loop = asyncio.get_running_loop()
    bdev = FakeBdev({"read", "write", "flush", "unmap", "write_zeroes"}, num_blocks=num_blocks)
    desc = FakeDesc(bdev.size, defer=defer)
    desc.bdev = bdev  # type: ignore[attr-defined]  # a Descriptor names its bdev
    server, client = socket.socketpair()
    server.setblocking(False)
    transport, conn = await loop.connect_accepted_socket(
        lambda: kernel.KernelConnection(FakeExport(desc), bdev,  # type: ignore[arg-type]
                                        kernel.kernel_flags(bdev)), sock=server)
    try:
        await asyncio.wait_for(asyncio.to_thread(client_fn, client, chunk, desc), 20)
        await asyncio.wait_for(conn.closed, 5)
    finally:
        transport.abort()
        client.close()
    return desc


def _kernel_like_client(sock: socket.socket, chunk: int, desc: FakeDesc) -> None:
    data = os.urandom(8192)
    stream = (request(proto.NBD_CMD_WRITE, 1, 4096, 8192) + data
              + request(proto.NBD_CMD_WRITE, 2, 0, 512, proto.NBD_CMD_FLAG_FUA) + b"\x5a" * 512
              + request(proto.NBD_CMD_READ, 3, 4096, 8192)
              + request(proto.NBD_CMD_FLUSH, 4)
              + request(proto.NBD_CMD_TRIM, 5, 65536, 4096)
              + request(proto.NBD_CMD_READ, 6, 0, 1 << 20)  # beyond the end: EINVAL
              + request(proto.NBD_CMD_WRITE_ZEROES, 7, 1024, 512, proto.NBD_CMD_FLAG_NO_HOLE))
    # Short writes: the server must reassemble headers and payloads.
    for i in range(0, len(stream), chunk):
        sock.sendall(stream[i:i + chunk])
    replies = {}
    for _ in range(7):
        err, cookie = reply(sock)
        replies[cookie] = err
        if cookie == 3:
            assert err == 0
            assert recv_exact(sock, 8192) == data
    assert replies == {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, 6: proto.NBD_EINVAL, 7: 0}
    sock.sendall(request(proto.NBD_CMD_DISC, 8))
    assert sock.recv(1) == b""  # the server closes after DISC


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 28, 4096, 1 << 20])
def test_connection_reassembles_short_reads(defer: bool, chunk: int) -> None:
    desc = asyncio.run(_serve(defer, chunk, _kernel_like_client))
    assert desc.flushes == 1
    assert desc.data[:512] == b"\x5a" * 512
    assert desc.data[65536:69632] == bytes(4096)  # trimmed


def _failing_client(sock: socket.socket, chunk: int, desc: FakeDesc) -> None:
    desc.fail = True  # a removed bdev: every request fails, the kernel sees EIO
    sock.sendall(request(proto.NBD_CMD_READ, 1, 0, 4096) + request(proto.NBD_CMD_WRITE, 2, 0, 512)
                 + b"x" * 512)
    assert reply(sock) == (proto.NBD_EIO, 1)
    assert reply(sock) == (proto.NBD_EIO, 2)
    sock.sendall(request(proto.NBD_CMD_DISC, 3))
    assert sock.recv(1) == b""


@pytest.mark.parametrize("defer", [False, True])
def test_large_writes_arrive_in_pieces_and_read_back(defer: bool) -> None:
    """Writes larger than the receive buffer (the kernel sends up to max_sectors) take the
    piecewise path of the shared transmission phase; reads of them come back whole."""
    blob = os.urandom(3 << 20)

    def client(sock: socket.socket, chunk: int, desc: FakeDesc) -> None:
        sock.sendall(request(proto.NBD_CMD_WRITE, 1, 4096, len(blob)) + blob
                     + request(proto.NBD_CMD_READ, 2, 4096, len(blob)))
        assert reply(sock) == (0, 1)
        assert reply(sock) == (0, 2)
        assert recv_exact(sock, len(blob)) == blob
        sock.sendall(request(proto.NBD_CMD_DISC, 3))
        assert sock.recv(1) == b""

    desc = asyncio.run(_serve(defer, 0, client, num_blocks=8192))
    assert desc.data[4096:4096 + len(blob)] == blob


def test_connection_failed_io_is_eio() -> None:
    asyncio.run(_serve(True, 0, _failing_client))


def test_disc_drains_in_flight_first() -> None:
    def client(sock: socket.socket, chunk: int, desc: FakeDesc) -> None:
        # DISC right behind deferred requests: they are still answered before the close.
        sock.sendall(b"".join(request(proto.NBD_CMD_READ, i, 0, 512) for i in range(10))
                     + request(proto.NBD_CMD_DISC, 99))
        got = set()
        for _ in range(10):
            err, cookie = reply(sock)
            assert err == 0
            recv_exact(sock, 512)
            got.add(cookie)
        assert got == set(range(10))
        assert sock.recv(1) == b""

    asyncio.run(_serve(True, 0, client))


# -- RPC on this host (no nbd module) -----------------------------------------------------------

needs_no_nbd = pytest.mark.skipif(os.path.exists("/dev/nbd0"),
                                  reason="this host has /dev/nbd0; the VM tests cover it")


@needs_no_nbd
def test_rpc_errors_without_nbd_module(target: Target) -> None:
    target.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 256, "block_size": 512})
    err = target.rpc_error("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/nbd0"})
    assert err["code"] in (-errno.ENOENT, -errno.ENODEV)
    assert "nbd kernel module not loaded" in err["message"]
    err = target.rpc_error("nbd_start_disk", {"bdev_name": "Malloc0"})
    assert err["code"] == -errno.ENODEV
    assert err["message"].startswith("nbd device not found")
    err = target.rpc_error("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "/dev/sda"})
    assert err["code"] == -errno.ENODEV
    assert err["message"].startswith("illegal nbd device /dev/sda")
    assert target.rpc("nbd_get_disks") == []
    # Nothing left open: the bdev deletes at once.
    target.rpc("bdev_malloc_delete", {"name": "Malloc0"})


@pytest.mark.parametrize(("device", "count", "code", "text"), [
    ("/dev/nbd0", 0, -32603, "num_connections"),
    ("/dev/nbd0", kernel.MAX_CONNECTIONS + 1, -32603, "num_connections"),
    (None, 1.5, -32603, "num_connections"),
    ("nbd+unix:///x?socket=/tmp/never.sock", 2, -errno.EINVAL, "for kernel exports"),
    ("nbd+unix:///x?socket=/tmp/never.sock", 1, -errno.EINVAL, "for kernel exports"),
])
def test_num_connections_is_checked_first(target: Target, device: str | None, count: int,
                                          code: int, text: str) -> None:
    target.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 256, "block_size": 512})
    params: dict[str, Any] = {"bdev_name": "Malloc0", "num_connections": count}
    if device is not None:
        params["nbd_device"] = device
    err = target.rpc_error("nbd_start_disk", params)
    assert err["code"] == code
    assert text in err["message"] + str(err.get("data", ""))
    assert target.rpc("nbd_get_disks") == []
    target.rpc("bdev_malloc_delete", {"name": "Malloc0"})


def test_num_connections_is_saved_only_when_not_one() -> None:
    class Subsystem:
        layer = None

    one = kernel.KernelExport(Subsystem(), "Malloc0", "/dev/nbd3")  # type: ignore[arg-type]
    two = kernel.KernelExport(Subsystem(), "Malloc0", "/dev/nbd4", 2)  # type: ignore[arg-type]
    assert one.config()["params"] == {"nbd_device": "/dev/nbd3", "bdev_name": "Malloc0"}
    assert one.info() == {"nbd_device": "/dev/nbd3", "bdev_name": "Malloc0"}
    assert two.config()["params"]["num_connections"] == 2
    assert two.info()["num_connections"] == 2
