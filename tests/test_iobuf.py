"""The iobuf subsystem: options as SPDK validates and saves them, stats in SPDK's shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Target

DEFAULTS = {"small_pool_count": 8192, "large_pool_count": 1024, "small_bufsize": 8192,
            "large_bufsize": 135168, "enable_numa": False}


def test_save_subsystem_config_like_blockdev_sh(target: Target) -> None:
    out = json.loads(target.spdk("save_subsystem_config", "-n", "iobuf").stdout)
    assert out == {"subsystem": "iobuf",
                   "config": [{"method": "iobuf_set_options", "params": DEFAULTS}]}
    assert target.rpc("iobuf_get_stats") == []


def test_set_options_before_init_and_saved(start_target: Callable[..., Target]) -> None:
    t = start_target("--wait-for-rpc")
    t.cli("iobuf_set_options", "--small-pool-count", "128", "--large-bufsize", "65536",
          "--enable-numa")
    err = t.rpc_error("iobuf_set_options", {"small_pool_count": 63})
    assert err == {"code": -22, "message": "Invalid argument"}
    err = t.rpc_error("iobuf_set_options", {"small_bufsize": "x"})
    assert err["code"] == -32602
    assert err["message"].startswith("spdk_json_decode_object failed")
    t.rpc("framework_start_init")
    cfg = t.rpc("framework_get_config", {"name": "iobuf"})
    assert cfg[0]["params"] == {**DEFAULTS, "small_pool_count": 128, "large_bufsize": 65536,
                                "enable_numa": True}
    # STARTUP only, as SPDK registers it.
    assert t.rpc_error("iobuf_set_options", {"small_pool_count": 256})["code"] == -1


def test_config_replays(start_target: Callable[..., Target], tmp_path: Path) -> None:
    conf = {"subsystems": [{"subsystem": "iobuf", "config": [
        {"method": "iobuf_set_options", "params": {**DEFAULTS, "large_pool_count": 16}}]}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conf))
    t = start_target("--json", str(path))
    assert t.rpc("framework_get_config", {"name": "iobuf"})[0]["params"][
        "large_pool_count"] == 16
