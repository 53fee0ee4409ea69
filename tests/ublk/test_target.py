"""ublk without a kernel driver: device parameters, cpumasks, the control path against a
fake ring, and the RPC answers where /dev/ublk-control (or io_uring) is missing."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.malloc import MallocModule
from pybdev.cpus import format_cpumask, parse_cpumask
from pybdev.ublk import uapi
from pybdev.ublk.control import Control, ControlError
from pybdev.ublk.target import MAX_IO_BYTES, device_params
from tests.conftest import RPC_PY, Target


# -- device parameters from a bdev ----------------------------------------------------------
def _malloc(bs: int = 4096, blocks: int = 2048, **kw: Any) -> Any:
    layer = BdevLayer()
    module = MallocModule(layer)
    layer.add_module(module)
    return module.create(name="m", block_size=bs, num_blocks=blocks, **kw)


def test_params_from_malloc() -> None:
    p = device_params(_malloc(4096, 2048))
    assert (p.logical_bs_shift, p.physical_bs_shift, p.io_min_shift, p.io_opt_shift) == (
        12, 12, 12, 12)
    assert p.dev_sectors == 2048 * 8
    assert p.max_sectors == MAX_IO_BYTES >> 9
    assert p.attrs == uapi.UBLK_ATTR_VOLATILE_CACHE | uapi.UBLK_ATTR_FUA
    assert p.types == uapi.UBLK_PARAM_TYPE_BASIC | uapi.UBLK_PARAM_TYPE_DISCARD
    align, gran, max_discard, max_wz, segs = p.discard  # type: ignore[misc]
    assert (align, gran, segs) == (0, 4096, 1)
    assert max_discard > 0 and max_wz > 0


def test_params_512_physical_and_optimal_boundary() -> None:
    p = device_params(_malloc(512, 4096, physical_block_size=4096, optimal_io_boundary=16))
    assert (p.logical_bs_shift, p.physical_bs_shift, p.io_min_shift) == (9, 12, 9)
    assert p.io_opt_shift == 13  # 16 blocks of 512
    assert p.dev_sectors == 4096


def test_params_without_flush_or_unmap() -> None:
    bdev = _malloc()
    bdev.io_types = frozenset({"read", "write"})
    p = device_params(bdev)
    assert p.attrs == 0
    # write_zeroes is emulated by writes, so its limit stays; discard does not.
    assert p.discard is not None and p.discard[2] == 0 and p.discard[3] > 0
    bdev.io_types = frozenset({"read"})
    p = device_params(bdev)
    assert p.attrs == uapi.UBLK_ATTR_READ_ONLY and p.discard is None


def test_params_max_io_of_bdev() -> None:
    bdev = _malloc()
    bdev.max_io_bytes = 65536
    assert device_params(bdev).max_sectors == 128


# -- cpumask ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "cpus"), [
    ("0x1", {0}), ("3", {0, 1}), ("0XA", {1, 3}), ("[0]", {0}), ("[0,2-3]", {0, 2, 3}),
])
def test_parse_cpumask(text: str, cpus: set[int]) -> None:
    assert parse_cpumask(text) == cpus


@pytest.mark.parametrize("text", ["", "0x", "0x0", "zz", "[", "[]", "[3-1]", "[a]"])
def test_parse_cpumask_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpumask(text)


def test_format_cpumask() -> None:
    assert format_cpumask(frozenset({0, 1})) == "3"
    assert format_cpumask(frozenset({1, 3, 4, 5, 6, 7})) == "fa"


# -- the control path against a fake ring ------------------------------------------------------
class FakeRing:
    """Records the URING_CMD; answers with ``res`` (or never, when ``res`` is None)."""

    def __init__(self, res: int | None, fill: bytes = b"") -> None:
        self.res = res
        self.fill = fill
        self.cmds: list[tuple[int, int, bytes]] = []
        self.cancelled = False
        self.closed = False

    def prep_uring_cmd(self, fd: int, cmd_op: int, cmd: bytes, user_data: int,
                       sqe_flags: int = 0) -> None:
        self.cmds.append((fd, cmd_op, cmd))
        self.user_data = user_data

    def prep_cancel(self, target: int, user_data: int, *, flags: int = 0) -> None:
        self.cancelled = True

    def submit_and_reap(self, wait_nr: int = 1, timeout: float | None = None
                        ) -> list[tuple[int, int, int]]:
        if self.cancelled:
            return [(self.user_data, -errno.ECANCELED, 0)]
        if self.res is None:
            return []
        if self.fill:
            import ctypes
            _, _, cmd = self.cmds[-1]
            addr = int.from_bytes(cmd[8:16], "little")
            ctypes.memmove(addr, self.fill, len(self.fill))
        return [(self.user_data, self.res, 0)]

    def close(self) -> None:
        self.closed = True


def _control(ring: FakeRing, encode: bool = True) -> Control:
    return Control(99, ThreadPoolExecutor(1), ioctl_encode=encode,
                   ring_factory=lambda: ring)


def test_control_command_encoding() -> None:
    ring = FakeRing(0)
    _control(ring).run_sync(uapi.UBLK_CMD_STOP_DEV, 7)
    fd, op, cmd = ring.cmds[0]
    assert (fd, op) == (99, 0xC0207507)
    assert cmd[:8] == (7).to_bytes(4, "little") + b"\xff\xff" + b"\0\0"
    assert ring.closed
    ring = FakeRing(0)
    _control(ring, encode=False).run_sync(uapi.UBLK_CMD_STOP_DEV, 7)
    assert ring.cmds[0][1] == uapi.UBLK_CMD_STOP_DEV
    ring = FakeRing(0)
    _control(ring, encode=False).run_sync(uapi.UBLK_CMD_GET_FEATURES, 0)
    assert ring.cmds[0][1] == 0x80207513  # always encoded


def test_control_features_buffer() -> None:
    ring = FakeRing(0, fill=(0x1FE).to_bytes(8, "little"))
    assert _control(ring).get_features_sync() == 0x1FE
    _, _, cmd = ring.cmds[0]
    assert int.from_bytes(cmd[6:8], "little") == 8  # len
    assert int.from_bytes(cmd[8:16], "little") != 0  # addr of our buffer


def test_control_error_and_timeout() -> None:
    with pytest.raises(ControlError) as info:
        _control(FakeRing(-errno.EEXIST)).run_sync(uapi.UBLK_CMD_ADD_DEV, 1,
                                                    buf=bytearray(64))
    assert info.value.errno == errno.EEXIST and "ADD_DEV" in str(info.value)
    ring = FakeRing(None)
    with pytest.raises(ControlError) as info:
        _control(ring).run_sync(uapi.UBLK_CMD_START_DEV, 1, timeout=0.01)
    assert info.value.errno == errno.ETIMEDOUT
    assert ring.cancelled and ring.closed


# -- RPCs where the driver (or io_uring) is missing -------------------------------------------
pytestmark_no_driver = pytest.mark.skipif(os.path.exists("/dev/ublk-control"),
                                          reason="this machine has ublk_drv loaded")


@pytestmark_no_driver
def test_rpcs_without_driver(start_target: Callable[..., Target]) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 256, "block_size": 4096})
    err = t.rpc_error("ublk_create_target")
    assert err["code"] == -32603
    assert err["message"].startswith("No such file or directory")
    assert "/dev/ublk-control" in err["message"]
    assert t.rpc_error("ublk_start_disk", {"bdev_name": "Malloc0", "ublk_id": 0}
                       )["code"] == -19
    assert t.rpc_error("ublk_stop_disk", {"ublk_id": 0})["code"] == -19
    assert t.rpc_error("ublk_recover_disk", {"bdev_name": "Malloc0", "ublk_id": 0}
                       )["code"] == -19
    assert t.rpc("ublk_get_disks") == []
    assert t.rpc("ublk_get_disks", {"ublk_id": 0}) == []
    assert t.rpc_error("ublk_get_disks", {"ublk_id": 1})["code"] == -19
    err = t.rpc_error("ublk_destroy_target")
    assert (err["code"], err["message"].split(":")[0]) == (-32603, "No such file or directory")
    for params in ({"cpumask": "0x2"}, {"cpumask": ""}, {"cpumask": "xyz"},
                   {"disable_user_copy": 1}, {"extra": True}):
        err = t.rpc_error("ublk_create_target", params)
        assert (err["code"], err["message"].split(":")[0]) == (-32603, "Invalid argument")
    err = t.rpc_error("ublk_start_disk", {"bdev_name": "Malloc0"})
    assert err["code"] == -32603 and err["message"].startswith("spdk_json_decode_object")
    # everything else still works, and the config has no ublk entries
    assert t.rpc("framework_get_config", {"name": "ublk"}) == []
    assert t.rpc("bdev_get_bdevs", {"name": "Malloc0"})[0]["name"] == "Malloc0"


def test_rpc_without_io_uring(start_target: Callable[..., Target],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBDEV_URING_DISABLE", "1")
    t = start_target()
    err = t.rpc_error("ublk_create_target")
    assert err["code"] == -32603
    assert err["message"].startswith("Operation not supported: io_uring unavailable")


def test_cli_shapes(tmp_path: Path) -> None:
    def dry(*args: str) -> str:
        res = subprocess.run([sys.executable, str(RPC_PY), "--dry-run", *args],
                             capture_output=True, text=True, check=True)
        return res.stdout

    out = dry("ublk_start_disk", "Malloc0", "1", "-q", "2", "-d", "64")
    assert '"bdev_name": "Malloc0"' in out and '"num_queues": 2' in out
    assert '"queue_depth": 64' in out and '"ublk_id": 1' in out
    out = dry("ublk_create_target", "-m", "0x3", "--disable-user-copy")
    assert '"cpumask": "0x3"' in out and '"disable_user_copy": true' in out
    assert '"ublk_id": 4' in dry("ublk_get_disks", "-n", "4")
    assert '"ublk_id"' not in dry("ublk_get_disks")
    assert '"ublk_id": 2' in dry("ublk_recover_disk", "b", "2")
    assert '"ublk_id": 3' in dry("ublk_stop_disk", "3")
    assert "ublk_destroy_target" in dry("ublk_destroy_target")


# -- a device on the Export base, without a kernel: stop sequence, hot-remove, data path ----
class _FakeControl:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def stop_dev(self, dev_id: int) -> None:
        self.calls.append("STOP_DEV")

    async def del_dev(self, dev_id: int) -> None:
        self.calls.append("DEL_DEV")


class _FakeQueue:
    """What the device asks of a queue: liveness, close, and completions (NEED_GET_DATA)."""

    def __init__(self, max_io: int = 65536) -> None:
        self.alive = False
        self.closed = False
        self.q_id = 0
        self.user_copy = False
        self.max_io = max_io
        self.bufs = bytearray(4 * max_io)
        self.results: dict[int, int] = {}
        self.requests = 0  # counted by the device when the queue ends
        self.served_here = 0
        self.done: list[tuple[int, int]] = []  # what the poller thread commits next
        self.cdev_fd = -1

    def close(self) -> None:
        self.closed = True

    def stop(self) -> None:
        self.alive = False

    def complete(self, tag: int, result: int) -> None:
        self.results[tag] = result


@pytest.fixture
async def layer() -> Any:
    bdev_layer = BdevLayer()
    bdev_layer.add_module(MallocModule(bdev_layer))
    yield bdev_layer
    await bdev_layer.shutdown()


def _running_device(layer: BdevLayer) -> tuple[Any, Any, _FakeQueue]:
    from types import SimpleNamespace

    from pybdev.ublk.target import DeviceState, UblkDevice

    layer.module(MallocModule).create(name="M0", block_size=4096, num_blocks=256)
    target = SimpleNamespace(layer=layer, control=_FakeControl(), devices={})
    dev = UblkDevice(target, 3, 1, 4)  # type: ignore[arg-type]
    dev.open_bdev("M0")
    queue = _FakeQueue()
    dev.queues = [queue]  # type: ignore[list-item]
    dev.added = True
    dev.state = DeviceState.RUNNING
    target.devices[3] = dev
    return target, dev, queue


async def test_device_hot_remove_stops_then_deletes_the_kernel_device(layer: BdevLayer) -> None:
    from pybdev.ublk.target import DeviceState

    target, dev, queue = _running_device(layer)
    await layer.unregister(layer.get("M0"))  # returns once the device closed its descriptor
    assert target.control.calls == ["STOP_DEV", "DEL_DEV"]
    assert dev.state is DeviceState.STOPPED and queue.closed and dev.desc is None
    assert target.devices == {} and not dev.added
    await dev.stop()  # idempotent
    assert target.control.calls == ["STOP_DEV", "DEL_DEV"]


async def test_device_data_path_answers_through_the_status_table(layer: BdevLayer) -> None:
    target, dev, queue = _running_device(layer)
    payload = b"\x5a" * 8192
    dev._handle_batch(queue, [
        (0, uapi.UBLK_IO_OP_WRITE | uapi.UBLK_IO_F_FUA, 16, 8, memoryview(payload)),
        (1, uapi.UBLK_IO_OP_READ, 16, 8, None),
        (2, uapi.UBLK_IO_OP_FLUSH, 0, 0, None),
        (3, uapi.UBLK_IO_OP_WRITE_ZEROES, 8, 8, None),
        (4, uapi.UBLK_IO_OP_WRITE_SAME, 8, 8, None),  # no bdev call: not supported
        (5, uapi.UBLK_IO_OP_READ, 16, 256 * 8, None),  # beyond the end: -EINVAL -> -EIO
    ])
    assert queue.results == {0: 8192, 1: 8192, 2: 0, 3: 4096, 4: -errno.EOPNOTSUPP,
                             5: -errno.EIO}
    assert bytes(queue.bufs[queue.max_io:queue.max_io + 8192]) == payload
    await dev.stop()
    assert target.control.calls == ["STOP_DEV", "DEL_DEV"]


async def test_queue_thread_serves_thread_safe_bdevs_and_leaves_the_rest(
        layer: BdevLayer) -> None:
    """malloc declares thread_safe_submit: READ and WRITE complete inside _serve_here into
    the queue's list of results (no event loop); the rest is handed back for the loop, and
    so is everything once the bdev has QoS or another hook (``_hooked``)."""
    import threading

    _target, dev, queue = _running_device(layer)
    assert dev.desc is not None and dev.desc.bdev.thread_safe_submit
    payload = bytes(range(256)) * 32
    batch = [
        (0, uapi.UBLK_IO_OP_WRITE, 16, 8, memoryview(payload)),
        (1, uapi.UBLK_IO_OP_FLUSH, 0, 0, None),
        (2, uapi.UBLK_IO_OP_READ, 16, 8, None),
        (3, uapi.UBLK_IO_OP_READ, 16, 256 * 8, None),  # beyond the end: refused, counted not
    ]
    stats0 = dict(dev.desc.bdev.stat.ops)
    rest: list[Any] = []
    # Called from another thread, as the poller does.
    th = threading.Thread(target=lambda: rest.append(dev._serve_here(queue, batch)))
    th.start()
    th.join()
    assert rest == [[batch[1]]]
    assert queue.done == [(0, 8192), (2, 8192), (3, -errno.EIO)]
    assert bytes(queue.bufs[2 * queue.max_io:2 * queue.max_io + 8192]) == payload
    stats = dev.desc.bdev.stat.ops
    assert stats["write"] - stats0.get("write", 0) == 1
    assert stats["read"] - stats0.get("read", 0) == 1
    dev.desc.bdev._hooked = True  # what QoS, histograms and queue-depth sampling set
    assert dev._serve_here(queue, batch) is batch
    await dev.stop()
