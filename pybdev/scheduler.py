"""The ``scheduler`` subsystem: SPDK's thread scheduler, of which pybdev has ``static``.

SPDK moves its lightweight threads between cores with a scheduler (``static``: never
moves them; ``dynamic``: by load) run every ``period`` microseconds
(``lib/event/app_rpc.c``, ``module/event/subsystems/scheduler/scheduler.c``). pybdev's
threads are placed once — the event loop where the OS puts it, each ublk queue thread
pinned to its core — so ``static`` is the only scheduler: it is set at init, kept with its
period for ``save_config``, and ``framework_set_scheduler`` refuses any other name as SPDK
refuses an unknown one.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict

from pybdev.cpus import app_cores, format_cpumask
from pybdev.rpc.errors import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from pybdev.rpc.registry import BOTH, RpcTable
from pybdev.rpc.types import U8, U64, Params, Str
from pybdev.subsystem import Config, Subsystem

if TYPE_CHECKING:
    from pybdev.app import App

RPC = RpcTable()

log = logging.getLogger("pybdev.scheduler")

SCHEDULERS = ("static",)


class SchedulerSubsystem(Subsystem):
    name = "scheduler"
    rpc = RPC

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.scheduler: str | None = None
        self.period = 0
        self.cores = frozenset({0})
        self._first_load = True

    def configure(self, options: argparse.Namespace) -> None:
        self.cores = app_cores(options.cpumask)

    def select(self, name: str) -> None:
        """SPDK's spdk_scheduler_set for ``static``: its init resets the period."""
        if name == self.scheduler:
            return
        if self.scheduler is not None:
            self._first_load = False
        # lib/event/scheduler_static.c init_static: no period on the first load (static
        # never rebalances), one immediate balance when switched back to.
        self.period = 0 if self._first_load else 1
        self.scheduler = name

    async def init(self) -> None:
        if self.scheduler is None:
            self.select("static")

    async def fini(self) -> None:
        self.period = 0
        if self.scheduler is not None:
            self._first_load = False
        self.scheduler = None

    def write_config(self) -> Config | None:
        if self.scheduler is None:
            return []
        params: dict[str, Any] = {"name": self.scheduler}
        if self.period:
            params["period"] = self.period
        return [{"method": "framework_set_scheduler", "params": params}]


class SetSchedulerParams(Params):
    # spdk_json_decode_object_relaxed: unknown keys are ignored (a scheduler's own options).
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    name: Str
    period: U64 = 0
    load_limit: U8 = 0
    core_limit: U8 = 0
    core_busy: U8 = 0
    mappings: Str | None = None


def _check_mappings(sub: SchedulerSubsystem, mappings: str) -> None:
    """``THREAD:CORE,...``; pybdev's threads do not move, so only their own core is valid."""
    main = min(sub.cores)
    for pair in mappings.split(","):
        thread, _, core = pair.partition(":")
        if not (thread.strip().isdigit() and core.strip().isdigit()):
            raise RpcError(INTERNAL_ERROR, "Invalid argument")
        if int(thread) != 1 or int(core) != main:
            log.error("thread %s cannot be placed on core %s", thread, core)
            raise RpcError(INTERNAL_ERROR, "Invalid argument")


@RPC.method("framework_set_scheduler", SetSchedulerParams, states=BOTH,
            decode_error=(INVALID_PARAMS, "Invalid parameters"),
            result={"type": "boolean"})
def framework_set_scheduler(sub: SchedulerSubsystem, p: SetSchedulerParams) -> bool:
    """Select the thread scheduler (``static`` only) and its period in microseconds."""
    # SPDK also sets a 1 s period here when none was given and none is set; pybdev keeps
    # the period as it is, so that a saved config loaded again saves the same (static never
    # rebalances, so the period changes nothing). See docs/guide.md.
    if p.period:
        sub.period = p.period
    if p.name not in SCHEDULERS:
        log.error("Requested scheduler is missing")
        raise RpcError(INTERNAL_ERROR, os.strerror(errno.EINVAL))
    sub.select(p.name)
    if p.mappings is not None:
        _check_mappings(sub, p.mappings)
    return True


@RPC.method("framework_get_scheduler", states=BOTH,
            decode_error=(INVALID_PARAMS, "'rpc_get_scheduler' requires no arguments"),
            result={"type": "object"})
def framework_get_scheduler(sub: SchedulerSubsystem) -> dict[str, Any]:
    """The scheduler's name and period, the isolated cores and the scheduling core."""
    out: dict[str, Any] = {}
    if sub.scheduler is not None:
        out["scheduler_name"] = sub.scheduler
    out["scheduler_period"] = sub.period
    out["isolated_core_mask"] = format_cpumask(set())
    out["scheduling_core"] = min(sub.cores)
    return out
