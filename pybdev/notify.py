"""Notifications: a bounded ring of events (``bdev_register``, ...) clients poll for.

As SPDK's ``lib/notify/notify.c``: types are registered by the code that emits them (the bdev
subsystem registers ``bdev_register``, ``bdev_unregister`` and ``bdev_resize``), every event
gets the next id, and only the last :data:`MAX_EVENTS` are kept, so memory stays bounded
however long the target runs; ``notify_get_notifications`` starting before the oldest kept
event starts at the oldest. SPDK's ``test/json_config/json_config.sh`` checks these events
after creating and deleting bdevs.
"""

from __future__ import annotations

from typing import Any

from pybdev.events import EventHub
from pybdev.rpc.audit import current_method
from pybdev.rpc.errors import INVALID_PARAMS
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U64, Params

RPC = RpcTable()

#: Events kept (SPDK_NOTIFY_MAX_EVENTS in lib/notify/notify.c).
MAX_EVENTS = 1024
#: Longest type and context kept, in bytes including SPDK's NUL (SPDK_NOTIFY_MAX_*_SIZE).
MAX_NAME_SIZE = 128
MAX_CTX_SIZE = 128


class Notifier:
    """Registered types, and a ring of the last :data:`MAX_EVENTS` events with their ids.

    Every event also goes to :attr:`hub`, the live stream of ``GET /events``, which carries
    pybdev's own types too (:meth:`publish`: exports and connections); those stay out of
    the SPDK ring, so ``notify_get_types`` lists what SPDK's target lists.
    """

    def __init__(self, capacity: int = MAX_EVENTS) -> None:
        self.hub = EventHub()
        self.capacity = capacity
        self.types: list[str] = []
        self._ring: list[tuple[str, str]] = []
        self._head = 0  # id of the next event

    def register_type(self, name: str) -> None:
        if not name or len(name.encode()) >= MAX_NAME_SIZE:
            raise ValueError(f"notification type {name!r} too short or too long")
        if name not in self.types:
            self.types.append(name)

    def send(self, type_: str, ctx: str) -> int:
        """Record one event; returns its id. Context longer than SPDK keeps is cut."""
        event = (type_, ctx.encode()[: MAX_CTX_SIZE - 1].decode(errors="ignore"))
        head = self._head
        if len(self._ring) < self.capacity:
            self._ring.append(event)
        else:
            self._ring[head % self.capacity] = event
        self._head = head + 1
        data: dict[str, Any] = {"name": ctx}
        if type_ == "bdev_unregister":
            # Deleted by a call (and whatever that cascades to) or gone by itself.
            method = current_method()
            if method is None:
                data["hot_remove"] = True
            else:
                data["method"] = method
        self.hub.publish(type_, data)
        return head

    def publish(self, type_: str, data: dict[str, Any]) -> None:
        """An event of pybdev's own (export_add, connection_open, ...): stream only."""
        self.hub.publish(type_, data)

    def events(self, start: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Events from id ``start`` (or the oldest kept), at most ``limit`` of them."""
        start = max(start, self._head - len(self._ring))
        stop = self._head if limit is None else min(self._head, start + limit)
        out = []
        for i in range(start, stop):
            type_, ctx = self._ring[i % self.capacity]
            out.append({"type": type_, "ctx": ctx, "id": i})
        return out


@RPC.method("notify_get_types",
            decode_error=(INVALID_PARAMS, "No parameters required"),
            result={"type": "array", "items": {"type": "string"}})
def notify_get_types(notifier: Notifier) -> list[str]:
    """The notification types this target emits, in registration order."""
    return list(notifier.types)


class GetNotificationsParams(Params):
    id: U64 = 0
    max: U64 | None = None


@RPC.method("notify_get_notifications", GetNotificationsParams,
            decode_error=(INVALID_PARAMS, "Invalid argument"),
            result={"type": "array", "items": {"type": "object"}})
def notify_get_notifications(notifier: Notifier,
                             p: GetNotificationsParams) -> list[dict[str, Any]]:
    """Events from ``id`` on (the oldest still kept if older), at most ``max``."""
    return notifier.events(p.id, p.max)
