"""delay vbdev: in process (latencies, queues, reset, life cycle) and through fio over NBD.

Latency assertions are lower bounds only: a held request completes no sooner than its
latency; how much later depends on the machine.
"""

from __future__ import annotations

import errno
import json
import subprocess
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevLayer
from pybdev.bdev.delay import NAMESPACE, DelayBdev, DelayModule
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.vbdev import sha1_uuid
from pybdev.errors import OperationError
from tests.conftest import Target
from tests.nbd.conftest import need

from .conftest import module


def delay(layer: BdevLayer, *, base: str = "M", name: str = "D", read_us: int = 0,
          write_us: int = 0) -> str:
    return module(layer, DelayModule).create(
        base_bdev_name=base, name=name, avg_read_latency=read_us, p99_read_latency=read_us,
        avg_write_latency=write_us, p99_write_latency=write_us)


async def test_create_info_uuid_and_claim(layer: BdevLayer) -> None:
    base = module(layer, MallocModule).create(name="M", block_size=512, num_blocks=64)
    dm = module(layer, DelayModule)
    assert dm.create(base_bdev_name="M", name="D", avg_read_latency=100, p99_read_latency=900,
                     avg_write_latency=200, p99_write_latency=800) == "D"
    d = layer.get("D")
    assert isinstance(d, DelayBdev)
    assert d.uuid == sha1_uuid(NAMESPACE, uuidlib.UUID(base.uuid).bytes)
    info = d.info()
    assert info["product_name"] == "delay" and info["num_blocks"] == 64
    assert info["driver_specific"] == {"delay": {
        "name": "D", "base_bdev_name": "M", "uuid": d.uuid, "avg_read_latency": 100,
        "p99_read_latency": 900, "avg_write_latency": 200, "p99_write_latency": 800}}
    assert base.info()["claim_type"] == "exclusive_write" and base.claim_module == "delay"
    assert dm.write_config() == [{"method": "bdev_delay_create", "params": {
        "name": "D", "base_bdev_name": "M", "uuid": d.uuid, "avg_read_latency": 100,
        "p99_read_latency": 900, "avg_write_latency": 200, "p99_write_latency": 800}}]
    with pytest.raises(OperationError) as e:
        dm.create(base_bdev_name="M", name="D2", avg_read_latency=10, p99_read_latency=9,
                  avg_write_latency=0, p99_write_latency=0)
    assert e.value.errno == errno.EINVAL  # p99 below average
    with pytest.raises(OperationError) as e:
        delay(layer, base="Other", name="D")
    assert e.value.errno == errno.EEXIST


async def test_reads_and_writes_are_held_and_other_io_is_not(layer: BdevLayer) -> None:
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=64)
    delay(layer, read_us=30_000, write_us=20_000)
    desc = layer.open("D", write=True)
    start = time.monotonic()
    await desc.write_async(0, b"\x77" * 512)
    assert time.monotonic() - start >= 0.020
    start = time.monotonic()
    assert await desc.read_async(0, 512) == b"\x77" * 512
    assert time.monotonic() - start >= 0.030
    got: list[int] = []
    desc.unmap(512, 512, lambda status, _: got.append(status))
    assert got == [0]  # unmap completes when the base does: not held
    desc.close()


async def test_data_with_separate_metadata_is_held_too(layer: BdevLayer) -> None:
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=64, md_size=8)
    delay(layer, read_us=30_000, write_us=20_000)
    desc = layer.open("D", write=True)
    start = time.monotonic()
    await desc.write_md_async(0, b"\x77" * 512, b"\x01" * 8)
    assert time.monotonic() - start >= 0.020
    start = time.monotonic()
    assert await desc.read_md_async(0, 512) == (b"\x77" * 512, b"\x01" * 8)
    assert time.monotonic() - start >= 0.030
    desc.close()


async def test_reset_aborts_held_requests(layer: BdevLayer) -> None:
    module(layer, MallocModule).create(name="M", block_size=512, num_blocks=64)
    delay(layer, read_us=10_000_000)  # 10 s: only the reset can end it
    desc = layer.open("D", write=False)
    got: list[int] = []
    desc.read(0, 512, lambda status, _: got.append(status))
    desc.read(512, 512, lambda status, _: got.append(status))
    assert got == []
    await desc.reset_async()
    assert got == [-errno.ECANCELED] * 2
    desc.close()


async def test_update_latency_is_live_and_deferred_creation(layer: BdevLayer) -> None:
    dm = module(layer, DelayModule)
    delay(layer, base="Later", read_us=1)
    assert layer.get("D") is None and dm.write_config() == []  # only built ones are saved
    module(layer, MallocModule).create(name="Later", block_size=512, num_blocks=8)
    desc = layer.open("D", write=False)
    dm.update_latency("D", "avg_read", 40_000)
    dm.update_latency("D", "p99_read", 40_000)
    start = time.monotonic()
    await desc.read_async(0, 512)
    assert time.monotonic() - start >= 0.040
    assert dm.write_config()[0]["params"]["avg_read_latency"] == 40_000
    with pytest.raises(OperationError) as e:
        dm.update_latency("Later", "avg_read", 5)  # not a delay bdev
    assert e.value.errno == errno.ENODEV
    desc.close()
    await dm.delete("D")
    assert dm.configs == [] and layer.get("Later").claim_module is None  # type: ignore[union-attr]
    with pytest.raises(OperationError) as e:
        await dm.delete("D")
    assert e.value.errno == errno.ENODEV


# -- through NBD, on a target ----------------------------------------------------------------

def fio_read(uri: str, runtime: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["fio", "--name=delay", "--ioengine=nbd", f"--uri={uri}", "--rw=randread", "--bs=4k",
         "--iodepth=1", "--size=8M", "--time_based", f"--runtime={runtime}",
         "--output-format=json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def mean_read_latency_ms(proc: subprocess.Popen[str]) -> tuple[float, int]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job["read"]["lat_ns"]["mean"] / 1e6, job["read"]["total_ios"]


@need("fio")
def test_fio_over_nbd_sees_the_latency_and_the_target_stays_responsive(
        start_target: Any, short_dir: Path) -> None:
    t: Target = start_target(sock=short_dir / "a.sock")
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 16384, "block_size": 512})
    assert t.cli("bdev_delay_create", "-b", "M", "-d", "D", "-r", "2000", "-t", "2000",
                 "-w", "0", "-n", "0").stdout.strip() == "D"
    uri = t.rpc("nbd_start_disk", {"bdev_name": "D", "nbd_device": "nbd://127.0.0.1:0/D"})

    proc = fio_read(uri, 3)
    time.sleep(0.5)
    # The loop is not blocked by held requests: RPCs are answered while fio runs.
    for _ in range(5):
        assert t.rpc("bdev_get_bdevs", {"name": "D"})[0]["driver_specific"]["delay"][
            "avg_read_latency"] == 2000
    assert proc.poll() is None, "fio ended before the RPCs were answered"
    mean_ms, ios = mean_read_latency_ms(proc)
    assert ios > 0 and mean_ms >= 2.0, mean_ms

    # Live update, through rpc.py's command: every read now takes at least 5 ms.
    t.cli("bdev_delay_update_latency", "D", "p99_read", "5000")
    t.cli("bdev_delay_update_latency", "D", "avg_read", "5000")
    mean_ms, ios = mean_read_latency_ms(fio_read(uri, 1.5))
    assert ios > 0 and mean_ms >= 5.0, mean_ms
    info = t.rpc("bdev_get_bdevs", {"name": "D"})[0]["driver_specific"]["delay"]
    assert (info["avg_read_latency"], info["p99_read_latency"]) == (5000, 5000)

    assert t.rpc_error("bdev_delay_update_latency", {
        "delay_bdev_name": "M", "latency_type": "avg_read", "latency_us": 1}) == {
        "code": -32602, "message": "The requested bdev does not exist."}
    assert t.rpc_error("bdev_delay_update_latency", {
        "delay_bdev_name": "D", "latency_type": "p50_read", "latency_us": 1})["code"] == -32603
    assert t.rpc_error("bdev_delay_create", {
        "name": "X", "base_bdev_name": "M", "avg_read_latency": 5, "p99_read_latency": 1,
        "avg_write_latency": 0, "p99_write_latency": 0}) == {
        "code": -22, "message": "Invalid argument: p99 latency is less than average latency"}
    err = t.rpc_error("bdev_delay_create", {
        "name": "X", "base_bdev_name": "M", "avg_read_latency": "5", "p99_read_latency": 1,
        "avg_write_latency": 0, "p99_write_latency": 0})
    assert err["code"] == -32603 and err["message"].startswith("spdk_json_decode_object failed")
    t.rpc("bdev_delay_delete", {"name": "D"})
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == ["M"]
    assert t.rpc_error("bdev_delay_delete", {"name": "D"})["code"] == -errno.ENODEV
    assert t.stop() == 0
