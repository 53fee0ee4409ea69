"""split vbdev: in process (geometry, names, UUIDs, config life cycle) and on a target.

On a target: four splits of a malloc bdev, each exported over NBD; a pattern written with
qemu-io through one split is found at the right offset of the base and nowhere else;
deferred creation; the save_config round trip.
"""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import BdevLayer, ClaimType
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.split import SplitBdev, SplitModule
from pybdev.bdev.vbdev import part_uuid
from pybdev.errors import OperationError
from tests.conftest import Target
from tests.nbd.conftest import need, run, unix_uri

from .conftest import module, read

MB = 1 << 20


async def test_parts_geometry_names_uuids_and_io(layer: BdevLayer) -> None:
    base = module(layer, MallocModule).create(name="M", block_size=512, num_blocks=4 * 2048 + 3,
                                             optimal_io_boundary=8)
    sm = module(layer, SplitModule)
    assert sm.create("M", 4) == ["Mp0", "Mp1", "Mp2", "Mp3"]
    parts = [layer.get(f"Mp{i}") for i in range(4)]
    assert all(isinstance(p, SplitBdev) for p in parts)
    for i, p in enumerate(parts):
        assert p is not None
        info = p.info()
        assert (info["num_blocks"], info["product_name"]) == (2048, "Split Disk")
        assert info["driver_specific"] == {"split": {"base_bdev": "M", "offset_blocks": 2048 * i}}
        assert p.uuid == part_uuid(base.uuid, 2048 * i, 2048)
        assert p.optimal_io_boundary == 0  # a part does not inherit it (bdev_part)
    assert base.info()["claim_type"] == "exclusive_write" and len(base.claims) == 1
    desc = layer.open("Mp2", write=True)
    await desc.write_async(1024, b"\xab" * 512)
    reader = layer.open("M", write=False)
    assert await read(reader, (2 * 2048 + 2) * 512, 512) == b"\xab" * 512
    await desc.write_zeroes_async(1024, 512)
    assert await read(reader, (2 * 2048 + 2) * 512, 512) == bytes(512)
    with pytest.raises(OperationError):
        await desc.read_async(2048 * 512, 512)  # past the part's end
    reader.close()
    desc.close()
    assert sm.write_config() == [{"method": "bdev_split_create", "params": {
        "base_bdev": "M", "split_count": 4, "split_size_mb": 0}}]


async def test_size_clamping_and_refusals(layer: BdevLayer) -> None:
    malloc = module(layer, MallocModule)
    malloc.create(name="M", block_size=512, num_blocks=5 * 2048)  # 5 MiB
    sm = module(layer, SplitModule)
    assert sm.create("M", 8, 2) == ["Mp0", "Mp1"]  # 2 MiB each: only two fit
    assert layer.get("Mp1").num_blocks == 4096  # type: ignore[union-attr]
    for args, code in ((("N", 0), errno.EINVAL), (("M", 2), errno.EEXIST)):
        with pytest.raises(OperationError) as e:
            sm.create(*args)
        assert e.value.errno == code
    malloc.create(name="B", block_size=512, num_blocks=2)
    with pytest.raises(OperationError) as e:
        sm.create("B", 4)  # fewer blocks than splits
    assert e.value.errno == errno.EINVAL
    assert [c.base_bdev for c in sm.configs] == ["M"]  # a failed split config is dropped
    await sm.delete("M")
    assert layer.get("Mp0") is None and layer.get("M").claim_type is ClaimType.NONE  # type: ignore[union-attr]
    with pytest.raises(OperationError) as e:
        await sm.delete("M")
    assert e.value.errno == errno.ENOENT


async def test_deferred_and_base_removal_drops_the_config(layer: BdevLayer) -> None:
    sm = module(layer, SplitModule)
    assert sm.create("Later", 2) == []
    assert sm.write_config()[0]["params"]["base_bdev"] == "Later"  # saved while pending
    base = module(layer, MallocModule).create(name="Later", block_size=512, num_blocks=64)
    assert [b.name for b in layer] == ["Later", "Laterp0", "Laterp1"]
    await asyncio.wait_for(layer.unregister(base), 5)
    assert list(layer) == [] and sm.configs == []  # as SPDK: the config goes with the parts
    module(layer, MallocModule).create(name="Later", block_size=512, num_blocks=64)
    assert [b.name for b in layer] == ["Later"]
    # A pending config can be deleted (clear_config.py does).
    sm.create("Nowhere", 2)
    await sm.delete("Nowhere")
    assert sm.configs == []


# -- on a target -----------------------------------------------------------------------------

def bdev_entries(saved: str) -> list[dict[str, Any]]:
    doc = json.loads(saved)
    config: list[dict[str, Any]] = next(s["config"] for s in doc["subsystems"]
                                        if s["subsystem"] == "bdev")
    return config


def qemu_io(uri: str, *commands: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for c in commands:
        argv += ["-c", c]
    out = run([*argv, uri]).stdout
    assert "failed" not in out and "Pattern verification" not in out, out
    return out


@need("qemu-io")
def test_four_exported_splits_a_pattern_lands_where_it_should(
        start_target: Any, short_dir: Path) -> None:
    t: Target = start_target(sock=short_dir / "a.sock")
    sock = short_dir / "nbd.sock"
    t.cli("bdev_malloc_create", "-b", "M", "64", "512")
    assert t.cli("bdev_split_create", "M", "4").stdout.split() == ["Mp0", "Mp1", "Mp2", "Mp3"]
    uris = [t.rpc("nbd_start_disk", {"bdev_name": f"Mp{i}",
                                     "nbd_device": unix_uri(f"Mp{i}", sock)}) for i in range(4)]
    part = 16 * MB
    qemu_io(uris[2], "write -P 0xab 4096 64k")
    qemu_io(uris[2], "read -P 0 0 4096", "read -P 0xab 4096 64k",
            f"read -P 0 {4096 + 65536} {part - 4096 - 65536}")
    for i in (0, 1, 3):
        qemu_io(uris[i], f"read -P 0 0 {part}")  # nothing anywhere else

    # The base itself: its exports are refused while it is claimed...
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "M", "nbd_device": unix_uri("M", sock)})
    assert err["code"] == -errno.EPERM
    # ...and once the splits are gone (their exports with them), the pattern is at 2 x 16 MiB.
    assert t.rpc("bdev_split_delete", {"base_bdev": "M"}) is True
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == ["M"]
    uri = t.rpc("nbd_start_disk", {"bdev_name": "M", "nbd_device": unix_uri("M", sock)})
    qemu_io(uri, f"read -P 0 0 {2 * part + 4096}", f"read -P 0xab {2 * part + 4096} 64k",
            f"read -P 0 {2 * part + 4096 + 65536} {2 * part - 4096 - 65536}")
    assert t.rpc_error("bdev_split_delete", {"base_bdev": "M"}) == {
        "code": -32602, "message": "No such file or directory: no split configuration for M"}
    assert t.stop() == 0


def test_deferred_creation_and_save_config_round_trip(start_target: Any, short_dir: Path) -> None:
    t: Target = start_target(sock=short_dir / "a.sock")
    sock = short_dir / "nbd.sock"
    # SPDK's own client, for option and result parity.
    assert t.spdk("bdev_split_create", "-s", "2", "Later", "3").stdout.strip() == ""
    assert t.rpc("bdev_get_bdevs") == []
    t.cli("bdev_malloc_create", "-b", "Later", "8", "4096")
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == [
        "Later", "Laterp0", "Laterp1", "Laterp2"]
    assert t.rpc("bdev_get_bdevs", {"name": "Laterp2"})[0]["num_blocks"] == 512
    # A stack over a part, and an export of another part, both replayed.
    assert t.spdk("bdev_delay_create", "-b", "Laterp1", "-d", "D", "-r", "10", "-t", "50",
                  "-w", "20", "-n", "60").stdout.strip() == "D"
    t.spdk("bdev_delay_update_latency", "D", "avg_write", "30")
    t.cli("bdev_passthru_create", "-b", "Laterp0", "-p", "P")
    t.rpc("nbd_start_disk", {"bdev_name": "Laterp2", "nbd_device": unix_uri("Laterp2", sock)})
    assert t.spdk("bdev_split_create", "Nowhere", "2").stdout.strip() == ""
    err = t.rpc_error("bdev_split_create", {"base_bdev": "X", "split_count": 0})
    assert err == {"code": -32602, "message": "Failed to create 0 split bdevs from 'X': "
                                              "Invalid argument: split_count can't be 0"}
    err = t.rpc_error("bdev_split_create", {"base_bdev": "X", "split_count": -1})
    assert err["code"] == -32602 and err["message"].startswith("Invalid parameters"), err
    assert t.rpc_error("bdev_split_delete", {"name": "X"})["code"] == -32602
    saved = t.spdk("save_config").stdout
    delay_entry = next(e for e in bdev_entries(saved) if e["method"] == "bdev_delay_create")
    assert delay_entry["params"]["avg_write_latency"] == 30
    names = [b["name"] for b in t.rpc("bdev_get_bdevs")]
    assert t.stop() == 0

    cfg = short_dir / "cfg.json"
    cfg.write_text(saved)
    t2 = start_target("--json", str(cfg), sock=short_dir / "b.sock")
    assert sorted(b["name"] for b in t2.rpc("bdev_get_bdevs")) == sorted(names)
    assert t2.spdk("save_config").stdout == saved
    assert t2.stop() == 0
