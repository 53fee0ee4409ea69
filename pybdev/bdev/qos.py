"""Rate limits of one bdev: SPDK's bdev QoS (``lib/bdev/bdev.c``), on timers.

Four limits, each optional: I/Os per second over reads and writes, and bytes per second
over reads and writes, reads only, writes only (given in MiB/s, as SPDK's
``bdev_set_qos_limit`` takes them). Only reads and writes are limited; unmap, write-zeroes,
flush and reset pass untouched (SPDK's ``bdev_qos_io_to_limit``).

The arithmetic is SPDK's. Time is cut into 1 ms timeslices; each limit allows
``limit / 1000`` (at least 1 I/O or 512 bytes) per timeslice. A request passes a limit
while that limit has any quota left, even a byte, and takes its whole size from it, so the
quota may go negative; the debt is taken from the next timeslices. A request that one limit
refuses gives back what the limits before it took, and waits in a FIFO queue; each
timeslice the queue is scanned in order and every request the quota now allows is
submitted (a read can pass a waiting write when only the write limit is exhausted).

SPDK runs a poller every timeslice while QoS is on. Here nothing runs while nothing waits:
the quota is brought up to date from the clock when a request arrives, as if the poller had
run (unused quota does not pile up: after an idle gap the quota is one timeslice's), and a
timer (``loop.call_later``) is armed only while requests wait, for the next timeslice
boundary. A timer that fires late adds the quota of every timeslice that passed, as SPDK's
late poller does, so the long-run rate holds. The clock and the timer are injectable so
tests can check the arithmetic exactly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("pybdev.bdev")

TIMESLICE_NS = 1_000_000  # SPDK_BDEV_QOS_TIMESLICE_IN_USEC
MIN_IOS_PER_SEC = 1000  # SPDK_BDEV_QOS_MIN_IOS_PER_SEC
MIN_BYTES_PER_SEC = 1024 * 1024  # SPDK_BDEV_QOS_MIN_BYTES_PER_SEC
MIN_IO_PER_TIMESLICE = 1
MIN_BYTE_PER_TIMESLICE = 512
MAX_MBYTES_PER_SEC = (2**64 - 1) // (1024 * 1024)
#: The RPC names of the limits, in SPDK's order (``qos_rpc_type``).
LIMIT_TYPES = ("rw_ios_per_sec", "rw_mbytes_per_sec", "r_mbytes_per_sec", "w_mbytes_per_sec")
_IOPS, _RW_BPS, _R_BPS, _W_BPS = range(4)

Clock = Callable[[], int]
#: ``call_later(delay_seconds, callback)`` returning something with ``cancel()``.
Scheduler = Callable[[float, Callable[[], None]], Any]
#: A waiting request: (is_read, bytes, submit it, fail it with a status).
Waiting = tuple[bool, int, Callable[[], None], Callable[[int], None]]


def to_per_second(limit_type: str, value: int) -> int:
    """A requested limit in the unit the quota counts (I/Os, bytes), rounded up as SPDK.

    SPDK's ``spdk_bdev_set_qos_rate_limits``: MiB/s values are turned into bytes (clamped
    where that would overflow 64 bits); a value that is not a multiple of the minimum
    (1000 I/Os, 1 MiB) is logged as an error and rounded up to the next multiple.
    """
    if limit_type == "rw_ios_per_sec":
        minimum = MIN_IOS_PER_SEC
    else:
        if value > MAX_MBYTES_PER_SEC:
            log.warning("Requested rate limit %d will result in uint64_t overflow, reset to %d",
                        value, MAX_MBYTES_PER_SEC)
            value = MAX_MBYTES_PER_SEC
        value *= 1024 * 1024
        minimum = MIN_BYTES_PER_SEC
    rest = value % minimum
    if rest:
        log.error("Requested rate limit %d is not a multiple of %d", value, minimum)
        value += minimum - rest
        log.error("Round up the rate limit to %d", value)
    return value


class Qos:
    """The limits, the quota of the current timeslice and the queue of one bdev."""

    __slots__ = ("_call_later", "_releasing", "_timer", "clock", "last", "limits",
                 "max_per_slice", "queue", "remaining")

    def __init__(self, clock: Clock = time.monotonic_ns,
                 call_later: Scheduler | None = None) -> None:
        self.clock = clock
        self._call_later = call_later
        self.limits = [0, 0, 0, 0]  # per second, in I/Os or bytes; 0: no limit
        self.max_per_slice = [0, 0, 0, 0]
        self.remaining = [0, 0, 0, 0]
        self.last = clock()  # start of the current timeslice
        self.queue: deque[Waiting] = deque()
        self._timer: Any = None
        self._releasing = False

    # -- configuration ----------------------------------------------------------------
    def set_limits(self, limits: dict[str, int]) -> None:
        """Apply ``{type: per-second value}`` (0 removes that limit); others are kept.

        As SPDK's ``bdev_qos_update_max_quota_per_timeslice``: every limit starts a full
        timeslice's quota.
        """
        for i, name in enumerate(LIMIT_TYPES):
            if name in limits:
                self.limits[i] = limits[name]
        for i, limit in enumerate(self.limits):
            floor = MIN_IO_PER_TIMESLICE if i == _IOPS else MIN_BYTE_PER_TIMESLICE
            per_slice = max(limit * TIMESLICE_NS // 1_000_000_000, floor) if limit else 0
            self.max_per_slice[i] = per_slice
            self.remaining[i] = per_slice
        self._release()
        self._arm()

    @property
    def enabled(self) -> bool:
        return any(self.limits)

    def rate_limits(self) -> dict[str, int]:
        """The limits as ``bdev_get_bdevs`` shows them (I/Os, MiB per second; 0: none)."""
        return {name: (v if i == _IOPS else v // (1024 * 1024))
                for i, (name, v) in enumerate(zip(LIMIT_TYPES, self.limits, strict=True))}

    # -- the submit path ----------------------------------------------------------------
    def admit(self, is_read: bool, nbytes: int) -> bool:
        """Take quota for a request that would not overtake a waiting one; False: queue it."""
        now = self.clock()
        if now - self.last >= TIMESLICE_NS:
            self._advance(now)
        return not self.queue and self._take(is_read, nbytes)

    def enqueue(self, is_read: bool, nbytes: int, submit: Callable[[], None],
                fail: Callable[[int], None]) -> None:
        """Queue a request :meth:`admit` refused; it is submitted when quota allows."""
        self.queue.append((is_read, nbytes, submit, fail))
        # SPDK scans the whole queue on every submission (bdev_qos_io_submit).
        self._release()
        self._arm()

    def _take(self, is_read: bool, nbytes: int) -> bool:
        # SPDK's bdev_qos_queue_io takes from each limit in order and gives back on a
        # refusal; a limit passes while its quota is above zero, so checking every limit
        # first and then taking is the same.
        remaining = self.remaining
        per_slice = self.max_per_slice
        if ((per_slice[_IOPS] and remaining[_IOPS] <= 0)
                or (per_slice[_RW_BPS] and remaining[_RW_BPS] <= 0)
                or (is_read and per_slice[_R_BPS] and remaining[_R_BPS] <= 0)
                or (not is_read and per_slice[_W_BPS] and remaining[_W_BPS] <= 0)):
            return False
        if per_slice[_IOPS]:
            remaining[_IOPS] -= 1
        if per_slice[_RW_BPS]:
            remaining[_RW_BPS] -= nbytes
        if is_read:
            if per_slice[_R_BPS]:
                remaining[_R_BPS] -= nbytes
        elif per_slice[_W_BPS]:
            remaining[_W_BPS] -= nbytes
        return True

    def _advance(self, now: int) -> None:
        """Start the timeslice ``now`` is in, as SPDK's poller (bdev_channel_poll_qos)."""
        slices = (now - self.last) // TIMESLICE_NS
        if slices <= 0:
            return
        self.last += slices * TIMESLICE_NS
        # While requests wait the timer ran; a late one adds every slice's quota. While
        # none waited SPDK's poller ran each slice and dropped unused quota: one slice's.
        idle = not self.queue
        for i, per_slice in enumerate(self.max_per_slice):
            if per_slice:
                quota = min(self.remaining[i], 0) + slices * per_slice
                self.remaining[i] = min(quota, per_slice) if idle else quota

    def _release(self) -> None:
        """Submit, in order, every waiting request the quota allows (re-entrancy safe)."""
        if self._releasing or not self.queue:
            return
        self._releasing = True
        try:
            queue = self.queue
            i = 0
            while i < len(queue):
                is_read, nbytes, submit, _fail = queue[i]
                if self._take(is_read, nbytes):
                    del queue[i]
                    submit()
                    continue
                if self._exhausted():
                    break
                i += 1
        finally:
            self._releasing = False

    def _exhausted(self) -> bool:
        """No request of either direction can pass before the next timeslice."""
        per_slice, remaining = self.max_per_slice, self.remaining
        return ((per_slice[_IOPS] > 0 and remaining[_IOPS] <= 0)
                or (per_slice[_RW_BPS] > 0 and remaining[_RW_BPS] <= 0)
                or (per_slice[_R_BPS] > 0 and remaining[_R_BPS] <= 0
                    and per_slice[_W_BPS] > 0 and remaining[_W_BPS] <= 0))

    # -- the timer ------------------------------------------------------------------------
    def _arm(self) -> None:
        if not self.queue or self._timer is not None:
            return
        # At least one timeslice: uvloop rounds a delay to whole milliseconds and fires one
        # below half a millisecond at once, which would spin until the boundary. A later
        # tick loses nothing, since it adds the quota of every timeslice that passed.
        delay = max(self.last + TIMESLICE_NS - self.clock(), TIMESLICE_NS) / 1e9
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timer = call_later(delay, self.tick)

    def tick(self) -> None:
        """The timer: start the new timeslice and submit what its quota allows."""
        self._timer = None
        self._advance(self.clock())
        self._release()
        self._arm()

    # -- ending -----------------------------------------------------------------------------
    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def submit_all(self) -> None:
        """QoS turned off: submit every waiting request at once (SPDK resubmits them)."""
        self._disarm()
        queue, self.queue = self.queue, deque()
        for _is_read, _nbytes, submit, _fail in queue:
            submit()

    def fail_all(self, status: int) -> None:
        """The bdev is going away: complete every waiting request with ``status``."""
        self._disarm()
        queue, self.queue = self.queue, deque()
        for _is_read, _nbytes, _submit, fail in queue:
            fail(status)
