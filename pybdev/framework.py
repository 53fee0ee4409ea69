"""Framework RPCs: methods, version, init, config, kill, reactors, core locks.

As SPDK's ``lib/event/app.c``, ``lib/event/app_rpc.c`` and ``lib/init/subsystem_rpc.c``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from pybdev import __version__, cpus
from pybdev.errors import OperationError
from pybdev.rpc.errors import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from pybdev.rpc.registry import BOTH, IGNORE_PARAMS, RpcTable, State
from pybdev.rpc.types import Params, Str
from pybdev.subsystem import flatten_batches

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.app import App


class GetMethodsParams(Params):
    current: bool = Field(
        False, description="Only the methods allowed in the current state (STARTUP or RUNTIME)")
    include_aliases: bool = Field(False, description="List deprecated aliases too")


@RPC.method(
    "rpc_get_methods",
    GetMethodsParams,
    states=BOTH,
    result={"type": "array", "items": {"type": "string"}},
    aliases=("get_rpc_methods",),
)
def rpc_get_methods(app: App, p: GetMethodsParams) -> list[str]:
    """List the methods this target serves (``current``: only those callable now)."""
    dispatcher = app.dispatcher
    names = [
        m.name
        for m in dispatcher.registry
        if dispatcher.is_allowed(m.name) and (not p.current or m.states & app.state)
        and (p.include_aliases or m.alias_of is None)
    ]
    return names[::-1]  # SPDK inserts at the list head: newest registration first


def version_info() -> dict[str, Any]:
    major, minor, patch = (int(x) for x in __version__.split(".")[:3])
    text = f"pybdev v{major}.{minor}" + (f".{patch}" if patch else "")
    return {
        "version": text,
        "fields": {"major": major, "minor": minor, "patch": patch, "suffix": ""},
    }


@RPC.method(
    "spdk_get_version",
    states=BOTH,
    decode_error=(INVALID_PARAMS, "spdk_get_version method requires no parameters"),
    result={"type": "object"},
    aliases=("get_spdk_version",),
)
def spdk_get_version(app: App) -> dict[str, Any]:
    """The target's version, shaped like SPDK's (``version`` text and ``fields``)."""
    return version_info()


class KillParams(Params):
    sig_name: Literal["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"] = Field(
        description="Signal to send; SIGINT and SIGTERM shut the target down cleanly")


@RPC.method("spdk_kill_instance", KillParams, result={"type": "boolean"},
            aliases=("kill_instance",))
def spdk_kill_instance(app: App, p: KillParams) -> bool:
    """Send a signal to the target; SIGINT and SIGTERM shut it down cleanly."""
    sig = getattr(signal, p.sig_name)
    # Deliver after the answer is written, so the client sees ``true`` first.
    asyncio.get_running_loop().call_soon(os.kill, os.getpid(), sig)
    return True


@RPC.method(
    "framework_start_init",
    states=State.STARTUP,
    decode_error=(INVALID_PARAMS, "framework_start_init requires no parameters"),
    result={"type": "boolean"},
    aliases=("start_subsystem_init",),
)
async def framework_start_init(app: App) -> bool:
    """Initialise subsystems and load the RUNTIME part of ``--json`` (``--wait-for-rpc``)."""
    try:
        await app.start_init()
    except Exception as e:
        app.log.error("framework initialization failed: %s", e)
        raise RpcError(INTERNAL_ERROR, "framework_initialization failed") from None
    return True


@RPC.method("framework_wait_init", IGNORE_PARAMS, states=BOTH, result={"type": "boolean"},
            aliases=("wait_subsystem_init",), mutating=False)
async def framework_wait_init(app: App) -> bool:
    """Answer ``true`` once the framework is initialised (at once in RUNTIME)."""
    await app.initialized.wait()
    return True


@RPC.method(
    "framework_get_subsystems",
    decode_error=(INVALID_PARAMS, "'framework_get_subsystems' requires no arguments"),
    result={"type": "array", "items": {"type": "object"}},
    aliases=("get_subsystems",),
)
def framework_get_subsystems(app: App) -> list[dict[str, Any]]:
    """Subsystems in init order with their direct dependencies."""
    return [{"subsystem": s.name, "depends_on": list(s.depends_on)} for s in app.subsystems]


class GetConfigParams(Params):
    name: Str = Field(description="Subsystem name (bdev, nbd, ublk, nvmf, ...)")
    with_batches: bool = Field(False, description="Write malloc and null creations as batches")


@RPC.method(
    "framework_get_config",
    GetConfigParams,
    decode_error=(INVALID_PARAMS, "Invalid arguments"),
    result={"type": ["array", "null"]},
    aliases=("get_subsystem_config",),
)
def framework_get_config(app: App, p: GetConfigParams) -> list[Any] | None:
    """One subsystem's config: the calls that recreate its current state."""
    for sub in app.subsystems:
        if sub.name == p.name:
            config = sub.write_config()
            if config is None or p.with_batches:
                return config
            return flatten_batches(config)
    raise RpcError(INVALID_PARAMS, f"Subsystem '{p.name}' not found")


@RPC.method("framework_get_reactors",
            decode_error=(INVALID_PARAMS, "`framework_get_reactors` requires no arguments"),
            result={"type": "object"})
def framework_get_reactors(app: App) -> dict[str, Any]:
    """The threads pybdev runs, as SPDK's reactors: the event loop and ublk queue threads."""
    workers = [w for sub in app.subsystems for w in sub.threads()]
    # Handlers run on the event loop's thread, so this is the loop's tid.
    cores = frozenset(app.core_locks.cores)
    return cpus.reactors(cores, threading.get_native_id(), workers, cpus.format_cpumask(cores))


@RPC.method("framework_enable_cpumask_locks", states=BOTH,
            decode_error=(INVALID_PARAMS, "framework_enable_cpumask_locks"
                                          "requires no arguments"),
            result={"type": "boolean"})
def framework_enable_cpumask_locks(app: App) -> bool:
    """Take SPDK's lock file of every core in ``-m`` (/var/tmp/spdk_cpu_lock_NNN)."""
    try:
        app.core_locks.claim()
    except OperationError as e:
        app.log.error("Cannot create lock on core %s, %s", e.detail, e.message)
        raise RpcError(INTERNAL_ERROR, f"Failed to claim CPU core: {e.detail}") from None
    return True


@RPC.method("framework_disable_cpumask_locks", states=BOTH,
            decode_error=(INVALID_PARAMS, "framework_disable_cpumask_locks"
                                          "requires no arguments"),
            result={"type": "boolean"})
def framework_disable_cpumask_locks(app: App) -> bool:
    """Release the core lock files this target holds (none: nothing to do)."""
    app.core_locks.release()
    return True


__all__ = ["version_info"]
