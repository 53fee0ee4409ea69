"""Logging: -L flags checked, NOTICE a level, --log-file in JSON, SPDK's log RPCs at run time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pybdev.logs import FLAGS
from tests.conftest import ROOT, Target


def test_unknown_log_flag_is_refused() -> None:
    res = subprocess.run([sys.executable, "-m", "pybdev", "-L", "bogus", "-r", "/nonexistent"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert "unknown log flag bogus (known: all, accel, app," in res.stderr


def test_notice_is_a_level_between_info_and_warning(start_target: Callable[..., Target]) -> None:
    t = start_target("--log-level", "notice")
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    assert t.rpc("log_get_print_level") == "NOTICE"
    t.stop()
    log = t.log()
    assert "NOTICE: pybdev 0.1.0 initialised; serving RPC" in log
    assert ": INFO: " not in log


def test_log_rpcs_change_what_is_printed(start_target: Callable[..., Target]) -> None:
    t = start_target()
    assert t.rpc("log_get_flags") == dict.fromkeys(t.rpc("log_get_flags"), False)
    assert t.rpc("log_set_flag", {"flag": "bdev"}) is True
    assert t.rpc("log_get_flags")["bdev"] is True
    t.rpc("bdev_malloc_create", {"name": "Loud", "num_blocks": 8, "block_size": 512})
    assert "pybdev.bdev: DEBUG: registered bdev Loud" in t.log()
    assert t.rpc("log_clear_flag", {"flag": "bdev"}) is True
    assert t.rpc("log_set_print_level", {"level": "ERROR"}) is True
    assert t.rpc("log_get_print_level") == "ERROR"
    before = t.log()
    t.rpc("bdev_malloc_create", {"name": "Quiet", "num_blocks": 8, "block_size": 512})
    t.rpc("bdev_malloc_delete", {"name": "Quiet"})
    assert t.log() == before
    err = t.rpc_error("log_set_flag", {"flag": "nope"})
    assert err == {"code": -32602, "message": "invalid log flag"}
    err = t.rpc_error("log_set_print_level", {"level": "LOUD"})
    assert err["code"] == -32603
    assert t.rpc_error("log_get_flags", {"x": 1}) == {
        "code": -32602, "message": "log_get_flags requires no parameters"}


def test_json_log_file(start_target: Callable[..., Target], tmp_path: Path) -> None:
    log_file = tmp_path / "pybdev.log"
    t = start_target("--log-file", str(log_file), "--log-format", "json")
    assert t.rpc("log_set_level", {"level": "debug"}) is True
    assert t.rpc("log_get_level") == "DEBUG"
    t.stop()
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= records[0].keys()
    assert any(r["message"] == "pybdev stopped" and r["level"] == "NOTICE" for r in records)


def test_every_component_that_logs_has_a_flag() -> None:
    found = set()
    for path in (ROOT / "pybdev").rglob("*.py"):
        found.update(re.findall(r'getLogger\("pybdev\.(\w+)', path.read_text()))
    assert found <= set(FLAGS), f"add {sorted(found - set(FLAGS))} to pybdev.logs.FLAGS"
