"""Bdev-layer RPCs: listing, statistics, options, examine (SPDK's lib/bdev/bdev_rpc.c)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from pybdev.bdev.core import IO_TYPE_NAMES, QOS_LIMIT_TYPES, Bdev, BdevState
from pybdev.bdev.histogram import GRANULARITY_DEFAULT, GRANULARITY_MAX, Histogram
from pybdev.bdev.qd_sampling import QdSampler
from pybdev.bdev.qos import Qos, to_per_second
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR, INVALID_PARAMS, RpcError, errno_error
from pybdev.rpc.registry import RpcTable, State
from pybdev.rpc.types import U8, U32, U64, NameParams, Params, Str

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

TICK_RATE = 1_000_000_000  # latencies are counted in nanoseconds
# bdev_enable_histogram's defaults (lib/bdev/bdev_rpc.c): 1 us to 120 s.
HISTOGRAM_MIN_NSEC = 1000
HISTOGRAM_MAX_NSEC = 120_000_000_000
log = logging.getLogger("pybdev.bdev")


class GetBdevsParams(Params):
    name: Str | None = Field(None, description="Only this bdev (name or alias)")
    timeout: U64 = Field(0, description="With name: milliseconds to wait for the bdev to appear")


@RPC.method("bdev_get_bdevs", GetBdevsParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED),
            result={"type": "array", "items": {"type": "object"}},
            aliases=("get_bdevs",))
async def bdev_get_bdevs(layer: BdevLayer, p: GetBdevsParams) -> list[dict[str, Any]]:
    """List bdevs (all, or one by name or alias, waiting up to ``timeout`` ms for it)."""
    layer = layer
    if p.name is None:
        return [b.info() for b in layer if b.state is BdevState.REGISTERED]
    deadline = time.monotonic() + p.timeout / 1000
    while True:
        bdev = layer.get(p.name)
        if bdev is not None and bdev.state is BdevState.REGISTERED:
            return [bdev.info()]
        if p.timeout == 0:
            raise errno_error(errno.ENODEV)
        if time.monotonic() >= deadline:
            raise errno_error(errno.ETIMEDOUT)
        await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


class GetIostatParams(Params):
    names: Annotated[list[Str], Field(max_length=1024)] | None = Field(
        None, description="Only these bdevs")
    # removed in SPDK v26.05; still accepted here
    name: Str | None = Field(None, description="Only this bdev (the older form of names)")
    per_channel: bool = Field(
        False, description="Per-channel statistics of one bdev (pybdev has one channel)")
    reset_mode: Literal["all", "maxmin", "error", "none"] = Field(
        "none", description="What to reset after reading: all, maxmin, error or none")


@RPC.method("bdev_get_iostat", GetIostatParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "object"},
            aliases=("get_bdevs_iostat",))
def bdev_get_iostat(layer: BdevLayer, p: GetIostatParams) -> dict[str, Any]:
    """I/O statistics of all or some bdevs; ``reset_mode`` resets after reading."""
    layer = layer
    names = list(p.names or []) + ([p.name] if p.name is not None else [])
    if p.per_channel and len(names) != 1:
        raise errno_error(errno.EINVAL, "per_channel needs exactly one name")
    if names:
        bdevs = []
        for n in names:
            bdev = layer.get(n)
            if bdev is None or bdev.state is not BdevState.REGISTERED:
                raise errno_error(errno.ENODEV, f"bdev {n} not found")
            bdevs.append(bdev)
    else:
        bdevs = [b for b in layer if b.state is BdevState.REGISTERED]
    ticks = time.monotonic_ns()
    stats = [_iostat(b) for b in bdevs]
    if p.reset_mode != "none":
        for b in bdevs:
            b.stat.reset(p.reset_mode)
    if p.per_channel:
        # One event loop is one SPDK thread: a single channel.
        channel = {"thread_id": 1, **{k: v for k, v in stats[0].items() if k != "name"}}
        return {"tick_rate": TICK_RATE, "ticks": ticks, "name": stats[0]["name"],
                "channels": [channel]}
    return {"tick_rate": TICK_RATE, "ticks": ticks, "bdevs": stats}


def _iostat(bdev: Bdev) -> dict[str, Any]:
    out = bdev.stat.to_json(bdev.name)
    if bdev.qd_sampler is not None:
        out.update(bdev.qd_sampler.to_json())
    return out


class ResetIostatParams(Params):
    name: Str | None = None
    mode: Literal["all", "maxmin", "error", "none"] = "all"


@RPC.method("bdev_reset_iostat", ResetIostatParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_reset_iostat(layer: BdevLayer, p: ResetIostatParams) -> bool:
    """Reset the I/O statistics of every bdev, or of the one named."""
    layer = layer
    if p.name is None:
        bdevs = list(layer)
    else:
        bdev = layer.get(p.name)
        if bdev is None or bdev.state is not BdevState.REGISTERED:
            raise errno_error(errno.ENODEV, f"bdev {p.name} not found")
        bdevs = [bdev]
    for b in bdevs:
        b.stat.reset(p.mode)
    return True


class SetOptionsParams(Params):
    bdev_io_pool_size: U32 | None = None
    bdev_io_cache_size: U32 | None = None
    bdev_auto_examine: bool | None = None
    iobuf_small_cache_size: U32 | None = None
    iobuf_large_cache_size: U32 | None = None


@RPC.method("bdev_set_options", SetOptionsParams, states=State.STARTUP,
            result={"type": "boolean"},
            aliases=("set_bdev_options",))
def bdev_set_options(layer: BdevLayer, p: SetOptionsParams) -> bool:
    """Set bdev layer options (before framework init); omitted fields keep their values."""
    layer = layer
    new = dict(layer.options)
    new.update(p.model_dump(exclude_none=True))
    threads = 1
    if new["bdev_io_pool_size"] < new["bdev_io_cache_size"] * (threads + 1):
        raise RpcError(INVALID_PARAMS, f"Pool size {new['bdev_io_pool_size']} too small for "
                                       f"cache size {new['bdev_io_cache_size']}")
    layer.options = new
    return True


@RPC.method("bdev_examine", NameParams,
            decode_error=(INVALID_PARAMS, DECODE_FAILED), result={"type": "boolean"})
def bdev_examine(layer: BdevLayer, p: NameParams) -> bool:
    """Allow examine of one bdev (only when auto examine is off)."""
    layer = layer
    if layer.options["bdev_auto_examine"]:
        raise errno_error(errno.EINVAL,
                          "Manual examine is not allowed if auto examine is enabled")
    if p.name in layer.examine_allowlist:
        raise errno_error(errno.EEXIST)
    layer.examine_allowlist.append(p.name)
    bdev = layer.get(p.name)
    if bdev is not None and bdev.state is BdevState.REGISTERED:
        layer.examine(bdev)
    return True


@RPC.method("bdev_wait_for_examine", states=State.RUNTIME, mutating=False,
            decode_error=(INVALID_PARAMS, "bdev_wait_for_examine requires no parameters"),
            result={"type": "boolean"})
async def bdev_wait_for_examine(layer: BdevLayer) -> bool:
    """Answer once every module finished examining every bdev."""
    await layer.wait_for_examine()
    return True




class QdSamplingParams(Params):
    name: Str = Field(description="Name of the bdev")
    period: U64 = Field(description="Sampling period in microseconds; 0 stops sampling")


@RPC.method("bdev_set_qd_sampling_period", QdSamplingParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_set_qd_sampling_period(layer: BdevLayer, p: QdSamplingParams) -> bool:
    """Sample a bdev's queue depth every ``period`` microseconds (0: stop); not saved."""
    bdev = _registered(layer, p.name)
    sampler = bdev.qd_sampler
    if p.period == 0:
        if sampler is not None:
            sampler.stop()
            bdev.qd_sampler = None
    elif sampler is not None:
        sampler.set_period(p.period)
    else:
        sampler = bdev.qd_sampler = QdSampler(lambda: bdev.inflight, p.period)
        sampler.start()
    bdev.update_hooks()
    return True


def _registered(layer: BdevLayer, name: str) -> Bdev:
    bdev = layer.get(name)
    if bdev is None or bdev.state is not BdevState.REGISTERED:
        raise errno_error(errno.ENODEV)
    return bdev


class QosLimitParams(Params):
    name: Str = Field(description="Name of the bdev")
    rw_ios_per_sec: U64 | None = Field(
        None, description=(
            "Read and write I/Os per second, a multiple of 1000 (others round up); 0 "
            "removes the limit"))
    rw_mbytes_per_sec: U64 | None = Field(
        None, description="Read and write MiB per second; 0 removes the limit")
    r_mbytes_per_sec: U64 | None = Field(
        None, description="Read MiB per second; 0 removes the limit")
    w_mbytes_per_sec: U64 | None = Field(
        None, description="Write MiB per second; 0 removes the limit")


@RPC.method("bdev_set_qos_limit", QosLimitParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_set_qos_limit(layer: BdevLayer, p: QosLimitParams) -> bool:
    """Limit a bdev's I/Os or MiB per second (0 removes a limit; others are kept)."""
    bdev = _registered(layer, p.name)
    given = {k: v for k, v in p.model_dump(exclude={"name"}).items() if v is not None}
    if not given:
        log.error("no rate limits specified")
        raise RpcError(-errno.EINVAL, "No rate limits specified")
    limits = {k: to_per_second(k, v) if v else 0 for k, v in given.items()}
    qos = bdev.qos
    current = dict(zip(QOS_LIMIT_TYPES, qos.limits, strict=True)) if qos else {}
    if not any({**current, **limits}.values()):
        if qos is not None:  # every limit off: QoS off, waiting requests go at once
            bdev.qos = None
            bdev.update_hooks()
            qos.submit_all()
        return True
    if qos is None:
        qos = bdev.qos = Qos()
        bdev.update_hooks()
    qos.set_limits(limits)
    return True


class EnableHistogramParams(Params):
    name: Str = Field(description="Name of the bdev")
    enable: bool = Field(description="Start (true) or stop and drop (false) the histogram")
    opc: Str | None = Field(
        None, description=(
            "Count only this I/O type (read, write, unmap, flush, write_zeroes); all when "
            "omitted"))
    granularity: U8 = Field(
        GRANULARITY_DEFAULT, description="2^granularity buckets per power of two (0 to 12)")
    min_nsec: U64 = Field(
        HISTOGRAM_MIN_NSEC, description="Latencies below this (ns) share the first bucket")
    max_nsec: U64 = Field(
        HISTOGRAM_MAX_NSEC, description="Latencies from this (ns) on share the last bucket")


@RPC.method("bdev_enable_histogram", EnableHistogramParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_enable_histogram(layer: BdevLayer, p: EnableHistogramParams) -> bool:
    """Start (or stop) a latency histogram of a bdev's I/O, of one type with ``opc``."""
    bdev = _registered(layer, p.name)
    if p.opc is not None and p.opc not in IO_TYPE_NAMES:
        log.error("Invalid IO type")
        raise RpcError(INTERNAL_ERROR, "Invalid Io type")
    if not p.enable:
        bdev.histogram = None
        bdev.update_hooks()
        return True
    if p.granularity > GRANULARITY_MAX:
        raise errno_error(errno.EINVAL, f"granularity above {GRANULARITY_MAX}")
    if p.min_nsec >= p.max_nsec:
        raise errno_error(errno.EINVAL, "min_nsec must be below max_nsec")
    old = bdev.histogram
    if old is not None and old.matches(p.granularity, p.min_nsec, p.max_nsec):
        old.io_type = p.opc  # as SPDK: a channel that has a histogram keeps its counts
    else:
        bdev.histogram = Histogram(p.granularity, p.min_nsec, p.max_nsec, p.opc)
    bdev.update_hooks()
    return True


@RPC.method("bdev_get_histogram", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "object"})
def bdev_get_histogram(layer: BdevLayer, p: NameParams) -> dict[str, Any]:
    """A bdev's latency histogram in SPDK's encoding (read by SPDK's scripts/histogram.py)."""
    histogram = _histogram(layer, p.name)
    return {"histogram": histogram.encoded(), "granularity": histogram.granularity,
            "min_range": histogram.min_range, "max_range": histogram.max_range,
            "tsc_rate": TICK_RATE}


def _histogram(layer: BdevLayer, name: str) -> Histogram:
    histogram = _registered(layer, name).histogram
    if histogram is None:
        # SPDK's answer when the bdev's channel has no histogram (bdev_histogram_get_channel).
        raise RpcError(INTERNAL_ERROR, os.strerror(errno.EFAULT))
    return histogram


class HistogramBordersParams(Params):
    name: Str = Field(description="Name of the bdev")
    borders: Annotated[list[U64], Field(min_length=1, max_length=1024)] = Field(
        description="Latencies in microseconds, ascending")


@RPC.method("bdev_get_histogram_borders", HistogramBordersParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "object"})
def bdev_get_histogram_borders(layer: BdevLayer, p: HistogramBordersParams) -> dict[str, Any]:
    """Counts of a bdev's latencies at or below each border (microseconds, ascending)."""
    histogram = _histogram(layer, p.name)
    ticks = [b * (TICK_RATE // 1_000_000) for b in p.borders]
    return {"borders_count": histogram.borders_count(ticks)}
