"""The accel subsystem through SPDK's client against a real target."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pybdev.accel.software import OPERATIONS
from tests.conftest import Target

OPTIONS = {"small_cache_size": 128, "large_cache_size": 16, "task_count": 2048,
           "sequence_count": 2048, "buf_count": 2048}


def test_module_info_lists_what_is_implemented(target: Target) -> None:
    info = json.loads(target.spdk("accel_get_module_info").stdout)
    assert info == [{"module": "software", "supported ops": list(OPERATIONS)}]
    assignments = json.loads(target.spdk("accel_get_opc_assignments").stdout)
    assert assignments == dict.fromkeys(OPERATIONS, "software")
    assert json.loads(target.spdk("save_subsystem_config", "-n", "accel").stdout) == {
        "subsystem": "accel", "config": [{"method": "accel_set_options", "params": OPTIONS}]}


def test_errors(target: Target) -> None:
    assert target.rpc_error("accel_get_module_info", {"a": 1}) == {
        "code": -32602, "message": "accel_get_module_info requires no parameters"}
    assert target.rpc_error("accel_get_opc_assignments", {"a": 1}) == {
        "code": -32602, "message": "accel_get_opc_assignments requires no parameters"}
    # STARTUP only.
    assert target.rpc_error("accel_assign_opc", {"opname": "copy", "module": "software"})[
        "code"] == -1


def test_assign_before_init_is_saved_and_replays(start_target: Callable[..., Target],
                                                 tmp_path: Path) -> None:
    t = start_target("--wait-for-rpc")
    t.spdk("accel_assign_opc", "-o", "crc32c", "-m", "software")
    t.spdk("accel_set_options", "--task-count", "64")
    err = t.rpc_error("accel_assign_opc", {"opname": "bogus", "module": "software"})
    assert err == {"code": -32602, "message": "spdk_json_decode_object failed"}
    assert t.rpc_error("accel_assign_opc", {"opname": "copy"})["code"] == -32700
    assert t.rpc_error("accel_set_options", {"task_count": 7}) == {
        "code": -22, "message": "Invalid argument"}
    t.rpc("framework_start_init")
    saved = t.spdk("save_config").stdout
    accel = next(s for s in json.loads(saved)["subsystems"] if s["subsystem"] == "accel")
    assert accel["config"] == [
        {"method": "accel_set_options", "params": {**OPTIONS, "task_count": 64}},
        {"method": "accel_assign_opc", "params": {"opname": "crc32c", "module": "software"}}]
    path = tmp_path / "c.json"
    path.write_text(saved)
    again = start_target("--json", str(path))
    assert again.spdk("save_config").stdout == saved


def test_assignment_to_a_missing_module_fails_init(start_target: Callable[..., Target]) -> None:
    t = start_target("--wait-for-rpc")
    t.rpc("accel_assign_opc", {"opname": "compress", "module": "software"})
    err = t.rpc_error("framework_start_init")
    assert err == {"code": -32603, "message": "framework_initialization failed"}


def test_bad_assignment_in_json_refuses_to_start(start_target: Callable[..., Target],
                                                 tmp_path: Path) -> None:
    conf = {"subsystems": [{"subsystem": "accel", "config": [
        {"method": "accel_assign_opc", "params": {"opname": "copy", "module": "dsa"}}]}]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(conf))
    t = start_target("--json", str(path), wait=False)
    assert t.proc.wait(30) == 1
    assert "framework initialization failed" in t.log()
    assert "Traceback" not in t.log()
