"""save_config of the bdev subsystem and its round trip, as SPDK's rpc_batching.sh checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .test_rpc import server

STACK = [
    "bdev_malloc_create 8 512",  # Malloc0, auto-named
    "bdev_malloc_create -b Base 4 4096 -o 8",
    "bdev_null_create Null0 16 512 -m 8 -a 2",
    "bdev_passthru_create -b Malloc0 -p PT0",
    "bdev_passthru_create -b Missing -p PTLater",  # deferred: not saved
    "bdev_passthru_create -b AIO0 -p PTonAIO",  # saved before the aio it sits on
    "bdev_error_create Base",
    "bdev_error_create Nowhere --uuid 6a9f2f8e-52a4-4d7e-9c53-3b2e0d3e4f11",  # deferred: saved
    "bdev_passthru_create -b EE_Base -p PTonEE -u 1b4e28ba-2fa1-11d2-883f-0016d3cca427",
]


def build(t: Any, img: Path) -> None:
    lines = [*STACK, f"bdev_aio_create {img} AIO0 4096 --fallocate",
             f"bdev_aio_create {img} AIO1 512 -r"]
    assert [r[0] for r in server(t, "spdk", *lines)] == [0] * len(lines)


def methods(config: list[Any]) -> list[Any]:
    return [[e["method"] for e in x] if isinstance(x, list) else x["method"] for x in config]


@pytest.mark.parametrize("batches", ["--no-with-batches", "--with-batches"])
def test_stack_round_trip(start_target: Any, short_dir: Path, batches: str) -> None:
    img = short_dir / "aio.img"
    img.write_bytes(bytes(1 << 20))
    t = start_target(sock=short_dir / "a.sock")
    build(t, img)
    names = [b["name"] for b in t.rpc("bdev_get_bdevs")]
    assert names == ["Malloc0", "Base", "Null0", "PT0", "EE_Base", "PTonEE", "AIO0", "PTonAIO",
                     "AIO1"]
    saved = t.spdk("save_config", batches).stdout
    bdev = next(s["config"] for s in json.loads(saved)["subsystems"] if s["subsystem"] == "bdev")
    # SPDK's module order: modules with examine (error, passthru) first, then the bases;
    # the vbdev creates replay deferred (spdk_bdev_module_list_add in lib/bdev/bdev.c).
    expected = ["bdev_set_options", "bdev_error_create", "bdev_error_create",
                "bdev_passthru_create", "bdev_passthru_create", "bdev_passthru_create",
                "bdev_malloc_create", "bdev_malloc_create", "bdev_null_create",
                "bdev_nvme_set_options", "bdev_nvme_set_hotplug",
                "bdev_aio_create", "bdev_aio_create", "bdev_wait_for_examine"]
    if batches == "--with-batches":
        # bdev_nvme's (empty) batch of attach calls sits between its two entries
        expected[6:11] = [["bdev_malloc_create", "bdev_malloc_create"], ["bdev_null_create"],
                          "bdev_nvme_set_options", [], "bdev_nvme_set_hotplug"]
    assert methods(bdev) == expected
    assert bdev[-1] == {"method": "bdev_wait_for_examine"}
    entries = [e for x in bdev for e in (x if isinstance(x, list) else [x])]
    pts = [e["params"] for e in entries if e["method"] == "bdev_passthru_create"]
    assert [list(p) for p in pts] == [["base_bdev_name", "name", "uuid"]] * 3
    # In create order (SPDK: build order), which a restart keeps (docs/vbdev-framework.md).
    assert [p["name"] for p in pts] == ["PT0", "PTonAIO", "PTonEE"]
    errs = [e["params"] for e in entries if e["method"] == "bdev_error_create"]
    assert errs == [{"base_name": "Base"},
                    {"base_name": "Nowhere", "uuid": "6a9f2f8e-52a4-4d7e-9c53-3b2e0d3e4f11"}]
    aios = [e["params"] for e in entries if e["method"] == "bdev_aio_create"]
    assert [list(p) for p in aios] == [
        ["name", "block_size", "filename", "readonly", "fallocate", "uuid", "nowait"]] * 2
    nulls = [e["params"] for e in entries if e["method"] == "bdev_null_create"]
    assert list(nulls[0]) == [
        "name", "num_blocks", "block_size", "physical_block_size", "md_size", "dif_type",
        "dif_is_head_of_md", "dif_pi_format", "uuid", "preferred_write_granularity",
        "preferred_write_alignment", "optimal_write_size", "preferred_unmap_granularity",
        "preferred_unmap_alignment"]
    assert t.stop() == 0

    cfg = short_dir / "cfg.json"
    cfg.write_text(saved)
    t2 = start_target("--json", str(cfg), sock=short_dir / "b.sock")
    # Each vbdev registers right after its base now (built at the base's examine).
    assert [b["name"] for b in t2.rpc("bdev_get_bdevs")] == [
        "Malloc0", "PT0", "Base", "EE_Base", "PTonEE", "Null0", "AIO0", "PTonAIO", "AIO1"]
    assert t2.spdk("save_config", batches).stdout == saved  # byte for byte
    # The deferred error bdev comes up when its base does, with the saved UUID.
    t2.rpc("bdev_malloc_create", {"name": "Nowhere", "num_blocks": 8, "block_size": 512})
    ee = t2.rpc("bdev_get_bdevs", {"name": "EE_Nowhere"})[0]
    assert ee["uuid"] == "6a9f2f8e-52a4-4d7e-9c53-3b2e0d3e4f11"
    assert t2.stop() == 0

    # The client-side replay (rpc.py load_config) gives the same state.
    t3 = start_target(sock=short_dir / "c.sock")
    t3.spdk("load_config", "-j", str(cfg))
    assert t3.spdk("save_config", batches).stdout == saved
    assert t3.stop() == 0


def test_rpc_batching(start_target: Any, short_dir: Path) -> None:
    """test/rpc/rpc_batching.sh: 50 null bdevs, batches on and off, exact round trip."""
    t = start_target(sock=short_dir / "a.sock")
    lines = [f"bdev_null_create Null{i} 100 512" for i in range(50)]
    assert [r[0] for r in server(t, "cli", *lines)] == [0] * 50
    batched = t.spdk("save_config", "--with-batches").stdout
    flat = t.cli("save_config", "--no-with-batches").stdout
    bdev = next(s["config"] for s in json.loads(batched)["subsystems"]
                if s["subsystem"] == "bdev")
    nested = [x for x in bdev if isinstance(x, list)]
    # malloc's empty batch, null's, bdev_nvme's empty batch of attach calls
    assert [len(x) for x in nested] == [0, 50, 0]
    assert all(e["method"] == "bdev_null_create" for e in nested[1])
    flat_bdev = next(s["config"] for s in json.loads(flat)["subsystems"]
                     if s["subsystem"] == "bdev")
    assert not any(isinstance(x, list) for x in flat_bdev)
    assert sum(e["method"] == "bdev_null_create" for e in flat_bdev) == 50
    assert t.stop() == 0
    cfg = short_dir / "batched.json"
    cfg.write_text(batched)
    t2 = start_target("--json", str(cfg), sock=short_dir / "b.sock")
    assert len(t2.rpc("bdev_get_bdevs")) == 50
    assert t2.spdk("save_config", "--with-batches").stdout == batched
    assert t2.stop() == 0
