"""An lvstore on a base bdev and its lvols: metadata operations and the I/O path.

Every metadata operation changes the in-memory model in one synchronous step and then
awaits :meth:`LvolStore.commit`, which writes the whole model as the next generation
(:mod:`.layout`). Commits are grouped: a commit that starts after a change contains it, and
callers waiting behind a running commit share the next one. Clusters an operation frees stay
reserved until the commit that frees them is on disk and they were cleared, so a crash never
leaves a cluster owned on disk by one lvol and written by another.

I/O on an lvol (:class:`Lvol`) is callback-based, as on a bdev: a request inside one
allocated cluster goes straight to the base descriptor; a read of an unallocated cluster goes
down the parent chain (zeros at the end); a write to one allocates the cluster first (copying
the parent's data on clones), commits, and then runs. Metadata operations that move clusters
under a live lvol (snapshot, inflate, decouple, shrink, merge on delete) *freeze* it: new
requests queue and the operation waits for the writes in flight to finish.

Semantics follow SPDK's blobstore and lvol library (``lib/blob/blobstore.c``,
``lib/lvol/lvol.c``); the deliberate differences are listed in docs/lvol-format.md.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import uuid as uuidlib
import zlib
from array import array
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from pybdev.bdev.core import Bdev, Callback, Descriptor
from pybdev.bdev.lvol import layout
from pybdev.bdev.lvol.layout import Geometry, SuperSlot
from pybdev.errors import OperationError

log = logging.getLogger("pybdev.bdev.lvol")

CLEAR_METHODS = ("none", "unmap", "write_zeroes")
LVOL_CLEAR_METHODS = ("default", "none", "unmap", "write_zeroes")
NAME_MAX = 63  # SPDK_LVOL_NAME_MAX and SPDK_LVS_NAME_MAX are 64 with the NUL
_ZERO_CHUNK = 1 << 20


def check_name(name: str) -> None:
    if not name or len(name.encode()) > NAME_MAX:
        raise OperationError(errno.EINVAL, f"invalid name {name!r}")


def _zero_map(n: int) -> array[int]:
    return array("Q", bytes(8 * n))


class BaseIo:
    """Where lvol data I/O goes: the base bdev's ``submit_*``, past its descriptor.

    Lvol requests are already checked (inside one cluster of the data area, aligned, at most
    the base's ``max_io_bytes``: the lvol bdev declares the same limit), and the base
    outlives every lvol bdev (the store closes its descriptor only after they unregistered),
    so the base descriptor's checks and statistics are skipped: the lvol layer then costs
    one call and one map lookup per request (bench/lvol_nbd.py). The base's
    ``bdev_get_iostat`` therefore counts metadata I/O only. A FUA write to a base without
    native FUA goes through the descriptor, which emulates it. -ENOMEM from the base reaches
    the lvol bdev's descriptor, which retries the lvol request.
    """

    def __init__(self, desc: Descriptor) -> None:
        bdev = desc.bdev
        self._desc = desc
        self._submit_write = bdev.submit_write
        self.read = bdev.submit_read
        self.write: Callable[[int, Any, Callback, bool], None] = (
            bdev.submit_write if bdev.fua_native else self._write)
        self.unmap = bdev.submit_unmap
        self.write_zeroes = bdev.submit_write_zeroes
        self.can_unmap = bdev.supports("unmap")
        # Requests complete inside the call, FUA included: nothing is ever in flight.
        self.inline = bdev.completes_inline and bdev.fua_native

    def _write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        if fua:
            self._desc.write(offset, data, cb, True)
        else:
            self._submit_write(offset, data, cb, False)


class Lvol:
    """One logical volume: a cluster map (0 = not allocated), flags and a parent link."""

    def __init__(self, store: LvolStore, ident: int, uuid: str, name: str, clusters: array[int],
                 *, thin: bool, read_only: bool = False, clear_method: str = "default") -> None:
        self.store = store
        self.id = ident
        self.uuid = uuid
        self.name = name
        self.clusters = clusters
        self.thin = thin
        self.read_only = read_only
        self.clear_method = clear_method
        self.parent: Lvol | None = None
        self.children: list[Lvol] = []
        # The UUID of an external snapshot (any read-only bdev) read where this lvol and its
        # parents own nothing; only the root of a chain (parent None) has one.
        self.esnap: str | None = None
        # SPDK keeps a blob a snapshot until reload once it had a clone (bs_blob_list_remove).
        self.was_parent = False
        self.bdev: Any = None  # the lvol bdev, set by the module (has choose_path())
        self.deleted = False
        # I/O state
        self.frozen = 0
        self.inflight = 0
        self._queued: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._allocating: dict[int, list[Callable[[int], None]]] = {}
        self._drained: asyncio.Future[None] | None = None
        self.set_io(store.io)
        self._cs = store.geometry.cluster_size

    # -- what get_lvols and driver_specific show --------------------------------------
    @property
    def num_clusters(self) -> int:
        return len(self.clusters)

    @property
    def size(self) -> int:
        return len(self.clusters) * self._cs

    @property
    def is_snapshot(self) -> bool:
        return bool(self.children) or self.was_parent

    @property
    def is_clone(self) -> bool:
        return self.parent is not None

    @property
    def root_esnap(self) -> str | None:
        """The external snapshot at the root of this lvol's chain, if any."""
        lvol = self
        while lvol.parent is not None:
            lvol = lvol.parent
        return lvol.esnap

    @property
    def degraded(self) -> bool:
        """Its chain ends in an external snapshot that is not present."""
        esnap = self.root_esnap
        return esnap is not None and esnap not in self.store.esnaps

    @property
    def num_allocated_clusters(self) -> int:
        return len(self.clusters) - self.clusters.count(0)

    @property
    def alias(self) -> str:
        return f"{self.store.name}/{self.name}"

    def __repr__(self) -> str:
        return f"<Lvol {self.alias} {self.uuid}>"

    def set_io(self, io: BaseIo) -> None:
        self.io = io
        self._read, self._write = io.read, io.write
        self._unmap, self._write_zeroes = io.unmap, io.write_zeroes
        self._can_unmap = io.can_unmap
        self._inline = io.inline
        self.layout_changed()

    def run_offset(self) -> int | None:
        """Where this lvol starts on the base if it is one run there that nothing moves.

        A thick, unfrozen lvol whose clusters are consecutive: its bdev may then forward
        requests with an offset add, as a part does, instead of a cluster-map lookup. Maps
        of thick lvols change only under a freeze (snapshot, shrink) or by growing, and
        both call :meth:`layout_changed`.
        """
        c = self.clusters
        n = len(c)
        if self.thin or self.frozen or not n or not c[0] or c[n - 1] - c[0] != n - 1:
            return None
        first = c[0]
        if any(c[i] != first + i for i in range(n)):
            return None
        return first * self._cs

    def layout_changed(self) -> None:
        """The map, the flags or the freeze changed: the bdev picks its submit path again."""
        bdev = self.bdev
        if bdev is not None:
            bdev.choose_path()

    # -- freezing ---------------------------------------------------------------------
    async def freeze(self) -> None:
        """Queue new requests; return once no write or allocation is in flight."""
        self.frozen += 1
        if self.frozen == 1:
            # Off the offset path, whose writes are not counted in flight: it is only
            # taken where they complete inside the call, so none is in flight now.
            self.layout_changed()
        while self.inflight or self._allocating:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    def unfreeze(self) -> None:
        self.frozen -= 1
        if self.frozen == 0:
            self.layout_changed()
            if self._queued:
                queued, self._queued = self._queued, []
                end = len(self.clusters) * self._cs
                for fn, args in queued:
                    offset, length, cb = self._queued_request(fn, args)
                    if offset + length > end:
                        # Checked against the size before a shrink it waited for.
                        cb(-errno.EINVAL, None)
                    else:
                        fn(*args)

    def _queued_request(self, fn: Callable[..., None],
                        args: tuple[Any, ...]) -> tuple[int, int, Callback]:
        """(offset, length, callback) of a request queued by a freeze."""
        if fn == self.write:
            return args[0], len(args[1]), args[2]
        return args[0], args[1], args[2]

    def _maybe_drained(self) -> None:
        if self._drained is not None and not self.inflight and not self._allocating:
            if not self._drained.done():
                self._drained.set_result(None)
            self._drained = None

    def _tracked(self, cb: Callback) -> Callback:
        self.inflight += 1

        def done(status: int, data: Any) -> None:
            self.inflight -= 1
            if self._drained is not None:
                self._maybe_drained()
            cb(status, data)

        return done

    def fail_queued(self, status: int) -> None:
        """The lvol is going away: complete what waits for an unfreeze with ``status``."""
        queued, self._queued = self._queued, []
        for fn, args in queued:
            self._queued_request(fn, args)[2](status, None)

    # -- I/O --------------------------------------------------------------------------
    def read(self, offset: int, length: int, cb: Callback) -> None:
        if self.frozen:
            self._queued.append((self.read, (offset, length, cb)))
            return
        cs = self._cs
        idx = offset // cs
        off = offset - idx * cs
        if off + length > cs:
            self._split(offset, length, cb, self._read_piece, gather=True)
            return
        phys = self.clusters[idx] if idx < len(self.clusters) else 0
        if phys:
            self._read(phys * cs + off, length, cb)
        else:
            self._read_back(idx, off, length, cb)

    def _read_piece(self, offset: int, length: int, _data: Any, cb: Callback) -> None:
        self.read(offset, length, cb)

    def _read_back(self, idx: int, off: int, length: int, cb: Callback) -> None:
        """Read cluster ``idx`` of this lvol where it owns nothing: the parent chain, then the
        external snapshot at its root, or zeros."""
        store = self.store
        phys = store.back_cluster(self, idx)
        if phys:
            self._read(phys * self._cs + off, length, cb)
            return
        esnap = self.root_esnap
        if esnap is None:
            cb(0, store.zeros(length))
            return
        desc = store.esnaps.get(esnap)
        if desc is None:
            cb(-errno.ENODEV, None)
            return
        store.read_esnap(desc, idx * self._cs + off, length, cb)

    def write(self, offset: int, data: Any, cb: Callback, fua: bool = False) -> None:
        # The hot path (bench/lvol_nbd.py): a write inside one allocated cluster of a
        # writable, unfrozen lvol costs a lookup, and on a base that completes later one
        # closure (counted in flight, so a freeze can wait for it); everything else goes to
        # _write_slow.
        cs = self._cs
        idx = offset // cs
        off = offset - idx * cs
        if not self.frozen and not self.read_only and off + len(data) <= cs:
            phys = self.clusters[idx]
            if phys:
                if self._inline:  # done before the call returns: never in flight
                    self._write(phys * cs + off, data, cb, fua)
                    return
                self.inflight += 1

                def done(status: int, got: Any) -> None:
                    self.inflight -= 1
                    if self._drained is not None:
                        self._maybe_drained()
                    cb(status, got)

                self._write(phys * cs + off, data, done, fua)
                return
        self._write_slow(offset, data, cb, fua)

    def _write_slow(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        if self.frozen:
            self._queued.append((self.write, (offset, data, cb, fua)))
            return
        if self.read_only:
            cb(-errno.EPERM, None)
            return
        cs = self._cs
        idx, off = divmod(offset, cs)
        if off + len(data) > cs:
            self._split(offset, len(data), cb, lambda o, n, d, c: self.write(o, d, c, fua),
                        data=data)
            return
        if self.clusters[idx]:
            self.write(offset, data, cb, fua)
            return
        self._after_allocation(idx, lambda st: cb(st, None) if st
                               else self.write(offset, data, cb, fua))

    def unmap(self, offset: int, length: int, cb: Callback) -> None:
        if self.frozen:
            self._queued.append((self.unmap, (offset, length, cb)))
            return
        if self.read_only:
            cb(-errno.EPERM, None)
            return
        cs = self._cs
        idx, off = divmod(offset, cs)
        if off + length > cs:
            self._split(offset, length, cb, lambda o, n, _d, c: self.unmap(o, n, c))
            return
        phys = self.clusters[idx]
        if not phys:
            cb(0, None)
            return
        if self.thin and self.parent is None and self.esnap is None and length == cs:
            # A whole cluster of a thin lvol over zeroes is given back
            # (SPDK's blob_request_submit_op_single).
            self.inflight += 1
            task = self.store.spawn(self.store.free_cluster(self, idx))
            task.add_done_callback(lambda t: self._unmapped(t, cb))
            return
        if self._can_unmap:
            self._unmap(phys * cs + off, length, self._tracked(cb))
        else:
            cb(0, None)

    def _unmapped(self, task: asyncio.Task[None], cb: Callback) -> None:
        self.inflight -= 1
        self._maybe_drained()
        exc = None if task.cancelled() else task.exception()
        cb(-(exc.errno or errno.EIO) if isinstance(exc, OperationError) else -errno.EIO
           if exc else 0, None)

    def write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        if self.frozen:
            self._queued.append((self.write_zeroes, (offset, length, cb)))
            return
        if self.read_only:
            cb(-errno.EPERM, None)
            return
        cs = self._cs
        idx, off = divmod(offset, cs)
        if off + length > cs:
            self._split(offset, length, cb, lambda o, n, _d, c: self.write_zeroes(o, n, c))
            return
        phys = self.clusters[idx]
        if phys:
            self._write_zeroes(phys * cs + off, length, self._tracked(cb))
        elif not self.store.back_cluster(self, idx) and self.root_esnap is None:
            # Reads there give zeros already; SPDK allocates, we keep the space
            # (docs/lvol-format.md).
            cb(0, None)
        else:
            self._after_allocation(idx, lambda st: cb(st, None) if st
                                   else self.write_zeroes(offset, length, cb))

    def _split(self, offset: int, length: int, cb: Callback,
               piece: Callable[[int, int, Any, Callback], None], *, data: Any = None,
               gather: bool = False) -> None:
        """Run ``piece`` once per cluster the range touches; complete ``cb`` once."""
        cs = self._cs
        pieces = []
        pos = 0
        while pos < length:
            n = min(length - pos, cs - (offset + pos) % cs)
            pieces.append((pos, n))
            pos += n
        buf = bytearray(length) if gather else None
        view = memoryview(data) if data is not None else None
        state = [len(pieces), 0]

        def one(pos: int, n: int) -> Callback:
            def done(status: int, got: Any) -> None:
                if status and not state[1]:
                    state[1] = status
                elif buf is not None and got is not None:
                    buf[pos:pos + n] = got
                state[0] -= 1
                if state[0] == 0:
                    cb(state[1], None if state[1] else buf)
            return done

        for pos, n in pieces:
            piece(offset + pos, n, view[pos:pos + n] if view is not None else None, one(pos, n))

    def _after_allocation(self, idx: int, then: Callable[[int], None]) -> None:
        """Allocate cluster ``idx`` (once, however many requests wait), then call ``then``."""
        waiters = self._allocating.get(idx)
        if waiters is not None:
            waiters.append(then)
            return
        self._allocating[idx] = [then]
        self.store.spawn(self._allocate(idx))

    async def _allocate(self, idx: int) -> None:
        status = 0
        try:
            await self.store.allocate_cluster(self, idx)
        except OperationError as e:
            status = -(e.errno or errno.EIO)
        except Exception:
            log.exception("allocating cluster %d of %s failed", idx, self.alias)
            status = -errno.EIO
        waiters = self._allocating.pop(idx)
        self._maybe_drained()
        for then in waiters:
            then(status)


class LvolStore:
    """An lvstore: the geometry, the cluster allocator, the lvols, and commits."""

    def __init__(self, desc: Descriptor, geometry: Geometry, name: str, uuid: str) -> None:
        self.desc = desc
        self.io = BaseIo(desc)
        self.geometry = geometry
        self.name = name
        self.uuid = uuid
        self.lvols: dict[str, Lvol] = {}  # by UUID, in creation order
        self.next_id = 1
        self.generation = 0
        self._used = bytearray(geometry.total_clusters)
        self._used[:geometry.md_clusters] = b"\x01" * geometry.md_clusters
        self.free_clusters = geometry.data_clusters
        self._hint = geometry.md_clusters
        self._changes = 0
        self._committed = 0
        self._commit_lock = asyncio.Lock()
        self.op_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._zeros = bytes(min(geometry.cluster_size, _ZERO_CHUNK))
        # External snapshots by bdev UUID, opened by the module (shared by its stores).
        self.esnaps: dict[str, Descriptor] = {}

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task the store keeps a reference to until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def set_io(self, io: BaseIo) -> None:
        """Send lvol data I/O elsewhere (tests: a base that loses writes)."""
        self.io = io
        for lvol in self.lvols.values():
            lvol.set_io(io)

    # -- facts ------------------------------------------------------------------------
    @property
    def cluster_size(self) -> int:
        return self.geometry.cluster_size

    @property
    def block_size(self) -> int:
        return self.desc.bdev.block_size

    @property
    def total_data_clusters(self) -> int:
        return self.geometry.data_clusters

    def zeros(self, length: int) -> Any:
        if length <= len(self._zeros):
            return memoryview(self._zeros)[:length]
        return bytes(length)

    def find(self, name: str) -> Lvol | None:
        for lvol in self.lvols.values():
            if lvol.name == name:
                return lvol
        return None

    def read_esnap(self, desc: Descriptor, offset: int, length: int, cb: Callback) -> None:
        """Read an external snapshot; zeros past its end (it may be smaller than the lvol)."""
        size = desc.bdev.size
        if offset + length <= size:
            desc.read(offset, length, cb)
        elif offset >= size:
            cb(0, self.zeros(length))
        else:
            head = size - offset

            def done(status: int, data: Any) -> None:
                cb(status, None if status else bytes(data) + bytes(length - head))

            desc.read(offset, head, done)

    def back_cluster(self, lvol: Lvol, idx: int) -> int:
        """The device cluster holding ``lvol``'s cluster ``idx`` in its parent chain, or 0."""
        p = lvol.parent
        while p is not None:
            if idx >= len(p.clusters):
                return 0
            phys = p.clusters[idx]
            if phys:
                return phys
            p = p.parent
        return 0

    # -- creation and loading ---------------------------------------------------------
    @classmethod
    async def create(cls, desc: Descriptor, name: str, *, cluster_size: int = 0,
                     clear_method: str = "unmap", md_ratio: int = 0, md_page_size: int = 0,
                     uuid: str | None = None) -> LvolStore:
        """Write a new, empty store on ``desc``'s bdev (SPDK's ``spdk_lvs_init``)."""
        check_name(name)
        if clear_method not in CLEAR_METHODS:
            raise OperationError(errno.EINVAL, "Invalid clear_method parameter")
        bdev = desc.bdev
        geo = layout.compute_geometry(bdev.size, bdev.block_size,
                                      cluster_size or layout.DEFAULT_CLUSTER_SIZE,
                                      md_ratio or layout.DEFAULT_MD_RATIO, md_page_size)
        store = cls(desc, geo, name, uuid or str(uuidlib.uuid4()))
        await _fill_zeroes(desc, 0, geo.md_bytes)
        data_at, data_len = geo.md_bytes, geo.data_clusters * geo.cluster_size
        await store.clear_range(data_at, data_len, clear_method)
        await store.commit()
        return store

    @classmethod
    async def load(cls, desc: Descriptor) -> LvolStore:
        """Read the store on ``desc``'s bdev; OperationError(EILSEQ) when there is none."""
        slots = await read_slots(desc)
        last_error: OperationError | None = None
        for slot in sorted(slots, key=lambda s: -s.generation):
            try:
                record = await read_record(desc, slot)
                return cls._from_record(desc, slot, record)
            except OperationError as e:
                log.warning("lvstore generation %d on %s unusable: %s", slot.generation,
                            desc.bdev.name, e)
                last_error = e
        raise last_error or OperationError(errno.EILSEQ, "no lvstore")

    @classmethod
    def _from_record(cls, desc: Descriptor, slot: SuperSlot, record: dict[str, Any]) -> LvolStore:
        try:
            geo = slot.geometry
            if geo.total_clusters * geo.cluster_size > desc.bdev.size:
                raise OperationError(errno.EILSEQ, "lvstore larger than its base")
            store = cls(desc, geo, record["name"], record["uuid"])
            store.generation = slot.generation
            store.next_id = int(record["next_id"])
            by_id: dict[int, Lvol] = {}
            parents: list[tuple[Lvol, int]] = []
            for r in record["lvols"]:
                lvol = Lvol(store, int(r["id"]), r["uuid"], r["name"],
                            layout.decode_clusters(r["clusters"]), thin=bool(r["thin"]),
                            read_only=bool(r["read_only"]), clear_method=r["clear_method"])
                by_id[lvol.id] = lvol
                store.lvols[lvol.uuid] = lvol
                if r.get("parent") is not None:
                    parents.append((lvol, int(r["parent"])))
                if r.get("esnap") is not None:
                    lvol.esnap = str(r["esnap"])
            for lvol, pid in parents:
                store._set_parent(lvol, by_id[pid])
        except (KeyError, TypeError, ValueError, zlib.error) as e:
            raise OperationError(errno.EILSEQ, f"malformed lvstore metadata: {e!r}") from e
        for lvol in store.lvols.values():
            for phys in lvol.clusters:
                if phys and phys < geo.total_clusters and not store._used[phys]:
                    store._used[phys] = 1
                    store.free_clusters -= 1
        return store

    def record(self) -> dict[str, Any]:
        return {
            "name": self.name, "uuid": self.uuid, "next_id": self.next_id,
            "lvols": [{
                "id": v.id, "uuid": v.uuid, "name": v.name, "thin": v.thin,
                "read_only": v.read_only, "clear_method": v.clear_method,
                "parent": v.parent.id if v.parent is not None else None,
                **({"esnap": v.esnap} if v.esnap is not None else {}),
                "clusters": layout.encode_clusters(v.clusters),
            } for v in self.lvols.values()],
        }

    # -- commits ----------------------------------------------------------------------
    async def commit(self) -> None:
        """Return once the model as it is now is on disk (flushed)."""
        self._changes += 1
        want = self._changes
        async with self._commit_lock:
            if self._committed >= want:
                return
            taken = self._changes
            await self._write_generation()
            self._committed = taken

    async def _write_generation(self) -> None:
        geo = self.geometry
        blob = layout.encode_record(self.record())
        if len(blob) > geo.half_size:
            raise OperationError(errno.ENOMEM, "lvstore metadata area is full")
        gen = self.generation + 1
        offset = geo.half_offset[gen % 2]
        page = geo.md_page_size
        padded = blob + bytes(-len(blob) % page)
        await self.desc.write_async(offset, padded)
        await _flush(self.desc)
        slot = SuperSlot(gen, geo, offset, len(blob), zlib.crc32(blob))
        await self.desc.write_async((gen % 2) * slot_size(self.block_size),
                                    layout.encode_super(slot, slot_size(self.block_size)))
        await _flush(self.desc)
        self.generation = gen

    # -- clusters ---------------------------------------------------------------------
    def take_cluster(self) -> int:
        if self.free_clusters <= 0:
            raise OperationError(errno.ENOSPC, "No space left on device")
        used = self._used
        at = used.find(0, self._hint)
        if at < 0:
            at = used.find(0, self.geometry.md_clusters)
        used[at] = 1
        self.free_clusters -= 1
        self._hint = at + 1
        return at

    def _release(self, phys: int) -> None:
        if self._used[phys]:
            self._used[phys] = 0
            self.free_clusters += 1
            if phys < self._hint:
                self._hint = phys

    async def clear_range(self, offset: int, length: int, method: str) -> None:
        if length <= 0 or method == "none":
            return
        if method == "write_zeroes":
            await _fill_zeroes(self.desc, offset, length)
        elif self.desc.bdev.supports("unmap"):  # unmap and default; skipped where unsupported
            await self.desc.unmap_async(offset, length)

    async def release_after_commit(self, freed: Iterable[int], method: str) -> None:
        """Commit (the clusters are free on disk), clear them, then let them be taken."""
        freed = [c for c in freed if c]
        await self.commit()
        cs = self.cluster_size
        for phys in freed:
            try:
                await self.clear_range(phys * cs, cs, method)
            except OperationError as e:
                log.warning("clearing cluster %d of %s failed: %s", phys, self.name, e)
            self._release(phys)

    async def allocate_cluster(self, lvol: Lvol, idx: int) -> None:
        """First write to ``lvol``'s cluster ``idx``: take a cluster, copy the parent's data."""
        phys = self.take_cluster()
        try:
            await self._fill_from_back(lvol, idx, phys)
            lvol.clusters[idx] = phys
            await self.commit()
        except BaseException:
            if idx < len(lvol.clusters) and lvol.clusters[idx] == phys:
                lvol.clusters[idx] = 0
            self._release(phys)
            raise

    async def _fill_from_back(self, lvol: Lvol, idx: int, phys: int) -> None:
        """Give new cluster ``phys`` what ``lvol`` reads at ``idx``: the chain's or the
        external snapshot's data (nothing to do over zeros: reads see the new data only)."""
        back = self.back_cluster(lvol, idx)
        if back:
            await self._copy_cluster(back, phys)
            return
        esnap = lvol.root_esnap
        if esnap is None:
            return
        desc = self.esnaps.get(esnap)
        if desc is None:
            raise OperationError(errno.ENODEV, f"external snapshot {esnap} is missing")
        cs = self.cluster_size
        step = min(cs, _ZERO_CHUNK * 4)
        for at in range(0, cs, step):
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            def done(status: int, data: Any, fut: asyncio.Future[Any] = fut) -> None:
                if status:
                    fut.set_exception(OperationError(-status))
                else:
                    fut.set_result(bytes(data))

            self.read_esnap(desc, idx * cs + at, step, done)
            await self.desc.write_async(phys * cs + at, await fut)

    async def _copy_cluster(self, src: int, dst: int) -> None:
        cs = self.cluster_size
        step = min(cs, _ZERO_CHUNK * 4)
        for at in range(0, cs, step):
            data = await self.desc.read_async(src * cs + at, step)
            await self.desc.write_async(dst * cs + at, data)

    async def free_cluster(self, lvol: Lvol, idx: int) -> None:
        """Unmap of a whole cluster on a thin lvol over zeroes: give the cluster back."""
        phys = lvol.clusters[idx]
        if not phys:
            return
        lvol.clusters[idx] = 0
        await self.release_after_commit([phys], lvol.clear_method)

    # -- lvol operations --------------------------------------------------------------
    def _check_new_name(self, name: str) -> None:
        check_name(name)
        if self.find(name) is not None:
            raise OperationError(errno.EEXIST, "File exists")

    def _new_lvol(self, name: str, n: int, *, thin: bool, read_only: bool = False,
                  clear_method: str = "default", uuid: str | None = None) -> Lvol:
        lvol = Lvol(self, self.next_id, uuid or str(uuidlib.uuid4()), name, _zero_map(n),
                    thin=thin, read_only=read_only, clear_method=clear_method)
        self.next_id += 1
        return lvol

    def _set_parent(self, lvol: Lvol, parent: Lvol | None) -> None:
        if lvol.parent is not None and lvol in lvol.parent.children:
            lvol.parent.children.remove(lvol)
        lvol.parent = parent
        if parent is not None:
            parent.children.append(lvol)
            parent.was_parent = True

    def clusters_for(self, size: int) -> int:
        return -(-size // self.cluster_size)

    async def _commit_or_undo(self, undo: Callable[[], None]) -> None:
        try:
            await self.commit()
        except OperationError:
            undo()
            raise

    async def create_lvol(self, name: str, size: int, *, thin: bool = False,
                          clear_method: str = "default", uuid: str | None = None) -> Lvol:
        """A new lvol of ``size`` bytes rounded up to clusters (thick: all allocated now)."""
        if clear_method not in LVOL_CLEAR_METHODS:
            raise OperationError(errno.EINVAL, "Invalid clear_method parameter")
        self._check_new_name(name)
        n = self.clusters_for(size)
        async with self.op_lock:
            self._check_new_name(name)
            if not thin and n > self.free_clusters:
                raise OperationError(errno.ENOSPC, "No space left on device")
            lvol = self._new_lvol(name, n, thin=thin, clear_method=clear_method, uuid=uuid)
            if not thin:
                for i in range(n):
                    lvol.clusters[i] = self.take_cluster()
            self.lvols[lvol.uuid] = lvol

            def undo() -> None:
                self.lvols.pop(lvol.uuid, None)
                for phys in lvol.clusters:
                    if phys:
                        self._release(phys)

            await self._commit_or_undo(undo)
        return lvol

    async def snapshot(self, origin: Lvol, name: str) -> Lvol:
        """A read-only snapshot takes the origin's clusters; the origin becomes its thin clone."""
        self._check_new_name(name)
        if origin.read_only:
            raise OperationError(errno.EINVAL, "Invalid argument")
        async with self.op_lock:
            self._check_new_name(name)
            await origin.freeze()
            try:
                snap = self._new_lvol(name, 0, thin=True, read_only=True,
                                      clear_method=origin.clear_method)
                old = (origin.clusters, origin.parent, origin.thin, origin.esnap)
                snap.clusters = origin.clusters
                origin.clusters = _zero_map(len(snap.clusters))
                self._set_parent(snap, origin.parent)
                self._set_parent(origin, snap)
                # An esnap clone's snapshot takes the external snapshot (SPDK moves EXTSNAP).
                snap.esnap, origin.esnap = origin.esnap, None
                origin.thin = True
                self.lvols[snap.uuid] = snap

                def undo() -> None:
                    origin.clusters, parent, origin.thin, origin.esnap = old
                    self._set_parent(origin, parent)
                    self._set_parent(snap, None)
                    self.lvols.pop(snap.uuid, None)

                await self._commit_or_undo(undo)
            finally:
                origin.unfreeze()
        return snap

    async def clone(self, source: Lvol, name: str) -> Lvol:
        """A thin lvol whose unwritten clusters read ``source`` (which must be read-only)."""
        self._check_new_name(name)
        if not source.read_only:
            raise OperationError(errno.EINVAL, "Invalid argument")
        async with self.op_lock:
            self._check_new_name(name)
            clone = self._new_lvol(name, len(source.clusters), thin=True,
                                   clear_method=source.clear_method)
            self._set_parent(clone, source)
            self.lvols[clone.uuid] = clone

            def undo() -> None:
                self._set_parent(clone, None)
                self.lvols.pop(clone.uuid, None)

            await self._commit_or_undo(undo)
        return clone

    async def esnap_clone(self, esnap: str, size: int, name: str) -> Lvol:
        """A thin lvol of ``size`` bytes whose unwritten clusters read external snapshot
        ``esnap`` (a bdev UUID; the module opened it)."""
        self._check_new_name(name)
        if size <= 0 or size % self.cluster_size:
            raise OperationError(errno.EINVAL, "Invalid argument")
        async with self.op_lock:
            self._check_new_name(name)
            clone = self._new_lvol(name, size // self.cluster_size, thin=True)
            clone.esnap = esnap
            self.lvols[clone.uuid] = clone

            def undo() -> None:
                self.lvols.pop(clone.uuid, None)

            await self._commit_or_undo(undo)
        return clone

    async def set_external_parent(self, lvol: Lvol, esnap: str, esnap_size: int) -> None:
        """Make external snapshot ``esnap`` what ``lvol``'s unallocated clusters read
        (metadata only), as SPDK's ``spdk_bs_blob_set_external_parent``."""
        if esnap == lvol.uuid or esnap_size % self.cluster_size or not lvol.thin:
            raise OperationError(errno.EINVAL, "Invalid argument")
        if lvol.esnap == esnap:
            raise OperationError(errno.EEXIST, "File exists")
        async with self.op_lock:
            await lvol.freeze()
            try:
                old, old_esnap = lvol.parent, lvol.esnap
                self._set_parent(lvol, None)
                lvol.esnap = esnap

                def undo() -> None:
                    self._set_parent(lvol, old)
                    lvol.esnap = old_esnap

                await self._commit_or_undo(undo)
            finally:
                lvol.unfreeze()

    async def rename_lvol(self, lvol: Lvol, new_name: str) -> None:
        if new_name == lvol.name:
            return
        self._check_new_name(new_name)
        if lvol.read_only:
            raise OperationError(errno.EPERM, "Operation not permitted")
        async with self.op_lock:
            self._check_new_name(new_name)
            old = lvol.name
            lvol.name = new_name

            def undo() -> None:
                lvol.name = old

            await self._commit_or_undo(undo)

    async def rename(self, new_name: str) -> None:
        check_name(new_name)
        async with self.op_lock:
            old = self.name
            self.name = new_name

            def undo() -> None:
                self.name = old

            await self._commit_or_undo(undo)

    async def set_read_only(self, lvol: Lvol) -> None:
        async with self.op_lock:
            if lvol.read_only:
                return
            lvol.read_only = True
            lvol.layout_changed()
            await self.commit()

    async def resize(self, lvol: Lvol, size: int) -> None:
        """Grow (thick: allocate now) or shrink (the tail is cleared and freed)."""
        if lvol.read_only:
            raise OperationError(errno.EPERM, "Operation not permitted")
        n = self.clusters_for(size)
        async with self.op_lock:
            old_n = len(lvol.clusters)
            if n == old_n:
                return
            if n > old_n:
                if not lvol.thin and n - old_n > self.free_clusters:
                    raise OperationError(errno.ENOSPC, "No space left on device")
                lvol.clusters.extend(_zero_map(n - old_n))
                if not lvol.thin:
                    for i in range(old_n, n):
                        lvol.clusters[i] = self.take_cluster()
                # Before the bdev grows (the module resizes it after this returns).
                lvol.layout_changed()
                await self.commit()
                return
            await lvol.freeze()
            try:
                tail = list(lvol.clusters[n:])
                del lvol.clusters[n:]
                await self.release_after_commit(tail, lvol.clear_method)
            finally:
                lvol.unfreeze()

    async def delete_lvol(self, lvol: Lvol) -> None:
        """Delete; a snapshot with one clone is merged into it, with more it is refused."""
        async with self.op_lock:
            if len(lvol.children) > 1:
                raise OperationError(errno.EPERM, "Operation not permitted")
            child = lvol.children[0] if lvol.children else None
            if child is not None:
                await child.freeze()
            try:
                if child is not None:
                    # The clone takes the snapshot's clusters where it has none (metadata only).
                    for i in range(min(len(child.clusters), len(lvol.clusters))):
                        if not child.clusters[i] and lvol.clusters[i]:
                            child.clusters[i] = lvol.clusters[i]
                            lvol.clusters[i] = 0
                    self._set_parent(child, lvol.parent)
                    if lvol.esnap is not None:
                        child.esnap = lvol.esnap  # the external snapshot moves back
                self._set_parent(lvol, None)
                del self.lvols[lvol.uuid]
                lvol.deleted = True
                await self.release_after_commit(list(lvol.clusters), lvol.clear_method)
            finally:
                if child is not None:
                    child.unfreeze()

    async def inflate(self, lvol: Lvol) -> None:
        """Own every cluster (copying the chain's data); the lvol becomes thick, parentless."""
        await self._copy_up(lvol, allocate_all=True)

    async def decouple_parent(self, lvol: Lvol) -> None:
        """Copy the parent's own clusters; the grandparent becomes the parent. An esnap
        clone is inflated (SPDK decouples it from the external snapshot with allocate_all)."""
        if lvol.esnap is not None:
            await self._copy_up(lvol, allocate_all=True)
            return
        if lvol.parent is None:
            raise OperationError(errno.EINVAL, "Invalid argument")
        await self._copy_up(lvol, allocate_all=False)

    async def _copy_up(self, lvol: Lvol, *, allocate_all: bool) -> None:
        async with self.op_lock:
            parent = lvol.parent
            if not allocate_all and parent is None:
                raise OperationError(errno.EINVAL, "Invalid argument")
            n = len(lvol.clusters)
            if allocate_all:
                todo = [i for i in range(n) if not lvol.clusters[i]]
            else:
                assert parent is not None
                todo = [i for i in range(min(n, len(parent.clusters)))
                        if not lvol.clusters[i] and parent.clusters[i]]
            if len(todo) > self.free_clusters:
                raise OperationError(errno.ENOSPC, "No space left on device")
            await lvol.freeze()
            taken: list[tuple[int, int]] = []
            try:
                for i in todo:
                    phys = self.take_cluster()
                    taken.append((i, phys))
                    await self._fill_from_back(lvol, i, phys)
                old = (lvol.parent, lvol.thin, lvol.esnap)
                for i, phys in taken:
                    lvol.clusters[i] = phys
                if allocate_all:
                    self._set_parent(lvol, None)
                    lvol.thin = False
                    lvol.esnap = None
                else:
                    assert parent is not None
                    self._set_parent(lvol, parent.parent)
                    if parent.parent is None:
                        lvol.esnap = parent.esnap  # the chain still ends in it

                def undo() -> None:
                    for i, _phys in taken:
                        lvol.clusters[i] = 0
                    self._set_parent(lvol, old[0])
                    lvol.thin, lvol.esnap = old[1], old[2]

                await self._commit_or_undo(undo)
                taken = []
            finally:
                for _i, phys in taken:
                    self._release(phys)
                lvol.unfreeze()

    async def set_parent(self, lvol: Lvol, parent: Lvol) -> None:
        """Make snapshot ``parent`` what ``lvol``'s unallocated clusters read (metadata only).

        As SPDK's ``spdk_bs_blob_set_parent``: EEXIST if it already is; EINVAL for the lvol
        itself, a parent that is not a snapshot, another cluster count, a thick lvol or a
        parent in another lvstore.
        """
        if parent.store is not self or parent is lvol:
            raise OperationError(errno.EINVAL, "Invalid argument")
        if lvol.parent is parent:
            raise OperationError(errno.EEXIST, "File exists")
        if (not parent.is_snapshot or not parent.read_only
                or len(parent.clusters) != len(lvol.clusters) or not lvol.thin):
            raise OperationError(errno.EINVAL, "Invalid argument")
        async with self.op_lock:
            await lvol.freeze()
            try:
                old, old_esnap = lvol.parent, lvol.esnap
                self._set_parent(lvol, parent)
                lvol.esnap = None

                def undo() -> None:
                    self._set_parent(lvol, old)
                    lvol.esnap = old_esnap

                await self._commit_or_undo(undo)
            finally:
                lvol.unfreeze()

    # -- the store --------------------------------------------------------------------
    async def grow(self) -> None:
        """Take in clusters the base gained, up to the limit fixed at creation."""
        async with self.op_lock:
            geo = self.geometry
            total = self.desc.bdev.size // geo.cluster_size
            if total < geo.total_clusters or total > geo.max_clusters:
                raise OperationError(errno.ENOSPC, "No space left on device")
            if total == geo.total_clusters:
                return
            old = geo
            self.geometry = Geometry(geo.cluster_size, geo.block_size, geo.md_page_size, total,
                                     geo.md_clusters, geo.max_clusters)
            self._used.extend(bytes(total - geo.total_clusters))
            self.free_clusters += total - geo.total_clusters
            try:
                await self.commit()
            except OperationError:
                self.geometry = old
                del self._used[old.total_clusters:]
                self.free_clusters -= total - old.total_clusters
                raise

    async def destroy(self) -> None:
        """Delete every lvol (leaves first, clearing per its method), then the super slots."""
        async with self.op_lock:
            while self.lvols:
                leaf = next(v for v in self.lvols.values() if not v.children)
                self._set_parent(leaf, None)
                del self.lvols[leaf.uuid]
                leaf.deleted = True
                await self.release_after_commit(list(leaf.clusters), leaf.clear_method)
            await _fill_zeroes(self.desc, 0, 2 * slot_size(self.block_size))
            await _flush(self.desc)


def slot_size(block_size: int) -> int:
    return max(layout.MD_PAGE_SIZE, block_size)


def can_hold_store(bdev: Bdev) -> bool:
    """Whether ``bdev`` is large enough for the super slots and a metadata area."""
    return bdev.size >= 4 * slot_size(bdev.block_size)


def head_length(bdev: Bdev) -> int:
    """How much of the bdev's start :func:`decode_slots` needs."""
    return 2 * slot_size(bdev.block_size)


def decode_slots(head: bytes, block_size: int) -> list[SuperSlot]:
    """The valid super slots in the first :func:`head_length` bytes of a bdev."""
    size = slot_size(block_size)
    slots = [layout.decode_super(head[i * size:(i + 1) * size], block_size) for i in (0, 1)]
    return [s for s in slots if s is not None]


async def read_slots(desc: Descriptor) -> list[SuperSlot]:
    """The valid super slots on ``desc``'s bdev (none: not an lvstore)."""
    bdev = desc.bdev
    if not can_hold_store(bdev):
        return []
    return decode_slots(await desc.read_async(0, head_length(bdev)), bdev.block_size)


async def read_record(desc: Descriptor, slot: SuperSlot) -> dict[str, Any]:
    bs = desc.bdev.block_size
    geo = slot.geometry
    if slot.meta_offset not in geo.half_offset or slot.meta_len > geo.half_size:
        raise OperationError(errno.EILSEQ, "super slot points outside the metadata area")
    length = -(-slot.meta_len // bs) * bs
    blob = (await desc.read_async(slot.meta_offset, length))[:slot.meta_len]
    if zlib.crc32(blob) != slot.meta_crc:
        raise OperationError(errno.EILSEQ, "metadata checksum mismatch")
    return layout.decode_record(blob)


async def _flush(desc: Descriptor) -> None:
    if desc.bdev.supports("flush"):
        await desc.flush_async()


async def _fill_zeroes(desc: Descriptor, offset: int, length: int) -> None:
    if length <= 0:
        return
    if desc.bdev.supports("write_zeroes"):
        await desc.write_zeroes_async(offset, length)
        return
    chunk = bytes(min(length, _ZERO_CHUNK))
    end = offset + length
    while offset < end:
        n = min(len(chunk), end - offset)
        await desc.write_async(offset, memoryview(chunk)[:n])
        offset += n
