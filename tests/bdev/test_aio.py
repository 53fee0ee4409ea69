"""aio (file and block device) through the Python API (SPDK's module/bdev/aio)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybdev.bdev.aio import AioBdev, AioModule
from pybdev.bdev.core import BdevEvent, BdevLayer, BdevState
from pybdev.errors import OperationError

from .conftest import module, read

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def make_file(path: Path, size: int, fill: bytes = b"") -> Path:
    with open(path, "wb") as f:
        if fill:
            f.write(fill * (size // len(fill)))
        else:
            f.truncate(size)
    return path


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def create(layer: BdevLayer, path: Path, name: str = "A", **kw: object) -> AioBdev:
    return await module(layer, AioModule).create(name=name, filename=str(path), **kw)


async def test_regular_file_with_o_direct(layer: BdevLayer, tmp_path: Path) -> None:
    f = make_file(tmp_path / "disk.img", 4 * MIB, b"\x07")
    b = await create(layer, f, block_size=512)
    assert (b.block_size, b.num_blocks, b.write_cache) == (512, 8192, True)
    assert b.direct  # tmp_path is on a filesystem that takes O_DIRECT
    info = b.info()
    assert info["product_name"] == "AIO disk" and "numa_id" not in info
    assert info["driver_specific"] == {"aio": {
        "filename": str(f), "block_size_override": True, "readonly": False,
        "fallocate": False, "nowait": False}}
    io = info["supported_io_types"]
    assert [t for t, v in io.items() if v] == ["read", "write", "flush", "reset", "write_zeroes"]
    desc = layer.open("A", write=True)
    assert await read(desc, 0, 4096) == b"\x07" * 4096
    pattern = os.urandom(64 * 1024)
    await desc.write_async(512 * 3, pattern)
    await desc.write_async(MIB, pattern, fua=True)
    await desc.flush_async()
    assert await read(desc, 512 * 3, len(pattern)) == pattern
    data = f.read_bytes()
    assert data[1536:1536 + len(pattern)] == pattern and data[MIB:MIB + len(pattern)] == pattern
    # write_zeroes without fallocate: emulated with writes; unmap is not offered.
    await desc.write_zeroes_async(0, 4096)
    assert f.read_bytes()[:4096] == bytes(4096)
    with pytest.raises(OperationError) as e:
        await desc.unmap_async(0, 512)
    assert e.value.errno == errno.ENOTSUP
    desc.close()


async def test_completions_come_back_on_the_loop(layer: BdevLayer, tmp_path: Path) -> None:
    await create(layer, make_file(tmp_path / "d", MIB), block_size=4096)
    desc = layer.open("A", write=True)
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int]] = []
    done = asyncio.Event()

    def cb(status: int, _data: object) -> None:
        seen.append((status, threading.get_ident()))
        if len(seen) == 32:
            done.set()

    for i in range(32):
        desc.read(i * 4096, 4096, cb)
    assert seen == []  # nothing completed inside the submitting call
    await asyncio.wait_for(done.wait(), 10)
    assert seen == [(0, loop_thread)] * 32
    desc.close()


async def test_fallocate_unmap_and_write_zeroes(layer: BdevLayer, tmp_path: Path) -> None:
    f = make_file(tmp_path / "disk.img", 2 * MIB, b"\xee")
    b = await create(layer, f, block_size=4096, fallocate=True)
    assert b.supports("unmap") and b.info()["driver_specific"]["aio"]["fallocate"] is True
    desc = layer.open("A", write=True)
    allocated = os.stat(f).st_blocks
    await desc.unmap_async(0, MIB)
    await desc.write_zeroes_async(MIB + 4096, 8192)
    assert os.stat(f).st_blocks < allocated  # a hole was punched
    assert os.stat(f).st_size == 2 * MIB  # KEEP_SIZE
    data = await read(desc, 0, 2 * MIB)
    assert data[:MIB] == bytes(MIB)
    assert data[MIB:MIB + 4096] == b"\xee" * 4096
    assert data[MIB + 4096:MIB + 12288] == bytes(8192)
    assert data[MIB + 12288:] == b"\xee" * (MIB - 12288)
    desc.close()


async def test_buffered_io_when_o_direct_is_refused(layer: BdevLayer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_direct(path: str, flags: int, *args: int) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT refused")
        return real_open(path, flags, *args)

    monkeypatch.setattr("pybdev.bdev.aio.os.open", no_direct)
    f = make_file(tmp_path / "disk.img", MIB, b"\x02")
    b = await create(layer, f, block_size=512, fallocate=True)
    assert not b.direct
    desc = layer.open("A", write=True)
    await desc.write_async(512, b"\x01" * 512)
    assert await read(desc, 0, 1024) == b"\x02" * 512 + b"\x01" * 512
    await desc.write_zeroes_async(0, 1024)
    assert f.read_bytes()[:1536] == bytes(1024) + b"\x02" * 512
    desc.close()


async def test_o_direct_alignment_probe(layer: BdevLayer, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that opens O_DIRECT but refuses the block size: buffered I/O instead."""
    real_preadv = os.preadv
    calls: list[int] = []

    def picky(fd: int, buffers: list[object], offset: int, *args: int) -> int:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(errno.EINVAL, "misaligned for O_DIRECT")
        return real_preadv(fd, buffers, offset, *args)  # type: ignore[arg-type]

    monkeypatch.setattr("pybdev.bdev.aio.os.preadv", picky)
    f = make_file(tmp_path / "disk.img", MIB, b"\x04")
    b = await create(layer, f, block_size=512)
    assert not b.direct and len(calls) == 1
    desc = layer.open("A", write=False)
    assert await read(desc, 0, 512) == b"\x04" * 512
    desc.close()


async def test_tmpfs(layer: BdevLayer) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm tmpfs")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
        f = make_file(Path(d) / "disk.img", MIB, b"\x03")
        await create(layer, f, block_size=512, fallocate=True)
        desc = layer.open("A", write=True)
        await desc.write_zeroes_async(0, 1024)  # zero range, or punch hole where tmpfs lacks it
        await desc.unmap_async(4096, 4096)
        assert await read(desc, 0, 8192) == bytes(1024) + b"\x03" * 3072 + bytes(4096)
        desc.close()
        await module(layer, AioModule).delete("A")


async def test_readonly(layer: BdevLayer, tmp_path: Path) -> None:
    f = make_file(tmp_path / "ro.img", MIB, b"\x09")
    b = await create(layer, f, block_size=512, readonly=True, fallocate=True)
    desc = layer.open("A", write=True)
    for op in (desc.write_async(0, bytes(512)), desc.unmap_async(0, 512),
               desc.write_zeroes_async(0, 512)):
        with pytest.raises(OperationError) as e:
            await op
        assert e.value.errno == errno.EROFS
    assert await read(desc, 0, 512) == b"\x09" * 512
    assert f.read_bytes() == b"\x09" * MIB
    assert b.write_config()[0]["params"]["readonly"] is True
    desc.close()


@pytest.mark.parametrize(("size", "kwargs", "code"), [
    (MIB, {}, errno.EINVAL),  # a regular file has no detectable block size
    (MIB, {"block_size": 256}, errno.EINVAL),
    (MIB, {"block_size": 1536}, errno.EINVAL),  # not a power of two
    (MIB + 512, {"block_size": 4096}, errno.EINVAL),  # size not a multiple
    (MIB, {"block_size": 512, "nowait": True}, errno.EOPNOTSUPP),
])
async def test_create_refusals(layer: BdevLayer, tmp_path: Path, size: int,
                               kwargs: dict[str, object], code: int) -> None:
    f = make_file(tmp_path / "disk.img", size)
    before = open_fds()
    with pytest.raises(OperationError) as e:
        await create(layer, f, **kwargs)
    assert e.value.errno == code
    assert list(layer) == [] and open_fds() == before


async def test_open_errors_and_duplicates(layer: BdevLayer, tmp_path: Path) -> None:
    with pytest.raises(OperationError) as e:
        await create(layer, tmp_path / "missing.img", block_size=512)
    assert e.value.errno == errno.ENOENT
    with pytest.raises(OperationError) as e:
        await create(layer, tmp_path, block_size=512)  # a directory
    assert e.value.errno == errno.EISDIR
    f = make_file(tmp_path / "disk.img", MIB)
    await create(layer, f, block_size=512)
    before = open_fds()
    with pytest.raises(OperationError) as e:
        await create(layer, f, block_size=512)
    assert e.value.errno == errno.EEXIST and open_fds() == before


@pytest.mark.parametrize("readonly", [True, False])
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/null", "/proc/self/mem",
                                  "directory", "empty", "unaligned"])
async def test_odd_files_are_refused_without_blocking(layer: BdevLayer, tmp_path: Path,
                                                      kind: str, readonly: bool) -> None:
    """Only regular files and block devices of a whole number of blocks become bdevs.

    A FIFO opened read-only used to block a pool thread in open() forever; six of them in
    a row would exhaust the pool, so the last create would hang too.
    """
    code = errno.EINVAL
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif kind == "directory":
        path, code = tmp_path, errno.EISDIR
    elif kind == "empty":
        path = make_file(tmp_path / "empty.img", 0)
    elif kind == "unaligned":
        path = make_file(tmp_path / "odd.img", 4096 + 100)
    else:
        path = Path(kind)
    before = open_fds()
    for i in range(6):
        with pytest.raises(OperationError) as e:
            await asyncio.wait_for(
                create(layer, path, name=f"A{i}", block_size=512, readonly=readonly), 10)
        assert e.value.errno == code
        assert str(path) in str(e.value)
    assert list(layer) == [] and open_fds() == before


async def test_rescan(layer: BdevLayer, tmp_path: Path) -> None:
    aio = module(layer, AioModule)
    f = make_file(tmp_path / "disk.img", MIB)
    b = await create(layer, f, block_size=4096)
    events: list[BdevEvent] = []
    desc = layer.open("A", write=False, event_cb=lambda ev, _b: events.append(ev))
    await aio.rescan("A")  # unchanged
    os.truncate(f, 2 * MIB)
    await aio.rescan("A")
    assert b.num_blocks == 512
    await asyncio.sleep(0)
    assert events == [BdevEvent.RESIZE]
    os.truncate(f, MIB)
    with pytest.raises(OperationError) as e:
        await aio.rescan("A")  # cannot shrink while open
    assert e.value.errno == errno.EBUSY
    desc.close()
    await aio.rescan("A")
    assert b.num_blocks == 256
    with pytest.raises(OperationError) as e:
        await aio.rescan("nope")
    assert e.value.errno == errno.ENODEV
    os.truncate(f, 0)
    await aio.rescan("A")  # an empty file is a hot-remove
    for _ in range(100):
        if b.state is BdevState.GONE:
            break
        await asyncio.sleep(0.01)
    assert b.state is BdevState.GONE and list(layer) == [] and b.fd == -1


async def test_delete_closes_the_file_after_inflight_io(layer: BdevLayer,
                                                        tmp_path: Path) -> None:
    aio = module(layer, AioModule)
    b = await create(layer, make_file(tmp_path / "d", 4 * MIB), block_size=4096)
    fd = b.fd
    desc = layer.open("A", write=True)
    results: list[int] = []
    for i in range(64):
        desc.write(i * 4096, bytes(4096), lambda s, _d: results.append(s))
    reset = asyncio.ensure_future(desc.reset_async())
    desc.close()
    await aio.delete("A")
    await reset
    assert results == [0] * 64  # every request finished before the fd was closed
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(OperationError) as e:
        await aio.delete("A")
    assert e.value.errno == errno.ENODEV


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 4 MiB loop device with 4096-byte sectors, or a skip where losetup cannot."""
    losetup = shutil.which("losetup")
    if losetup is None or os.geteuid() != 0:
        pytest.skip("needs root and losetup for a block device")
    backing = make_file(tmp_path / "loop.img", 4 * MIB)
    res = subprocess.run([losetup, "--find", "--show", "--sector-size", "4096", str(backing)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"losetup failed: {res.stderr.strip()}")
    dev = res.stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run([losetup, "-d", dev], capture_output=True)


async def test_block_device_detection(layer: BdevLayer, loop_device: str) -> None:
    aio = module(layer, AioModule)
    with pytest.raises(OperationError) as e:
        await create(layer, Path(loop_device), block_size=512)  # below the sector size
    assert e.value.errno == errno.EINVAL
    b = await create(layer, Path(loop_device), nowait=True)
    assert (b.block_size, b.num_blocks, b.direct) == (4096, 1024, True)
    aio_info = b.info()["driver_specific"]["aio"]
    assert aio_info["block_size_override"] is False and aio_info["nowait"] is True
    assert "block_size" not in b.write_config()[0]["params"]
    desc = layer.open("A", write=True)
    pattern = os.urandom(8192)
    await desc.write_async(4096, pattern)
    await desc.flush_async()
    assert await read(desc, 4096, 8192) == pattern
    desc.close()
    await aio.delete("A")


KILL_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pybdev.bdev.core import BdevLayer
    from pybdev.bdev.aio import AioModule

    async def main():
        layer = BdevLayer()
        aio = AioModule(layer)
        layer.add_module(aio)
        await aio.create(name="A", filename=sys.argv[1], block_size=4096)
        desc = layer.open("A", write=True)
        data = bytes((i * 13 + 5) & 0xFF for i in range(1 << 20))
        for i in range(4):
            await desc.write_async(i << 20, data)
        await desc.flush_async()
        print("FLUSHED", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_flushed_writes_survive_kill_9(tmp_path: Path) -> None:
    f = make_file(tmp_path / "disk.img", 8 * MIB)
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(f)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "FLUSHED", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    data = bytes((i * 13 + 5) & 0xFF for i in range(1 << 20))
    got = f.read_bytes()
    assert got[:4 * MIB] == data * 4 and got[4 * MIB:] == bytes(4 * MIB)
