"""Network NBD connections served on a thread of their own (pybdev.nbd.conn_thread).

A connection to a malloc or null bdev is served on its own thread, which has the loop
serve FLUSH, TRIM and BLOCK_STATUS for it; the connection goes back to the event loop for
good at a DISC, a write larger than the receive buffer, or once the bdev has QoS. The
target logs, per connection (``-L nbd``), how many requests its thread served: the tests
assert that count exactly, so a request served twice, or served by the wrong side of the
hand-over, fails them. Data is checked through both sides.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pybdev.nbd import conn_thread
from pybdev.proto import nbd
from tests.conftest import Target, wait_until
from tests.nbd.rawclient import RawClient, wait_closed

from .conftest import need, unix_uri
from .test_fast_paths import LOOPS, _fio
from .test_limits import REQUEST, REQUEST_MAGIC, handshake

SERVED = re.compile(r"(\d+) requests served on the connection's thread")


def _target(start_target: Callable[..., Target], sockdir: Path, loop: str,
            monkeypatch: pytest.MonkeyPatch) -> tuple[Target, Path]:
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the [fast] extra)")
        monkeypatch.delenv("PYBDEV_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("PYBDEV_EVENT_LOOP", "asyncio")
    t = start_target("-L", "nbd")
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 8192, "block_size": 512})
    sock = sockdir / "nbd.sock"
    t.rpc("nbd_start_disk", {"bdev_name": "M", "nbd_device": unix_uri("M", sock)})
    return t, sock


def _served(t: Target, connections: int = 1) -> list[int]:
    """The per-connection counts logged so far, once ``connections`` were logged."""
    wait_until(lambda: len(SERVED.findall(t.log())) >= connections,
               what="the connection's thread to end")
    return [int(n) for n in SERVED.findall(t.log())]


@pytest.mark.parametrize("loop", LOOPS)
def test_flush_trim_and_block_status_keep_their_order_on_the_thread(
        loop: str, start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, sock = _target(start_target, sockdir, loop, monkeypatch)
    c = RawClient(str(sock), "M")
    a, b, d = b"\xaa" * 4096, b"\xbb" * 4096, b"\xdd" * 4096
    c.write(0, a)
    assert c.read(0, 4096) == a
    # One batch: the loop serves the FLUSH while the thread waits; the READ after it
    # must see both writes.
    cookies = [c.send(nbd.NBD_CMD_WRITE, 4096, 4096, payload=b),
               c.send(nbd.NBD_CMD_FLUSH),
               c.send(nbd.NBD_CMD_WRITE, 8192, 4096, payload=d),
               c.send(nbd.NBD_CMD_READ, 0, 12288)]
    results = [c.wait(k) for k in cookies]
    assert [r["error"] for r in results] == [0, 0, 0, 0]
    assert bytes(results[3]["data"]) == a + b + d
    assert c.call(nbd.NBD_CMD_TRIM, 0, 4096)["error"] == 0
    assert c.read(0, 8192) == bytes(4096) + b
    assert c.call(nbd.NBD_CMD_BLOCK_STATUS, 0, 8192)["error"] == 0
    # An invalid request is answered on the thread, which goes on serving.
    assert c.call(nbd.NBD_CMD_READ, 4 << 20, 4096)["error"] == nbd.NBD_EINVAL
    assert c.read(8192, 4096) == d
    c.disconnect()  # DISC: back to the loop, which closes
    assert _served(t) == [11]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_write_larger_than_the_buffer_goes_to_the_loop(
        loop: str, start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, sock = _target(start_target, sockdir, loop, monkeypatch)
    c = RawClient(str(sock), "M")
    c.write(0, b"\x11" * 512)
    big = bytes(range(256)) * 4096  # 1 MiB: received straight into malloc by the loop
    c.write(512, big)
    assert c.read(0, 512 + len(big)) == b"\x11" * 512 + big
    c.disconnect()
    assert _served(t) == [1]


def test_qos_turned_on_sends_the_next_requests_to_the_loop(
        start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, sock = _target(start_target, sockdir, "asyncio", monkeypatch)
    c = RawClient(str(sock), "M")
    c.write(0, b"\x01" * 4096)
    t.rpc("bdev_set_qos_limit", {"name": "M", "rw_ios_per_sec": 100000})
    c.write(4096, b"\x02" * 4096)  # QoS state lives on the loop: served there
    assert c.read(0, 8192) == b"\x01" * 4096 + b"\x02" * 4096
    # Counted once each, whichever thread served them.
    assert t.rpc("bdev_get_iostat", {"name": "M"})["bdevs"][0]["num_write_ops"] == 2
    c.disconnect()
    assert _served(t) == [1]


@need("fio")
@pytest.mark.parametrize("loop", LOOPS)
def test_fio_data_verified_on_threads_with_two_clients(
        loop: str, start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, sock = _target(start_target, sockdir, loop, monkeypatch)
    uri = unix_uri("M", sock)
    _fio(uri, "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=2M", "--numjobs=2",
         "--offset_increment=2M")
    _fio(uri, "--rw=randrw", "--bs=4k", "--iodepth=1", "--size=1M")
    _fio(uri, "--rw=write", "--bs=128k", "--iodepth=8", "--size=4M")
    # fio also opens connections that only read the size (0 requests served).
    counts = _served(t, 4)
    assert sum(counts) >= 2 * 1024 and sum(n > 0 for n in counts) >= 4, counts


def test_threads_off_by_the_environment(start_target: Callable[..., Target], sockdir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBDEV_NBD_CONNECTION_THREADS", "0")
    t, sock = _target(start_target, sockdir, "asyncio", monkeypatch)
    c = RawClient(str(sock), "M")
    c.write(0, b"\x33" * 4096)
    assert c.read(0, 4096) == b"\x33" * 4096
    c.disconnect()
    wait_until(lambda: "NBD client unix gone" in t.log(), what="the connection to close")
    assert not SERVED.search(t.log())


def test_stop_and_hot_remove_reach_a_thread_waiting_for_requests(
        start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    t, sock = _target(start_target, sockdir, "asyncio", monkeypatch)
    c = RawClient(str(sock), "M")
    c.write(0, b"\x44" * 4096)  # its thread now waits in recv
    t.rpc("nbd_stop_disk", {"nbd_device": unix_uri("M", sock)})
    assert wait_closed(c.sock) == b""
    assert _served(t) == [1]
    t.rpc("nbd_start_disk", {"bdev_name": "M", "nbd_device": unix_uri("M", sock)})
    c = RawClient(str(sock), "M")
    assert c.read(0, 4096) == b"\x44" * 4096
    t.rpc("bdev_malloc_delete", {"name": "M"})
    assert wait_closed(c.sock) == b""
    assert _served(t, 2) == [1, 1]
    assert t.rpc("nbd_get_disks") == []


def test_a_client_that_never_reads_its_replies_is_cut_at_stop(
        start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread blocks in sendmsg; the drain gives up (5 s) and the abort wakes it."""
    t, sock = _target(start_target, sockdir, "asyncio", monkeypatch)
    s = handshake(sock, "M")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(b"".join(REQUEST.pack(REQUEST_MAGIC, 0, 0, i, 0, 1 << 20)
                       for i in range(256)))
    time.sleep(0.5)
    begin = time.monotonic()
    t.rpc("nbd_stop_disk", {"nbd_device": unix_uri("M", sock)}, timeout=60)
    assert time.monotonic() - begin < 30  # bounded by the drain timeout, not by the client
    wait_closed(s, timeout=30)
    assert t.rpc("bdev_get_bdevs", {"name": "M"})[0]["name"] == "M"  # the target lives on


class _ShortSends:
    """A socket that takes at most ``step`` bytes per sendmsg (what a full one does)."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.got = bytearray()
        self.calls = 0

    def sendmsg(self, bufs: list[bytes | memoryview]) -> int:
        self.calls += 1
        assert len(bufs) <= conn_thread.IOV_MAX
        data = b"".join(bytes(b) for b in bufs)[:self.step]
        self.got += data
        return len(data)


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 30])
def test_send_all_sends_every_byte_in_order(step: int) -> None:
    bufs: list[bytes | memoryview] = [bytes([i % 251]) * (i % 5 + 1) for i in range(3000)]
    bufs[10] = memoryview(b"view" * 100)
    want = b"".join(bytes(b) for b in bufs)
    sock = _ShortSends(step)
    conn_thread._send_all(sock, list(bufs))  # type: ignore[arg-type]
    assert bytes(sock.got) == want
    if step == 1 << 30:
        assert sock.calls == 3  # 3000 buffers, IOV_MAX a call
