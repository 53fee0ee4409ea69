"""Bdev-layer RPCs: listing, statistics, options, examine (SPDK's lib/bdev/bdev_rpc.c)."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from pybdev.bdev.core import Bdev, BdevState
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR, INVALID_PARAMS, RpcError, errno_error
from pybdev.rpc.registry import RpcTable, State
from pybdev.rpc.types import U32, U64, NameParams, Params, Str

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

TICK_RATE = 1_000_000_000  # latencies are counted in nanoseconds


class GetBdevsParams(Params):
    name: Str | None = None
    timeout: U64 = 0


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
    names: Annotated[list[Str], Field(max_length=1024)] | None = None
    name: Str | None = None  # removed in SPDK v26.05; still accepted here
    per_channel: bool = False
    reset_mode: Literal["all", "maxmin", "error", "none"] = "none"


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
    if bdev.qd_sampling_period:
        # SPDK adds queue_depth, io_time and weighted_io_time from a poller that samples the
        # bdev's in-flight count; pybdev does not count requests in flight (a cost on every
        # I/O), so only the period is reported (docs/guide.md, "Queue depth sampling").
        out["queue_depth_polling_period"] = bdev.qd_sampling_period
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
    name: Str
    period: U64


@RPC.method("bdev_set_qd_sampling_period", QdSamplingParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_set_qd_sampling_period(layer: BdevLayer, p: QdSamplingParams) -> bool:
    """Set a bdev's queue depth sampling period in microseconds (0: off); kept per bdev."""
    bdev = layer.get(p.name)
    if bdev is None or bdev.state is not BdevState.REGISTERED:
        raise errno_error(errno.ENODEV)
    bdev.qd_sampling_period = p.period
    return True
