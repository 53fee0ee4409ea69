"""Latency histograms in SPDK's layout (``include/spdk/histogram_data.h``).

Values are ticks (pybdev's tick is a nanosecond: ``tsc_rate`` 10^9). The histogram is a
list of *ranges*, each of ``2**granularity`` buckets: range 0 holds the values below
``2**granularity`` one per bucket, range ``r > 0`` the values of bit length
``r + granularity``, ``2**(r - 1)`` values per bucket. Only the ranges from ``min_range``
(the range of ``min_val``) to ``max_range`` (that of ``max_val - 1``) are kept; a value
below goes to the first bucket, one above to the last. ``bdev_get_histogram`` sends the
bucket array as base64 of little-endian unsigned 64-bit counts, which SPDK's
``scripts/histogram.py`` reads.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Iterator

GRANULARITY_DEFAULT = 7  # SPDK_HISTOGRAM_GRANULARITY_DEFAULT
#: Above this a histogram takes megabytes (2**granularity buckets in each of up to 64
#: ranges); SPDK takes any uint8 and allocates what it asks for.
GRANULARITY_MAX = 12


def bucket_range(granularity: int, value: int) -> int:
    """SPDK's ``__spdk_histogram_data_get_bucket_range``."""
    return max(value.bit_length() - granularity, 0)


class Histogram:
    """Counts of values in SPDK's buckets; ``tally`` is the only call on the I/O path."""

    __slots__ = ("_mask", "buckets", "granularity", "io_type", "max_nsec", "max_range",
                 "min_nsec", "min_range")

    def __init__(self, granularity: int = GRANULARITY_DEFAULT, min_nsec: int = 0,
                 max_nsec: int = 2**64 - 1, io_type: str | None = None) -> None:
        if min_nsec >= max_nsec:
            raise ValueError("min_nsec must be below max_nsec")
        self.granularity = granularity
        self.min_nsec = min_nsec
        self.max_nsec = max_nsec
        self.io_type = io_type  # count only this operation; None: all
        # Ticks are nanoseconds, so SPDK's min_nsec * tsc_rate / 10^9 is the value itself.
        self.min_range = bucket_range(granularity, min_nsec)
        self.max_range = bucket_range(granularity, max_nsec - 1)
        self._mask = (1 << granularity) - 1
        self.buckets = array("Q", bytes(8 * self.num_buckets))

    @property
    def num_buckets(self) -> int:
        return (self.max_range - self.min_range + 1) << self.granularity

    def tally(self, value: int) -> None:
        """SPDK's ``spdk_histogram_data_tally``."""
        g = self.granularity
        r = value.bit_length() - g
        if r < 0:
            r = 0
        if r < self.min_range:
            r, index = self.min_range, 0
        elif r > self.max_range:
            r, index = self.max_range, self._mask
        else:
            index = (value >> (r - 1 if r else 0)) & self._mask
        self.buckets[((r - self.min_range) << g) + index] += 1

    def bucket_end(self, r: int, index: int) -> int:
        """The first value after bucket ``index`` of range ``r``
        (``__spdk_histogram_data_get_bucket_start``)."""
        index += 1
        if r > 0:
            return (1 << (r + self.granularity - 1)) + (index << (r - 1))
        return index

    def iterate(self) -> Iterator[tuple[int, int, int, int]]:
        """``(start, end, count, so_far)`` of every bucket (``spdk_histogram_data_iterate``)."""
        so_far = 0
        end = 0
        per_range = 1 << self.granularity
        for r in range(self.min_range, self.max_range + 1):
            base = (r - self.min_range) << self.granularity
            for j in range(per_range):
                count = self.buckets[base + j]
                so_far += count
                start, end = end, self.bucket_end(r, j)
                yield start, end, count, so_far

    def borders_count(self, borders: list[int]) -> list[int]:
        """Counts at or below each border and the total (``spdk_histogram_get_borders_count``).

        ``borders`` are ticks in ascending order; the answer has one more element.
        """
        counts = [0] * (len(borders) + 1)
        i = 0
        for start, _end, _count, so_far in self.iterate():
            while i < len(borders) and start > borders[i]:
                i += 1
                counts[i] = counts[i - 1]
            counts[i] = so_far
        return counts

    def encoded(self) -> str:
        """The bucket array as ``bdev_get_histogram`` sends it."""
        data = self.buckets
        if sys.byteorder != "little":
            data = array("Q", data)
            data.byteswap()
        return base64.b64encode(data.tobytes()).decode("ascii")

    def matches(self, granularity: int, min_nsec: int, max_nsec: int) -> bool:
        return (self.granularity, self.min_nsec, self.max_nsec) == (granularity, min_nsec,
                                                                     max_nsec)
