"""The lvol bdev module: lvstores found by examine, lvol bdevs, the ``bdev_lvol_*`` RPCs.

Built on the vbdev framework (docs/vbdev-framework.md) as SPDK's part model: an lvstore is
the :class:`~pybdev.bdev.vbdev.Attachment` of its base, which the module opens and claims
``read_many_write_one`` (SPDK's ``spdk_bs_bdev_claim``), and each lvol is a stacked bdev
over it, registered through the attachment. Hot-remove of the base unregisters every lvol
and then releases the base, as the framework does for every vbdev. Two things are the
lvol module's own: the attachment is made by examine after the base was read (a store is on
disk, not in a saved config), and it holds the base while the store has no lvol
(``holds_bases``). Each lvol is a bdev named by its UUID with the one alias ``lvs/lvol``
(``module/bdev/lvol/vbdev_lvol.c: _create_lvol_disk``). Nothing is written to
``save_config``: the stores are on disk, and examine brings them back whenever a base with
one appears, before ``bdev_wait_for_examine`` answers.

Errors follow ``module/bdev/lvol/vbdev_lvol_rpc.c``: checks made before the operation
answer ``-errno``; failures of the operation itself answer ``-32602`` with strerror's text
(``-32603`` for ``bdev_lvol_delete``).

External snapshots (``bdev_lvol_clone_bdev``, ``bdev_lvol_set_parent_bdev``): any bdev, opened
read-only and claimed ``read_many_write_none`` while an lvol's chain ends in it, found by
UUID. An lvol whose external snapshot is missing is *degraded*: listed, deletable, without a
bdev until the snapshot's bdev appears (examine, as SPDK's ``vbdev_lvs_examine_config``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field

from pybdev.bdev.core import (
    Bdev,
    BdevEvent,
    BdevState,
    Callback,
    ClaimType,
    Descriptor,
)
from pybdev.bdev.lvol.check import check_store
from pybdev.bdev.lvol.store import (
    NAME_MAX,
    Lvol,
    LvolStore,
    can_hold_store,
    decode_slots,
    head_length,
)
from pybdev.bdev.vbdev import Attachment, StackedBdev, VbdevConfig, VbdevModule
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR, INVALID_PARAMS, RpcError
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import U32, U64, NameParams, Params, Str

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

RPC = RpcTable()
log = logging.getLogger("pybdev.bdev.lvol")

MiB = 1 << 20
T = TypeVar("T")


class LvolBdev(StackedBdev):
    """An lvol as a bdev: a part of its lvstore's base; requests go to the lvol's I/O path."""

    product_name = "Logical Volume"
    module_name = "lvol"
    fua_native = True  # passed to the base (BaseIo emulates it where the base cannot)

    def __init__(self, lvol: Lvol) -> None:
        store = lvol.store
        base = store.desc.bdev
        io_types = {"read", "reset", "seek_data", "seek_hole"}
        if not lvol.read_only:
            # As SPDK, fixed at registration: set_read_only makes writes fail with EPERM.
            io_types |= {"write", "unmap", "write_zeroes"}
        super().__init__(lvol.uuid, base.block_size, lvol.size // base.block_size, lvol.uuid,
                         io_types=frozenset(io_types),
                         physical_block_size=base.physical_block_size,
                         optimal_io_boundary=store.cluster_size // base.block_size,
                         numa_id=base.numa_id, max_io_bytes=base.max_io_bytes)
        self.lvol = lvol
        # Reads complete with the base's buffers, or with buffers of the lvol's own that
        # nobody writes again (zeros, joined pieces): the base's promise holds.
        self.read_buffer = base.read_buffer
        self.submit_unmap = lvol.unmap  # type: ignore[method-assign,assignment]
        self.submit_write_zeroes = lvol.write_zeroes  # type: ignore[method-assign,assignment]
        self.offset: int | None = None  # where the lvol starts on the base, on the offset path
        lvol.bdev = self
        self.choose_path()

    def choose_path(self) -> None:
        """Point ``submit_read``/``submit_write`` at the cheapest correct path.

        The hot path, so no frame of our own between the descriptor and the base: a thick
        lvol laid out as one run (:meth:`Lvol.run_offset`) forwards reads with an offset add,
        as a part does (``VirtualBdev``), and writes too where the base completes inside the
        call (nothing to count in flight for a freeze) and the lvol is writable. Everything
        else goes through the lvol's cluster map (:meth:`Lvol.read`, :meth:`Lvol.write`).
        Called again whenever the lvol's layout, flags or freeze change.
        """
        lvol = self.lvol
        at = lvol.run_offset()
        self.offset = at
        if at is None:
            self.submit_read = lvol.read  # type: ignore[method-assign,assignment]
            self.submit_write = lvol.write  # type: ignore[method-assign,assignment]
            return
        io = lvol.io
        self.submit_read = _offset_read(io.read, at)  # type: ignore[method-assign,assignment]
        if io.inline and not lvol.read_only:
            self.submit_write = _offset_write(io.write, at)  # type: ignore[method-assign,assignment]
        else:
            self.submit_write = lvol.write  # type: ignore[method-assign,assignment]

    def on_removed(self) -> None:
        self.lvol.fail_queued(-errno.ENODEV)

    async def destruct(self) -> None:
        if self.lvol.bdev is self:
            self.lvol.bdev = None
        await super().destruct()  # the attachment forgets it (the store keeps the base)

    reports_holes = True

    def get_block_status(self, offset: int, length: int, cb: Callback) -> None:
        """Clusters with no data in the lvol or its parents are holes reading zeros."""
        lvol = self.lvol
        store = lvol.store
        cs = store.cluster_size
        extents: list[tuple[int, int]] = []
        pos, end = offset, offset + length
        while pos < end:
            idx = pos // cs
            n = min(end, (idx + 1) * cs) - pos
            owned = idx < len(lvol.clusters) and lvol.clusters[idx]
            flags = 0 if owned or store.back_cluster(lvol, idx) or lvol.root_esnap else 3
            if extents and extents[-1][1] == flags:
                extents[-1] = (extents[-1][0] + n, flags)
            else:
                extents.append((n, flags))
            pos += n
        cb(0, extents)

    def driver_specific(self) -> dict[str, Any]:
        lvol = self.lvol
        store = lvol.store
        out: dict[str, Any] = {
            "lvol_store_uuid": store.uuid,
            "base_bdev": store.desc.bdev.name,
            "thin_provision": lvol.thin,
            "num_allocated_clusters": lvol.num_allocated_clusters,
            "snapshot": lvol.is_snapshot,
            "clone": lvol.is_clone,
        }
        if lvol.parent is not None:
            out["base_snapshot"] = lvol.parent.name
        if lvol.children:
            out["clones"] = sorted(c.name for c in lvol.children)
        out["esnap_clone"] = lvol.esnap is not None
        if lvol.esnap is not None:
            out["external_snapshot_name"] = lvol.esnap
        return {"lvol": out}


def _offset_read(read: Callable[[int, int, Callback], None],
                 at: int) -> Callable[[int, int, Callback], None]:
    def submit_read(offset: int, length: int, cb: Callback) -> None:
        read(offset + at, length, cb)
    return submit_read


def _offset_write(write: Callable[[int, Any, Callback, bool], None],
                  at: int) -> Callable[[int, Any, Callback, bool], None]:
    def submit_write(offset: int, data: Any, cb: Callback, fua: bool) -> None:
        write(offset + at, data, cb, fua)
    return submit_write


class LvstoreConfig(VbdevConfig):
    """A loaded lvstore as the vbdev framework sees it: a config built over one base."""

    def __init__(self, store: LvolStore) -> None:
        self.store = store

    @property
    def base_names(self) -> tuple[str, ...]:
        return (self.store.desc.bdev.name,)


class LvolModule(VbdevModule[LvstoreConfig]):
    name = "lvol"
    rpc = RPC
    claim_type = ClaimType.READ_MANY_WRITE_ONE
    open_for_write = False  # the claim makes the descriptor writable
    keep_unbuilt = False  # a store whose base went is found again by examine
    holds_bases = True  # a store owns its base with or without lvols

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        # External snapshots by bdev UUID, open while an lvol's chain ends in one.
        self.esnaps: dict[str, Descriptor] = {}
        # UUIDs of external snapshots degraded lvols wait for (checked by examine).
        self.awaited_esnaps: set[str] = set()
        self._esnap_tasks: set[asyncio.Task[None]] = set()
        self.copies: dict[int, dict[str, Any]] = {}  # shallow copies by operation id
        self._next_copy = 1
        self._copy_tasks: set[asyncio.Task[None]] = set()

    @property
    def stores(self) -> list[LvolStore]:
        """The loaded lvstores, in the order they were created or found."""
        return [c.store for c in self.configs]

    def attachment_of(self, store: LvolStore) -> Attachment:
        for c in self.configs:
            if c.store is store and c.attachment is not None:
                return c.attachment
        raise OperationError(errno.ENODEV, f"lvstore {store.name} is not loaded")

    # -- finding stores ---------------------------------------------------------------
    def examine(self, bdev: Bdev) -> Awaitable[None] | None:
        if self.awaited_esnaps and bdev.uuid in self.awaited_esnaps:
            self._esnap_arrived(bdev)
        if (bdev.claim_type is not ClaimType.NONE or bdev.state is not BdevState.REGISTERED
                or not can_hold_store(bdev)):
            return None
        # Read-only until a store is found: a write descriptor would keep other modules
        # (passthru, an export's claim) from claiming a bdev that holds no store.
        try:
            desc = self.layer.open(bdev.name, write=False)
        except OperationError:
            return None  # gone meanwhile
        # The super slots are read through the callback API, not in a task: a bdev that
        # answers inside the call (malloc, null) and holds no store, which is what most
        # bdevs are, then costs no task. That task was 30 % of the time bdev_null_create
        # took (docs/decisions/rpc-inline-answers.md).
        later: asyncio.Future[tuple[int, bool]] | None = None
        inline: list[tuple[int, bool]] = []

        def head_read(status: int, data: Any) -> None:
            # Decoded here: the data may be valid during the callback only.
            result = (status, not status and bool(decode_slots(data, bdev.block_size)))
            if later is None:
                inline.append(result)
            elif not later.done():
                later.set_result(result)

        desc.read(0, head_length(bdev), head_read)
        if inline:
            return self._tasted(bdev, desc, *inline[0])
        later = asyncio.get_running_loop().create_future()
        return self._taste_later(bdev, desc, later)

    async def _taste_later(self, bdev: Bdev, desc: Descriptor,
                           head: Awaitable[tuple[int, bool]]) -> None:
        load = self._tasted(bdev, desc, *await head)
        if load is not None:
            await load

    def _tasted(self, bdev: Bdev, desc: Descriptor, status: int,
                found: bool) -> Awaitable[None] | None:
        """The super slots of ``bdev`` were read: load the store they found (None: none)."""
        if status:
            log.info("bdev %s holds no loadable lvstore: %s", bdev.name,
                     OperationError(-status))
        elif found:
            return self._load(bdev, desc)
        desc.close()
        return None

    async def _load(self, bdev: Bdev, desc: Descriptor) -> None:
        try:
            store = await LvolStore.load(desc)
        except OperationError as e:
            log.info("bdev %s holds no loadable lvstore: %s", bdev.name, e)
            desc.close()
            return
        if any(s.name == store.name for s in self.stores):
            log.info("lvstore %s on %s not loaded: the name is taken", store.name, bdev.name)
            desc.close()
            return
        try:
            # The claim makes the descriptor writable (SPDK's spdk_bs_bdev_claim).
            self.layer.claim(desc, self.name, ClaimType.READ_MANY_WRITE_ONE)
        except OperationError as e:
            log.info("lvstore %s on %s not loaded: %s", store.name, bdev.name, e)
            desc.close()
            return
        store.esnaps = self.esnaps
        attachment = self.attach(LvstoreConfig(store), [desc], [])
        report = check_store(store)
        if not report.ok:
            log.error("lvstore %s on %s: %s", store.name, bdev.name, "; ".join(report.problems))
        for lvol in list(store.lvols.values()):
            if lvol.esnap is not None and lvol.esnap not in self.esnaps:
                try:
                    self.open_esnap(lvol.esnap)
                except OperationError as e:
                    log.warning("lvol %s of %s is degraded: external snapshot %s: %s",
                                lvol.name, store.name, lvol.esnap, e)
                    self.awaited_esnaps.add(lvol.esnap)
        for lvol in list(store.lvols.values()):
            if lvol.degraded:
                continue
            try:
                self._register(lvol, attachment)
            except OperationError as e:
                log.error("lvol %s of %s not registered: %s", lvol.name, store.name, e)
        log.info("lvstore %s loaded from %s with %d lvols", store.name, bdev.name,
                 len(store.lvols))

    def construct(self, config: LvstoreConfig, descs: list[Descriptor]) -> list[StackedBdev]:
        raise NotImplementedError("lvstores are attached by examine and create_lvstore")

    async def _unregister_all(self, store: LvolStore) -> None:
        tasks = self.attachment_of(store).unregister_all()
        if tasks:
            await asyncio.gather(*tasks)

    def _register(self, lvol: Lvol, attachment: Attachment | None = None) -> LvolBdev:
        if self.layer.get(lvol.alias) is not None:
            raise OperationError(errno.EEXIST, f"bdev name or alias {lvol.alias} already exists")
        if attachment is None:
            attachment = self.attachment_of(lvol.store)
        bdev = LvolBdev(lvol)  # sets lvol.bdev
        # The alias before register: examine of the new bdev (a nested lvstore) may see it.
        bdev.aliases.append(lvol.alias)
        try:
            attachment.add(bdev)
        except OperationError:
            lvol.bdev = None
            raise
        return bdev

    # -- lookups ----------------------------------------------------------------------
    def store_by(self, uuid: str | None, name: str | None) -> LvolStore:
        """SPDK's ``vbdev_get_lvol_store_by_uuid_xor_name``."""
        if (uuid is None) == (name is None):
            raise OperationError(errno.EINVAL)
        for store in self.stores:
            if (uuid is not None and store.uuid == uuid.lower()) or store.name == name:
                return store
        raise OperationError(errno.ENODEV)

    def lvol_by(self, name: str) -> Lvol:
        bdev = self.layer.get(name)
        if not isinstance(bdev, LvolBdev) or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV)
        return bdev.lvol

    def lvol_or_degraded(self, name: str) -> Lvol:
        """An lvol by UUID or alias, including degraded ones, which have no bdev."""
        try:
            return self.lvol_by(name)
        except OperationError:
            for store in self.stores:
                for lvol in store.lvols.values():
                    if lvol.bdev is None and name in (lvol.uuid, lvol.alias):
                        return lvol
            raise

    # -- lvstores ---------------------------------------------------------------------
    async def create_lvstore(self, bdev_name: str, lvs_name: str, *, cluster_sz: int = 0,
                             clear_method: str = "unmap", md_ratio: int = 0,
                             md_page_size: int = 0) -> str:
        if not lvs_name or len(lvs_name.encode()) > NAME_MAX:
            raise OperationError(errno.EINVAL)
        if md_page_size and (md_page_size < 4096 or md_page_size > 65536
                             or md_page_size & (md_page_size - 1)):
            raise OperationError(errno.EINVAL)
        if self.layer.get(bdev_name) is None:
            raise OperationError(errno.ENODEV)
        desc = self.layer.open(bdev_name, write=True)  # -EPERM when claimed
        try:
            bs = desc.bdev.block_size
            if cluster_sz and (cluster_sz < bs or cluster_sz % bs):
                raise OperationError(errno.EINVAL)
            if any(s.name == lvs_name for s in self.stores):
                raise OperationError(errno.EEXIST)
            # Claimed before the first write, so nothing else opens it for write meanwhile.
            self.layer.claim(desc, self.name, ClaimType.READ_MANY_WRITE_ONE)
            store = await _completion(LvolStore.create(
                desc, lvs_name, cluster_size=cluster_sz, clear_method=clear_method,
                md_ratio=md_ratio, md_page_size=md_page_size))
        except BaseException:
            desc.close()  # releases the claim
            raise
        store.esnaps = self.esnaps
        self.attach(LvstoreConfig(store), [desc], [])
        return store.uuid

    async def delete_lvstore(self, store: LvolStore) -> None:
        attachment = self.attachment_of(store)
        await self._unregister_all(store)
        await _completion(store.destroy())
        attachment.release()  # closes the base descriptor, which releases the claim
        self.release_unused_esnaps()

    def unbuilt(self, config: LvstoreConfig) -> None:
        super().unbuilt(config)
        self.release_unused_esnaps()

    # -- external snapshots -----------------------------------------------------------
    def open_esnap(self, uuid: str) -> Bdev:
        """Open and claim external snapshot ``uuid`` (a bdev UUID) unless it is open."""
        desc = self.esnaps.get(uuid)
        if desc is not None:
            return desc.bdev
        bdev = self.layer.get(uuid)
        if bdev is None or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"bdev {uuid} not found")
        desc = self.layer.open(bdev.name, write=False)
        try:
            self.layer.claim(desc, self.name, ClaimType.READ_MANY_WRITE_NONE)
        except OperationError:
            desc.close()
            raise
        desc.event_cb = lambda event, _b: self._esnap_event(uuid, event)
        self.esnaps[uuid] = desc
        return bdev

    def _esnaps_in_use(self) -> set[str]:
        return {v.esnap for s in self.stores for v in s.lvols.values() if v.esnap is not None}

    def release_unused_esnaps(self) -> None:
        used = self._esnaps_in_use()
        for uuid in [u for u in self.esnaps if u not in used]:
            self.esnaps.pop(uuid).close()  # releases the claim

    def _esnap_arrived(self, bdev: Bdev) -> None:
        """An external snapshot degraded lvols wait for registered: their bdevs come back."""
        try:
            self.open_esnap(bdev.uuid)
        except OperationError as e:
            log.warning("external snapshot %s not opened: %s", bdev.name, e)
            return
        self.awaited_esnaps.discard(bdev.uuid)
        for config in self.configs:
            if config.attachment is None:
                continue
            for lvol in list(config.store.lvols.values()):
                if lvol.bdev is None and not lvol.deleted and not lvol.degraded:
                    try:
                        self._register(lvol, config.attachment)
                    except OperationError as e:
                        log.error("lvol %s not registered: %s", lvol.alias, e)
        self.release_unused_esnaps()  # nobody waited any more (the store went meanwhile)

    def _esnap_event(self, uuid: str, event: BdevEvent) -> None:
        if event is BdevEvent.REMOVE:
            task = asyncio.get_running_loop().create_task(self._esnap_gone(uuid))
            self._esnap_tasks.add(task)
            task.add_done_callback(self._esnap_tasks.discard)

    async def _esnap_gone(self, uuid: str) -> None:
        """Every lvol reading the removed snapshot loses its bdev (degraded), then the
        snapshot's descriptor closes."""
        desc = self.esnaps.get(uuid)
        if desc is None:
            return
        lvols = [v for s in self.stores for v in s.lvols.values() if v.root_esnap == uuid]
        self.esnaps.pop(uuid)
        self.awaited_esnaps.add(uuid)
        tasks = [self.layer.unregister(v.bdev) for v in lvols
                 if v.bdev is not None and v.bdev.state is BdevState.REGISTERED]
        try:
            await asyncio.gather(*tasks)
        finally:
            desc.close()

    async def clone_bdev(self, bdev_name: str, lvs_name: str, clone_name: str) -> str:
        """An lvol over external snapshot ``bdev_name`` (SPDK's ``bdev_lvol_clone_bdev``)."""
        store = next((s for s in self.stores if s.name == lvs_name), None)
        if store is None:
            raise RpcError(INVALID_PARAMS, "lvs does not exist")
        esnap = self.layer.get(bdev_name)
        if esnap is None or esnap.state is not BdevState.REGISTERED:
            raise RpcError(INVALID_PARAMS, "bdev does not exist")
        if isinstance(esnap, LvolBdev) and esnap.lvol.store is store:
            raise RpcError(INVALID_PARAMS,
                           "bdev is an lvol in same lvs as clone; use bdev_lvol_clone instead")
        if esnap.size % store.cluster_size or store.block_size % esnap.block_size:
            raise _async_error(errno.EINVAL)
        try:
            self.open_esnap(esnap.uuid)  # claimed: refused while someone writes it
            clone = await _completion(store.esnap_clone(esnap.uuid, esnap.size, clone_name))
        except OperationError as e:
            raise _async_error(e.errno) from e
        finally:
            self.release_unused_esnaps()
        await self._register_or_delete(clone)
        return clone.uuid

    async def set_parent_bdev(self, lvol: Lvol, parent_name: str) -> None:
        """Make bdev ``parent_name`` the external snapshot of thin ``lvol``."""
        esnap = self.layer.get(parent_name)
        if esnap is None or esnap.state is not BdevState.REGISTERED:
            raise _async_error(errno.ENODEV)
        try:
            self.open_esnap(esnap.uuid)
            await _completion(lvol.store.set_external_parent(lvol, esnap.uuid, esnap.size))
        except OperationError as e:
            raise _async_error(e.errno) from e
        finally:
            self.release_unused_esnaps()

    async def rename_lvstore(self, old_name: str, new_name: str) -> None:
        store = next((s for s in self.stores if s.name == old_name), None)
        if store is None:
            raise RpcError(-errno.ENOENT, f"Lvol store {old_name} not found")
        if new_name == old_name:
            return
        if any(s.name == new_name for s in self.stores):
            raise _async_error(errno.EEXIST)
        old_aliases = {lvol.uuid: lvol.alias for lvol in store.lvols.values()}
        await _completion(store.rename(new_name))
        for lvol in store.lvols.values():
            if lvol.bdev is not None:
                self.layer.remove_alias(lvol.bdev, old_aliases[lvol.uuid])
                self.layer.add_alias(lvol.bdev, lvol.alias)

    def lvstore_info(self, store: LvolStore) -> dict[str, Any]:
        geo = store.geometry
        return {
            "uuid": store.uuid,
            "name": store.name,
            "base_bdev": store.desc.bdev.name,
            "total_data_clusters": geo.data_clusters,
            "free_clusters": store.free_clusters,
            "block_size": store.block_size,
            "cluster_size": geo.cluster_size,
            "max_growable_size": geo.max_growable_size,
        }

    # -- lvols ------------------------------------------------------------------------
    async def create_lvol(self, store: LvolStore, name: str, size: int, *, thin: bool,
                          clear_method: str) -> str:
        if not name or len(name.encode()) > NAME_MAX:
            raise OperationError(errno.EINVAL)
        if store.find(name) is not None:
            raise OperationError(errno.EEXIST)
        lvol = await _completion(store.create_lvol(name, size, thin=thin,
                                                   clear_method=clear_method))
        await self._register_or_delete(lvol)
        return lvol.uuid

    async def _register_or_delete(self, lvol: Lvol) -> None:
        try:
            self._register(lvol)
        except OperationError as e:
            await lvol.store.delete_lvol(lvol)
            raise _async_error(e.errno) from e

    async def snapshot(self, lvol: Lvol, name: str) -> str:
        snap = await _completion(lvol.store.snapshot(lvol, name))
        await self._register_or_delete(snap)
        return snap.uuid

    async def clone(self, source: Lvol, name: str) -> str:
        clone = await _completion(source.store.clone(source, name))
        await self._register_or_delete(clone)
        return clone.uuid

    async def rename_lvol(self, lvol: Lvol, new_name: str) -> None:
        if new_name == lvol.name:
            return
        if lvol.read_only:
            raise _async_error(errno.EPERM)
        if not new_name or len(new_name.encode()) > NAME_MAX:
            raise _async_error(errno.EINVAL)
        store = lvol.store
        new_alias = f"{store.name}/{new_name}"
        if self.layer.get(new_alias) is not None or store.find(new_name) is not None:
            raise _async_error(errno.EEXIST)
        old_alias = lvol.alias
        await _completion(store.rename_lvol(lvol, new_name))
        if lvol.bdev is not None:
            self.layer.remove_alias(lvol.bdev, old_alias)
            self.layer.add_alias(lvol.bdev, new_alias)

    async def resize(self, lvol: Lvol, size: int) -> None:
        await _completion(lvol.store.resize(lvol, size))
        if lvol.bdev is not None:
            self.layer.resize(lvol.bdev, lvol.size // lvol.bdev.block_size)

    async def delete_lvol(self, lvol: Lvol) -> None:
        if len(lvol.children) > 1:
            raise RpcError(INTERNAL_ERROR, os.strerror(errno.EPERM))
        bdev = lvol.bdev
        if bdev is not None and bdev.state is BdevState.REGISTERED:
            await self.layer.unregister(bdev)
        lvol.bdev = None
        try:
            await lvol.store.delete_lvol(lvol)
        except OperationError as e:
            raise RpcError(INTERNAL_ERROR, os.strerror(e.errno)) from e
        finally:
            self.release_unused_esnaps()

    # -- shallow copy -----------------------------------------------------------------
    def start_shallow_copy(self, src: Lvol, dst_name: str) -> int:
        """Copy the clusters ``src`` owns to the same offsets of ``dst_name``, in the
        background (SPDK's ``spdk_bs_blob_shallow_copy``); the operation id."""
        try:
            desc = self.layer.open(dst_name, write=True)
        except OperationError as e:
            raise _async_error(e.errno) from e
        try:
            self.layer.claim(desc, self.name, ClaimType.READ_MANY_WRITE_ONE)
        except OperationError as e:
            desc.close()
            raise _async_error(e.errno) from e
        op_id = self._next_copy
        self._next_copy += 1
        op: dict[str, Any] = {"copied_clusters": 0,
                              "total_clusters": src.num_allocated_clusters,
                              "state": "in progress"}
        self.copies[op_id] = op
        task = asyncio.get_running_loop().create_task(self._shallow_copy(src, desc, op))
        self._copy_tasks.add(task)
        task.add_done_callback(self._copy_tasks.discard)
        return op_id

    async def _shallow_copy(self, src: Lvol, dst: Descriptor, op: dict[str, Any]) -> None:
        store = src.store
        cs = store.cluster_size
        try:
            # Checked after the start answered, as SPDK does (failures show in check).
            if not src.read_only:
                raise OperationError(errno.EPERM)
            if dst.bdev.size < src.size or store.block_size % dst.bdev.block_size:
                raise OperationError(errno.EINVAL)
            step = min(cs, 1 << 20)
            for idx, phys in enumerate(list(src.clusters)):
                if not phys:
                    continue
                for at in range(0, cs, step):
                    data = await store.desc.read_async(phys * cs + at, step)
                    await dst.write_async(idx * cs + at, data)
                op["copied_clusters"] += 1
            op["state"] = "complete"
        except OperationError as e:
            op["state"] = "error"
            op["error"] = os.strerror(e.errno)
        finally:
            dst.close()  # releases the claim

    def check_shallow_copy(self, op_id: int) -> dict[str, Any]:
        op = self.copies.get(op_id)
        if op is None:
            raise OperationError(errno.ENODEV)
        if op["state"] != "in progress":
            del self.copies[op_id]  # reported once, then forgotten
        return dict(op)

    def lvol_info(self, lvol: Lvol) -> dict[str, Any]:
        store = lvol.store
        return {
            "alias": lvol.alias,
            "uuid": lvol.uuid,
            "name": lvol.name,
            "is_thin_provisioned": lvol.thin,
            "is_snapshot": lvol.is_snapshot,
            "is_clone": lvol.is_clone,
            "is_esnap_clone": lvol.esnap is not None,
            "is_degraded": lvol.degraded,
            "num_allocated_clusters": lvol.num_allocated_clusters,
            "lvs": {"name": store.name, "uuid": store.uuid},
        }

    def config_entry(self, config: LvstoreConfig) -> dict[str, Any]:
        raise NotImplementedError("lvstores are not in save_config")

    def write_config(self) -> list[Any]:
        return []  # "configuration is saved on physical device" (vbdev_lvol.c)

    async def fini(self) -> None:
        for config in list(self.configs):
            if config.attachment is not None:
                config.attachment.release()
        for desc in self.esnaps.values():
            desc.close()
        self.esnaps.clear()
        await super().fini()


def _async_error(err: int) -> RpcError:
    """A failure of the operation itself: -32602 with strerror's text (vbdev_lvol_rpc.c)."""
    return RpcError(INVALID_PARAMS, os.strerror(err))


async def _completion(aw: Awaitable[T]) -> T:
    try:
        return await aw
    except OperationError as e:
        raise _async_error(e.errno) from e


# -- RPC methods -------------------------------------------------------------------------
DECODE = (INTERNAL_ERROR, DECODE_FAILED)


class CreateLvstoreParams(Params):
    bdev_name: Str = Field(description="The bdev the lvstore is made on (it is claimed)")
    lvs_name: Str = Field(description="Name of the lvstore")
    cluster_sz: U32 = Field(0, description="Cluster size in bytes (0: 4 MiB)")
    clear_method: Literal["none", "unmap", "write_zeroes"] = Field(
        "unmap", description="How the bdev is cleared: none, unmap or write_zeroes")
    num_md_pages_per_cluster_ratio: U32 = Field(
        0, description="Metadata pages reserved per 100 clusters (0: 100)")
    md_page_size: U32 = Field(0, description="Metadata page size in bytes (0: 4096)")


@RPC.method("bdev_lvol_create_lvstore", CreateLvstoreParams, decode_error=DECODE,
            result={"type": "string", "format": "uuid"})
async def bdev_lvol_create_lvstore(module: LvolModule, p: CreateLvstoreParams) -> str:
    """Create an lvstore on a bdev; answers its UUID."""
    return await module.create_lvstore(
        p.bdev_name, p.lvs_name, cluster_sz=p.cluster_sz, clear_method=p.clear_method,
        md_ratio=p.num_md_pages_per_cluster_ratio, md_page_size=p.md_page_size)


class LvstoreSelector(Params):
    uuid: Str | None = Field(None, description="UUID of the lvstore")
    lvs_name: Str | None = Field(None, description="Name of the lvstore (give uuid or lvs_name)")


@RPC.method("bdev_lvol_delete_lvstore", LvstoreSelector, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_delete_lvstore(module: LvolModule, p: LvstoreSelector) -> bool:
    """Delete an lvstore and every lvol on it."""
    await module.delete_lvstore(module.store_by(p.uuid, p.lvs_name))
    return True


@RPC.method("bdev_lvol_get_lvstores", LvstoreSelector, decode_error=DECODE,
            result={"type": "array", "items": {"type": "object"}})
def bdev_lvol_get_lvstores(module: LvolModule, p: LvstoreSelector) -> list[dict[str, Any]]:
    """List lvstores (all, or one by UUID or name)."""
    if p.uuid is None and p.lvs_name is None:
        return [module.lvstore_info(s) for s in module.stores]
    return [module.lvstore_info(module.store_by(p.uuid, p.lvs_name))]


class RenameParams(Params):
    old_name: Str = Field(description="Current name")
    new_name: Str = Field(description="New name")


@RPC.method("bdev_lvol_rename_lvstore", RenameParams, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_rename_lvstore(module: LvolModule, p: RenameParams) -> bool:
    """Rename an lvstore; every lvol alias follows."""
    await module.rename_lvstore(p.old_name, p.new_name)
    return True


@RPC.method("bdev_lvol_grow_lvstore", LvstoreSelector, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_grow_lvstore(module: LvolModule, p: LvstoreSelector) -> bool:
    """Grow an lvstore to its base's current size."""
    await _completion(module.store_by(p.uuid, p.lvs_name).grow())
    return True


class CreateLvolParams(Params):
    lvol_name: Str = Field(description="Name of the lvol (the bdev alias is LVS/NAME)")
    size_in_mib: U64 = Field(description="Size in MiB, rounded up to whole clusters")
    thin_provision: bool = Field(
        False, description="Allocate clusters on first write instead of now")
    uuid: Str | None = Field(None, description="UUID of the lvstore (or give lvs_name)")
    lvs_name: Str | None = Field(None, description="Name of the lvstore")
    clear_method: Literal["default", "none", "unmap", "write_zeroes"] = Field(
        "default", description=(
            "How clusters are cleared when freed: default, none, unmap or write_zeroes"))


@RPC.method("bdev_lvol_create", CreateLvolParams, decode_error=DECODE,
            result={"type": "string", "format": "uuid"})
async def bdev_lvol_create(module: LvolModule, p: CreateLvolParams) -> str:
    """Create an lvol (thick, or thin with ``thin_provision``); answers its UUID."""
    store = module.store_by(p.uuid, p.lvs_name)
    return await module.create_lvol(store, p.lvol_name, p.size_in_mib * MiB,
                                     thin=p.thin_provision, clear_method=p.clear_method)


class SnapshotParams(Params):
    lvol_name: Str = Field(description="The lvol to snapshot (name, alias or UUID)")
    snapshot_name: Str = Field(description="Name of the snapshot")


@RPC.method("bdev_lvol_snapshot", SnapshotParams, decode_error=DECODE,
            result={"type": "string", "format": "uuid"})
async def bdev_lvol_snapshot(module: LvolModule, p: SnapshotParams) -> str:
    """Snapshot an lvol; answers the snapshot's UUID."""
    return await module.snapshot(module.lvol_by(p.lvol_name), p.snapshot_name)


class CloneParams(Params):
    snapshot_name: Str = Field(description="The snapshot to clone")
    clone_name: Str = Field(description="Name of the clone")


@RPC.method("bdev_lvol_clone", CloneParams, decode_error=DECODE,
            result={"type": "string", "format": "uuid"})
async def bdev_lvol_clone(module: LvolModule, p: CloneParams) -> str:
    """Clone a snapshot (or read-only lvol); answers the clone's UUID."""
    return await module.clone(module.lvol_by(p.snapshot_name), p.clone_name)


@RPC.method("bdev_lvol_rename", RenameParams, decode_error=DECODE, result={"type": "boolean"})
async def bdev_lvol_rename(module: LvolModule, p: RenameParams) -> bool:
    """Rename an lvol (found by UUID or alias)."""
    await module.rename_lvol(module.lvol_by(p.old_name), p.new_name)
    return True


class ResizeParams(Params):
    name: Str = Field(description="The lvol (name, alias or UUID)")
    size_in_mib: U64 = Field(description="New size in MiB, rounded up to whole clusters")


@RPC.method("bdev_lvol_resize", ResizeParams, decode_error=DECODE, result={"type": "boolean"})
async def bdev_lvol_resize(module: LvolModule, p: ResizeParams) -> bool:
    """Resize an lvol (rounded up to whole clusters)."""
    await module.resize(module.lvol_by(p.name), p.size_in_mib * MiB)
    return True


@RPC.method("bdev_lvol_set_read_only", NameParams, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_set_read_only(module: LvolModule, p: NameParams) -> bool:
    """Make an lvol read-only, for good."""
    lvol = module.lvol_by(p.name)
    await _completion(lvol.store.set_read_only(lvol))
    return True


@RPC.method("bdev_lvol_delete", NameParams, decode_error=DECODE, result={"type": "boolean"})
async def bdev_lvol_delete(module: LvolModule, p: NameParams) -> bool:
    """Delete an lvol (degraded ones too); a snapshot with one clone is merged into it."""
    await module.delete_lvol(module.lvol_or_degraded(p.name))
    return True


@RPC.method("bdev_lvol_inflate", NameParams, decode_error=DECODE, result={"type": "boolean"})
async def bdev_lvol_inflate(module: LvolModule, p: NameParams) -> bool:
    """Allocate every cluster of an lvol and drop its parent: it becomes thick."""
    lvol = module.lvol_by(p.name)
    try:
        await _completion(lvol.store.inflate(lvol))
    finally:
        module.release_unused_esnaps()
    return True


@RPC.method("bdev_lvol_decouple_parent", NameParams, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_decouple_parent(module: LvolModule, p: NameParams) -> bool:
    """Copy the parent's own clusters into an lvol; its grandparent becomes its parent."""
    lvol = module.lvol_by(p.name)
    try:
        await _completion(lvol.store.decouple_parent(lvol))
    finally:
        module.release_unused_esnaps()
    return True


class SetParentParams(Params):
    lvol_name: Str = Field(description="The thin lvol")
    parent_name: Str = Field(description="The snapshot that becomes its parent")


@RPC.method("bdev_lvol_set_parent", SetParentParams, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_set_parent(module: LvolModule, p: SetParentParams) -> bool:
    """Make a snapshot the parent of a thin lvol; the lvol keeps the clusters it owns."""
    lvol = module.lvol_by(p.lvol_name)
    parent = module.lvol_by(p.parent_name)
    try:
        await _completion(lvol.store.set_parent(lvol, parent))
    finally:
        module.release_unused_esnaps()
    return True


class CloneBdevParams(Params):
    bdev: Str
    lvs_name: Str
    clone_name: Str


@RPC.method("bdev_lvol_clone_bdev", CloneBdevParams, decode_error=DECODE,
            result={"type": "string", "format": "uuid"})
async def bdev_lvol_clone_bdev(module: LvolModule, p: CloneBdevParams) -> str:
    """Clone any bdev as an external snapshot; answers the clone's UUID."""
    return await module.clone_bdev(p.bdev, p.lvs_name, p.clone_name)


class SetParentBdevParams(Params):
    lvol_name: Str
    parent_name: Str


@RPC.method("bdev_lvol_set_parent_bdev", SetParentBdevParams, decode_error=DECODE,
            result={"type": "boolean"})
async def bdev_lvol_set_parent_bdev(module: LvolModule, p: SetParentBdevParams) -> bool:
    """Make a bdev the external snapshot of a thin lvol; the lvol keeps its clusters."""
    await module.set_parent_bdev(module.lvol_by(p.lvol_name), p.parent_name)
    return True


class StartShallowCopyParams(Params):
    src_lvol_name: Str = Field(description="The read-only lvol to copy")
    dst_bdev_name: Str = Field(description="The bdev its clusters are copied to")


@RPC.method("bdev_lvol_start_shallow_copy", StartShallowCopyParams, decode_error=DECODE,
            result={"type": "object"})
def bdev_lvol_start_shallow_copy(module: LvolModule,
                                 p: StartShallowCopyParams) -> dict[str, Any]:
    """Start copying the clusters a read-only lvol owns onto a bdev; answers an operation id."""
    src = module.lvol_by(p.src_lvol_name)
    return {"operation_id": module.start_shallow_copy(src, p.dst_bdev_name)}


class CheckShallowCopyParams(Params):
    operation_id: U32 = Field(description="The id bdev_lvol_start_shallow_copy answered")


@RPC.method("bdev_lvol_check_shallow_copy", CheckShallowCopyParams, decode_error=DECODE,
            mutating=False,
            result={"type": "object"})
def bdev_lvol_check_shallow_copy(module: LvolModule,
                                 p: CheckShallowCopyParams) -> dict[str, Any]:
    """The progress of a shallow copy; a finished one is reported once."""
    return module.check_shallow_copy(p.operation_id)


class GetLvolsParams(Params):
    lvs_uuid: Str | None = Field(None, description="Only the lvols of this lvstore (UUID)")
    lvs_name: Str | None = Field(None, description="Only the lvols of this lvstore (name)")


@RPC.method("bdev_lvol_get_lvols", GetLvolsParams, decode_error=DECODE,
            result={"type": "array", "items": {"type": "object"}})
def bdev_lvol_get_lvols(module: LvolModule, p: GetLvolsParams) -> list[dict[str, Any]]:
    """List lvols (all, or those of one lvstore)."""
    if p.lvs_uuid is None and p.lvs_name is None:
        stores = module.stores
    else:
        stores = [module.store_by(p.lvs_uuid, p.lvs_name)]
    return [module.lvol_info(v) for s in stores for v in s.lvols.values() if not v.deleted]


class CheckParams(Params):
    uuid: Str | None = Field(None, description="UUID of the lvstore")
    lvs_name: Str | None = Field(None, description="Name of the lvstore")


@RPC.method("bdev_lvol_check_lvstore", CheckParams, decode_error=DECODE, mutating=False,
            result={"type": "object"})
async def bdev_lvol_check_lvstore(module: LvolModule, p: CheckParams) -> dict[str, Any]:
    """pybdev only: check an lvstore's consistency (in memory and as on disk); a report."""
    store = module.store_by(p.uuid, p.lvs_name)
    async with store.op_lock:
        memory = check_store(store)
        disk_store = await _completion(LvolStore.load(store.desc))
        disk = check_store(disk_store)
    out = memory.to_json()
    out["on_disk"] = disk.to_json()
    out["ok"] = memory.ok and disk.ok
    return out

