"""QoS rate limits (pybdev/bdev/qos.py): SPDK's arithmetic on a controllable clock, the
bdev layer's queue, and ``bdev_set_qos_limit`` on a real target (lib/bdev/bdev.c and
bdev_rpc.c at SPDK's HEAD). The rate with real I/O is measured in bench/qos_fio.py."""

from __future__ import annotations

import errno
import functools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevLayer, Descriptor
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.qos import TIMESLICE_NS, Qos, to_per_second
from tests.conftest import Target

from .conftest import module, names

MIB = 1024 * 1024


class FakeTimer:
    """A controllable clock and ``call_later``: time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0
        self.armed: list[tuple[int, Callable[[], None]]] = []

    def clock(self) -> int:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer.Handle:
        entry = (self.now + round(delay * 1e9), callback)
        self.armed.append(entry)
        return FakeTimer.Handle(self, entry)

    class Handle:
        def __init__(self, timer: FakeTimer, entry: tuple[int, Callable[[], None]]) -> None:
            self.timer, self.entry = timer, entry

        def cancel(self) -> None:
            if self.entry in self.timer.armed:
                self.timer.armed.remove(self.entry)

    def advance(self, ns: int) -> None:
        """Let ``ns`` pass, firing each timer when it is due (in order)."""
        end = self.now + ns
        while self.armed and min(self.armed, key=lambda e: e[0])[0] <= end:
            entry = min(self.armed, key=lambda e: e[0])
            self.armed.remove(entry)
            self.now = max(self.now, entry[0])
            entry[1]()
        self.now = end


@pytest.fixture
def timer() -> FakeTimer:
    return FakeTimer()


def qos(timer: FakeTimer, **limits: int) -> Qos:
    q = Qos(timer.clock, timer.call_later)
    q.set_limits({k: to_per_second(k, v) for k, v in limits.items()})
    return q


def test_iops_quota_per_timeslice(timer: FakeTimer) -> None:
    q = qos(timer, rw_ios_per_sec=3000)  # 3 per 1 ms timeslice
    assert q.max_per_slice[0] == 3
    assert [q.admit(True, 4096) for _ in range(4)] == [True, True, True, False]
    released: list[int] = []
    for n in range(5):
        q.enqueue(True, 4096, functools.partial(released.append, n), lambda _s: None)
    assert released == [] and len(timer.armed) == 1  # one timer, at the slice boundary
    assert timer.armed[0][0] == TIMESLICE_NS
    timer.advance(TIMESLICE_NS)
    assert released == [0, 1, 2]
    timer.advance(TIMESLICE_NS)
    assert released == [0, 1, 2, 3, 4]
    assert timer.armed == []  # nothing waits: no timer, the loop sleeps


def test_bytes_may_overrun_and_the_debt_is_paid_later(timer: FakeTimer) -> None:
    q = qos(timer, rw_mbytes_per_sec=1)
    assert q.max_per_slice[1] == MIB * 1000 // 1_000_000  # 1048 bytes per timeslice
    assert q.admit(False, 4096)  # any quota left lets a request through whole
    assert q.remaining[1] == 1048 - 4096
    released: list[int] = []
    q.enqueue(False, 4096, lambda: released.append(timer.now), lambda _s: None)
    timer.advance(2 * TIMESLICE_NS)
    assert released == []  # -3048 + 2 * 1048 = -952: still in debt
    assert q.remaining[1] == -952
    timer.advance(TIMESLICE_NS)
    assert released == [3 * TIMESLICE_NS]  # -952 + 1048 = 96 > 0: it goes, whole
    assert q.remaining[1] == 96 - 4096


def test_unused_quota_does_not_pile_up(timer: FakeTimer) -> None:
    q = qos(timer, rw_ios_per_sec=2000)
    timer.advance(5 * 10**9)  # idle: SPDK's poller reset the quota every slice
    assert [q.admit(True, 512) for _ in range(3)] == [True, True, False]


def test_a_late_timer_releases_every_slice_that_passed(timer: FakeTimer) -> None:
    q = qos(timer, rw_ios_per_sec=2000)
    released: list[int] = []
    assert q.admit(True, 512) and q.admit(True, 512)
    for n in range(10):
        q.enqueue(True, 512, functools.partial(released.append, n), lambda _s: None)
    timer.armed.clear()  # the loop was busy: the timer fires three slices late
    timer.now += 3 * TIMESLICE_NS
    q.tick()
    assert released == list(range(6))  # 3 slices x 2 I/Os, so the long-run rate holds


def test_read_passes_a_write_held_by_the_write_limit(timer: FakeTimer) -> None:
    q = qos(timer, w_mbytes_per_sec=1, r_mbytes_per_sec=10)
    order: list[str] = []
    assert q.admit(False, 8192)  # the write quota is now in debt
    q.enqueue(False, 4096, lambda: order.append("write"), lambda _s: None)
    q.enqueue(True, 4096, lambda: order.append("read"), lambda _s: None)
    assert order == ["read"]  # SPDK's scan submits what the quota allows, in order
    for _ in range(8):
        timer.advance(TIMESLICE_NS)
    assert order == ["read", "write"]


def test_all_limits_must_allow_and_a_refusal_takes_nothing(timer: FakeTimer) -> None:
    q = qos(timer, rw_ios_per_sec=1000, r_mbytes_per_sec=1)
    assert q.admit(True, 512)  # takes 1 I/O and 512 bytes
    assert q.remaining == [0, 0, 1048 - 512, 0]
    assert not q.admit(True, 512)  # the I/O limit refuses; the bytes stay
    assert q.remaining == [0, 0, 1048 - 512, 0]


def test_rounding_and_units(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "pybdev.bdev"):
        assert to_per_second("rw_ios_per_sec", 1500) == 2000
    assert "Requested rate limit 1500 is not a multiple of 1000" in caplog.text
    assert "Round up the rate limit to 2000" in caplog.text
    assert to_per_second("rw_ios_per_sec", 1000) == 1000
    assert to_per_second("w_mbytes_per_sec", 3) == 3 * MIB
    assert to_per_second("r_mbytes_per_sec", 2**64) == (2**64 - 1) // MIB * MIB


def test_disabling_submits_and_failing_completes_what_waits(timer: FakeTimer) -> None:
    q = qos(timer, rw_ios_per_sec=1000)
    assert q.admit(True, 512)
    submitted: list[int] = []
    failed: list[int] = []
    q.enqueue(True, 512, lambda: submitted.append(1), failed.append)
    q.submit_all()
    assert submitted == [1] and timer.armed == []
    q.enqueue(True, 512, lambda: submitted.append(2), failed.append)
    q.fail_all(-errno.ENODEV)
    assert failed == [-errno.ENODEV] and submitted == [1] and timer.armed == []


# -- in the bdev layer ---------------------------------------------------------------------

def reads(desc: Descriptor, count: int, out: list[tuple[int, int]]) -> None:
    for i in range(count):
        desc.read(i * 512, 512, functools.partial(record, out, i))


def record(out: list[tuple[int, int]], i: int, status: int, _data: Any) -> None:
    out.append((i, status))


async def test_layer_queues_reads_and_writes_only(layer: BdevLayer, timer: FakeTimer) -> None:
    bdev = module(layer, MallocModule).create(name="Q0", block_size=512, num_blocks=64)
    bdev.stat.reset("all")  # the lvol module's examine read the bdev
    desc = layer.open("Q0", write=True)
    assert not bdev._hooked  # QoS off: the fast path's one attribute check
    bdev.qos = qos(timer, rw_ios_per_sec=2000)
    bdev.update_hooks()
    done: list[tuple[int, int]] = []
    reads(desc, 5, done)
    assert done == [(0, 0), (1, 0)]
    other: list[int] = []
    desc.unmap(0, 512, lambda s, _d: other.append(s))  # not limited, as in SPDK
    desc.flush(0, 512, lambda s, _d: other.append(s))
    assert other == [0, 0]
    timer.advance(TIMESLICE_NS)
    assert [i for i, _ in done] == [0, 1, 2, 3]
    timer.advance(TIMESLICE_NS)
    assert [i for i, _ in done] == [0, 1, 2, 3, 4]
    assert bdev.stat.ops["read"] == 5
    desc.close()


async def test_data_with_separate_metadata_is_limited_too(layer: BdevLayer,
                                                           timer: FakeTimer) -> None:
    """read_md/write_md count as reads and writes, as SPDK's *_with_md calls do."""
    bdev = module(layer, MallocModule).create(name="Q0", block_size=512, num_blocks=64,
                                              md_size=8)
    bdev.stat.reset("all")  # the lvol module's examine read the bdev
    desc = layer.open("Q0", write=True)
    bdev.qos = qos(timer, rw_ios_per_sec=2000)  # two per 1 ms timeslice
    bdev.update_hooks()
    done: list[tuple[int, int]] = []
    for i in range(3):
        desc.write_md(i * 512, bytes([i]) * 512, bytes([i]) * 8,
                      functools.partial(record, done, i))
    desc.read_md(512, 512, lambda s, d: done.append((9, s)) if bytes(d[1]) == b"\x01" * 8
                 else done.append((-1, s)))
    assert done == [(0, 0), (1, 0)]
    timer.advance(TIMESLICE_NS)
    assert done == [(0, 0), (1, 0), (2, 0), (9, 0)]
    assert bdev.stat.ops["write"] == 3 and bdev.stat.ops["read"] == 1
    desc.close()


async def test_unregister_fails_what_waits(layer: BdevLayer, timer: FakeTimer) -> None:
    bdev = module(layer, MallocModule).create(name="Q0", block_size=512, num_blocks=64)
    desc = layer.open("Q0", write=True)
    bdev.qos = qos(timer, rw_ios_per_sec=1000)
    bdev.update_hooks()
    done: list[tuple[int, int]] = []
    reads(desc, 3, done)
    desc.close()
    await layer.unregister(bdev)
    assert done == [(0, 0), (1, -errno.ENODEV), (2, -errno.ENODEV)]
    assert timer.armed == []


# -- over RPC --------------------------------------------------------------------------------

@pytest.fixture
def t(shared_target: Target) -> Iterator[Target]:
    shared_target.rpc("bdev_malloc_create", {"name": "Q0", "num_blocks": 64, "block_size": 512})
    yield shared_target
    shared_target.rpc("bdev_malloc_delete", {"name": "Q0"})
    assert names(shared_target) == []


def limits(t: Target) -> dict[str, int]:
    out: dict[str, int] = t.rpc("bdev_get_bdevs", {"name": "Q0"})[0]["assigned_rate_limits"]
    return out


def test_set_qos_limit_with_spdk_client(t: Target) -> None:
    t.spdk("bdev_set_qos_limit", "Q0", "--rw-ios-per-sec", "20000", "--r-mbytes-per-sec", "5")
    assert limits(t) == {"rw_ios_per_sec": 20000, "rw_mbytes_per_sec": 0,
                         "r_mbytes_per_sec": 5, "w_mbytes_per_sec": 0}
    # Limits not given are kept; 0 removes one.
    t.cli("bdev_set_qos_limit", "Q0", "--rw-ios-per-sec", "0", "--w-mbytes-per-sec", "7")
    assert limits(t) == {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
                         "r_mbytes_per_sec": 5, "w_mbytes_per_sec": 7}
    t.rpc("bdev_set_qos_limit", {"name": "Q0", "rw_ios_per_sec": 1500})  # rounded up
    assert limits(t)["rw_ios_per_sec"] == 2000
    assert "Round up the rate limit to 2000" in t.log()
    t.rpc("bdev_set_qos_limit", {"name": "Q0", "rw_ios_per_sec": 0, "r_mbytes_per_sec": 0,
                                 "w_mbytes_per_sec": 0})
    assert set(limits(t).values()) == {0}
    assert not [c for c in save(t) if c["method"] == "bdev_set_qos_limit"]


def save(t: Target) -> list[dict[str, Any]]:
    config = json.loads(t.cli("save_config").stdout)
    bdev = next(s for s in config["subsystems"] if s["subsystem"] == "bdev")
    entries: list[dict[str, Any]] = bdev["config"]
    return entries


def test_errors(t: Target) -> None:
    assert t.rpc_error("bdev_set_qos_limit", {"name": "Q0"}) == {
        "code": -22, "message": "No rate limits specified"}
    assert t.rpc_error("bdev_set_qos_limit", {"name": "nope", "rw_ios_per_sec": 1000}) == {
        "code": -19, "message": "No such device"}
    for bad in ({"name": "Q0", "rw_ios_per_sec": -1}, {"name": "Q0", "rw_ios_per_sec": "1"},
                {"name": "Q0", "bogus": 1}, {"rw_ios_per_sec": 1000}):
        err = t.rpc_error("bdev_set_qos_limit", bad)
        assert err["code"] == -32603
        assert err["message"].startswith("spdk_json_decode_object failed")


def test_saved_and_replayed(start_target: Callable[..., Target], tmp_path: Path) -> None:
    first = start_target()
    first.rpc("bdev_malloc_create", {"name": "Q0", "num_blocks": 64, "block_size": 512})
    first.rpc("bdev_set_qos_limit", {"name": "Q0", "rw_ios_per_sec": 3000,
                                     "w_mbytes_per_sec": 2})
    entries = save(first)
    methods = [c["method"] for c in entries]
    assert methods.index("bdev_set_qos_limit") > methods.index("bdev_malloc_create")
    assert entries[methods.index("bdev_set_qos_limit")]["params"] == {
        "name": "Q0", "rw_ios_per_sec": 3000, "w_mbytes_per_sec": 2}
    config = tmp_path / "saved.json"
    config.write_text(first.cli("save_config").stdout)
    second = start_target("--json", str(config))
    assert limits(second) == {"rw_ios_per_sec": 3000, "rw_mbytes_per_sec": 0,
                              "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 2}
    assert save(second) == entries
