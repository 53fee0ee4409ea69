"""Queue-depth sampling of one bdev (SPDK's ``bdev_set_qd_sampling_period``).

Every ``period`` microseconds SPDK's poller reads the number of requests the bdev's module
holds (``io_outstanding`` over all channels) into ``queue_depth``, and when it is not zero
adds the period to ``io_time`` and ``period * queue_depth`` to ``weighted_io_time``
(``lib/bdev/bdev.c``, ``_calculate_measured_qd_cpl``); ``bdev_get_iostat`` shows the three.
Here a loop timer does the same. Periods below 1 ms are sampled every millisecond (a
shorter timer would keep the loop busy) and count every period that passed since the last
sample, so ``io_time`` keeps its meaning; until the first sample ``queue_depth`` is
SPDK's "not measured yet" value, 2^64 - 1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

NOT_MEASURED = 2**64 - 1
MIN_TIMER_US = 1000


class QdSampler:
    """A repeating timer that samples ``depth()``; stopped with :meth:`stop`."""

    __slots__ = ("_clock", "_depth", "_last", "_timer", "io_time", "period", "queue_depth",
                 "weighted_io_time")

    def __init__(self, depth: Callable[[], int], period: int,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._depth = depth
        self._clock = clock
        self.period = period  # microseconds
        self.queue_depth = NOT_MEASURED
        self.io_time = 0
        self.weighted_io_time = 0
        self._last = clock()
        self._timer: Any = None

    def start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(
            max(self.period, MIN_TIMER_US) / 1e6, self._sample)

    def set_period(self, period: int) -> None:
        self.period = period

    def _sample(self) -> None:
        self.sample()
        self.start()

    def sample(self) -> None:
        now = self._clock()
        periods = (now - self._last) // (self.period * 1000)
        if periods <= 0:
            return
        self._last += periods * self.period * 1000
        depth = self.queue_depth = self._depth()
        if depth:
            self.io_time += periods * self.period
            self.weighted_io_time += periods * self.period * depth

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def to_json(self) -> dict[str, int]:
        return {"queue_depth_polling_period": self.period, "queue_depth": self.queue_depth,
                "io_time": self.io_time, "weighted_io_time": self.weighted_io_time}
