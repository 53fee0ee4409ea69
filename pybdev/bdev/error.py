"""error: a fault-injection vbdev over a whole base bdev (SPDK's vbdev_error.c).

``bdev_error_create BASE`` builds ``EE_<BASE>``, claiming the base ``exclusive_write``;
a missing base defers the creation to examine. Requests pass through to the base until
``bdev_error_inject_error`` arms an error for an I/O type (read, write, unmap, flush, or
all of them): the next ``num`` requests of that type, counted only while at least
``queue_depth`` requests are in flight on the base, then get:

- ``failure``: completed with -EIO, the base never sees them;
- ``nvme_failure``: the same (pybdev has no NVMe status to carry ``nvme_sct``/``nvme_sc``);
- ``nomem``: completed with -ENOMEM, which means "out of resources, try again": the
  request had no effect. As in SPDK, the bdev layer (``pybdev/bdev/core.py``) queues such
  requests and submits them again shortly after, so consumers never see the -ENOMEM
  (unless a request is refused for 10 s). ``bdev_get_iostat`` counts each one under
  ``io_error.nomem``;
- ``pending``: held, unanswered, until ``bdev_error_resume_pending`` (which disarms
  pending injections and submits them again) or a reset (which completes them with
  -ECANCELED, SPDK's "aborted");
- ``corrupt_data``: passed through, but a write's data has the byte at
  ``corrupt_offset`` XORed with ``corrupt_value`` on its way down (on a copy: the
  caller's buffer is left alone), and a read's data likewise on its way up.

The UUID is the one given, or derived as SPDK's bdev_part does: a version-5 UUID over
namespace ``976b899e-3e1e-4d71-ab69-c2b08e9df8b8`` and (base UUID bytes, offset 0,
block count as little-endian u64s). The config entry (base name, given UUID) is kept
until the error bdev is destroyed, whether by delete or by the base going away.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from pybdev.bdev.core import BdevState, Callback, Descriptor
from pybdev.bdev.vbdev import (
    PART_NAMESPACE,
    StackedBdev,
    VbdevConfig,
    VbdevModule,
    VirtualBdev,
    part_uuid,
)
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INVALID_PARAMS, RpcError
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U8, U32, U64, NameParams, Params, Str, Uuid

RPC = RpcTable()

log = logging.getLogger("pybdev.bdev.error")

__all__ = ["PART_NAMESPACE", "ErrorBdev", "ErrorConfig", "ErrorModule", "part_uuid"]
NVME_MESSAGE = "nvme_sct or nvme_sc should be specified for NVMe error injection"
IO_TYPES = ("read", "write", "unmap", "flush")
IoTypeName = Literal["clear", "read", "write", "unmap", "flush", "all"]
ErrorTypeName = Literal["failure", "pending", "corrupt_data", "nomem", "nvme_failure"]


def nvme_status_invalid(error_type: str, nvme_sct: int, nvme_sc: int) -> bool:
    """SPDK's check: NVMe status only, and always, with ``nvme_failure``."""
    if error_type == "nvme_failure":
        return nvme_sct == 0 and nvme_sc == 0
    return nvme_sct != 0 or nvme_sc != 0


@dataclass
class ErrorInfo:
    """One armed injection (SPDK's ``vbdev_error_info``)."""

    error_type: str = "failure"
    num: int = 0
    queue_depth: int = 0
    corrupt_offset: int = 0
    corrupt_value: int = 0
    nvme_sct: int = 0
    nvme_sc: int = 0


@dataclass(eq=False)
class ErrorConfig(VbdevConfig):
    base_name: str
    uuid: str | None

    @property
    def base_names(self) -> tuple[str, ...]:
        return (self.base_name,)


def _corrupted(data: Any, offset: int, value: int) -> Any:
    if isinstance(data, tuple):  # (data, metadata) of read_md: the data is corrupted
        return (_corrupted(data[0], offset, value), data[1])
    if data is None or offset >= len(data):
        return data
    copy = bytearray(data)
    copy[offset] ^= value
    return copy


class ErrorBdev(VirtualBdev):
    product_name = "Error Injection Disk"
    module_name = "error"
    follows_resize = False  # a bdev_part keeps the geometry it was built with, as SPDK's
    copies_pi_format = False  # nor does a bdev_part take the base's dif_pi_format

    def __init__(self, name: str, uuid: str, base_desc: Descriptor) -> None:
        super().__init__(name, uuid, base_desc)
        self.vector = {t: ErrorInfo() for t in IO_TYPES}
        self.inflight = 0  # requests passed to the base and not completed yet
        # Held requests: how to submit each again, and its completion for an abort.
        self.pending: list[tuple[Callable[[], None], Callback]] = []

    # -- injection --------------------------------------------------------------------
    def _armed(self, io_type: str) -> ErrorInfo | None:
        info = self.vector[io_type]
        if self.inflight < info.queue_depth or info.num == 0:
            return None
        info.num -= 1
        return info

    def _intercept(self, info: ErrorInfo | None, cb: Callback,
                   resubmit: Callable[[], None]) -> bool:
        """Complete or hold the request if ``info`` says so; False lets it through."""
        if info is None or info.error_type == "corrupt_data":
            return False
        if info.error_type == "nomem":
            cb(-errno.ENOMEM, None)
        elif info.error_type == "pending":
            self.pending.append((resubmit, cb))
        else:  # failure, nvme_failure
            cb(-errno.EIO, None)
        return True

    def _through(self, cb: Callback, corrupt: ErrorInfo | None = None) -> Callback:
        self.inflight += 1

        def done(status: int, data: Any) -> None:
            self.inflight -= 1
            if corrupt is not None and status == 0:
                data = _corrupted(data, corrupt.corrupt_offset, corrupt.corrupt_value)
            cb(status, data)

        return done

    # -- requests ---------------------------------------------------------------------
    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        info = self._armed("read")
        if self._intercept(info, cb, lambda: self.submit_read(offset, length, cb)):
            return
        self.base_desc.read(offset, length, self._through(cb, info))

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        info = self._armed("write")
        if self._intercept(info, cb, lambda: self.submit_write(offset, data, cb, fua)):
            return
        if info is not None:
            data = _corrupted(data, info.corrupt_offset, info.corrupt_value)
        self.base_desc.write(offset, data, self._through(cb), fua)

    # Data with separate metadata is a read or a write to SPDK's error bdev too.
    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        info = self._armed("read")
        if self._intercept(info, cb, lambda: self.submit_read_md(offset, length, cb)):
            return
        self.base_desc.read_md(offset, length, self._through(cb, info))

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        info = self._armed("write")
        if self._intercept(info, cb, lambda: self.submit_write_md(offset, data, md, cb, fua)):
            return
        if info is not None:
            data = _corrupted(data, info.corrupt_offset, info.corrupt_value)
        self.base_desc.write_md(offset, data, md, self._through(cb), fua)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        info = self._armed("unmap")
        if self._intercept(info, cb, lambda: self.submit_unmap(offset, length, cb)):
            return
        self.base_desc.unmap(offset, length, self._through(cb))

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        info = self._armed("flush")
        if self._intercept(info, cb, lambda: self.submit_flush(offset, length, cb)):
            return
        self.base_desc.flush(offset, length, self._through(cb))

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        # Not an injectable type in SPDK; emulated write_zeroes arrive as writes instead.
        self.base_desc.write_zeroes(offset, length, self._through(cb))

    def submit_reset(self, cb: Callback) -> None:
        # As SPDK: a reset aborts what is held here and does not reach the base.
        self._abort_pending()
        cb(0, None)

    def _abort_pending(self) -> None:
        held, self.pending = self.pending, []
        for _resubmit, cb in held:
            cb(-errno.ECANCELED, None)

    def inject(self, io_type: str, info: ErrorInfo) -> None:
        if io_type == "clear":
            for entry in self.vector.values():
                entry.num = 0
            return
        for t in IO_TYPES if io_type == "all" else (io_type,):
            self.vector[t] = ErrorInfo(**vars(info))

    def resume_pending(self) -> None:
        for entry in self.vector.values():
            if entry.error_type == "pending":
                entry.num = 0
        held, self.pending = self.pending, []
        loop = asyncio.get_running_loop()
        for resubmit, _cb in held:
            # Asynchronously, as SPDK sends each one as a message to its thread.
            loop.call_soon(resubmit)

    # -- lifecycle --------------------------------------------------------------------
    def driver_specific(self) -> dict[str, Any]:
        return {"error_disk": {"base_bdev": self.base_name}}

    def on_removed(self) -> None:
        self._abort_pending()


class ErrorModule(VbdevModule[ErrorConfig]):
    name = "error"
    rpc = RPC
    keep_unbuilt = False  # the config goes with the error bdev (SPDK's vbdev_error_config)
    saves_pending = True

    def create(self, base_name: str, uuid: str | None = None) -> None:
        """Create ``EE_<base_name>`` now, or when the base registers (deferred).

        Raises OperationError: -17 when an error bdev is already configured on that base
        or the name/UUID clashes, -1 when the base is claimed.
        """
        if any(c.base_name == base_name for c in self.configs):
            log.error("vbdev_error_config for bdev %s already exists", base_name)
            raise OperationError(errno.EEXIST,
                                 f"an error bdev is already configured on {base_name}")
        self.add(ErrorConfig(base_name, uuid))

    def construct(self, config: ErrorConfig, descs: list[Descriptor]) -> list[StackedBdev]:
        base = descs[0].bdev
        uuid = config.uuid or part_uuid(base.uuid, 0, base.num_blocks)
        return [ErrorBdev(f"EE_{config.base_name}", uuid, descs[0])]

    def config_entry(self, config: ErrorConfig) -> dict[str, Any]:
        params: dict[str, Any] = {"base_name": config.base_name}
        if config.uuid is not None:
            params["uuid"] = config.uuid
        return {"method": "bdev_error_create", "params": params}

    async def delete(self, name: str) -> None:
        """Unregister an error bdev; its config entry goes with it. -19 if none."""
        await self.layer.unregister_by_name(name, self.name)

    def _error_bdev(self, name: str) -> ErrorBdev:
        bdev = self.layer.get(name)
        if not isinstance(bdev, ErrorBdev) or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"no error injection bdev named {name}")
        return bdev

    def inject_error(self, name: str, io_type: str, error_type: str, *, num: int = 1,
                     queue_depth: int = 0, corrupt_offset: int = 0, corrupt_value: int = 0,
                     nvme_sct: int = 0, nvme_sc: int = 0) -> None:
        """Arm (or with ``io_type="clear"`` disarm) an injection; -22 / -19 as SPDK."""
        if io_type not in (*IO_TYPES, "clear", "all"):
            raise OperationError(errno.EINVAL, f"unknown io_type {io_type}")
        if error_type not in ("failure", "pending", "corrupt_data", "nomem", "nvme_failure"):
            raise OperationError(errno.EINVAL, f"unknown error_type {error_type}")
        if nvme_status_invalid(error_type, nvme_sct, nvme_sc):
            raise OperationError(errno.EINVAL, NVME_MESSAGE)
        if error_type == "corrupt_data" and corrupt_value == 0:
            raise OperationError(errno.EINVAL, "corrupt_value should be non-zero")
        if not 0 <= corrupt_value <= 0xFF:
            raise OperationError(errno.EINVAL, "corrupt_value must be a byte")
        self._error_bdev(name).inject(io_type, ErrorInfo(
            error_type, num, queue_depth, corrupt_offset, corrupt_value, nvme_sct, nvme_sc))

    def resume_pending(self, name: str) -> None:
        """Submit again every request held by a ``pending`` injection."""
        self._error_bdev(name).resume_pending()




class ErrorCreateParams(Params):
    base_name: Str = Field(description="The bdev to wrap; the new bdev is EE_<base_name>")
    uuid: Uuid | None = Field(
        None, description="UUID of the error bdev; a random one when omitted")


@RPC.method("bdev_error_create", ErrorCreateParams,
            decode_error=(INVALID_PARAMS, DECODE_FAILED), result={"type": "boolean"},
            aliases=("construct_error_bdev",))
def bdev_error_create(module: ErrorModule, p: ErrorCreateParams) -> bool:
    """Create the error injection bdev EE_<base_name> (deferred until the base exists)."""
    module.create(p.base_name, p.uuid)
    return True



@RPC.method("bdev_error_delete", NameParams,
            decode_error=(INVALID_PARAMS, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_error_bdev",))
async def bdev_error_delete(module: ErrorModule, p: NameParams) -> bool:
    """Delete an error injection bdev, releasing its base."""
    await module.delete(p.name)
    return True


class InjectErrorParams(Params):
    name: Str = Field(description="Name of the error bdev (EE_...)")
    io_type: IoTypeName = Field(
        description=(
            "Which requests fail: read, write, unmap, flush, all, or clear to stop "
            "injecting"))
    error_type: ErrorTypeName = Field(
        description="failure, nvme_failure, pending (held until resumed), corrupt_data or nomem")
    nvme_sct: U32 = Field(0, description="NVMe status code type of nvme_failure")
    nvme_sc: U32 = Field(0, description="NVMe status code of nvme_failure")
    num: U32 = Field(1, description="How many requests to fail")
    queue_depth: U64 = Field(
        0, description="Count only while at least this many requests are in flight on the base")
    corrupt_offset: U64 = Field(0, description="Byte of the data corrupt_data changes")
    corrupt_value: U8 = Field(0, description="Value XORed into that byte")


@RPC.method("bdev_error_inject_error", InjectErrorParams,
            decode_error=(INVALID_PARAMS, DECODE_FAILED), result={"type": "boolean"},
            aliases=("bdev_inject_error",))
def bdev_error_inject_error(module: ErrorModule, p: InjectErrorParams) -> bool:
    """Arm an error for the next ``num`` requests of an I/O type (``clear`` disarms all)."""
    if nvme_status_invalid(p.error_type, p.nvme_sct, p.nvme_sc):
        # SPDK answers this one with its own text instead of strerror.
        raise RpcError(-errno.EINVAL, NVME_MESSAGE)
    module.inject_error(
        p.name, p.io_type, p.error_type, num=p.num, queue_depth=p.queue_depth,
        corrupt_offset=p.corrupt_offset, corrupt_value=p.corrupt_value, nvme_sct=p.nvme_sct,
        nvme_sc=p.nvme_sc)
    return True


@RPC.method("bdev_error_resume_pending", NameParams,
            decode_error=(INVALID_PARAMS, DECODE_FAILED), result={"type": "boolean"})
def bdev_error_resume_pending(module: ErrorModule, p: NameParams) -> bool:
    """Submit again every request held by a ``pending`` injection."""
    module.resume_pending(p.name)
    return True
