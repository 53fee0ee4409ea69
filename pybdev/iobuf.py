"""The ``iobuf`` subsystem: SPDK's data-buffer pool options, kept and saved.

SPDK preallocates two global pools of data buffers (``small_pool_count`` buffers of
``small_bufsize`` bytes, ``large_pool_count`` of ``large_bufsize``) that bdev modules, accel
and transports borrow from (``lib/thread/iobuf.c``). pybdev has no such pool: Python
allocates each connection's and each queue's buffers itself (docs/guide.md, "iobuf and
accel" says what bounds them instead). So here ``iobuf_set_options`` validates the values
with SPDK's minimums and keeps them for ``save_config`` — a config written by SPDK or by
pybdev replays on both — and ``iobuf_get_stats`` answers SPDK's shape with no module,
because no pybdev module takes buffers from a pool.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

from pybdev.rpc.errors import INVALID_PARAMS, errno_error
from pybdev.rpc.registry import IGNORE_PARAMS, RpcTable, State
from pybdev.rpc.types import U32, U64, Params
from pybdev.subsystem import Config, Subsystem

if TYPE_CHECKING:
    from pybdev.app import App

RPC = RpcTable()

log = logging.getLogger("pybdev.iobuf")

# lib/thread/iobuf.c: IOBUF_DEFAULT_* and IOBUF_MIN_*.
DEFAULTS: dict[str, Any] = {
    "small_pool_count": 8192, "large_pool_count": 1024,
    "small_bufsize": 8 * 1024, "large_bufsize": 132 * 1024, "enable_numa": False,
}
MINIMUMS = {"small_pool_count": 64, "large_pool_count": 8,
            "small_bufsize": 4096, "large_bufsize": 8192}


class IobufSubsystem(Subsystem):
    name = "iobuf"
    rpc = RPC

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.options: dict[str, Any] = dict(DEFAULTS)

    def set_options(self, new: dict[str, Any]) -> None:
        merged = {**self.options, **new}
        for key, low in MINIMUMS.items():
            if merged[key] < low:
                log.error("%s must be at least %d", key, low)
                raise errno_error(errno.EINVAL)
        self.options = merged

    def write_config(self) -> Config | None:
        return [{"method": "iobuf_set_options", "params": dict(self.options)}]


class IobufSetOptionsParams(Params):
    small_pool_count: U64 | None = None
    large_pool_count: U64 | None = None
    small_bufsize: U32 | None = None
    large_bufsize: U32 | None = None
    enable_numa: bool | None = None


@RPC.method("iobuf_set_options", IobufSetOptionsParams, states=State.STARTUP,
            decode_error=(INVALID_PARAMS, "spdk_json_decode_object failed"),
            result={"type": "boolean"})
def iobuf_set_options(sub: IobufSubsystem, p: IobufSetOptionsParams) -> bool:
    """Set the buffer pool options (before framework init); kept and saved, see docs/guide.md."""
    sub.set_options(p.model_dump(exclude_none=True))
    return True


# SPDK's handler never looks at params.
@RPC.method("iobuf_get_stats", IGNORE_PARAMS, result={"type": "array", "items": {"type": "object"}})
def iobuf_get_stats(sub: IobufSubsystem) -> list[dict[str, Any]]:
    """Per-module pool use, SPDK's shape; empty: no pybdev module borrows from a pool."""
    return []
