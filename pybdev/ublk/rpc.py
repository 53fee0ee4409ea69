"""ublk RPC methods (SPDK's lib/ublk/ublk_rpc.c): thin handlers over :mod:`pybdev.ublk.target`."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any

from pydantic import Field

from pybdev.cpus import parse_cpumask
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR, RpcError, errno_error
from pybdev.rpc.registry import IGNORE_PARAMS, RpcTable
from pybdev.rpc.types import U32, Params, Str
from pybdev.ublk.target import DEFAULT_NUM_QUEUES, DEFAULT_QUEUE_DEPTH, UblkTarget

if TYPE_CHECKING:
    from pybdev.ublk.subsystem import UblkSubsystem

RPC = RpcTable()


def _target(ublk: UblkSubsystem) -> UblkTarget:
    target = ublk.target
    if target is None:
        raise errno_error(errno.ENODEV, "no ublk target (call ublk_create_target first)")
    return target


def _internal(err: int, detail: str) -> RpcError:
    """ublk_create_target/destroy answer -32603 with strerror's text (SPDK)."""
    return RpcError(INTERNAL_ERROR, f"{os.strerror(err)}: {detail}" if detail
                    else os.strerror(err))


def _os_to_rpc(e: OSError) -> RpcError:
    err = e.errno or errno.EIO
    return errno_error(err, e.strerror if e.strerror and e.strerror != os.strerror(err)
                       else None)


class CreateTargetParams(Params):
    cpumask: Str | None = Field(
        None, description=(
            "CPUs the queue threads may run on (hex mask or list); the -m mask when omitted"))
    disable_user_copy: bool = Field(
        False, description="Copy data through the kernel's buffers instead of user copy")


@RPC.method("ublk_create_target", CreateTargetParams,
            decode_error=(INTERNAL_ERROR, os.strerror(errno.EINVAL)),
            result={"type": "boolean"})
async def ublk_create_target(ublk: UblkSubsystem, p: CreateTargetParams) -> bool:
    """Create the ublk target (opens /dev/ublk-control, probes kernel features)."""
    sub = ublk
    if sub.target is not None or sub.busy:
        raise _internal(errno.EBUSY, "the ublk target already exists")
    app_mask = sub.app_cpumask
    try:
        app_cpus = parse_cpumask(app_mask)
        cpus = parse_cpumask(p.cpumask) if p.cpumask is not None else app_cpus
    except ValueError as e:
        raise _internal(errno.EINVAL, f"cpumask: {e}") from None
    if not cpus <= app_cpus:
        raise _internal(errno.EINVAL, f"cpumask {p.cpumask} is outside the app's core "
                                      f"mask {app_mask}")
    sub.busy = True
    try:
        sub.target = UblkTarget.create(sub.layer, cpus, disable_user_copy=p.disable_user_copy)
        sub.target.events = sub.app.notifier.publish  # export_add/remove on GET /events
    except OSError as e:
        err = e.errno or errno.EIO
        detail = e.strerror if e.strerror and e.strerror != os.strerror(err) else ""
        raise _internal(err, detail) from None
    finally:
        sub.busy = False
    return True


@RPC.method("ublk_destroy_target", IGNORE_PARAMS,
            result={"type": "boolean"})
async def ublk_destroy_target(ublk: UblkSubsystem) -> bool:
    """Stop every ublk device and destroy the target."""
    sub = ublk
    if sub.target is None:
        raise _internal(errno.ENOENT, "no ublk target")
    if sub.target.destroying:
        raise _internal(errno.EBUSY, "the ublk target is being destroyed")
    await sub.destroy_target()
    return True


class StartDiskParams(Params):
    bdev_name: Str = Field(description="The bdev to export")
    ublk_id: U32 = Field(description="The device number: /dev/ublkbID")
    num_queues: U32 = Field(
        DEFAULT_NUM_QUEUES, description="Number of hardware queues (one thread each)")
    queue_depth: U32 = Field(DEFAULT_QUEUE_DEPTH, description="Requests per queue")


@RPC.method("ublk_start_disk", StartDiskParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "integer"})
async def ublk_start_disk(ublk: UblkSubsystem, p: StartDiskParams) -> int:
    """Export a bdev as /dev/ublkb<ublk_id>; answers the id once the device exists."""
    target = _target(ublk)
    try:
        dev = await target.start_disk(p.bdev_name, p.ublk_id, p.num_queues, p.queue_depth)
    except OperationError:
        raise
    except OSError as e:
        raise _os_to_rpc(e) from None
    return dev.id


class StopDiskParams(Params):
    ublk_id: U32 = Field(description="The device number")


@RPC.method("ublk_stop_disk", StopDiskParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def ublk_stop_disk(ublk: UblkSubsystem, p: StopDiskParams) -> bool:
    """Stop /dev/ublkb<ublk_id> (STOP_DEV, DEL_DEV) and close its bdev."""
    target = ublk.target
    if target is None:
        raise errno_error(errno.ENODEV, "no ublk target")
    await target.stop_disk(p.ublk_id)
    return True


class RecoverDiskParams(Params):
    bdev_name: Str = Field(description="The bdev to serve")
    ublk_id: U32 = Field(description="The device number of the device to recover")


@RPC.method("ublk_recover_disk", RecoverDiskParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "integer"})
async def ublk_recover_disk(ublk: UblkSubsystem, p: RecoverDiskParams) -> int:
    """Take over a ublk device whose previous server died (kernel USER_RECOVERY)."""
    target = _target(ublk)
    try:
        dev = await target.recover_disk(p.bdev_name, p.ublk_id)
    except OperationError:
        raise
    except OSError as e:
        raise _os_to_rpc(e) from None
    return dev.id


class GetDisksParams(Params):
    ublk_id: U32 | None = Field(None, description="Only this device")


@RPC.method("ublk_get_disks", GetDisksParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED),
            result={"type": "array", "items": {"type": "object"}})
def ublk_get_disks(ublk: UblkSubsystem, p: GetDisksParams) -> list[dict[str, Any]]:
    """List ublk devices (all, or one by id; id 0 lists all, as in SPDK)."""
    target = ublk.target
    devices = sorted(target.devices.values(), key=lambda d: d.id) if target else []
    if p.ublk_id:
        devices = [d for d in devices if d.id == p.ublk_id]
        if not devices:
            raise errno_error(errno.ENODEV, f"no ublk device {p.ublk_id}")
    return [d.info() for d in devices]
