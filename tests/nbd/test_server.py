"""The network NBD export against real clients (QEMU, libnbd, fio) and a raw client.

Data written by one client is read back, byte for byte, by another; protocol errors are
checked on the wire with :class:`RawClient`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pybdev.proto import nbd
from tests.conftest import Target, wait_until

from .conftest import (
    MALLOC0_SIZE,
    MALLOC1_SIZE,
    Peer,
    Served,
    nbdsh,
    need,
    run,
    unix_uri,
)
from .rawclient import RawClient, wait_closed


# -- real clients ------------------------------------------------------------------------------
@need("qemu-io", "qemu-img")
def test_qemu_io_writes_and_reads_back(served: Served) -> None:
    run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 256k", "-c", "write -P 0xa5 0 4k",
         "-c", "write -z 8M 1M", served.uri0])
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 256k", "-c", "read -P 0xa5 0 4k",
               "-c", "read -P 0 8M 1M", served.uri0]).stdout
    assert "Pattern verification failed" not in out
    info = json.loads(run(["qemu-img", "info", "--output=json", served.uri0]).stdout)
    assert info["virtual-size"] == MALLOC0_SIZE
    # The TCP export of the same bdev sees the same bytes.
    tcp = f"nbd://127.0.0.1:{served.tcp[1]}/Malloc0"
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 1M 256k", tcp]).stdout
    assert "Pattern verification failed" not in out


@need("qemu-img")
def test_qemu_img_convert_round_trip(served: Served, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(MALLOC1_SIZE))
    run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), served.uri1])
    back = tmp_path / "back.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", served.uri1, str(back)])
    assert back.read_bytes() == src.read_bytes()


@need("nbdinfo")
def test_nbdinfo_lists_every_export(served: Served) -> None:
    listing = json.loads(run(["nbdinfo", "--list", "--json", served.uri0]).stdout)
    names = sorted(e["export-name"] for e in listing["exports"])
    assert names == ["Malloc0", "Malloc1"]
    by_name = {e["export-name"]: e for e in listing["exports"]}
    assert by_name["Malloc1"]["export-size"] == MALLOC1_SIZE
    assert by_name["Malloc1"]["block_size_minimum"] == 4096
    assert by_name["Malloc0"]["block_size_minimum"] == 512
    assert by_name["Malloc0"]["can_multi_conn"] is True
    assert by_name["Malloc0"]["can_flush"] and by_name["Malloc0"]["can_trim"]
    assert by_name["Malloc0"]["can_fua"] and by_name["Malloc0"]["can_zero"]
    assert "base:allocation" in by_name["Malloc0"]["contexts"]


@need("nbdinfo")
def test_nbdinfo_map_reports_allocation(served: Served) -> None:
    extents = json.loads(run(["nbdinfo", "--map", "--json", served.uri1]).stdout)
    assert sum(e["length"] for e in extents) == MALLOC1_SIZE
    assert all(e["type"] == 0 for e in extents)  # malloc gives no hint: all data


@need("nbdsh")
def test_nbdsh_pipelined_requests(served: Served) -> None:
    out = nbdsh(served.uri1, """
import os
bufs = [os.urandom(4096) for _ in range(64)]
cookies = [h.aio_pwrite(b, 8192 * i) for i, b in enumerate(bufs)]
while h.aio_in_flight():
    h.poll(-1)
for c in cookies:
    assert h.aio_command_completed(c)
got = [nbd.Buffer(4096) for _ in range(64)]
cookies = [h.aio_pread(g, 8192 * i) for i, g in enumerate(got)]
while h.aio_in_flight():
    h.poll(-1)
assert all(g.to_bytearray() == b for g, b in zip(got, bufs))
h.flush()
h.trim(4096, 0)
assert h.pread(4096, 0) == bytes(4096)
h.zero(8192, 8192, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(8192, 8192) == bytes(8192)
h.cache(65536, 0)
print("ok", h.can_multi_conn(), h.can_df(), h.can_cache())
""")
    assert out.split() == ["ok", "True", "True", "True"]


@need("nbdcopy")
def test_nbdcopy_to_and_from_the_export(served: Served, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(MALLOC1_SIZE))
    run(["nbdcopy", "--connections=4", str(src), served.uri1])
    back = tmp_path / "back.raw"
    run(["nbdcopy", served.uri1, str(back)])
    assert back.read_bytes() == src.read_bytes()


@need("fio")
def test_fio_verify(served: Served) -> None:
    out = run(["fio", "--name=verify", "--ioengine=nbd", f"--uri={served.uri1}",
               "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=4M", "--verify=crc32c",
               "--do_verify=1", "--verify_fatal=1", "--output-format=json"]).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    assert job["error"] == 0
    assert job["read"]["io_bytes"] == 4 * 1024 * 1024  # everything written was verified


@need("nbdsh")
def test_multi_conn_disjoint_writers(served: Served) -> None:
    """Four clients write their own quarter at once; every byte is where it belongs."""
    quarter = 1024 * 1024
    errors: list[str] = []

    def writer(i: int) -> None:
        try:
            nbdsh(served.uri1, f"""
for k in range({quarter} // 65536):
    h.pwrite(bytes([{i + 1}]) * 65536, {i * quarter} + k * 65536)
h.flush()
""")
        except AssertionError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    c = RawClient(str(served.sock), "Malloc1")
    for i in range(4):
        assert c.read(i * quarter, quarter) == bytes([i + 1]) * quarter
    c.disconnect()


# -- protocol details with a raw client --------------------------------------------------------
def test_requests_answered_by_cookie(served: Served) -> None:
    c = RawClient(str(served.sock), "Malloc1")
    payloads = {i: os.urandom(4096) for i in range(32)}
    cookies = [c.send(nbd.NBD_CMD_WRITE, 4096 * i, 4096, 0, p) for i, p in payloads.items()]
    for ck in cookies:
        assert c.wait(ck)["error"] == 0
    reads = [c.send(nbd.NBD_CMD_READ, 4096 * i, 4096) for i in payloads]
    for i, ck in zip(payloads, reads, strict=True):
        assert bytes(c.wait(ck)["data"]) == payloads[i]
    c.disconnect()


@pytest.mark.parametrize("structured", [True, False])
def test_bad_requests_get_the_prescribed_errors(served: Served, structured: bool) -> None:
    c = RawClient(str(served.sock), "Malloc1", structured=structured, meta=structured)
    size = MALLOC1_SIZE

    def err(typ: int, offset: int, length: int, flags: int = 0,
            payload: bytes | None = None) -> int:
        return c.call(typ, offset, length, flags, payload)["error"]

    assert err(nbd.NBD_CMD_READ, size, 4096) == nbd.NBD_EINVAL  # beyond the end
    assert err(nbd.NBD_CMD_WRITE, size, 4096, payload=bytes(4096)) == nbd.NBD_ENOSPC
    assert err(nbd.NBD_CMD_WRITE_ZEROES, size - 4096, 8192) == nbd.NBD_ENOSPC
    assert err(nbd.NBD_CMD_READ, 100, 4096) == nbd.NBD_EINVAL  # misaligned (4 KiB blocks)
    assert err(nbd.NBD_CMD_READ, 0, 512) == nbd.NBD_EINVAL
    assert err(nbd.NBD_CMD_TRIM, 4096, 0) == nbd.NBD_EINVAL
    assert err(nbd.NBD_CMD_READ, 0, 4096, flags=0x80) == nbd.NBD_EINVAL  # unknown flag
    assert err(nbd.NBD_CMD_FLUSH, 4096, 0) == nbd.NBD_EINVAL
    assert err(42, 0, 4096) == nbd.NBD_EINVAL  # unknown command
    too_big = 64 * 1024 * 1024
    expected = nbd.NBD_EOVERFLOW if structured else nbd.NBD_EINVAL
    assert err(nbd.NBD_CMD_READ, 0, too_big) == expected
    if not structured:
        assert err(nbd.NBD_CMD_BLOCK_STATUS, 0, 4096) == nbd.NBD_EINVAL
    # A write above the advertised maximum (32 MiB) is read and refused.
    assert err(nbd.NBD_CMD_WRITE, 0, 33 * 1024 * 1024,
               payload=bytes(33 * 1024 * 1024)) == nbd.NBD_EINVAL
    # The connection still works after all that.
    c.write(0, b"\x11" * 4096)
    assert c.read(0, 4096) == b"\x11" * 4096
    c.disconnect()


def test_large_writes_and_reads(served: Served) -> None:
    c = RawClient(str(served.sock), "Malloc0")
    data = os.urandom(5 * 1024 * 1024 + 512)
    c.write(512, data, flags=nbd.NBD_CMD_FLAG_FUA)
    assert c.read(512, len(data)) == data
    # Several large and small writes pipelined, then read back.
    blobs = [os.urandom(n) for n in (1 << 20, 512, 300 * 1024 - 512, 2 << 20)]
    at, cookies = 8 << 20, []
    for b in blobs:
        cookies.append(c.send(nbd.NBD_CMD_WRITE, at, len(b), 0, b))
        at += len(b)
    for ck in cookies:
        assert c.wait(ck)["error"] == 0
    assert c.read(8 << 20, at - (8 << 20)) == b"".join(blobs)
    c.disconnect()


def test_block_status(served: Served) -> None:
    c = RawClient(str(served.sock), "Malloc1")
    assert c.ready.meta_contexts == {nbd.BASE_ALLOCATION: nbd.BASE_ALLOCATION_ID}
    res = c.call(nbd.NBD_CMD_BLOCK_STATUS, 4096, 65536)
    assert res["error"] == 0 and res["context"] == nbd.BASE_ALLOCATION_ID
    assert res["extents"] == [(65536, 0)]
    res = c.call(nbd.NBD_CMD_BLOCK_STATUS, 0, 8192, nbd.NBD_CMD_FLAG_REQ_ONE)
    assert res["extents"] == [(8192, 0)]
    c.disconnect()


def test_default_export_name_and_unknown_export(exported: tuple) -> None:
    _target, uri = exported
    sock = uri.split("socket=")[1]
    c = RawClient(sock, "")  # only one export on the socket: "" is that one
    assert c.ready.size == 16 * 1024 * 1024
    c.disconnect()
    with pytest.raises(ConnectionError):
        RawClient(sock, "nope")


def test_bad_magic_closes_only_that_connection(served: Served) -> None:
    good = RawClient(str(served.sock), "Malloc1")
    bad = RawClient(str(served.sock), "Malloc1")
    bad.sock.sendall(b"\xde\xad\xbe\xef" * 7)
    wait_closed(bad.sock)
    good.write(4096, b"\x22" * 4096)
    assert good.read(4096, 4096) == b"\x22" * 4096
    good.disconnect()


def test_truncated_stream_and_disc(served: Served) -> None:
    c = RawClient(str(served.sock), "Malloc1")
    # Half a write (header promises 64 KiB, 100 bytes come), then the client goes.
    c.sock.sendall(nbd.encode_request(nbd.NBD_CMD_WRITE, 1, 0, 65536) + bytes(100))
    c.sock.shutdown(2)
    c.close()
    # DISC after requests in flight: they are answered, then the server closes.
    d = RawClient(str(served.sock), "Malloc1")
    d.sock.sendall(nbd.encode_request(nbd.NBD_CMD_READ, 7, 0, 4096)
                   + nbd.encode_request(nbd.NBD_CMD_DISC, 8)
                   + nbd.encode_request(nbd.NBD_CMD_READ, 9, 0, 4096))
    rest = wait_closed(d.sock)
    assert len(rest) in (16 + 4096, 28 + 4096)  # one READ reply, nothing for DISC or after
    # The server is still there.
    RawClient(str(served.sock), "Malloc1").disconnect()


@need("nbdinfo")
def test_tcp_exports_share_one_listener(served: Served) -> None:
    host, port = served.tcp
    uri = served.target.rpc("nbd_start_disk", {"bdev_name": "Malloc1",
                                               "nbd_device": f"nbd://{host}:{port}/Malloc1"})
    assert uri == f"nbd://{host}:{port}/Malloc1"
    try:
        listing = json.loads(run(["nbdinfo", "--list", "--json", f"nbd://{host}:{port}"]).stdout)
        assert sorted(e["export-name"] for e in listing["exports"]) == ["Malloc0", "Malloc1"]
    finally:
        served.target.rpc("nbd_stop_disk", {"nbd_device": uri})
    # The other export on that address still serves.
    c = RawClient(served.tcp, "Malloc0")
    c.read(0, 512)
    c.disconnect()


# -- stop and hot-remove with clients connected ------------------------------------------------
def test_stop_disk_with_clients_connected(exported: tuple) -> None:
    target, uri = exported
    sock = uri.split("socket=")[1]
    c = RawClient(sock, "Malloc0")
    c.write(0, b"\x33" * 4096)
    idle = RawClient(sock, "Malloc0")
    assert target.rpc("nbd_stop_disk", {"nbd_device": uri}) is True
    wait_closed(c.sock)
    wait_closed(idle.sock)
    assert target.rpc("nbd_get_disks") == []
    assert not Path(sock).exists()  # the listener is gone with its last export


def test_hot_remove_stops_the_export(exported: tuple) -> None:
    target, uri = exported
    sock = uri.split("socket=")[1]
    c = RawClient(sock, "Malloc0")
    # Requests sent right before the bdev goes are answered (data or an error).
    cookies = [c.send(nbd.NBD_CMD_READ, 4096 * i, 4096) for i in range(16)]
    assert target.rpc("bdev_malloc_delete", {"name": "Malloc0"}) is True
    for ck in cookies:
        c.wait(ck)
    wait_closed(c.sock)
    wait_until(lambda: target.rpc("nbd_get_disks") == [], what="export gone")
    assert target.rpc("framework_get_config", {"name": "nbd"}) == []


@need("qemu-io")
def test_export_survives_client_restarts(exported: tuple) -> None:
    _, uri = exported
    for i in range(3):
        run(["qemu-io", "-f", "raw", "-c", f"write -P {i + 1} {i * 65536} 64k", uri])
    out = run(["qemu-io", "-f", "raw", "-c", "read -P 1 0 64k", "-c", "read -P 2 64k 64k",
               "-c", "read -P 3 128k 64k", uri]).stdout
    assert "Pattern verification failed" not in out


@need("qemu-io")
async def test_stdlib_event_loop(sockdir: Path) -> None:
    """The target uses uvloop when installed; the server also runs on asyncio's own loop."""
    from pybdev.app import App, build_parser

    app = App(build_parser().parse_args(["--no-rpc-server"]))
    await app.start()
    try:
        await app.dispatcher.call("bdev_malloc_create",
                                  {"name": "Malloc0", "num_blocks": 16384, "block_size": 512})
        uri = await app.dispatcher.call("nbd_start_disk", {
            "bdev_name": "Malloc0", "nbd_device": unix_uri("Malloc0", sockdir / "s.sock")})
        proc = await asyncio.create_subprocess_exec(
            "qemu-io", "-f", "raw", "-c", "write -P 0x6b 0 3M", "-c", "read -P 0x6b 0 3M",
            "-c", "write -P 0x6c 5M 4k", "-c", "read -P 0x6c 5M 4k", uri,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0 and b"Pattern verification failed" not in out, out
        assert await app.dispatcher.call("nbd_stop_disk", {"nbd_device": uri}) is True
    finally:
        await app.stop()


@need("nbdkit")
def test_requests_run_concurrently_and_answer_out_of_order(
        start_target: Callable[..., Target], peers: Callable[..., Peer], sockdir: Path) -> None:
    """An export of an asynchronous bdev (an NBD client bdev whose server delays reads):
    a write sent after a slow read is answered first, and the buffers stay intact."""
    peer = peers("nbdkit", "--filter=delay", "memory", "4M", "rdelay=500ms")
    t = start_target()
    t.rpc("bdev_nbd_create", {"name": "Slow0", "uri": unix_uri("", peer.sock)})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Slow0",
                                   "nbd_device": unix_uri("Slow0", sockdir / "s.sock")})
    c = RawClient(uri.split("socket=")[1], "Slow0")
    first = os.urandom(4096)
    c.write(0, first)
    slow = c.send(nbd.NBD_CMD_READ, 0, 4096)
    data = {i: os.urandom(4096) for i in range(1, 9)}
    blobs = {c.send(nbd.NBD_CMD_WRITE, 4096 * i, 4096, 0, data[i]): i for i in data}
    order: list[int] = []
    while c.inflight:
        order += c.pump()
    assert order[-1] == slow and set(order[:-1]) == set(blobs)
    assert c.results[slow]["data"] == first
    # The payloads of writes that were still in flight when the next requests arrived
    # (their receive buffer was left to them) reached the bdev intact.
    reads = {c.send(nbd.NBD_CMD_READ, 4096 * i, 4096): i for i in data}
    for ck, i in reads.items():
        assert c.wait(ck)["data"] == data[i]
    c.disconnect()


@need("nbdkit")
def test_stop_answers_requests_in_flight(start_target: Callable[..., Target],
                                         peers: Callable[..., Peer], sockdir: Path) -> None:
    """nbd_stop_disk while reads wait on a slow bdev: each gets its reply, then EOF."""
    peer = peers("nbdkit", "--filter=delay", "memory", "4M", "rdelay=300ms")
    t = start_target()
    t.rpc("bdev_nbd_create", {"name": "Slow0", "uri": unix_uri("", peer.sock)})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Slow0",
                                   "nbd_device": unix_uri("Slow0", sockdir / "s.sock")})
    c = RawClient(uri.split("socket=")[1], "Slow0")
    c.write(0, b"\x5c" * 4096)
    cookies = [c.send(nbd.NBD_CMD_READ, 0, 4096) for _ in range(4)]
    assert t.rpc("nbd_stop_disk", {"nbd_device": uri}) is True
    for ck in cookies:
        res = c.wait(ck)
        assert res["error"] == 0 and res["data"] == b"\x5c" * 4096
    wait_closed(c.sock)
    assert t.rpc("nbd_get_disks") == []


@need("nbdkit", "nbdinfo", "qemu-io")
def test_nbdinfo_map_shows_holes_through_the_hint(start_target: Callable[..., Target],
                                                  peers: Callable[..., Peer],
                                                  sockdir: Path) -> None:
    """Re-exporting an NBD bdev: its get_block_status hint asks the server behind it."""
    peer = peers("nbdkit", "memory", "4M")
    run(["qemu-io", "-f", "raw", "-c", "write -P 1 0 64k", unix_uri("", peer.sock)])
    t = start_target()
    t.rpc("bdev_nbd_create", {"name": "Nbd0", "uri": unix_uri("", peer.sock)})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Nbd0",
                                   "nbd_device": unix_uri("Nbd0", sockdir / "s.sock")})
    extents = json.loads(run(["nbdinfo", "--map", "--json", uri]).stdout)
    assert extents[0] == {"offset": 0, "length": 65536, "type": 0, "description": "data"}
    assert extents[-1]["type"] == 3  # hole, reads as zeroes
    assert sum(e["length"] for e in extents) == 4 * 1024 * 1024


# -- I/O semantics the bdev layer owns, seen through an export -------------------------------
# A target whose malloc bdevs take at most 8 KiB per request, as a module with a small
# max_io_bytes would: any larger request reaching the module fails with EIO, so a 1 MiB
# transfer only succeeds when the bdev layer splits it (NBD itself allows 32 MiB).
SMALL_IO_TARGET = """
import errno, sys
from pybdev.bdev import malloc

class SmallIo(malloc.MallocBdev):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_io_bytes = 8192

    def submit_read(self, offset, length, cb):
        if length > self.max_io_bytes:
            cb(-errno.EIO, None)
        else:
            super().submit_read(offset, length, cb)

    def submit_write(self, offset, data, cb, fua):
        if len(data) > self.max_io_bytes:
            cb(-errno.EIO, None)
        else:
            super().submit_write(offset, data, cb, fua)

malloc.MallocBdev = SmallIo
from pybdev.app import main
sys.exit(main())
"""


class SmallIoTarget(Target):
    def __init__(self, d: Path) -> None:
        script = d / "small_io_target.py"
        script.write_text(SMALL_IO_TARGET)
        self.sock = d / "rpc.sock"
        self.log_path = d / "target.log"
        self.args = []
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen([sys.executable, str(script), "-r", str(self.sock)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=Path(__file__).resolve().parents[2])


@need("qemu-io")
def test_requests_above_max_io_bytes_are_split_by_the_layer(sockdir: Path) -> None:
    t = SmallIoTarget(sockdir).wait_ready()
    try:
        t.rpc("bdev_malloc_create", {"name": "Small", "num_blocks": 8192, "block_size": 512})
        # Examine (the lvol module looks for a store) reads the first blocks: not counted.
        t.rpc("bdev_wait_for_examine")
        t.rpc("bdev_reset_iostat", {"name": "Small"})
        uri = t.rpc("nbd_start_disk", {"bdev_name": "Small",
                                       "nbd_device": unix_uri("Small", sockdir / "s.sock")})
        out = run(["qemu-io", "-f", "raw", "-c", "write -P 0x6b 512k 1M",
                   "-c", "read -P 0x6b 512k 1M", "-c", "read -P 0 0 512k", uri]).stdout
        assert "Pattern verification failed" not in out and "error" not in out.lower()
        st = t.rpc("bdev_get_iostat", {"name": "Small"})["bdevs"][0]
        # One request each way, counted once though the module saw 128 pieces of it.
        assert st["bytes_written"] == 1 << 20 and st["num_write_ops"] == 1
        assert st["bytes_read"] == (1 << 20) + (512 << 10)
        assert st["io_error"] == {}
    finally:
        t.stop()


@need("qemu-io")
def test_enomem_from_an_error_bdev_is_retried_transparently(
        start_target: Callable[..., Target], sockdir: Path) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 8192, "block_size": 512})
    t.rpc("bdev_error_create", {"base_name": "M"})
    # Examine (the lvol module looks for a store) reads the first blocks: not counted.
    t.rpc("bdev_wait_for_examine")
    t.rpc("bdev_reset_iostat", {"name": "EE_M"})
    for io_type, num in (("write", 5), ("read", 3)):
        assert t.rpc("bdev_error_inject_error", {"name": "EE_M", "io_type": io_type,
                                                 "error_type": "nomem", "num": num}) is True
    uri = t.rpc("nbd_start_disk", {"bdev_name": "EE_M",
                                   "nbd_device": unix_uri("EE_M", sockdir / "s.sock")})
    out = run(["qemu-io", "-f", "raw", "-c", "write -P 0x3d 0 64k", "-c", "write -P 0x3e 64k 4k",
               "-c", "read -P 0x3d 0 64k", "-c", "read -P 0x3e 64k 4k", uri]).stdout
    assert "Pattern verification failed" not in out and "error" not in out.lower()
    st = t.rpc("bdev_get_iostat", {"name": "EE_M"})["bdevs"][0]
    assert st["io_error"] == {"nomem": 8}  # each one counted, none reached the client
    assert (st["num_write_ops"], st["num_read_ops"]) == (2, 2)
