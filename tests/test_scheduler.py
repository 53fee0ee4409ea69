"""framework_set_scheduler / framework_get_scheduler: the static scheduler, as SPDK."""

from __future__ import annotations

import json
from collections.abc import Callable

from tests.conftest import Target


def test_static_is_set_at_init_and_saved(target: Target) -> None:
    assert json.loads(target.spdk("framework_get_scheduler").stdout) == {
        "scheduler_name": "static", "scheduler_period": 0, "isolated_core_mask": "0",
        "scheduling_core": 0}
    assert target.rpc("framework_get_config", {"name": "scheduler"}) == [
        {"method": "framework_set_scheduler", "params": {"name": "static"}}]


def test_period_and_errors(target: Target) -> None:
    target.spdk("framework_set_scheduler", "static", "-p", "5000")
    got = target.rpc("framework_get_scheduler")
    assert got["scheduler_period"] == 5000
    assert target.rpc("framework_get_config", {"name": "scheduler"})[0]["params"] == {
        "name": "static", "period": 5000}
    assert target.rpc_error("framework_set_scheduler", {"name": "dynamic"}) == {
        "code": -32603, "message": "Invalid argument"}
    err = target.rpc_error("framework_set_scheduler", {})
    assert err["code"] == -32602 and err["message"].startswith("Invalid parameters")
    # Relaxed decoding: a dynamic scheduler's options are ignored by static.
    assert target.rpc("framework_set_scheduler", {"name": "static", "load_limit": 30})
    assert target.rpc("framework_set_scheduler", {"name": "static", "mappings": "1:0"})
    assert target.rpc_error("framework_set_scheduler",
                            {"name": "static", "mappings": "7:0"})["code"] == -32603
    assert target.rpc_error("framework_get_scheduler", {"x": 1}) == {
        "code": -32602, "message": "'rpc_get_scheduler' requires no arguments"}


def test_replayed_before_init_keeps_no_period(start_target: Callable[..., Target]) -> None:
    t = start_target("--wait-for-rpc")
    t.rpc("framework_set_scheduler", {"name": "static"})  # what a saved config replays
    t.rpc("framework_start_init")
    assert t.rpc("framework_get_scheduler")["scheduler_period"] == 0
