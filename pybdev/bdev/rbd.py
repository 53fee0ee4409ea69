"""rbd: a bdev on a Ceph RBD image (SPDK's ``module/bdev/rbd``), through ``pybdev.ceph``.

Connections. A bdev either brings its own librados connection (``user_id`` + ``config``,
or the default ``ceph.conf`` search when neither is given), or uses a cluster registered
with ``bdev_rbd_register_cluster`` (``cluster_name``), which many bdevs share; a
registered cluster cannot be unregistered while a bdev uses it. Everything that talks to
the monitors or OSDs at set-up (connect, ioctx, open, stat, resize, close) runs in a
worker thread, so the event loop never waits for the cluster.

Bounded failure. librados waits 300 s for a connection and forever for an I/O by default.
Unless the user's options say otherwise, connections get ``client_mount_timeout`` =
``CONNECT_TIMEOUT`` and ``rados_osd_op_timeout``/``rados_mon_op_timeout`` =
``OP_TIMEOUT``: an unreachable cluster turns I/O into -ETIMEDOUT errors, and a close waits
at most that long (and the loop does not wait for it at all).

I/O goes through librbd's asynchronous API (``Image.aio_*``); completions arrive on the
loop thread. A read that returns fewer bytes than asked (the image shrank under us) fails
with -EIO, as SPDK does. FUA writes are followed by a flush (the bdev layer's emulation).
Reset completes once every request in flight has. Image header changes (a resize by
anyone, ``rbd resize`` included) come through an update watch and resize the bdev.

Errors follow SPDK's codes: set-up failures (unknown pool, image or cluster, refused
credentials, a duplicate cluster name) are -1 (EPERM), as SPDK's ``bdev_rbd_init``
answers, with the precise cause after ``": "``. A block size that does not divide the
image size is -EINVAL (SPDK silently truncates the last partial block). Where librbd
cannot be loaded, every rbd RPC answers -ENOTSUP with the reason.

Secrets. Option values named ``key`` are never logged and are shown as ``<redacted>`` in
``bdev_get_bdevs`` and ``bdev_rbd_get_clusters_info``. ``save_config`` must recreate the
state, so it keeps them as given: use ``key_file`` (or a keyring in ``config_file``) to
keep keys out of saved configurations.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from pybdev import ceph
from pybdev.bdev.core import Bdev, BdevModule, BdevState, Callback, ReadBuffer
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U32, U64, NameParams, Params, Str, Uuid
from pybdev.tasks import background

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

log = logging.getLogger("pybdev.bdev.rbd")

PRODUCT_NAME = "Ceph Rbd Disk"
MiB = 1 << 20

CONNECT_TIMEOUT = 10.0
OP_TIMEOUT = 30.0
# Closing an image flushes librbd's cache and releases its lock: bounded by OP_TIMEOUT
# inside librbd, but the loop gives up waiting a little after that.
CLOSE_WAIT = OP_TIMEOUT + 5.0

_TIMEOUT_OPTIONS = {
    "client_mount_timeout": "connect_timeout",
    "rados_osd_op_timeout": "osd_op_timeout",
    "rados_mon_op_timeout": "mon_op_timeout",
}


def _norm(option: str) -> str:
    return option.strip().replace(" ", "_").replace("-", "_").lower()


class Timeouts(TypedDict, total=False):
    """The timeout keyword arguments of :class:`ceph.Cluster`, in seconds."""

    connect_timeout: float
    osd_op_timeout: float
    mon_op_timeout: float


def _timeouts(*confs: dict[str, str] | None) -> Timeouts:
    """Our bounded defaults, minus those the user's options set themselves."""
    given = {_norm(k) for conf in confs if conf for k in conf}
    out = Timeouts(connect_timeout=CONNECT_TIMEOUT, osd_op_timeout=OP_TIMEOUT,
                   mon_op_timeout=OP_TIMEOUT)
    for option, kwarg in _TIMEOUT_OPTIONS.items():
        if option in given:
            del out[kwarg]  # type: ignore[misc]  # kwarg is one of Timeouts' keys
    return out


def _default_conf_file(cluster_name: str = "ceph") -> str | None:
    """librados' own search path. ``pybdev.ceph.Cluster`` searches only when it was given no
    options at all, and our timeouts are options, so the search is done here."""
    env = os.environ.get("CEPH_CONF")
    candidates = [p.strip() for p in env.split(",")] if env else []
    candidates += [f"/etc/ceph/{cluster_name}.conf",
                   os.path.expanduser(f"~/.ceph/{cluster_name}.conf"), f"{cluster_name}.conf"]
    return next((p for p in candidates if p and os.path.isfile(p)), None)


def _unavailable() -> OperationError | None:
    reason = ceph.unavailable_reason()
    if reason is None:
        return None
    return OperationError(errno.ENOTSUP, f"librbd not available: {reason}")


def _setup_error(what: str, e: Exception) -> OperationError:
    # SPDK answers -1 for every set-up failure; the cause goes into the message. CephError
    # messages name calls and pools, never option values, so no secret can leak here.
    return OperationError(errno.EPERM, f"{what}: {e}")


@dataclass
class RbdCluster:
    """A registered cluster (``bdev_rbd_register_cluster``): one shared connection."""

    name: str
    user_id: str | None
    config_param: dict[str, str] | None
    config_file: str | None
    key_file: str | None
    core_mask: str | None
    conn: ceph.Cluster | None = None
    users: set[str] = field(default_factory=set)  # bdev names using it

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.config_param is not None:
            out["config_param"] = ceph.redact(self.config_param)
        if self.config_file is not None:
            out["config_file"] = self.config_file
        if self.key_file is not None:
            out["key_file"] = self.key_file
        return out

    def config_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"name": self.name}
        for key in ("user_id", "config_param", "config_file", "key_file", "core_mask"):
            value = getattr(self, key)
            if value is not None:
                params[key] = value
        return params


class RbdBdev(Bdev):
    product_name = PRODUCT_NAME
    read_buffer = ReadBuffer.HELD  # every read gets a buffer of its own
    module_name = "rbd"

    def __init__(self, name: str, block_size: int, num_blocks: int, uuid: str | None, *,
                 pool_name: str, rbd_name: str, user_id: str | None,
                 config: dict[str, str] | None, cluster_name: str | None, read_only: bool,
                 conn: ceph.Cluster, own_conn: bool, ioctx: ceph.Ioctx,
                 image: ceph.Image, module: RbdModule) -> None:
        io_types = {"read", "flush", "reset", "unmap"}
        if not read_only:
            io_types |= {"write", "write_zeroes"}
        super().__init__(name, block_size, num_blocks, uuid, io_types=frozenset(io_types))
        self.pool_name = pool_name
        self.rbd_name = rbd_name
        self.user_id = user_id
        self.config = config
        self.cluster_name = cluster_name
        self.read_only = read_only
        self.conn = conn
        self.own_conn = own_conn
        self.ioctx = ioctx
        self.image = image
        self.module = module
        self.watch_handle: int | None = None
        self.inflight = 0
        self._drained: list[Callable[[], None]] = []
        self._resizing = False

    # -- requests -------------------------------------------------------------------------
    def _done(self, cb: Callback, data: Any = None, expect: int | None = None
              ) -> Callable[[int], None]:
        self.inflight += 1

        def done(ret: int) -> None:
            self.inflight -= 1
            try:
                if ret < 0:
                    cb(ret, None)
                elif expect is not None and ret != expect:
                    cb(-errno.EIO, None)
                else:
                    cb(0, data)
            finally:
                if self.inflight == 0 and self._drained:
                    waiters, self._drained = self._drained, []
                    for waiter in waiters:
                        waiter()

        return done

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        buf = bytearray(length)
        self.image.aio_read(offset, buf, self._done(cb, buf, length))

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        if self.read_only:
            cb(-errno.EROFS, None)
            return
        # FUA: librbd has none; the bdev layer follows the write with a flush.
        self.image.aio_write(offset, data, self._done(cb))

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        if self.read_only:
            cb(-errno.EROFS, None)
            return
        self.image.aio_discard(offset, length, self._done(cb))

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        if self.read_only:
            cb(-errno.EROFS, None)
            return
        self.image.aio_write_zeroes(offset, length, self._done(cb))

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        self.image.aio_flush(self._done(cb))

    def submit_reset(self, cb: Callback) -> None:
        # librbd cannot cancel requests; like SPDK, a reset waits for them.
        if self.inflight == 0:
            cb(0, None)
        else:
            self._drained.append(lambda: cb(0, None))

    # -- resize events ------------------------------------------------------------------
    def on_header_change(self) -> None:
        """Watch callback (loop thread): pick up a new image size."""
        if self._resizing or self.state is not BdevState.REGISTERED:
            return
        self._resizing = True
        task = asyncio.get_running_loop().create_task(self._refresh_size())
        self.module.tasks.add(task)
        task.add_done_callback(self.module.tasks.discard)

    async def _refresh_size(self) -> None:
        try:
            size = await asyncio.to_thread(self.image.get_size)
        except ceph.CephError as e:
            log.error("%s: cannot read the image size after a header change: %s", self.name, e)
            return
        finally:
            self._resizing = False
        self.apply_size(size)

    def apply_size(self, size: int) -> None:
        num_blocks = size // self.block_size
        if self.state is BdevState.REGISTERED and num_blocks != self.num_blocks:
            log.info("%s: image %s/%s resized: %d -> %d blocks", self.name, self.pool_name,
                     self.rbd_name, self.num_blocks, num_blocks)
            if self.layer is not None:
                self.layer.resize(self, num_blocks)

    # -- lifecycle and output -------------------------------------------------------------
    async def destruct(self) -> None:
        await self.module.release(self)

    def driver_specific(self) -> dict[str, Any]:
        rbd: dict[str, Any] = {"pool_name": self.pool_name, "rbd_name": self.rbd_name}
        if self.cluster_name is not None:
            rbd["cluster_name"] = self.cluster_name
            cluster = self.module.clusters.get(self.cluster_name)
            if cluster is not None:
                rbd.update(cluster.info())
        else:
            if self.user_id is not None:
                rbd["user_id"] = self.user_id
            if self.config is not None:
                rbd["config"] = ceph.redact(self.config)
        if self.read_only:
            rbd["read_only"] = True
        return {"rbd": rbd}

    def write_config(self) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"name": self.name, "pool_name": self.pool_name,
                                  "rbd_name": self.rbd_name, "block_size": self.block_size}
        if self.user_id is not None:
            params["user_id"] = self.user_id
        if self.config is not None:
            params["config"] = dict(self.config)
        if self.cluster_name is not None:
            params["cluster_name"] = self.cluster_name
        params["uuid"] = self.uuid
        if self.read_only:
            params["read_only"] = True
        return [{"method": "bdev_rbd_create", "params": params}]


class RbdModule(BdevModule):
    name = "rbd"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self.clusters: dict[str, RbdCluster] = {}
        self.count = 0  # for default names, "Ceph<n>" as SPDK numbers them
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- clusters -----------------------------------------------------------------------
    async def register_cluster(self, *, name: str, user_id: str | None = None,
                               config_param: dict[str, str] | None = None,
                               config_file: str | None = None, key_file: str | None = None,
                               core_mask: str | None = None) -> str:
        """Connect to a cluster (in a thread) and keep the connection under ``name``."""
        if (err := _unavailable()) is not None:
            raise err
        if name in self.clusters:
            raise OperationError(errno.EPERM, f"cluster name {name} already exists")
        if core_mask is not None:
            _check_core_mask(core_mask)
        entry = RbdCluster(name, user_id, dict(config_param) if config_param is not None
                           else None, config_file, key_file, core_mask)
        # Reserve the name while connecting, so a second register of it fails at once.
        self.clusters[name] = entry
        try:
            file = config_file if config_file is not None else _default_conf_file()
            conn = ceph.Cluster(config_param or {}, user_id, config_file=file,
                                key_file=key_file, **_timeouts(config_param))
            await asyncio.to_thread(conn.connect)
        except ceph.CephError as e:
            del self.clusters[name]
            log.error("cannot register rbd cluster %s: %s", name, e)
            raise _setup_error(f"cannot connect to cluster {name}", e) from None
        except BaseException:
            del self.clusters[name]
            raise
        entry.conn = conn
        log.info("rbd cluster %s registered (client.%s)", name, conn.user_id)
        return name

    async def unregister_cluster(self, name: str) -> None:
        entry = self.clusters.get(name)
        if entry is None or entry.conn is None:
            raise OperationError(errno.EPERM, f"no cluster named {name}")
        if entry.users:
            raise OperationError(errno.EPERM, f"cluster {name} is still used by bdev(s) "
                                              f"{', '.join(sorted(entry.users))}")
        del self.clusters[name]
        await _in_thread_bounded(entry.conn.shutdown, what=f"shutdown of cluster {name}")
        log.info("rbd cluster %s unregistered", name)

    def clusters_info(self, name: str | None) -> Any:
        ready = {n: c for n, c in self.clusters.items() if c.conn is not None}
        if not ready:
            raise OperationError(errno.ENOENT, "no cluster is registered")

        def one(c: RbdCluster) -> dict[str, Any]:
            out: dict[str, Any] = {"cluster_name": c.name, **c.info()}
            if c.core_mask is not None:
                out["core_mask"] = c.core_mask
            return out

        if name is not None:
            if name not in ready:
                raise OperationError(errno.ENOENT, f"no cluster named {name}")
            return one(ready[name])
        return [one(c) for c in ready.values()]

    # -- bdevs ----------------------------------------------------------------------------
    async def create(self, *, pool_name: str, rbd_name: str, block_size: int,
                     name: str | None = None, user_id: str | None = None,
                     config: dict[str, str] | None = None, cluster_name: str | None = None,
                     uuid: str | None = None, read_only: bool = False) -> RbdBdev:
        """Open ``pool_name/rbd_name`` and register a bdev on it; raises OperationError."""
        if (err := _unavailable()) is not None:
            raise err
        if block_size == 0:
            raise OperationError(errno.EINVAL, "block_size must not be 0")
        if name is not None and self.layer.get(name) is not None:
            raise OperationError(errno.EEXIST, f"bdev name or alias {name} already exists")
        if uuid is not None and self.layer.get(uuid) is not None:
            raise OperationError(errno.EEXIST, f"bdev name or alias {uuid} already exists")
        loop = asyncio.get_running_loop()
        cluster: RbdCluster | None = None
        placeholder = f"<a bdev being created on {pool_name}/{rbd_name}>"
        if cluster_name is not None:
            cluster = self.clusters.get(cluster_name)
            if cluster is None or cluster.conn is None:
                raise OperationError(errno.EPERM, f"no cluster named {cluster_name}; "
                                                  "register it with bdev_rbd_register_cluster")
            conn = cluster.conn
            cluster.users.add(placeholder)  # keeps it registered while we open
        else:
            file = None if config is not None else _default_conf_file()
            if config is None and file is None:
                raise OperationError(errno.EPERM, "no config given and no ceph.conf found "
                                                  "($CEPH_CONF, /etc/ceph/ceph.conf)")
            conn = ceph.Cluster(config or {}, user_id, config_file=file, **_timeouts(config))
        where = f"{pool_name}/{rbd_name}"
        ioctx: ceph.Ioctx | None = None
        image: ceph.Image | None = None
        try:
            try:
                if cluster is None:
                    await asyncio.to_thread(conn.connect)
                ioctx = await asyncio.to_thread(conn.open_ioctx, pool_name)
                image = await asyncio.to_thread(ceph.open_image, ioctx, rbd_name,
                                                read_only=read_only, loop=loop)
                size = await asyncio.to_thread(image.get_size)
            except ceph.CephError as e:
                log.error("cannot create rbd bdev on %s: %s", where, e)
                raise _setup_error(f"cannot open {where}", e) from None
            if size % block_size:
                raise OperationError(errno.EINVAL, f"block_size {block_size} does not divide "
                                                   f"the size of {where} ({size} bytes)")
            if name is None:
                name = f"Ceph{self.count}"
            bdev = RbdBdev(name, block_size, size // block_size, uuid, pool_name=pool_name,
                           rbd_name=rbd_name, user_id=user_id,
                           config=dict(config) if config is not None else None,
                           cluster_name=cluster_name, read_only=read_only, conn=conn,
                           own_conn=cluster is None, ioctx=ioctx, image=image, module=self)
            self.layer.register(bdev)
        except BaseException:
            if cluster is not None:
                cluster.users.discard(placeholder)
            await _in_thread_bounded(_close_all, image, ioctx, conn if cluster is None
                                     else None, what=f"clean-up of {where}")
            raise
        if cluster is not None:
            cluster.users.discard(placeholder)
            cluster.users.add(bdev.name)
        self.count += 1
        try:
            bdev.watch_handle = image.watch(bdev.on_header_change)
        except ceph.CephError as e:
            # SPDK carries on without a watch too; resizes then need bdev_rbd_resize.
            log.warning("%s: no header watch, external resizes will go unseen: %s", name, e)
        log.info("rbd bdev %s on %s: %d blocks of %d bytes", name, where, bdev.num_blocks,
                 block_size)
        return bdev

    async def release(self, bdev: RbdBdev) -> None:
        """Close the image and what the bdev owns; the loop waits a bounded time."""
        cluster = self.clusters.get(bdev.cluster_name) if bdev.cluster_name else None
        if cluster is not None:
            cluster.users.discard(bdev.name)
        await _in_thread_bounded(_close_all, bdev.image, bdev.ioctx,
                                 bdev.conn if bdev.own_conn else None,
                                 what=f"close of {bdev.name}")

    async def delete(self, name: str) -> None:
        await self.layer.unregister_by_name(name, self.name)

    async def resize(self, name: str, new_size_mib: int) -> None:
        """``bdev_rbd_resize``: grow the image to ``new_size_mib`` MiB (0: re-read the size)."""
        if (err := _unavailable()) is not None:
            raise err
        bdev = self.layer.get(name)
        if bdev is None or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"bdev {name} not found")
        if not isinstance(bdev, RbdBdev):
            raise OperationError(errno.EINVAL, f"bdev {name} is not an rbd bdev")
        try:
            current = await asyncio.to_thread(bdev.image.get_size)
        except ceph.CephError as e:
            log.warning("%s: cannot read the image size (%s); using the bdev's", name, e)
            current = bdev.size
        if new_size_mib and current // MiB > new_size_mib:
            raise OperationError(errno.EINVAL, f"new size {new_size_mib} MiB is smaller than "
                                               f"the current {current // MiB} MiB")
        new_size = new_size_mib * MiB if new_size_mib else current
        if new_size_mib:
            try:
                await asyncio.to_thread(bdev.image.resize, new_size)
            except ceph.CephError as e:
                raise OperationError(-e.rc, f"cannot resize {bdev.pool_name}/"
                                            f"{bdev.rbd_name}: {e}") from None
        bdev.apply_size(new_size)

    # -- config and shutdown --------------------------------------------------------------
    def write_config(self) -> list[Any]:
        return [{"method": "bdev_rbd_register_cluster", "params": c.config_params()}
                for c in self.clusters.values() if c.conn is not None]

    async def fini(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        clusters, self.clusters = list(self.clusters.values()), {}
        for c in clusters:
            if c.conn is not None:
                await _in_thread_bounded(c.conn.shutdown, what=f"shutdown of cluster {c.name}")


def _check_core_mask(mask: str) -> None:
    # librados' threads are not pinned by pybdev (the interpreter has no per-thread
    # affinity for them); the mask is checked and kept so configs written for SPDK load.
    text = mask.strip()
    try:
        if text.startswith("[") and text.endswith("]"):
            for part in filter(None, text[1:-1].split(",")):
                for n in part.split("-"):
                    int(n)
        else:
            int(text, 16)
    except ValueError:
        raise OperationError(errno.EPERM, f"invalid core_mask {mask!r}") from None


def _close_all(image: ceph.Image | None, ioctx: ceph.Ioctx | None,
               conn: ceph.Cluster | None) -> None:
    """Close in dependency order, each step even if the one before failed (a thread)."""
    for step in (image, ioctx, conn):
        if step is None:
            continue
        try:
            step.close()
        except ceph.CephError as e:
            log.warning("closing %r: %s", step, e)


async def _in_thread_bounded(fn: Callable[..., None], *args: Any, what: str = "",
                             timeout: float = CLOSE_WAIT) -> None:
    # A thread cannot be interrupted: past the timeout it is left to finish on its own and
    # the loop moves on, so a dead cluster never holds up a delete or a shutdown for long.
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        log.warning("%s still blocked after %.0f s; continuing without it", what or fn,
                    timeout)
        background(task, f"{what or fn} (left to finish)")





def _run(err: OperationError | None) -> None:
    if err is not None:
        raise err


# -- RPC ----------------------------------------------------------------------------------

ConfigMap = dict[Str, Str]


class RegisterClusterParams(Params):
    name: Str
    user_id: Str | None = None
    config_param: ConfigMap | None = None
    config_file: Str | None = None
    key_file: Str | None = None
    core_mask: Str | None = None


@RPC.method("bdev_rbd_register_cluster", RegisterClusterParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"})
async def bdev_rbd_register_cluster(module: RbdModule, p: RegisterClusterParams) -> str:
    """Connect to a Ceph cluster and keep the connection for rbd bdevs to share."""
    return await module.register_cluster(**p.model_dump())


@RPC.method("bdev_rbd_unregister_cluster", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def bdev_rbd_unregister_cluster(module: RbdModule, p: NameParams) -> bool:
    """Disconnect a registered cluster that no rbd bdev uses."""
    _run(_unavailable())
    await module.unregister_cluster(p.name)
    return True


class GetClustersInfoParams(Params):
    name: Str | None = None


@RPC.method("bdev_rbd_get_clusters_info", GetClustersInfoParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED),
            result={"oneOf": [{"type": "object"},
                              {"type": "array", "items": {"type": "object"}}]})
async def bdev_rbd_get_clusters_info(module: RbdModule, p: GetClustersInfoParams) -> Any:
    """Registered clusters (one object for ``name``, else an array), secrets redacted."""
    _run(_unavailable())
    return module.clusters_info(p.name)


class RbdCreateParams(Params):
    name: Str | None = None
    user_id: Str | None = None
    pool_name: Str
    rbd_name: Str
    block_size: U32
    config: ConfigMap | None = None
    cluster_name: Str | None = None
    uuid: Uuid | None = None
    read_only: bool = False


@RPC.method("bdev_rbd_create", RbdCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_rbd_bdev",))
async def bdev_rbd_create(module: RbdModule, p: RbdCreateParams) -> str:
    """Create a bdev on a Ceph RBD image; answers its name."""
    bdev = await module.create(**p.model_dump())
    await module.layer.wait_for_examine()
    return bdev.name


@RPC.method("bdev_rbd_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_rbd_bdev",))
async def bdev_rbd_delete(module: RbdModule, p: NameParams) -> bool:
    """Delete an rbd bdev (the image stays in the cluster)."""
    await module.delete(p.name)
    return True


class RbdResizeParams(Params):
    name: Str
    new_size: U64


@RPC.method("bdev_rbd_resize", RbdResizeParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def bdev_rbd_resize(module: RbdModule, p: RbdResizeParams) -> bool:
    """Grow an rbd bdev and its image to ``new_size`` MiB."""
    await module.resize(p.name, p.new_size)
    return True
