"""pybdev.ceph against a real single-node cluster (the session's ``ceph_cluster``)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pybdev import ceph

from .cluster import CephCluster, free_port, gen_key

_reason = ceph.unavailable_reason()
pytestmark = [
    pytest.mark.ceph,
    pytest.mark.skipif(_reason is not None, reason=f"librbd not loadable: {_reason}"),
]

MiB = 1 << 20
SIZE = 64 * MiB
OBJ = 4 * MiB  # librbd's default object size (order 22)


@pytest.fixture(scope="session")
def conn(ceph_cluster: CephCluster) -> Iterator[ceph.Cluster]:
    c = ceph.Cluster(ceph_cluster.client_conf(), ceph_cluster.client_id, connect_timeout=10)
    c.connect()
    yield c
    c.shutdown()


@pytest.fixture(scope="session")
def ioctx(conn: ceph.Cluster) -> Iterator[ceph.Ioctx]:
    io = conn.open_ioctx("rbd")
    yield io
    io.close()


@pytest.fixture
def name(ioctx: ceph.Ioctx) -> Iterator[str]:
    """A fresh image name; the image, if any, is removed afterwards."""
    n = f"t-{uuid.uuid4().hex[:12]}"
    yield n
    try:
        ceph.remove_image(ioctx, n)
    except ceph.CephError as e:
        assert e.rc == -errno.ENOENT


@pytest.fixture
def make_name(ioctx: ceph.Ioctx) -> Iterator[Callable[[], str]]:
    """Like ``name``, for tests that need several."""
    names: list[str] = []

    def make() -> str:
        names.append(f"t-{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield make
    for n in names:
        try:
            ceph.remove_image(ioctx, n)
        except ceph.CephError as e:
            assert e.rc == -errno.ENOENT


@pytest.fixture
def image(ioctx: ceph.Ioctx, name: str) -> Iterator[ceph.Image]:
    """A 64 MiB image, open; its loop is the test's (bound on first request)."""
    ceph.create_image(ioctx, name, SIZE)
    img = ceph.open_image(ioctx, name)
    yield img
    img.close()


# ---- connection ------------------------------------------------------------------------


def test_connect(conn: ceph.Cluster, ceph_cluster: CephCluster) -> None:
    assert conn.connected
    assert conn.fsid() == ceph_cluster.fsid
    assert conn.instance_id() > 0
    assert conn.conf_get("mon_host") == ceph_cluster.mon_host
    # The key never shows: not in repr, not in .conf, not through conf_get.
    assert ceph_cluster.client_key not in repr(conn)
    assert conn.conf["key"] == ceph.REDACTED
    with pytest.raises(ceph.CephError) as ei:
        conn.conf_get("key")
    assert ceph_cluster.client_key not in str(ei.value)


def test_connect_with_conf_file_and_keyring(ceph_cluster: CephCluster) -> None:
    c = ceph.Cluster(
        None, ceph_cluster.client_id, config_file=str(ceph_cluster.conf_path),
        key_file=str(ceph_cluster.keyring_path), connect_timeout=10,
    )
    with c:
        assert c.fsid() == ceph_cluster.fsid
    assert not c.connected


def test_wrong_key_is_a_clear_error(ceph_cluster: CephCluster) -> None:
    wrong = gen_key()
    c = ceph.Cluster({"mon_host": ceph_cluster.mon_host, "key": wrong}, "admin",
                     connect_timeout=10)
    t0 = time.monotonic()
    with pytest.raises(ceph.CephError) as ei:
        c.connect()
    assert time.monotonic() - t0 < 5
    assert ei.value.rc == -errno.EACCES
    assert "rados_connect" in str(ei.value) and "Permission denied" in str(ei.value)
    assert wrong not in str(ei.value) and wrong not in repr(c)
    assert not c.connected


def test_unknown_user_and_malformed_key(ceph_cluster: CephCluster) -> None:
    c = ceph.Cluster({"mon_host": ceph_cluster.mon_host, "key": ceph_cluster.client_key},
                     "nobody", connect_timeout=10)
    with pytest.raises(ceph.CephError) as ei:
        c.connect()
    assert ei.value.rc == -errno.EACCES
    c = ceph.Cluster({"mon_host": ceph_cluster.mon_host, "key": "not a key"}, "admin",
                     connect_timeout=10)
    with pytest.raises(ceph.CephError) as ei:
        c.connect()
    assert ei.value.rc == -errno.EINVAL
    assert "not a key" not in str(ei.value)


def test_unknown_option_names_the_option_only() -> None:
    c = ceph.Cluster({"no_such_option": "s3cret"}, connect_timeout=1)
    with pytest.raises(ceph.CephError) as ei:
        c.connect()
    assert ei.value.rc == -errno.ENOENT
    assert "no_such_option" in str(ei.value) and "s3cret" not in str(ei.value)


def test_unreachable_cluster_fails_within_timeout(ceph_cluster: CephCluster) -> None:
    # Nothing listens on a fresh free port: the client hunts for a mon until
    # client_mount_timeout, then gives up instead of hanging.
    c = ceph.Cluster(
        {"mon_host": f"[v2:127.0.0.1:{free_port()}]", "key": ceph_cluster.client_key},
        connect_timeout=2,
    )
    t0 = time.monotonic()
    with pytest.raises(ceph.CephError) as ei:
        c.connect()
    elapsed = time.monotonic() - t0
    assert ei.value.rc == -errno.ETIMEDOUT
    assert 1.5 < elapsed < 10


def test_unknown_pool_and_image(conn: ceph.Cluster, ioctx: ceph.Ioctx) -> None:
    with pytest.raises(ceph.CephError) as ei:
        conn.open_ioctx("no-such-pool")
    assert ei.value.rc == -errno.ENOENT
    assert "no-such-pool" in str(ei.value)
    with pytest.raises(ceph.CephError) as ei:
        ceph.open_image(ioctx, "no-such-image")
    assert ei.value.rc == -errno.ENOENT
    with pytest.raises(ceph.CephError) as ei:
        ceph.remove_image(ioctx, "no-such-image")
    assert ei.value.rc == -errno.ENOENT


# ---- image management ------------------------------------------------------------------


def test_create_stat_list_remove(ioctx: ceph.Ioctx, name: str, ceph_cluster: CephCluster) -> None:
    ceph.create_image(ioctx, name, SIZE)
    assert name in ceph.list_images(ioctx)
    with pytest.raises(ceph.CephError) as ei:
        ceph.create_image(ioctx, name, SIZE)
    assert ei.value.rc == -errno.EEXIST
    img = ceph.open_image(ioctx, name)
    try:
        info = img.stat()
        assert (info.size, info.obj_size, info.order) == (SIZE, OBJ, 22)
        assert img.get_size() == SIZE
        assert img.features() & ceph.rbd.RBD_FEATURE_LAYERING
        cli = json.loads(ceph_cluster.rbd("info", "--format", "json", f"rbd/{name}"))
        assert cli["size"] == SIZE and cli["id"] == img.image_id()
    finally:
        img.close()
    ceph.remove_image(ioctx, name)
    assert name not in ceph.list_images(ioctx)


# ---- asynchronous I/O ------------------------------------------------------------------


async def test_write_read_compare_at_offsets(image: ceph.Image) -> None:
    cases = [
        (0, 4096),
        (8192 + 512, 512),
        (3 * 4096, 8192),
        (OBJ - 100, 200),                 # straddles two objects
        (5 * MiB + 12345, MiB),           # unaligned, 1 MiB
        (SIZE - 4096, 4096),              # last block
    ]
    payloads = [os.urandom(n) for _, n in cases]
    # All in flight at once.
    await asyncio.gather(
        *(image.write(off, data) for (off, _), data in zip(cases, payloads, strict=True))
    )
    back = await asyncio.gather(*(image.read(off, n) for off, n in cases))
    for data, got in zip(payloads, back, strict=True):
        assert bytes(got) == data
    # Untouched space reads as zeros.
    assert bytes(await image.read(20 * MiB, 64 * 1024)) == bytes(64 * 1024)
    await image.flush()


async def test_callbacks_run_on_loop_exactly_once(image: ceph.Image) -> None:
    loop_thread = threading.get_ident()
    depth = 64
    results: dict[int, list[int]] = {i: [] for i in range(depth)}
    threads: set[int] = set()
    done = asyncio.Event()
    remaining = [depth]
    block = os.urandom(4096)

    def cb_for(i: int) -> ceph.Callback:
        def cb(ret: int) -> None:
            threads.add(threading.get_ident())
            results[i].append(ret)
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()
        return cb

    for i in range(depth):
        image.aio_write(i * 8192, block, cb_for(i))
    assert image.inflight > 0
    await asyncio.wait_for(done.wait(), 30)
    await asyncio.sleep(0.05)  # a duplicate delivery would show up here
    assert threads == {loop_thread}
    assert all(r == [0] for r in results.values())  # writes complete with 0
    assert image.inflight == 0

    # Reads into caller-owned buffers, through the callback API.
    bufs = [bytearray(4096) for _ in range(depth)]
    got: list[int] = []
    finished = asyncio.Event()

    def on_read(ret: int) -> None:
        got.append(ret)
        if len(got) == depth:
            finished.set()

    for i, b in enumerate(bufs):
        image.aio_read(i * 8192, b, on_read)
    await asyncio.wait_for(finished.wait(), 30)
    assert got == [4096] * depth
    assert all(bytes(b) == block for b in bufs)


async def test_read_past_end_and_short_read(image: ceph.Image) -> None:
    # A read that starts inside the image is cut at its end; one that starts past it fails.
    assert len(await image.read(SIZE - 100, 4096)) == 100
    with pytest.raises(ceph.CephError) as ei:
        await image.read(SIZE + 4096, 4096)
    assert ei.value.rc == -errno.EINVAL


async def test_discard_whole_objects_reads_zeros(image: ceph.Image) -> None:
    data = os.urandom(2 * OBJ)
    await image.write(OBJ, data)
    await image.discard(OBJ, 2 * OBJ)
    assert bytes(await image.read(OBJ, 2 * OBJ)) == bytes(2 * OBJ)


async def test_write_zeroes_unaligned(image: ceph.Image) -> None:
    assert image.write_zeroes_native  # librbd >= 16 has rbd_aio_write_zeroes
    await image.write(0, b"x" * 3 * 4096)
    await image.write_zeroes(100, 5000)
    got = bytes(await image.read(0, 3 * 4096))
    assert got[:100] == b"x" * 100
    assert got[100:5100] == bytes(5000)
    assert got[5100:] == b"x" * (3 * 4096 - 5100)


async def test_write_zeroes_emulated(image: ceph.Image) -> None:
    image.write_zeroes_native = False  # what an older librbd gets
    await image.write(0, b"y" * 8192)
    await image.write_zeroes(10, 8000)
    got = bytes(await image.read(0, 8192))
    assert got == b"y" * 10 + bytes(8000) + b"y" * 182


async def test_read_only_image_refuses_writes(ioctx: ceph.Ioctx, name: str) -> None:
    ceph.create_image(ioctx, name, SIZE)
    img = await asyncio.to_thread(ceph.open_image, ioctx, name, read_only=True)
    try:
        with pytest.raises(ceph.CephError) as ei:
            await img.write(0, b"z" * 512)
        assert ei.value.rc == -errno.EROFS
        assert bytes(await img.read(0, 512)) == bytes(512)
    finally:
        await img.aclose()


# ---- resize ------------------------------------------------------------------------------


async def test_resize_and_watch(image: ceph.Image, ceph_cluster: CephCluster) -> None:
    events = asyncio.Queue[None]()
    handle = image.watch(lambda: events.put_nowait(None))

    await asyncio.to_thread(image.resize, 2 * SIZE)
    assert await asyncio.to_thread(image.get_size) == 2 * SIZE
    await image.write(2 * SIZE - 4096, b"e" * 4096)

    # Another client resizes: the watch fires and the new size is seen.
    while not events.empty():
        events.get_nowait()
    await asyncio.to_thread(
        ceph_cluster.rbd, "resize", "--no-progress", "--allow-shrink", "--size", "32M",
        f"rbd/{image.name}",
    )
    await asyncio.wait_for(events.get(), 10)
    assert await asyncio.to_thread(image.get_size) == 32 * MiB
    with pytest.raises(ceph.CephError) as ei:
        await image.read(SIZE, 4096)
    assert ei.value.rc == -errno.EINVAL

    image.unwatch(handle)
    # Events librbd delivered before unwatch returned may still sit in the loop's queue.
    await asyncio.sleep(0.05)
    while not events.empty():
        events.get_nowait()
    await asyncio.to_thread(image.resize, SIZE)
    await asyncio.sleep(0.2)
    assert events.empty()


# ---- data seen by the rbd CLI, both ways --------------------------------------------------


async def test_data_round_trip_with_rbd_cli(
    image: ceph.Image, ioctx: ceph.Ioctx, name: str, ceph_cluster: CephCluster,
    tmp_path: Path,
) -> None:
    data = os.urandom(2 * MiB)
    await image.write(3 * MiB, data)
    await image.flush()
    out = tmp_path / "export.img"
    await asyncio.to_thread(
        ceph_cluster.rbd, "export", "--no-progress", f"rbd/{name}", str(out)
    )
    exported = out.read_bytes()
    assert len(exported) == SIZE
    assert exported[3 * MiB:5 * MiB] == data

    src = tmp_path / "import.img"
    src_data = os.urandom(3 * MiB + 512)
    src.write_bytes(src_data)
    other = f"t-{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(
        ceph_cluster.rbd, "import", "--no-progress", str(src), f"rbd/{other}"
    )
    try:
        img2 = await asyncio.to_thread(ceph.open_image, ioctx, other)
        try:
            assert bytes(await img2.read(0, len(src_data))) == src_data
        finally:
            await img2.aclose()
    finally:
        await asyncio.to_thread(ceph.remove_image, ioctx, other)


# ---- failure behaviour ---------------------------------------------------------------------


async def test_close_with_io_in_flight_completes_everything(
    ioctx: ceph.Ioctx, name: str
) -> None:
    ceph.create_image(ioctx, name, SIZE)
    fds_before = len(os.listdir("/proc/self/fd"))
    img = await asyncio.to_thread(ceph.open_image, ioctx, name)
    rets: list[int] = []
    n = 128
    block = os.urandom(64 * 1024)
    for i in range(n):
        img.aio_write(i * len(block), block, rets.append)
    await img.aclose()  # waits in a thread while librbd finishes them
    for _ in range(100):
        if len(rets) == n:
            break
        await asyncio.sleep(0.01)
    assert len(rets) == n
    assert rets == [0] * n
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # the eventfd is gone too
    # After close: every request still gets exactly one callback, with -EBADF.
    late: list[int] = []
    img.aio_write(0, block, late.append)
    img.aio_flush(late.append)
    await asyncio.sleep(0.05)
    assert late == [-errno.EBADF, -errno.EBADF]
    with pytest.raises(ceph.CephError) as ei:
        img.get_size()
    assert ei.value.rc == -errno.EBADF
    img.close()  # idempotent


async def test_close_on_the_loop_thread(ioctx: ceph.Ioctx, name: str) -> None:
    # Blocking the loop is the caller's choice; the callbacks still run, after close.
    ceph.create_image(ioctx, name, SIZE)
    img = ceph.open_image(ioctx, name)
    rets: list[int] = []
    for i in range(16):
        img.aio_write(i * 4096, b"q" * 4096, rets.append)
    img.close()
    assert rets == []
    await asyncio.sleep(0.05)
    assert rets == [0] * 16 and img.inflight == 0


async def test_two_images_interleaved(ioctx: ceph.Ioctx, make_name: Callable[[], str]) -> None:
    names = [make_name(), make_name()]
    imgs = []
    for n in names:
        ceph.create_image(ioctx, n, SIZE)
        imgs.append(await asyncio.to_thread(ceph.open_image, ioctx, n))
    try:
        blocks = {(i, k): os.urandom(4096) for i in range(2) for k in range(32)}
        await asyncio.gather(
            *(imgs[i].write(k * 4096, b) for (i, k), b in blocks.items())
        )
        got = await asyncio.gather(*(imgs[i].read(k * 4096, 4096) for (i, k) in blocks))
        assert [bytes(g) for g in got] == list(blocks.values())
    finally:
        for img in imgs:
            await img.aclose()


def test_shutdown_closes_what_is_open(ceph_cluster: CephCluster, name: str,
                                      ioctx: ceph.Ioctx) -> None:
    ceph.create_image(ioctx, name, SIZE)
    c = ceph.Cluster(ceph_cluster.client_conf(), connect_timeout=10)
    c.connect()
    io = c.open_ioctx("rbd")
    img = ceph.open_image(io, name)
    c.shutdown()
    assert img.closed and not c.connected
    c.shutdown()  # idempotent


async def test_stalled_osd_turns_io_into_timeouts(
    ceph_cluster: CephCluster, ioctx: ceph.Ioctx, name: str
) -> None:
    """With rados_osd_op_timeout, I/O to an OSD that stopped answering fails with
    -ETIMEDOUT after about that long, and works again once the OSD is back."""
    ceph.create_image(ioctx, name, SIZE)
    c = ceph.Cluster(ceph_cluster.client_conf(), connect_timeout=10, osd_op_timeout=2)
    await asyncio.to_thread(c.connect)
    try:
        io = c.open_ioctx("rbd")
        img = await asyncio.to_thread(ceph.open_image, io, name)
        await img.write(0, b"a" * 4096)  # takes the exclusive lock while the OSD answers
        osd = ceph_cluster.pids()["osd.0"]
        os.kill(osd, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(ceph.CephError) as ei:
                await asyncio.wait_for(img.write(8192, b"b" * 4096), 20)
            elapsed = time.monotonic() - t0
        finally:
            os.kill(osd, signal.SIGCONT)
        assert ei.value.rc == -errno.ETIMEDOUT
        assert 1.5 < elapsed < 10
        await asyncio.wait_for(img.write(8192, b"c" * 4096), 30)
        assert bytes(await img.read(8192, 4096)) == b"c" * 4096
    finally:
        await asyncio.to_thread(c.shutdown)


def test_aio_needs_a_loop(image: ceph.Image) -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        image.aio_flush(lambda ret: None)
