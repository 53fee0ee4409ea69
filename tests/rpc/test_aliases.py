"""Deprecated pre-2020 method names (SPDK_RPC_REGISTER_ALIAS_DEPRECATED) still work.

Configs saved by SPDK of that era use them (its nbd module wrote ``start_nbd_disk``), so
they are served with a warning once per name, listed only with ``include_aliases``, and
never written by save_config.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Target

OLD_NAMES = {
    "construct_malloc_bdev": "bdev_malloc_create", "delete_malloc_bdev": "bdev_malloc_delete",
    "construct_null_bdev": "bdev_null_create", "delete_null_bdev": "bdev_null_delete",
    "construct_aio_bdev": "bdev_aio_create", "delete_aio_bdev": "bdev_aio_delete",
    "construct_passthru_bdev": "bdev_passthru_create",
    "delete_passthru_bdev": "bdev_passthru_delete",
    "construct_error_bdev": "bdev_error_create", "delete_error_bdev": "bdev_error_delete",
    "bdev_inject_error": "bdev_error_inject_error", "get_bdevs": "bdev_get_bdevs",
    "get_bdevs_iostat": "bdev_get_iostat", "set_bdev_options": "bdev_set_options",
    "start_nbd_disk": "nbd_start_disk", "stop_nbd_disk": "nbd_stop_disk",
    "get_nbd_disks": "nbd_get_disks", "get_rpc_methods": "rpc_get_methods",
    "get_spdk_version": "spdk_get_version", "kill_instance": "spdk_kill_instance",
    "start_subsystem_init": "framework_start_init",
    "wait_subsystem_init": "framework_wait_init", "get_subsystems": "framework_get_subsystems",
    "get_subsystem_config": "framework_get_config",
}


def test_old_names_are_listed_only_with_include_aliases(target: Target) -> None:
    current = set(target.rpc("rpc_get_methods"))
    assert not current & OLD_NAMES.keys()
    everything = target.rpc("rpc_get_methods", {"include_aliases": True})
    assert OLD_NAMES.keys() <= set(everything)
    assert set(everything) - OLD_NAMES.keys() >= current


def test_an_old_name_calls_the_method_and_warns_once(target: Target) -> None:
    params = {"name": "Old", "num_blocks": 16, "block_size": 512}
    assert target.rpc("construct_malloc_bdev", params) == "Old"
    assert target.rpc("get_bdevs", {"name": "Old"})[0]["num_blocks"] == 16
    assert target.rpc("get_bdevs", {"name": "Old"})[0]["name"] == "Old"
    warning = "RPC method get_bdevs is deprecated.  Use bdev_get_bdevs instead."
    assert target.log().count(warning) == 1
    # Same validation and errors as the current name.
    err = target.rpc_error("delete_malloc_bdev", {"name": "Nope"})
    assert err["code"] == -19
    assert target.rpc("delete_malloc_bdev", {"name": "Old"}) is True


def test_an_old_config_replays_and_saves_with_current_names(
        start_target: Callable[..., Target]) -> None:
    with tempfile.TemporaryDirectory(prefix="pbalias", dir="/tmp") as tmp:
        sock = Path(tmp) / "nbd.sock"
        old = {"subsystems": [
            {"subsystem": "bdev", "config": [
                {"method": "set_bdev_options", "params": {"bdev_io_pool_size": 65535}},
                {"method": "construct_malloc_bdev",
                 "params": {"name": "Malloc0", "num_blocks": 128, "block_size": 512}},
                {"method": "construct_passthru_bdev",
                 "params": {"base_bdev_name": "Malloc0", "name": "PT0"}}]},
            {"subsystem": "nbd", "config": [
                {"method": "start_nbd_disk",
                 "params": {"bdev_name": "PT0", "nbd_device": f"nbd+unix:///PT0?socket={sock}"}}]},
        ]}
        config = Path(tmp) / "old.json"
        config.write_text(json.dumps(old))
        t = start_target("--json", str(config))
        saved = json.loads(t.cli("save_config").stdout)
        methods = [e["method"] for s in saved["subsystems"] for e in s["config"] or []]
        assert "bdev_passthru_create" in methods and "nbd_start_disk" in methods
        assert not set(methods) & OLD_NAMES.keys()
        assert t.rpc("nbd_get_disks")[0]["bdev_name"] == "PT0"
