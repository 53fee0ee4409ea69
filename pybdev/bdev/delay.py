"""delay: a vbdev that adds latency to reads and writes (SPDK's module/bdev/delay).

``bdev_delay_create -b BASE -d NAME -r AVG_READ -t P99_READ -w AVG_WRITE -n P99_WRITE``
(microseconds) stacks ``NAME`` on ``BASE``. Every request goes to the base at once; a read
or a write is then held before it completes: one in 100, drawn at random, for the p99
latency, the others for the average (``vbdev_delay_submit_request``: ``rand_r() % 100 ==
0``). Unmap, write-zeroes and flush complete as soon as the base answers; a reset completes
the held requests with -ECANCELED (SPDK's "aborted") and is passed to the base.

Held completions wait on the event loop's timers, never blocking it: four FIFO queues
(average and p99, read and write), each with at most one ``loop.call_at`` pending for its
head, as SPDK's channel poller walks its four lists. A latency changed by
``bdev_delay_update_latency`` applies to requests completed by the base after the change;
those held keep their deadline, and a queue completes in order, so lowering a latency
holds new requests behind older, longer ones until those drain (SPDK calls this a dam).
The loop's timers wake with millisecond granularity (libuv, epoll), so a request completes
at its deadline or up to about 1 ms after it, never before; SPDK's poller is finer.

The rest is the framework's (docs/vbdev-framework.md): the base is claimed
``exclusive_write``; a missing base defers the creation; a base that goes away takes the
delay bdev with it and brings it back when it returns; only built delay bdevs are saved.
The UUID is the one given or a version-5 UUID over namespace
``4009b574-6430-4f1b-bc40-ace811091027`` and the base UUID, as SPDK derives it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from pybdev.bdev.core import BdevState, Callback, Descriptor
from pybdev.bdev.vbdev import StackedBdev, VbdevConfig, VbdevModule, VirtualBdev, sha1_uuid
from pybdev.errors import OperationError
from pybdev.rpc.errors import (
    DECODE_FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    RpcError,
)
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U64, NameParams, Params, Str, Uuid

RPC = RpcTable()

log = logging.getLogger("pybdev.bdev.delay")

NAMESPACE = uuidlib.UUID("4009b574-6430-4f1b-bc40-ace811091027")
LATENCY_TYPES = ("avg_read", "p99_read", "avg_write", "p99_write")
LatencyType = Literal["avg_read", "p99_read", "avg_write", "p99_write"]


@dataclass(eq=False)
class DelayConfig(VbdevConfig):
    """An association: the base, the name, and the four latencies in microseconds."""

    base_bdev_name: str
    name: str
    uuid: str | None
    avg_read: int
    p99_read: int
    avg_write: int
    p99_write: int

    @property
    def base_names(self) -> tuple[str, ...]:
        return (self.base_bdev_name,)


class HeldQueue:
    """Completions held until their deadline, in FIFO order, with one timer for the head."""

    __slots__ = ("entries", "latency", "latency_us", "loop", "timer")

    def __init__(self, latency_us: int) -> None:
        self.set_latency(latency_us)
        self.entries: deque[tuple[float, Callback, int, Any]] = deque()
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None

    def set_latency(self, latency_us: int) -> None:
        self.latency_us = latency_us
        self.latency = latency_us / 1e6  # seconds, as the loop counts

    def hold(self, cb: Callback) -> Callback:
        """A completion for the base that holds ``cb``'s call for this queue's latency."""

        def done(status: int, data: Any) -> None:
            # A read's data may be a view of the base's memory, valid only now: copy it
            # (both parts of read_md's (data, metadata)).
            if data is not None:
                data = (bytes(data[0]), bytes(data[1])) if type(data) is tuple else bytes(data)
            self.push(cb, status, data)

        return done

    def push(self, cb: Callback, status: int, data: Any) -> None:
        loop = self.loop
        deadline = loop.time() + self.latency
        self.entries.append((deadline, cb, status, data))
        if self.timer is None:
            self.timer = loop.call_at(deadline, self.drain)

    def drain(self) -> None:
        self.timer = None
        entries = self.entries
        now = self.loop.time()
        while entries and entries[0][0] <= now:
            _deadline, cb, status, data = entries.popleft()
            cb(status, data)
        if entries:
            self.timer = self.loop.call_at(entries[0][0], self.drain)

    def abort(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        held, self.entries = self.entries, deque()
        for _deadline, cb, _status, _data in held:
            cb(-errno.ECANCELED, None)


class DelayBdev(VirtualBdev):
    product_name = "delay"
    module_name = "delay"
    follows_resize = False  # SPDK's delay ignores the base's RESIZE

    def __init__(self, config: DelayConfig, uuid: str, base_desc: Descriptor) -> None:
        super().__init__(config.name, uuid, base_desc)
        self.queues = {t: HeldQueue(getattr(config, t)) for t in LATENCY_TYPES}
        self._avg_read, self._p99_read = self.queues["avg_read"], self.queues["p99_read"]
        self._avg_write, self._p99_write = self.queues["avg_write"], self.queues["p99_write"]
        self._rand = random.Random().randrange

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        queue = self._p99_read if self._rand(100) == 0 else self._avg_read
        self.base_desc.read(offset, length, queue.hold(cb))

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        queue = self._p99_write if self._rand(100) == 0 else self._avg_write
        self.base_desc.write(offset, data, queue.hold(cb), fua)

    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        queue = self._p99_read if self._rand(100) == 0 else self._avg_read
        self.base_desc.read_md(offset, length, queue.hold(cb))

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        queue = self._p99_write if self._rand(100) == 0 else self._avg_write
        self.base_desc.write_md(offset, data, md, queue.hold(cb), fua)

    def submit_reset(self, cb: Callback) -> None:
        for queue in self.queues.values():
            queue.abort()
        self.base_desc.reset(cb)

    def on_removed(self) -> None:
        for queue in self.queues.values():
            queue.abort()

    def latencies_us(self) -> dict[str, int]:
        return {f"{t}_latency": q.latency_us for t, q in self.queues.items()}

    def driver_specific(self) -> dict[str, Any]:
        return {"delay": {"name": self.name, "base_bdev_name": self.base_name,
                          "uuid": self.uuid, **self.latencies_us()}}


class DelayModule(VbdevModule[DelayConfig]):
    name = "delay"
    rpc = RPC

    def create(self, *, base_bdev_name: str, name: str, avg_read_latency: int,
               p99_read_latency: int, avg_write_latency: int, p99_write_latency: int,
               uuid: str | None = None) -> str:
        """Add the association and build the delay bdev if the base exists (else deferred).

        Raises OperationError: -22 when a p99 latency is below its average, -17 for a name
        already associated, -1 when the base is claimed or open for writing.
        """
        if p99_read_latency < avg_read_latency or p99_write_latency < avg_write_latency:
            log.error("Unable to create a delay bdev where p99 latency is less than "
                      "average latency.")
            raise OperationError(errno.EINVAL, "p99 latency is less than average latency")
        if any(c.name == name for c in self.configs):
            log.error("delay bdev %s already exists", name)
            raise OperationError(errno.EEXIST, f"delay bdev {name} already exists")
        self.add(DelayConfig(base_bdev_name, name, uuid, avg_read_latency, p99_read_latency,
                             avg_write_latency, p99_write_latency))
        return name

    def construct(self, config: DelayConfig, descs: list[Descriptor]) -> list[StackedBdev]:
        base = descs[0].bdev
        uuid = config.uuid or sha1_uuid(NAMESPACE, uuidlib.UUID(base.uuid).bytes)
        return [DelayBdev(config, uuid, descs[0])]

    def config_entry(self, config: DelayConfig) -> dict[str, Any]:
        # Only built configs are saved, with the latencies in force (SPDK writes its nodes).
        assert config.attachment is not None
        bdev = config.attachment.bdevs[0]
        assert isinstance(bdev, DelayBdev)
        return {"method": "bdev_delay_create",
                "params": {"name": config.name, "base_bdev_name": config.base_bdev_name,
                           "uuid": bdev.uuid, **bdev.latencies_us()}}

    def _bdev(self, name: str) -> DelayBdev:
        bdev = self.layer.bdevs.get(name)  # primary names only, as SPDK's lookup
        if not isinstance(bdev, DelayBdev) or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"no delay bdev named {name}")
        return bdev

    def update_latency(self, name: str, latency_type: str, latency_us: int) -> None:
        """Change one latency of a live delay bdev; -19 if there is none, -22 bad type."""
        if latency_type not in LATENCY_TYPES:
            raise OperationError(errno.EINVAL, f"unknown latency type {latency_type}")
        # As SPDK, the association keeps the latencies given at create: a delay bdev
        # rebuilt after its base came back starts from those again.
        self._bdev(name).queues[latency_type].set_latency(latency_us)

    async def delete(self, name: str) -> None:
        """Unregister a built delay bdev and forget its association (-19 if none)."""
        config = self.built_config_of(name)
        if config is None:
            raise OperationError(errno.ENODEV, f"no delay bdev named {name}")
        await self.remove(config)



class DelayCreateParams(Params):
    name: Str = Field(description="Name of the new delay bdev")
    base_bdev_name: Str = Field(description="The bdev it delays; it may be created later")
    avg_read_latency: U64 = Field(description="Average read latency added, in microseconds")
    p99_read_latency: U64 = Field(
        description="99th percentile read latency added, in microseconds")
    avg_write_latency: U64 = Field(description="Average write latency added, in microseconds")
    p99_write_latency: U64 = Field(
        description="99th percentile write latency added, in microseconds")
    uuid: Uuid | None = Field(
        None, description="UUID of the delay bdev; a random one when omitted")


@RPC.method("bdev_delay_create", DelayCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"})
def bdev_delay_create(module: DelayModule, p: DelayCreateParams) -> str:
    """Create a delay vbdev on a base (deferred until the base exists); answers its name."""
    return module.create(
        base_bdev_name=p.base_bdev_name, name=p.name, uuid=p.uuid,
        avg_read_latency=p.avg_read_latency, p99_read_latency=p.p99_read_latency,
        avg_write_latency=p.avg_write_latency, p99_write_latency=p.p99_write_latency)


@RPC.method("bdev_delay_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def bdev_delay_delete(module: DelayModule, p: NameParams) -> bool:
    """Delete a delay vbdev, releasing its base."""
    await module.delete(p.name)
    return True


class UpdateLatencyParams(Params):
    delay_bdev_name: Str = Field(description="Name of the delay bdev")
    latency_type: LatencyType = Field(
        description="Which latency: avg_read, p99_read, avg_write or p99_write")
    latency_us: U64 = Field(description="The new latency in microseconds")


@RPC.method("bdev_delay_update_latency", UpdateLatencyParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_delay_update_latency(module: DelayModule, p: UpdateLatencyParams) -> bool:
    """Change one latency of a delay bdev, live; requests already held keep theirs."""
    try:
        module.update_latency(p.delay_bdev_name, p.latency_type, p.latency_us)
    except OperationError as e:
        # SPDK's own codes and texts for this method (vbdev_delay_rpc.c).
        if e.errno == errno.ENODEV:
            raise RpcError(INVALID_PARAMS, "The requested bdev does not exist.") from None
        raise RpcError(INVALID_REQUEST, "The requested bdev is not a delay bdev.") from None
    return True
