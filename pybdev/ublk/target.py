"""The ublk target and its devices: the Python API behind the ``ublk_*`` RPCs.

``UblkTarget`` is created by ``ublk_create_target``: it opens /dev/ublk-control, probes the
kernel's features (GET_FEATURES) and decides USER_COPY vs per-tag buffers, ioctl encoding and
user recovery once. ``UblkDevice`` is one /dev/ublkbN: a bdev descriptor, the cdev, one
:class:`~pybdev.ublk.queue.UblkQueue` (poller thread) per queue, and the bdev I/O that the
pollers hand to the event loop.

Errors are ``OperationError(errno, detail)``; the RPC layer maps them to SPDK's codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from pybdev import uring
from pybdev.bdev.core import Bdev, BdevLayer
from pybdev.cpus import format_cpumask
from pybdev.errors import OperationError
from pybdev.export import io
from pybdev.export.base import Export, refuse_interleaved_md
from pybdev.export.status import UBLK_STATUS
from pybdev.ublk import uapi
from pybdev.ublk.control import CONTROL_PATH, Control, ControlError, open_control
from pybdev.ublk.process import set_io_flusher, unshare_mount_namespace
from pybdev.ublk.queue import Request, UblkQueue

log = logging.getLogger("pybdev.ublk")

DEFAULT_NUM_QUEUES: Final = 1
DEFAULT_QUEUE_DEPTH: Final = 128
MAX_NUM_QUEUES: Final = 32  # SPDK's UBLK_DEV_MAX_QUEUES
MAX_QUEUE_DEPTH: Final = 1024  # SPDK's UBLK_DEV_MAX_QUEUE_DEPTH
DEFAULT_MAX_DEVS: Final = 64  # SPDK's UBLK_DEFAULT_MAX_SUPPORTED_DEVS
# Largest request the kernel sends us. Bigger than SPDK's 64 KiB: every request costs a
# Python round trip, so fewer, larger ones are cheaper; 512 KiB keeps the per-tag buffers
# of the mode without USER_COPY (depth x this, virtual) reasonable.
MAX_IO_BYTES: Final = 512 * 1024
MAX_DISCARD_SECTORS: Final = 32768
CDEV_OPEN_TIMEOUT: Final = 10.0
RECOVERY_WAIT: Final = 10.0
STOP_JOIN_TIMEOUT: Final = 30.0

# ublk opcode -> bdev operation (pybdev.export.io); WRITE_SAME and the zoned opcodes are
# not supported (completed -EOPNOTSUPP).
UBLK_OPS: Final = io.op_table({
    uapi.UBLK_IO_OP_READ: io.READ,
    uapi.UBLK_IO_OP_WRITE: io.WRITE,
    uapi.UBLK_IO_OP_FLUSH: io.FLUSH,
    uapi.UBLK_IO_OP_DISCARD: io.UNMAP,
    uapi.UBLK_IO_OP_WRITE_ZEROES: io.WRITE_ZEROES,
})


_OP_READ: Final = uapi.UBLK_IO_OP_READ
_OP_WRITE: Final = uapi.UBLK_IO_OP_WRITE
_F_FUA: Final = uapi.UBLK_IO_F_FUA
# Serve thread-safe bdevs on the queue threads (docs/decisions/ublk-queue-serving.md).
# Relies on the GIL: the layer's statistics are updated without a lock. Off on a
# free-threaded Python, and with PYBDEV_UBLK_QUEUE_SERVING=0 (for measurements).
QUEUE_THREAD_SERVING: Final = (getattr(sys, "_is_gil_enabled", lambda: True)()
                               and os.environ.get("PYBDEV_UBLK_QUEUE_SERVING", "1") != "0")


class DeviceState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECOVERING = "recovering"
    STOPPING = "stopping"
    STOPPED = "stopped"


# -- device parameters ------------------------------------------------------------------------
def _log2(n: int) -> int:
    if n <= 0 or n & (n - 1):
        raise OperationError(errno.EINVAL, f"{n} is not a power of two")
    return n.bit_length() - 1


def device_params(bdev: Bdev, max_io_bytes: int = MAX_IO_BYTES) -> uapi.Params:
    """The kernel parameters of a device that exports ``bdev``."""
    refuse_interleaved_md(bdev, "ublk")
    bs = bdev.block_size
    if bs < 512 or bs > uapi.PAGE_SIZE:
        raise OperationError(errno.EINVAL,
                             f"bdev block size {bs} unsupported by ublk (512..4096)")
    lbs = _log2(bs)
    pbs = max(lbs, _log2(bdev.physical_block_size or bs))
    opt = max(bdev.optimal_io_boundary * bs, bs)
    io_opt = opt.bit_length() - 1  # the kernel wants a shift: round down to a power of two
    max_io = max_io_bytes
    if bdev.max_io_bytes:
        max_io = min(max_io, bdev.max_io_bytes)
    attrs = 0
    if not bdev.supports("write"):
        attrs |= uapi.UBLK_ATTR_READ_ONLY
    if bdev.supports("flush"):
        # A volatile cache makes the kernel send FLUSH; FUA writes then go through too.
        attrs |= uapi.UBLK_ATTR_VOLATILE_CACHE | uapi.UBLK_ATTR_FUA
    discard = None
    unmap = bdev.supports("unmap")
    wz = bdev.supports("write_zeroes") and bdev.supports("write")
    if unmap or wz:
        discard = (0, bs, MAX_DISCARD_SECTORS if unmap else 0,
                   MAX_DISCARD_SECTORS if wz else 0, 1)
    return uapi.Params(
        logical_bs_shift=lbs, physical_bs_shift=pbs, io_min_shift=lbs, io_opt_shift=io_opt,
        max_sectors=max_io >> 9, dev_sectors=bdev.size >> 9, attrs=attrs, discard=discard)


def ublks_max() -> int:
    try:
        with open("/sys/module/ublk_drv/parameters/ublks_max") as f:
            n = int(f.read().strip())
    except (OSError, ValueError):
        return DEFAULT_MAX_DEVS
    return n if n > 0 else DEFAULT_MAX_DEVS


# -- the target -----------------------------------------------------------------------------
class UblkTarget:
    """What ``ublk_create_target`` creates. Use :meth:`create` (it probes the kernel)."""

    def __init__(self, layer: BdevLayer, cpus: frozenset[int], control: Control, *,
                 features: int, disable_user_copy: bool = False) -> None:
        self.layer = layer
        self.cpus = cpus
        self.cpu_list = sorted(cpus)
        self.control = control
        self.features = features
        self.disable_user_copy = disable_user_copy
        self.user_copy = bool(features & uapi.UBLK_F_USER_COPY) and not disable_user_copy
        self.recovery = bool(features & uapi.UBLK_F_USER_RECOVERY)
        self.devices: dict[int, UblkDevice] = {}
        #: Told of ``export_add`` / ``export_remove`` (the target's event hub).
        self.events: Callable[[str, dict[str, Any]], object] | None = None
        self.max_devs = ublks_max()
        self.destroying = False
        self._next_cpu = 0

    @classmethod
    def create(cls, layer: BdevLayer, cpus: frozenset[int], *, disable_user_copy: bool = False,
               control_path: str = CONTROL_PATH, isolate: bool = True) -> UblkTarget:
        """Probe io_uring and the driver; raises OSError with a reason a user can act on."""
        if not uring.available():
            raise OSError(errno.EOPNOTSUPP,
                          f"io_uring unavailable: {uring.unavailable_reason()}")
        fd = open_control(control_path)
        try:
            if isolate:
                _isolate_process()
            executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ublk-ctrl")
            control = Control(fd, executor)
            try:
                features = control.get_features_sync()
            except ControlError as e:
                # Kernels before 6.4 lack GET_FEATURES: legacy opcodes, no user copy.
                log.warning("ublk GET_FEATURES failed (%s): assuming an old kernel", e.strerror)
                features = 0
            control.ioctl_encode = bool(features & uapi.UBLK_F_CMD_IOCTL_ENCODE)
        except BaseException:
            os.close(fd)
            raise
        target = cls(layer, cpus, control, features=features,
                     disable_user_copy=disable_user_copy)
        log.info("ublk target on CPUs %s; kernel features %#x (%s); data path %s",
                 target.cpu_list, features, ",".join(uapi.feature_names(features)),
                 "USER_COPY" if target.user_copy else "per-tag buffers")
        return target

    def next_cpu(self) -> int:
        cpu = self.cpu_list[self._next_cpu % len(self.cpu_list)]
        self._next_cpu += 1
        return cpu

    def config(self) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"cpumask": format_cpumask(self.cpus)}
        if self.disable_user_copy:
            params["disable_user_copy"] = True
        out = [{"method": "ublk_create_target", "params": params}]
        for dev in sorted(self.devices.values(), key=lambda d: d.id):
            if dev.state in (DeviceState.RUNNING, DeviceState.RECOVERING):
                out.append({"method": "ublk_start_disk", "params": dev.config_params()})
        return out

    def _check_new(self, ublk_id: int) -> None:
        if self.destroying:
            raise OperationError(errno.ENODEV, "the ublk target is being destroyed")
        if ublk_id in self.devices:
            raise OperationError(errno.EBUSY, f"ublk device {ublk_id} already exists")
        if len(self.devices) >= self.max_devs:
            raise OperationError(errno.EOPNOTSUPP,
                                 f"too many ublk devices (ublks_max is {self.max_devs})")

    async def start_disk(self, bdev_name: str, ublk_id: int, num_queues: int = DEFAULT_NUM_QUEUES,
                         queue_depth: int = DEFAULT_QUEUE_DEPTH) -> UblkDevice:
        self._check_new(ublk_id)
        if num_queues > MAX_NUM_QUEUES:
            log.warning("num_queues %d clamped to %d", num_queues, MAX_NUM_QUEUES)
            num_queues = MAX_NUM_QUEUES
        if queue_depth > MAX_QUEUE_DEPTH:
            log.warning("queue_depth %d clamped to %d", queue_depth, MAX_QUEUE_DEPTH)
            queue_depth = MAX_QUEUE_DEPTH
        dev = UblkDevice(self, ublk_id, num_queues, queue_depth)
        dev.open_bdev(bdev_name)
        # Listed before ADD_DEV, as SPDK does, so ublk_get_disks shows it while it starts.
        self.devices[ublk_id] = dev
        try:
            await dev.start()
        except BaseException:
            self.devices.pop(ublk_id, None)
            raise
        dev.announce("export_add")
        return dev

    async def recover_disk(self, bdev_name: str, ublk_id: int) -> UblkDevice:
        if not self.recovery:
            raise OperationError(errno.EOPNOTSUPP,
                                 "User recovery is enabled with kernel version >= 6.4")
        self._check_new(ublk_id)
        info = await self.control.get_dev_info(ublk_id)
        dev = UblkDevice(self, ublk_id, info.nr_hw_queues, info.queue_depth)
        dev.open_bdev(bdev_name)
        self.devices[ublk_id] = dev
        dev.state = DeviceState.RECOVERING
        # Answer now, as SPDK does; recovery finishes in the background.
        dev.task = asyncio.get_running_loop().create_task(self._recover(dev))
        return dev

    async def _recover(self, dev: UblkDevice) -> None:
        try:
            await dev.recover()
            dev.announce("export_add")
        except Exception as e:
            log.error("recovery of ublk device %d failed: %s", dev.id, e)
            self.devices.pop(dev.id, None)

    async def stop_disk(self, ublk_id: int) -> None:
        dev = self.devices.get(ublk_id)
        if dev is None:
            raise OperationError(errno.ENODEV, f"no ublk device {ublk_id}")
        if dev.state is DeviceState.STOPPING:
            raise OperationError(errno.EBUSY, f"ublk device {ublk_id} is already stopping")
        if dev.state is not DeviceState.RUNNING:
            raise OperationError(errno.EBUSY, f"ublk device {ublk_id} is {dev.state.value}")
        await dev.stop()

    async def destroy(self) -> None:
        """Stop every device, then release the control device and threads."""
        self.destroying = True
        devs = list(self.devices.values())
        for dev in devs:
            if dev.task is not None and not dev.task.done():
                dev.task.cancel()
        await asyncio.gather(*(d.stop() for d in devs), return_exceptions=True)
        self.control.close()
        self.control.executor.shutdown(wait=False)
        log.info("ublk target destroyed")


def _isolate_process() -> None:
    try:
        unshare_mount_namespace()
        log.info("ublk: serving from a private mount namespace")
    except OSError as e:
        log.warning("ublk: cannot get a private mount namespace (%s); do not mount ublk "
                    "devices in this process's namespace", e.strerror)
    try:
        set_io_flusher()
    except OSError as e:
        log.warning("ublk: %s", e)


# -- a device -----------------------------------------------------------------------------
class UblkDevice(Export):
    """/dev/ublkb<id> exporting one bdev."""

    kind = "ublk"

    def __init__(self, target: UblkTarget, ublk_id: int, num_queues: int,
                 queue_depth: int) -> None:
        super().__init__(target.layer, "")
        self.target = target
        self.id = ublk_id
        self.num_queues = num_queues
        self.queue_depth = queue_depth
        self.state = DeviceState.STARTING
        self.cdev_fd = -1
        self.queues: list[UblkQueue] = []
        self.added = False  # ADD_DEV succeeded: DEL_DEV owed
        self.stop_sent = False  # STOP_DEV sent
        self.task: asyncio.Task[None] | None = None
        self.max_io = MAX_IO_BYTES
        # What the kernel created (ADD_DEV / GET_DEV_INFO answer); the pollers serve these.
        self.hw_queues = num_queues
        self.hw_depth = queue_depth
        # Requests of the queues that ended, and how many of them the queue threads served.
        self.requests = 0
        self.served_here = 0
        self.state_announced = False  # export_add was sent, so export_remove will be

    @property
    def path(self) -> str:
        return f"/dev/ublkb{self.id}"

    @property
    def cdev_path(self) -> str:
        return f"/dev/ublkc{self.id}"

    def info(self) -> dict[str, Any]:
        return {"ublk_device": self.path, "id": self.id, "queue_depth": self.queue_depth,
                "num_queues": self.num_queues, "bdev_name": self.bdev_name}

    def config_params(self) -> dict[str, Any]:
        return {"bdev_name": self.bdev_name, "ublk_id": self.id,
                "num_queues": self.num_queues, "queue_depth": self.queue_depth}

    def on_resize(self, bdev: Bdev) -> None:
        log.warning("bdev %s resized; ublk device %d keeps its size", bdev.name, self.id)

    def __repr__(self) -> str:
        return f"<UblkDevice {self.id} bdev={self.bdev_name}>"

    # -- start ------------------------------------------------------------------------
    def _dev_flags(self) -> int:
        t = self.target
        flags = uapi.UBLK_F_URING_CMD_COMP_IN_TASK
        # Without USER_COPY the kernel copies a WRITE's data into the tag's buffer (named in
        # every FETCH and COMMIT) before the request reaches us: no NEED_GET_DATA round trip.
        if t.user_copy:
            flags |= uapi.UBLK_F_USER_COPY
        if t.recovery:
            flags |= uapi.UBLK_F_USER_RECOVERY | uapi.UBLK_F_USER_RECOVERY_REISSUE
        if t.control.ioctl_encode:
            flags |= uapi.UBLK_F_CMD_IOCTL_ENCODE
        return flags

    async def start(self) -> None:
        assert self.desc is not None
        control = self.target.control
        step = "device parameters"
        try:
            params = device_params(self.desc.bdev)
            self.max_io = params.max_sectors << 9
            info = uapi.DevInfo(nr_hw_queues=self.num_queues, queue_depth=self.queue_depth,
                                max_io_buf_bytes=self.max_io, dev_id=self.id,
                                ublksrv_pid=os.getpid(), flags=self._dev_flags())
            step = "ADD_DEV"
            got = await control.add_dev(info)
            self.added = True
            # The kernel caps nr_hw_queues at the number of CPUs (and may adjust the depth);
            # serve what it created, report what was asked (SPDK's get_disks and config do).
            self.hw_queues = got.nr_hw_queues or self.num_queues
            self.hw_depth = got.queue_depth or self.queue_depth
            if (self.hw_queues, self.hw_depth) != (self.num_queues, self.queue_depth):
                log.info("ublk device %d: kernel created %d queues of depth %d", self.id,
                         self.hw_queues, self.hw_depth)
            step = "SET_PARAMS"
            await control.set_params(self.id, params)
            step = "queue set-up"
            await self._start_queues()
            step = "START_DEV"
            await control.start_dev(self.id)
        except BaseException as e:
            log.error("ublk device %d failed to start (%s): %s", self.id, step, e,
                      exc_info=not isinstance(e, OSError))
            await self._teardown()
            self.close_bdev()
            self.state = DeviceState.STOPPED
            if isinstance(e, OSError) and not isinstance(e, OperationError):
                raise OperationError(e.errno or errno.EIO,
                                     f"{step}: {_oserror_text(e)}") from None
            raise
        self.state = DeviceState.RUNNING
        log.info("ublk device %s exports bdev %s (%d queues, depth %d)", self.path,
                 self.bdev_name, self.num_queues, self.queue_depth)

    async def recover(self) -> None:
        control = self.target.control
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECOVERY_WAIT
        while True:
            info = await control.get_dev_info(self.id)
            if info.state in (uapi.UBLK_S_DEV_QUIESCED, uapi.UBLK_S_DEV_FAIL_IO):
                break
            if loop.time() >= deadline:
                raise OperationError(errno.EBUSY, f"ublk device {self.id} is in state "
                                                  f"{info.state}, not quiesced")
            await asyncio.sleep(0.5)
        self.added = True
        try:
            assert self.desc is not None
            self.max_io = info.max_io_buf_bytes or MAX_IO_BYTES
            await control.start_user_recovery(self.id)
            await self._start_queues()
            await control.end_user_recovery(self.id)
        except BaseException:
            self.added = False  # leave the kernel device for another attempt
            await self._teardown()
            self.close_bdev()
            self.state = DeviceState.STOPPED
            raise
        self.state = DeviceState.RUNNING
        log.info("ublk device %s recovered on bdev %s", self.path, self.bdev_name)

    async def _open_cdev(self) -> None:
        # The node appears once udev/devtmpfs processed ADD_DEV's uevent.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CDEV_OPEN_TIMEOUT
        while True:
            try:
                self.cdev_fd = os.open(self.cdev_path, os.O_RDWR | os.O_CLOEXEC)
                return
            except FileNotFoundError:
                if loop.time() >= deadline:
                    raise OSError(errno.ENOENT, f"{self.cdev_path} did not appear") from None
                await asyncio.sleep(0.01)

    async def _start_queues(self) -> None:
        await self._open_cdev()
        loop = asyncio.get_running_loop()
        t = self.target
        for q in range(self.hw_queues):
            queue = UblkQueue(dev_id=self.id, q_id=q, depth=self.hw_depth,
                              cdev_fd=self.cdev_fd, user_copy=t.user_copy, max_io=self.max_io,
                              cpu=t.next_cpu(), loop=loop, handler=self._handle_batch,
                              serve_here=self._serve_here if QUEUE_THREAD_SERVING else None)
            self.queues.append(queue)
            queue.start()
        for queue in self.queues:
            while not queue.ready.is_set():
                await asyncio.sleep(0.002)
            if queue.error is not None:
                raise OSError(getattr(queue.error, "errno", None) or errno.EIO,
                              f"queue {queue.q_id}: {queue.error}")

    # -- stop hooks (pybdev.export.base) ---------------------------------------------
    # STOP_DEV, wait for the pollers, release the cdev, DEL_DEV; the base closes the bdev.
    async def stop_accepting(self, drain: bool) -> None:
        self.state = DeviceState.STOPPING
        await self._stop_dev(drain)

    async def drain(self, drain: bool) -> None:
        await self._join_queues(drain)

    async def release(self) -> None:
        await self._release_kernel_device()

    def on_stopped(self) -> None:
        self.state = DeviceState.STOPPED
        if self.target.devices.get(self.id) is self:
            del self.target.devices[self.id]
            if self.state_announced:
                self.announce("export_remove")
        log.info("ublk device %s stopped: %d requests, %d served on the queue threads",
                 self.path, self.requests, self.served_here)

    def announce(self, event: str) -> None:
        events = self.target.events
        self.state_announced = event == "export_add"
        if events is not None:
            events(event, {"export": self.path, "protocol": "ublk", "bdev": self.bdev_name})

    async def _teardown(self) -> None:
        """A failed start or recovery: undo what was done (the caller closes the bdev)."""
        await self._stop_dev(False)
        await self._join_queues(False)
        await self._release_kernel_device()

    async def _stop_dev(self, graceful: bool) -> None:
        if self.added and graceful and self.queues:
            self.stop_sent = True
            try:
                # Aborts every pending FETCH once in-flight requests were committed.
                await self.target.control.stop_dev(self.id)
            except OSError as e:
                log.error("ublk STOP_DEV of device %d: %s", self.id, _oserror_text(e))

    async def _release_kernel_device(self) -> None:
        control = self.target.control
        if self.cdev_fd >= 0:
            os.close(self.cdev_fd)
            self.cdev_fd = -1
        if self.added:
            # DEL_DEV waits until the cdev is released: every mapping and ring is gone now.
            if not self.stop_sent:
                with contextlib.suppress(OSError):
                    await control.stop_dev(self.id)
            try:
                await control.del_dev(self.id)
            except OSError as e:
                log.error("ublk DEL_DEV of device %d: %s", self.id, _oserror_text(e))
            self.added = False

    async def _join_queues(self, graceful: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (STOP_JOIN_TIMEOUT if graceful else 0)
        for queue in self.queues:
            while queue.alive and loop.time() < deadline:
                await asyncio.sleep(0.005)
            if queue.alive:
                queue.stop()
        for queue in self.queues:
            end = loop.time() + 5
            while queue.alive and loop.time() < end:
                await asyncio.sleep(0.005)
            if queue.alive:
                log.error("ublk%d q%d poller did not exit", self.id, queue.q_id)
                continue
            self.requests += queue.requests
            self.served_here += queue.served_here
            queue.close()
        self.queues = [q for q in self.queues if q.alive]

    # -- the data path on the queue thread ----------------------------------------------
    def _serve_here(self, queue: UblkQueue, batch: list[Request]) -> list[Request] | None:
        """Serve READs and WRITEs on the queue thread when the bdev allows it; the rest.

        Only for bdevs declaring ``thread_safe_submit`` (they complete inside the call)
        and with no QoS, histogram or queue-depth sampling on (``_hooked``: those keep
        state on the event loop), checked for every pass since they change at run time.
        The descriptor still validates, counts the statistics and refuses I/O once the
        bdev is going (hot-remove). docs/decisions/ublk-queue-serving.md.
        """
        desc = self.desc
        if desc is None:
            return batch
        bdev = desc.bdev
        # _hooked: QoS, histograms, queue-depth sampling (pybdev/bdev/core.py).
        if not bdev.thread_safe_submit or getattr(bdev, "_hooked", False):
            return batch
        rest: list[Request] | None = None
        complete = queue.done.append  # drained by this thread right after: no wake-up
        read = desc.read
        write = desc.write
        user_copy = queue.user_copy
        cdev = queue.cdev_fd
        q_id = queue.q_id
        bufs = queue.bufs
        max_io = queue.max_io
        for req in batch:
            tag, op_flags, nr_sectors, start, data = req
            op = op_flags & 0xFF
            length = nr_sectors << 9
            if op == _OP_READ:

                def read_done(status: int, rdata: Any, tag: int = tag,
                              length: int = length) -> None:
                    if status:
                        complete((tag, UBLK_STATUS(status)))
                    elif user_copy:
                        try:
                            n = os.pwrite(cdev, rdata, uapi.user_copy_offset(q_id, tag))
                        except OSError:
                            n = -1
                        complete((tag, length if n == length else -errno.EIO))
                    else:
                        at = tag * max_io
                        bufs[at:at + length] = rdata  # type: ignore[index]
                        complete((tag, length))

                read(start << 9, length, read_done)
            elif op == _OP_WRITE:

                def write_done(status: int, _data: Any, tag: int = tag,
                               length: int = length) -> None:
                    complete((tag, UBLK_STATUS(status) if status else length))

                write(start << 9, data, write_done, bool(op_flags & _F_FUA))
            else:
                if rest is None:
                    rest = []
                rest.append(req)
        return rest

    # -- the data path (event loop thread) ----------------------------------------------
    def _handle_batch(self, queue: UblkQueue, batch: list[Request]) -> None:
        desc = self.desc
        complete = queue.complete
        if desc is None:
            for req in batch:
                complete(req[0], -errno.EIO)
            return
        ops = UBLK_OPS
        for tag, op_flags, nr_sectors, start, data in batch:
            op = ops[op_flags & 0xFF]
            length = nr_sectors << 9
            if op == io.READ:
                cb = functools.partial(self._read_done, queue, tag, length)
            else:
                cb = functools.partial(_done, complete, tag, length)
            io.submit(desc, op, start << 9, length, data, bool(op_flags & uapi.UBLK_IO_F_FUA),
                      cb)

    def _read_done(self, queue: UblkQueue, tag: int, length: int, status: int,
                   data: Any) -> None:
        if status:
            queue.complete(tag, UBLK_STATUS(status))
            return
        if queue.user_copy:
            # A copy into the request's pages, bounded by the request size: done here, on
            # the loop, because `data` is valid only during this callback.
            try:
                n = os.pwrite(queue.cdev_fd, data, uapi.user_copy_offset(queue.q_id, tag))
            except OSError as e:
                log.error("ublk%d q%d tag %d: user copy failed: %s", self.id, queue.q_id, tag,
                          e.strerror)
                n = -1
            queue.complete(tag, length if n == length else -errno.EIO)
            return
        bufs = queue.bufs
        assert bufs is not None
        at = tag * queue.max_io
        bufs[at:at + length] = data
        queue.complete(tag, length)


def _done(complete: Any, tag: int, length: int, status: int, _data: Any) -> None:
    complete(tag, length if status == 0 else UBLK_STATUS(status))


def _oserror_text(e: OSError) -> str:
    return e.strerror or str(e)
