"""The live event stream's hub: a bounded ring of events that subscribers read by cursor.

Orchestrators follow ``GET /events`` (server-sent events, docs/http.md) instead of polling
``notify_get_notifications``. Memory is bounded by the ring, not by the subscribers: each
one holds only a cursor (the id of the next event it wants). A subscriber that falls more
than :data:`CAPACITY` events behind gets a ``lost`` marker with the number it missed and
goes on from the oldest event kept; one whose connection stops taking data for
:data:`WRITE_TIMEOUT` seconds is dropped (docs/operations.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

CAPACITY = 1024
#: A subscriber whose socket has not taken an event for this long is disconnected.
WRITE_TIMEOUT = 30.0
#: An SSE comment this often keeps proxies from closing an idle stream.
HEARTBEAT = 15.0


class Event:
    __slots__ = ("data", "id", "type")

    def __init__(self, id_: int, type_: str, data: dict[str, Any]) -> None:
        self.id = id_
        self.type = type_
        self.data = data

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, **self.data}

    def sse(self) -> bytes:
        """The event as one server-sent event (``id``, ``event``, one ``data`` line)."""
        payload = json.dumps(self.to_json(), ensure_ascii=True, separators=(",", ":"))
        return f"id: {self.id}\nevent: {self.type}\ndata: {payload}\n\n".encode()


def lost_marker(count: int) -> bytes:
    return f'event: lost\ndata: {{"lost":{count}}}\n\n'.encode()


class EventHub:
    """Events in publication order, the last ``capacity`` of them kept."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._ring: deque[Event] = deque(maxlen=capacity)
        self.next_id = 0
        self.closed = False
        self._waiters: list[asyncio.Future[None]] = []
        self.subscribers = 0

    def publish(self, type_: str, data: dict[str, Any]) -> Event:
        data.setdefault("time", round(time.time(), 3))
        event = Event(self.next_id, type_, data)
        self.next_id += 1
        self._ring.append(event)
        self._wake()
        return event

    def close(self) -> None:
        """End every subscription (the target stops)."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def since(self, cursor: int) -> tuple[int, list[Event]]:
        """(events lost, events kept) from id ``cursor`` on."""
        oldest = self.next_id - len(self._ring)
        lost = max(0, oldest - cursor)
        start = max(cursor, oldest) - oldest
        return lost, [self._ring[i] for i in range(start, len(self._ring))]

    async def wait(self, cursor: int, timeout: float) -> None:
        """Return once an event with id >= ``cursor`` exists, the hub closed, or timeout."""
        if self.next_id > cursor or self.closed:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            pass
        finally:
            if not fut.done():
                fut.cancel()
                # A timed-out waiter leaves the list now, so idle subscribers cost nothing.
                if fut in self._waiters:
                    self._waiters.remove(fut)


__all__ = ["CAPACITY", "HEARTBEAT", "WRITE_TIMEOUT", "Event", "EventHub", "lost_marker"]
