"""Notifications: the ring's bound and ids, and the events a real target emits for bdevs."""

from __future__ import annotations

import json

from pybdev.notify import MAX_EVENTS, Notifier
from tests.conftest import Target


def test_ring_keeps_the_last_events_and_their_ids() -> None:
    n = Notifier(capacity=4)
    for i in range(10):
        assert n.send("bdev_register", f"B{i}") == i
    assert len(n._ring) == 4  # bounded whatever the number of events
    assert [e["id"] for e in n.events(0)] == [6, 7, 8, 9]
    assert [e["ctx"] for e in n.events(8)] == ["B8", "B9"]
    assert n.events(7, 1) == [{"type": "bdev_register", "ctx": "B7", "id": 7}]
    assert n.events(10) == []


def test_default_capacity_is_spdks() -> None:
    n = Notifier()
    for i in range(MAX_EVENTS + 5):
        n.send("t", str(i))
    assert len(n._ring) == MAX_EVENTS == 1024
    assert n.events(0)[0]["id"] == 5


def test_types_and_events_after_create_and_delete_like_json_config(target: Target) -> None:
    """SPDK's test/json_config/json_config.sh: tgt_check_notification_types and _events."""
    types = json.loads(target.spdk("notify_get_types").stdout)
    assert sorted(types) == ["bdev_register", "bdev_resize", "bdev_unregister"]
    target.spdk("bdev_malloc_create", "8", "4096", "--name", "Malloc3")
    target.spdk("bdev_passthru_create", "-b", "Malloc3", "-p", "PTBdevFromMalloc3")
    target.spdk("bdev_null_create", "Null0", "32", "512")
    target.spdk("bdev_malloc_delete", "Malloc3")  # takes its passthru with it
    events = json.loads(target.spdk("notify_get_notifications", "-i", "0").stdout)
    seen = [f"{e['type']}:{e['ctx']}" for e in events]
    assert sorted(seen) == sorted([
        "bdev_register:Malloc3", "bdev_register:PTBdevFromMalloc3", "bdev_register:Null0",
        "bdev_unregister:PTBdevFromMalloc3", "bdev_unregister:Malloc3"])
    assert [e["id"] for e in events] == list(range(len(events)))
    last = events[-1]["id"]
    assert target.rpc("notify_get_notifications", {"id": last + 1}) == []
    assert target.rpc("notify_get_notifications", {"id": 1, "max": 1}) == [events[1]]
    # rpc.py's own command sends the same request.
    assert json.loads(target.cli("notify_get_notifications", "-i", "1", "-n", "2").stdout) == (
        events[1:3])


def test_params_and_errors(target: Target) -> None:
    assert target.rpc_error("notify_get_types", {"x": 1}) == {
        "code": -32602, "message": "No parameters required"}
    err = target.rpc_error("notify_get_notifications", {"id": -1})
    assert err["code"] == -32602 and err["message"].startswith("Invalid argument")
    assert target.rpc_error("notify_get_notifications", {"bogus": 1})["code"] == -32602
