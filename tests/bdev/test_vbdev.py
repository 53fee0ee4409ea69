"""The vbdev framework and SPDK's claim rules: in process, and on a real target.

In process: claims of every type with SPDK's refusals; a vbdev over several bases (a concat
written here, as a plugin would) built only once all bases exist and torn down when any
goes; parts over one base with rollback; the module order. On a target: issue 13's
sequence (an exported bdev cannot be claimed, so what the target accepts replays), the same
law over random sequences of vbdev, delete and export calls, and SPDK's clear_config.py flow
(delete in config order, with no error).
"""

from __future__ import annotations

import asyncio
import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.core import Bdev, BdevLayer, BdevState, Callback, ClaimType, Descriptor
from pybdev.bdev.malloc import MallocModule
from pybdev.bdev.passthru import PassthruModule
from pybdev.bdev.split import SplitModule
from pybdev.bdev.vbdev import StackedBdev, VbdevConfig, VbdevModule, VirtualBdev
from pybdev.errors import OperationError
from tests.conftest import Target

from .conftest import module, read


def malloc(layer: BdevLayer, name: str, blocks: int = 16) -> Bdev:
    return module(layer, MallocModule).create(name=name, block_size=512, num_blocks=blocks)


def refused(code: int, call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(OperationError) as e:
        call(*args, **kwargs)
    assert e.value.errno == code, e.value


# -- claims -----------------------------------------------------------------------------------

async def test_exclusive_write_is_refused_while_another_descriptor_writes(
        layer: BdevLayer) -> None:
    b = malloc(layer, "M")
    export = layer.open("M", write=True)  # an nbd export, say
    mine = layer.open("M", write=False)
    refused(errno.EPERM, layer.claim, mine, "passthru")
    assert b.info()["claimed"] is False and not mine.write_allowed
    export.close()
    layer.claim(mine, "passthru")
    assert mine.write_allowed  # the claim promotes a read-only descriptor (part base)
    assert (b.info()["claimed"], b.info()["claim_type"]) == (True, "exclusive_write")
    refused(errno.EPERM, layer.open, "M", write=True)
    mine.close()  # closing releases the claim
    assert b.claim_type is ClaimType.NONE and "claim_type" not in b.info()


async def test_read_many_write_one(layer: BdevLayer) -> None:
    b = malloc(layer, "M")
    other = layer.open("M", write=True)
    desc = layer.open("M", write=False)
    refused(errno.EPERM, layer.claim, desc, "lvol", ClaimType.READ_MANY_WRITE_ONE)
    other.close()
    refused(errno.EINVAL, layer.claim, desc, "lvol", ClaimType.READ_MANY_WRITE_ONE, key=7)
    layer.claim(desc, "lvol", ClaimType.READ_MANY_WRITE_ONE)
    assert desc.write_allowed and b.info()["claim_type"] == "read_many_write_one"
    reader = layer.open("M", write=False)  # readers may still open
    refused(errno.EPERM, layer.claim, reader, "other", ClaimType.READ_MANY_WRITE_ONE)
    refused(errno.EPERM, layer.claim, reader, "other", ClaimType.READ_MANY_WRITE_NONE)
    refused(errno.EPERM, layer.open, "M", write=True)
    reader.close()
    desc.close()
    assert b.claim_type is ClaimType.NONE


async def test_read_many_write_none_by_several_modules(layer: BdevLayer) -> None:
    b = malloc(layer, "M")
    writer = layer.open("M", write=True)
    a = layer.open("M", write=False)
    refused(errno.EPERM, layer.claim, a, "snap", ClaimType.READ_MANY_WRITE_NONE)
    refused(errno.EINVAL, layer.claim, writer, "snap", ClaimType.READ_MANY_WRITE_NONE)
    writer.close()
    layer.claim(a, "snap", ClaimType.READ_MANY_WRITE_NONE)
    c = layer.open("M", write=False)
    layer.claim(c, "clone", ClaimType.READ_MANY_WRITE_NONE)
    refused(errno.EPERM, layer.claim, c, "again", ClaimType.READ_MANY_WRITE_NONE)  # one per desc
    assert not a.write_allowed and not c.write_allowed
    assert [x.module for x in b.claims] == ["snap", "clone"]
    refused(errno.EPERM, layer.open, "M", write=True)
    a.close()
    assert b.info()["claim_type"] == "read_many_write_none"  # clone still holds one
    c.close()
    assert b.info()["claimed"] is False


async def test_read_many_write_shared_needs_the_same_key(layer: BdevLayer) -> None:
    b = malloc(layer, "M")
    a = layer.open("M", write=False)
    refused(errno.EINVAL, layer.claim, a, "cluster", ClaimType.READ_MANY_WRITE_SHARED)
    layer.claim(a, "cluster", ClaimType.READ_MANY_WRITE_SHARED, key=42)
    c = layer.open("M", write=False)
    refused(errno.EPERM, layer.claim, c, "cluster", ClaimType.READ_MANY_WRITE_SHARED, key=41)
    layer.claim(c, "cluster2", ClaimType.READ_MANY_WRITE_SHARED, key=42)
    assert a.write_allowed and c.write_allowed  # both write: that is the point
    assert b.info()["claim_type"] == "read_many_write_shared"
    d = layer.open("M", write=False)
    refused(errno.EPERM, layer.claim, d, "excl")  # another type: already claimed
    for x in (a, c, d):
        x.close()
    assert b.claim_type is ClaimType.NONE and b.claim_key == 0


# -- a vbdev over several bases ------------------------------------------------------------

@dataclass(eq=False)
class ConcatConfig(VbdevConfig):
    name: str
    bases: tuple[str, ...]

    @property
    def base_names(self) -> tuple[str, ...]:
        return self.bases


class ConcatBdev(StackedBdev):
    """Its bases end to end (whole requests inside one base only: enough for a test)."""

    module_name = "concat"

    def __init__(self, name: str, descs: list[Descriptor]) -> None:
        super().__init__(name, 512, sum(d.bdev.num_blocks for d in descs),
                         io_types=frozenset(("read", "write")))

    def _route(self, offset: int) -> tuple[Descriptor, int]:
        assert self.attachment is not None
        for desc in self.attachment.descs:
            if offset < desc.bdev.size:
                return desc, offset
            offset -= desc.bdev.size
        raise AssertionError(offset)

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        desc, at = self._route(offset)
        desc.read(at, length, cb)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        desc, at = self._route(offset)
        desc.write(at, data, cb, fua)


class ConcatModule(VbdevModule[ConcatConfig]):
    name = "concat"

    def construct(self, config: ConcatConfig, descs: list[Descriptor]) -> list[StackedBdev]:
        return [ConcatBdev(config.name, descs)]

    def config_entry(self, config: ConcatConfig) -> dict[str, Any]:
        return {"method": "concat_create", "params": {"name": config.name,
                                                      "bases": list(config.bases)}}


async def test_several_bases_all_needed_and_any_removal_tears_down(layer: BdevLayer) -> None:
    concat = ConcatModule(layer)
    layer.add_module(concat)
    assert layer.modules[0] is concat  # it examines: at the head, as SPDK puts it
    config = ConcatConfig("C", ("A", "B"))
    assert concat.add(config) is None  # deferred: no base yet
    a = malloc(layer, "A", 8)
    assert layer.get("C") is None and a.claim_type is ClaimType.NONE  # B still missing
    b = malloc(layer, "B", 8)
    c = layer.get("C")
    assert c is not None and c.num_blocks == 16
    assert a.claim_module == b.claim_module == "concat"
    assert concat.write_config() == [
        {"method": "concat_create", "params": {"name": "C", "bases": ["A", "B"]}}]
    desc = layer.open("C", write=True)
    await desc.write_async(8 * 512, b"\x5a" * 512)  # lands on B's first block
    reader = layer.open("B", write=False)
    assert await read(reader, 0, 512) == b"\x5a" * 512
    reader.close()
    desc.close()

    await asyncio.wait_for(layer.unregister(b), 5)
    assert c.state is BdevState.GONE and a.claim_type is ClaimType.NONE and not a.descriptors
    assert concat.configs == [config] and concat.write_config() == []
    malloc(layer, "B", 8)  # back: the config is built again
    assert layer.get("C") is not None and layer.get("C") is not c
    await concat.remove(config)
    assert layer.get("C") is None and a.claim_type is ClaimType.NONE


async def test_a_virtual_bdev_built_by_hand_follows_its_base(layer: BdevLayer) -> None:
    base = malloc(layer, "M")
    desc = layer.open("M", write=True)
    layer.claim(desc, "mine")
    v = VirtualBdev("V", None, desc, offset_blocks=4, num_blocks=8)
    desc.event_cb = v.on_base_event
    layer.register(v)
    vdesc = layer.open("V", write=True)
    await vdesc.write_async(0, b"\x42" * 512)
    reader = layer.open("M", write=False)
    assert await read(reader, 4 * 512, 512) == b"\x42" * 512  # at its offset
    reader.close()
    vdesc.close()
    await asyncio.wait_for(layer.unregister(base), 5)
    assert v.state is BdevState.GONE and list(layer) == []


# -- parts over one base -------------------------------------------------------------------

async def test_parts_share_one_claim_and_roll_back_together(layer: BdevLayer) -> None:
    base = malloc(layer, "M", 64)
    malloc(layer, "Mp2", 8)  # takes the name of the third part
    sm = module(layer, SplitModule)
    refused(errno.ENOMEM, sm.create, "M", 4)  # SPDK reports a part that fails as -ENOMEM
    await asyncio.sleep(0.05)  # the two registered parts come down as on a hot-remove
    assert [b.name for b in layer] == ["M", "Mp2"]
    assert base.claim_type is ClaimType.NONE and not base.descriptors
    assert sm.configs == []  # as SPDK, the split config goes with its parts
    await layer.unregister_by_name("Mp2", "malloc")
    assert sm.create("M", 4) == ["Mp0", "Mp1", "Mp2", "Mp3"]
    assert len(base.descriptors) == 1 and len(base.claims) == 1  # one part base


async def test_module_order_puts_examine_modules_first(layer: BdevLayer) -> None:
    # SPDK's spdk_bdev_module_list_add inserts them at the head in link order.
    assert [m.name for m in layer.modules] == [
        "delay", "split", "error", "lvol", "passthru", "malloc", "null", "nvme", "aio", "nbd",
        "rbd"]


async def test_passthru_refuses_an_exported_base_and_builds_after(layer: BdevLayer) -> None:
    malloc(layer, "M")
    export = layer.open("M", write=True)
    pm = module(layer, PassthruModule)
    refused(errno.EPERM, pm.create, base_bdev_name="M", name="P")
    assert layer.get("P") is None and pm.write_config() == []
    export.close()


# -- on a target -----------------------------------------------------------------------------

def bdev_config(saved: str) -> list[dict[str, Any]]:
    doc = json.loads(saved)
    return next(s["config"] for s in doc["subsystems"] if s["subsystem"] == "bdev")


def test_issue13_exported_bdev_claim_refused_and_config_replays(
        start_target: Any, short_dir: Path) -> None:
    t = start_target(sock=short_dir / "a.sock")
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 32768, "block_size": 512})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "M", "nbd_device": "nbd://127.0.0.1:0/M"})
    res = t.cli("bdev_passthru_create", "-b", "M", "-p", "P", check=False)
    assert res.returncode == 1
    err = t.rpc_error("bdev_passthru_create", {"base_bdev_name": "M", "name": "P2"})
    assert err["code"] == -errno.EPERM
    assert err["message"].startswith("Operation not permitted: bdev M is open for writing")
    assert "P" not in [b["name"] for b in t.rpc("bdev_get_bdevs")]
    saved = t.spdk("save_config").stdout
    assert uri in saved
    assert t.stop() == 0

    cfg = short_dir / "cfg.json"
    cfg.write_text(saved)
    t2 = start_target("--json", str(cfg), sock=short_dir / "b.sock")
    assert [b["name"] for b in t2.rpc("bdev_get_bdevs")] == ["M"]
    assert t2.spdk("save_config").stdout == saved
    assert t2.stop() == 0


CLEAR_DELETE = {  # SPDK's test/json_config/clear_config.py, get_bdev_delete_method
    "bdev_malloc_create": "bdev_malloc_delete", "bdev_null_create": "bdev_null_delete",
    "bdev_aio_create": "bdev_aio_delete", "bdev_error_create": "bdev_error_delete",
    "bdev_split_create": "bdev_split_delete", "bdev_delay_create": "bdev_delay_delete",
    "bdev_passthru_create": "bdev_passthru_delete",
}


def clear_bdev_subsystem(t: Target, config: list[Any]) -> None:
    """clear_config.py's clear_bdev_subsystem: one delete per create, in config order."""
    for entry in (e for x in config for e in (x if isinstance(x, list) else [x])):
        method = CLEAR_DELETE.get(entry["method"])
        if method is None:
            continue
        params = entry["params"]
        if entry["method"] == "bdev_split_create":
            t.rpc(method, {"base_bdev": params["base_bdev"]})
        elif entry["method"] == "bdev_error_create":
            t.rpc(method, {"name": f"EE_{params['base_name']}"})
        else:
            t.rpc(method, {"name": params["name"]})
    for ctrlr in t.rpc("bdev_nvme_get_controllers"):
        t.rpc("bdev_nvme_detach_controller", {"name": ctrlr["name"]})
    t.rpc("bdev_nvme_set_hotplug", {"enable": False})


def test_clear_config_deletes_in_config_order(start_target: Any, short_dir: Path) -> None:
    t = start_target(sock=short_dir / "a.sock")
    lines = ["bdev_malloc_create -b M0 8 512", "bdev_malloc_create -b M1 8 512",
             "bdev_malloc_create -b M2 8 512", "bdev_null_create N0 8 512",
             "bdev_passthru_create -b M0 -p P0", "bdev_error_create M1",
             "bdev_split_create M2 2", "bdev_delay_create -b N0 -d D0 -r 10 -t 20 -w 10 -n 20",
             "bdev_split_create Later 2"]  # deferred, saved
    for line in lines:
        t.cli(*line.split())
    config = bdev_config(t.spdk("save_config").stdout)
    methods = [e["method"] for e in config]
    assert methods == ["bdev_set_options", "bdev_delay_create", "bdev_split_create",
                       "bdev_split_create", "bdev_error_create", "bdev_passthru_create",
                       "bdev_malloc_create", "bdev_malloc_create", "bdev_malloc_create",
                       "bdev_null_create", "bdev_nvme_set_options", "bdev_nvme_set_hotplug",
                       "bdev_wait_for_examine"]
    clear_bdev_subsystem(t, config)  # t.rpc raises on any error
    assert t.rpc("bdev_get_bdevs") == []
    assert [e["method"] for e in bdev_config(t.spdk("save_config").stdout)] == [
        "bdev_set_options", "bdev_nvme_set_options", "bdev_nvme_set_hotplug",
        "bdev_wait_for_examine"]
