"""The bdev layer: registration, names and aliases, descriptors, claims, examine, I/O, stats.

A *module* (malloc, null, aio, passthru, ...) creates :class:`Bdev` subclasses and hands
them to :meth:`BdevLayer.register`. A *consumer* (an export, a vbdev, a test) opens a
:class:`Descriptor` and submits I/O through it. The descriptor is the API boundary: it
checks every request once (range, alignment to the block size, I/O type supported, write
permission), counts statistics, and calls the module, which can trust its input.

I/O is callback-based, because that is what the hot paths need: a request is
``desc.read(offset, length, cb)`` with byte offsets, and the module calls ``cb(status,
data)`` exactly once, ``status`` being 0 or a negative errno. In-memory modules complete
inside the call (no task, no future: ``bench/bdev_io.py`` measured a coroutine per request
at several times the cost). Coroutine helpers (``read_async`` ...) wrap the same path for
control-plane code and tests.

The contract between the layer and a module (what a :class:`Bdev` subclass declares, and
what the :class:`Descriptor` does so that modules need not):

- **FUA.** ``write``, ``unmap`` and ``write_zeroes`` take ``fua``: the data is durable when
  the callback runs. A module with ``fua_native = True`` gets the flag in ``submit_write``;
  for every other module (and for unmap and write-zeroes always) the layer submits the
  operation and then a flush of its range, when the bdev has ``flush`` (without it there is
  no volatile cache, and a completed write is durable already).
- **max_io_bytes.** A module that takes at most so many bytes per request says so (0: no
  limit). The layer splits longer reads and writes into pieces submitted together and
  joins them: one completion, the first error wins, a read's data joined in order (copied,
  since each piece's data is valid only in its callback). Unmap and write-zeroes go piece
  by piece. The request counts once in the statistics.
- **write_zeroes** without native support is emulated with writes of a zero buffer (1 MiB
  pieces, or ``max_io_bytes``), one at a time, in a loop that goes on inline while pieces
  complete inline and is resumed by a late completion: the stack stays flat at any length.
- **-ENOMEM** from a module means "out of resources, nothing done, try again". The layer
  never hands it to the consumer at once: it counts it (``io_error.nomem`` in
  ``bdev_get_iostat``), queues the request on the bdev and submits the queue again after
  ``NOMEM_RETRY_DELAY`` (1 ms), as SPDK's layer does on its nomem poller. A request still
  refused ``NOMEM_GIVE_UP_NS`` (10 s) after its first submission completes with -ENOMEM: a
  module out of resources that long is stuck, and the consumer must learn it.
- **Read buffers.** ``read_buffer`` (:class:`ReadBuffer`) says how long a read's data is
  valid: ``CALLBACK`` (the default: during the callback only; copy it to keep it) or
  ``HELD`` (a buffer that stays valid while the consumer holds it, so an export can queue
  it for sending without a copy).
- **Block status.** ``get_block_status(offset, length, cb)`` answers the allocation of a
  range as ``[(length, flags)]`` (NBD's ``base:allocation`` flags); modules that know holes
  override it and set ``reports_holes``. Consumers ask :meth:`Descriptor.block_status`,
  which answers "all data, allocated" for the others without a call.

Example::

    desc = layer.open("Malloc0", write=True, event_cb=on_event)
    desc.write(0, b"\\xab" * 4096, lambda status, _: print("written", status))
    data = await desc.read_async(0, 4096)
    desc.close()

Unregistering a bdev sends ``BdevEvent.REMOVE`` to every open descriptor; the bdev is
destroyed, and the delete completes, once the last descriptor closed. Vbdevs react to
REMOVE by unregistering themselves, so a stack comes down from the top.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any, ClassVar, TypeVar

from pybdev.bdev.dif import FLAGS_APPTAG_CHECK, FLAGS_GUARD_CHECK, FLAGS_REFTAG_CHECK
from pybdev.bdev.histogram import Histogram
from pybdev.bdev.qd_sampling import QdSampler
from pybdev.bdev.qos import Qos
from pybdev.errors import OperationError
from pybdev.rpc.registry import RpcTable

log = logging.getLogger("pybdev.bdev")

Callback = Callable[[int, Any], None]
EventCallback = Callable[["BdevEvent", "Bdev"], None]
# Told of "bdev_register", "bdev_unregister" and "bdev_resize" with the bdev's name, as
# SPDK's lib/bdev/bdev.c calls spdk_notify_send (the notify ring subscribes here).
Observer = Callable[[str, str], object]

# Every key of bdev_get_bdevs' supported_io_types, in SPDK's order (lib/bdev/bdev_rpc.c).
IO_TYPE_NAMES = (
    "read", "write", "unmap", "flush", "reset", "nvme_admin", "nvme_io", "nvme_io_md",
    "write_zeroes", "zcopy", "get_zone_info", "zone_management", "zone_append", "compare",
    "compare_and_write", "abort", "seek_hole", "seek_data", "copy", "nvme_iov_md", "nvme_nssr",
    "write_uncorrectable",
)
ZERO_CHUNK = 1 << 20


class BdevEvent(enum.Enum):
    REMOVE = "remove"
    RESIZE = "resize"


class ReadBuffer(enum.Enum):
    """What a module promises about the data it completes a read with."""

    #: Valid during the callback only (the module may reuse the buffer): copy it to keep it.
    CALLBACK = "callback"
    #: A buffer object that stays valid for as long as the consumer holds it, so it can be
    #: queued for sending without a copy. Its bytes may change if the range is written
    #: later (malloc hands out views of its memory), which only a request overlapping one
    #: still in flight can observe.
    HELD = "held"


class ClaimType(enum.Enum):
    """SPDK's claim types (``enum spdk_bdev_claim_type``, names of ``spdk_bdev_claim_get_name``).

    ``EXCLUSIVE_WRITE`` is SPDK's v1 claim (one module, it alone writes); the others are v2
    claims held through a descriptor, several at once where the type allows.
    """

    NONE = "not_claimed"
    EXCLUSIVE_WRITE = "exclusive_write"
    READ_MANY_WRITE_ONE = "read_many_write_one"
    READ_MANY_WRITE_NONE = "read_many_write_none"
    READ_MANY_WRITE_SHARED = "read_many_write_shared"


# Types whose claim makes a read-only descriptor writable (SPDK's
# claim_type_promotes_to_write, plus the v1 claim, which always does).
_PROMOTES_TO_WRITE = (ClaimType.EXCLUSIVE_WRITE, ClaimType.READ_MANY_WRITE_ONE,
                      ClaimType.READ_MANY_WRITE_SHARED)


class Claim:
    """One module's claim on a bdev, held through ``desc`` (released when it closes)."""

    __slots__ = ("desc", "module")

    def __init__(self, module: str, desc: Descriptor) -> None:
        self.module = module
        self.desc = desc


class BdevState(enum.Enum):
    REGISTERED = "registered"
    UNREGISTERING = "unregistering"
    GONE = "gone"


class IoStat:
    """Per-bdev counters in SPDK's ``bdev_get_iostat`` vocabulary; latency in ns ticks."""

    KINDS: ClassVar[tuple[str, ...]] = ("read", "write", "unmap", "copy")
    __slots__ = ("bytes", "errors", "lat_max", "lat_min", "lat_sum", "ops")

    def __init__(self) -> None:
        self.reset("all")

    def reset(self, mode: str) -> None:
        if mode in ("all", "maxmin"):
            self.lat_max = dict.fromkeys(self.KINDS, 0)
            self.lat_min = dict.fromkeys(self.KINDS, 0)
        if mode in ("all", "error"):
            self.errors: dict[str, int] = {}
        if mode == "all":
            self.bytes = dict.fromkeys(self.KINDS, 0)
            self.ops = dict.fromkeys(self.KINDS, 0)
            self.lat_sum = dict.fromkeys(self.KINDS, 0)

    def record(self, kind: str, nbytes: int, ticks: int) -> None:
        self.bytes[kind] += nbytes
        self.ops[kind] += 1
        self.lat_sum[kind] += ticks
        if ticks > self.lat_max[kind]:
            self.lat_max[kind] = ticks
        low = self.lat_min[kind]
        if low == 0 or ticks < low:
            self.lat_min[kind] = ticks

    def to_json(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name}
        for kind, verb in (("read", "read"), ("write", "written"), ("unmap", "unmapped"),
                           ("copy", "copied")):
            out[f"bytes_{verb}"] = self.bytes[kind]
            out[f"num_{kind}_ops"] = self.ops[kind]
        for kind in self.KINDS:
            out[f"{kind}_latency_ticks"] = self.lat_sum[kind]
            out[f"max_{kind}_latency_ticks"] = self.lat_max[kind]
            out[f"min_{kind}_latency_ticks"] = self.lat_min[kind]
        out["io_error"] = {k: v for k, v in self.errors.items() if v}
        return out


class Bdev:
    """A block device. Modules subclass it and implement the ``submit_*`` they support.

    Offsets and lengths given to ``submit_*`` are bytes, already checked by the
    descriptor: aligned to ``block_size``, inside the device, of a supported type.
    """

    product_name: ClassVar[str] = "bdev"
    module_name: ClassVar[str] = ""
    #: ``submit_write`` honours its ``fua`` argument. When False the layer emulates a FUA
    #: write as a write and then a flush of its range (when the bdev has ``flush``).
    fua_native: bool = False
    #: How long the data a read completes with stays valid: see :class:`ReadBuffer`. A
    #: class setting, except for vbdevs, which take their base's.
    read_buffer: ReadBuffer = ReadBuffer.CALLBACK
    #: ``get_block_status`` knows holes; False means every range is allocated data, and
    #: the layer answers that without calling it.
    reports_holes: ClassVar[bool] = False
    #: ``submit_read``/``submit_write`` may be called from any thread (holding the GIL),
    #: complete inside the call, never with -ENOMEM, and keep nothing of a write's data
    #: after the callback. An export may then serve them where its requests arrive (ublk's
    #: queue threads, docs/decisions/ublk-queue-serving.md) instead of on the event loop.
    thread_safe_submit: ClassVar[bool] = False
    #: ``submit_read`` and ``submit_write`` call their callback before they return, always
    #: (RAM-backed modules): a stacked bdev need not track such requests in flight.
    completes_inline: bool = False
    # Metadata and protection information, SPDK's md_len, md_interleave, dif_type,
    # dif_is_head_of_md, dif_pi_format and dif_check_flags (values of pybdev.bdev.dif). With
    # interleaved metadata ``block_size`` counts data and metadata, as SPDK's blocklen
    # does; separate metadata travels beside the data (Descriptor.read_md/write_md).
    # Class defaults: a bdev without metadata costs nothing per instance or per I/O.
    md_size: int = 0
    md_interleave: bool = False
    dif_type: int = 0
    dif_is_head_of_md: bool = False
    dif_pi_format: int = 0
    dif_check_flags: int = 0
    # -ENOMEM'd requests waiting for their retry timer (see _nomem_park); usually None.
    _nomem_queue: list[tuple[str, str, int, int, Any, bool, Callback, int]] | None = None
    # QoS, a latency histogram or queue-depth sampling is on: submissions take the
    # descriptor's _submit_hooked path. The one check the fast path pays for all three.
    _hooked: bool = False
    qos: Qos | None = None  # bdev_set_qos_limit
    histogram: Histogram | None = None  # bdev_enable_histogram
    qd_sampler: QdSampler | None = None  # bdev_set_qd_sampling_period
    inflight = 0  # requests in the module, counted while qd_sampler is set

    def __init__(
        self,
        name: str,
        block_size: int,
        num_blocks: int,
        uuid: str | None = None,
        *,
        io_types: frozenset[str] = frozenset(("read", "write", "reset")),
        physical_block_size: int = 0,
        write_cache: bool = False,
        optimal_io_boundary: int = 0,
        numa_id: int | None = None,
        max_io_bytes: int = 0,
    ) -> None:
        if not name:
            raise OperationError(errno.EINVAL, "bdev name must not be empty")
        if block_size <= 0:
            raise OperationError(errno.EINVAL, "block size must not be zero")
        self.name = name
        self.block_size = block_size
        self.num_blocks = num_blocks
        parsed = uuidlib.UUID(uuid) if uuid else uuidlib.UUID(int=0)
        self.uuid = str(parsed if parsed.int else uuidlib.uuid4())
        self.aliases: list[str] = []
        self.io_types = io_types
        self.physical_block_size = physical_block_size or block_size
        self.write_cache = write_cache
        self.optimal_io_boundary = optimal_io_boundary
        self.numa_id = numa_id
        # Largest single request the module takes; 0 means no limit. The layer splits
        # longer reads, writes, unmaps and write-zeroes into pieces of at most this size.
        self.max_io_bytes = max_io_bytes
        self.claim_type = ClaimType.NONE
        self.claims: list[Claim] = []
        self.claim_key = 0  # read_many_write_shared: the key every claimer must present
        self.state = BdevState.REGISTERED
        self.descriptors: set[Descriptor] = set()
        self.stat = IoStat()
        self.layer: BdevLayer | None = None
        self._closed: asyncio.Future[None] | None = None

    # -- properties used by exports ---------------------------------------------------
    @property
    def claim_module(self) -> str | None:
        """The module holding the (first) claim, None when unclaimed."""
        return self.claims[0].module if self.claims else None

    @property
    def size(self) -> int:
        return self.block_size * self.num_blocks

    @property
    def data_block_size(self) -> int:
        """Data bytes per block (``spdk_bdev_get_data_block_size``)."""
        return self.block_size - self.md_size if self.md_interleave else self.block_size

    def supports(self, io_type: str) -> bool:
        # write_zeroes is emulated with writes where the module lacks it, as SPDK's bdev layer does.
        if io_type == "write_zeroes":
            return "write_zeroes" in self.io_types or "write" in self.io_types
        return io_type in self.io_types

    # -- what modules implement -------------------------------------------------------
    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        cb(-errno.ENOTSUP, None)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        cb(-errno.ENOTSUP, None)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        cb(-errno.ENOTSUP, None)

    def zcopy_buffer(self, offset: int, length: int) -> memoryview | None:
        """Writable memory where a write of the range can be received in place, or None.

        SPDK's zcopy start without populate: a RAM-backed module hands out its own storage,
        so an export receives a payload straight into it and then commits it with
        ``submit_zcopy_commit``. Readers may see the bytes before the commit, as with any
        write in flight. The default (and any module that must see the data go by, to
        check or transform it): None, and the write takes the usual path.
        """
        return None

    def submit_zcopy_commit(self, offset: int, length: int, cb: Callback, fua: bool) -> None:
        """The range of a ``zcopy_buffer`` holds the write: make it the bdev's data."""
        cb(-errno.ENOTSUP, None)

    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        """Read with separate metadata: ``cb(status, (data, md))``."""
        cb(-errno.ENOTSUP, None)

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        """Write data and its separate metadata (``md``: ``md_size`` bytes a block)."""
        cb(-errno.ENOTSUP, None)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        _emulate_write_zeroes(self, offset, length, cb)

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        cb(0, None)

    def submit_reset(self, cb: Callback) -> None:
        cb(0, None)

    def get_block_status(self, offset: int, length: int, cb: Callback) -> None:
        """Allocation of ``[offset, offset + length)``: ``cb(status, extents)``.

        ``extents`` is a list of ``(length, flags)`` from ``offset`` on, flags as NBD's
        ``base:allocation`` (1 = hole, 2 = reads as zeros); it may cover less than asked.
        Called only when ``reports_holes`` is set (consumers go through
        :meth:`Descriptor.block_status`); otherwise everything is allocated data.
        """
        cb(0, [(length, 0)])

    def driver_specific(self) -> dict[str, Any]:
        return {}

    def write_config(self) -> list[dict[str, Any]]:
        """Per-bdev config entries (SPDK's ``write_config_json``), after module configs."""
        return []

    async def destruct(self) -> None:
        """Release the module's resources; runs once every descriptor closed."""

    def on_removed(self) -> None:
        """Called by the layer when the bdev started unregistering (fail queued I/O)."""

    # -- output -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """The ``bdev_get_bdevs`` object, fields in SPDK's emission order."""
        out: dict[str, Any] = {
            "name": self.name,
            "aliases": list(self.aliases),
            "product_name": self.product_name,
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "preferred_write_alignment": 0,
            "preferred_write_granularity": 0,
            "optimal_write_size": 0,
            "preferred_unmap_alignment": 0,
            "preferred_unmap_granularity": 0,
            "uuid": self.uuid,
        }
        out.update(self.extra_geometry())
        if self.numa_id is not None:
            out["numa_id"] = self.numa_id
        if self.md_size:
            out.update(self.md_info())
        out["assigned_rate_limits"] = (self.qos.rate_limits() if self.qos is not None else
                                       dict.fromkeys(QOS_LIMIT_TYPES, 0))
        claimed = self.claim_type is not ClaimType.NONE
        out["claimed"] = claimed
        if claimed:
            out["claim_type"] = self.claim_type.value
        out["zoned"] = False
        out["supported_io_types"] = {t: self.supports(t) for t in IO_TYPE_NAMES}
        out["driver_specific"] = self.driver_specific()
        return out

    def extra_geometry(self) -> dict[str, Any]:
        """Fields some modules override (null's preferred_* values)."""
        return {}

    def update_hooks(self) -> None:
        """Call after setting ``qos``, ``histogram`` or ``qd_sampler``."""
        self._hooked = (self.qos is not None or self.histogram is not None
                        or self.qd_sampler is not None)

    def md_info(self) -> dict[str, Any]:
        """bdev_get_bdevs' metadata fields, as SPDK's lib/bdev/bdev_rpc.c writes them."""
        out: dict[str, Any] = {"md_size": self.md_size, "md_interleave": self.md_interleave,
                               "dif_type": self.dif_type}
        if self.dif_type:
            flags = self.dif_check_flags
            out["dif_is_head_of_md"] = self.dif_is_head_of_md
            out["enabled_dif_check_types"] = {
                "reftag": bool(flags & FLAGS_REFTAG_CHECK),
                "apptag": bool(flags & FLAGS_APPTAG_CHECK),
                "guard": bool(flags & FLAGS_GUARD_CHECK)}
            out["dif_pi_format"] = self.dif_pi_format
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.num_blocks}x{self.block_size}>"




QOS_LIMIT_TYPES = ("rw_ios_per_sec", "rw_mbytes_per_sec", "r_mbytes_per_sec",
                   "w_mbytes_per_sec")
_REGISTERED = BdevState.REGISTERED
_now = time.monotonic_ns
_ENOMEM = -errno.ENOMEM
_NO_LIMIT = 1 << 63
#: A request a module answered with -ENOMEM is submitted again after this delay ...
NOMEM_RETRY_DELAY = 0.001
#: ... for as long as it was first submitted less than this long ago; then the consumer
#: gets the -ENOMEM (a module that stays out of resources that long is stuck, not busy).
NOMEM_GIVE_UP_NS = 10_000_000_000
# Statistics bucket of each operation (SPDK counts write-zeroes as writes).
_STAT_KIND = {"read": "read", "write": "write", "unmap": "unmap", "write_zeroes": "write",
              "flush": "", "read_md": "read", "write_md": "write"}
# What QoS and histograms see a request as: data with separate metadata is a read or write.
_IO_TYPE = {"read_md": "read", "write_md": "write"}


def _call_module(bdev: Bdev, op: str, offset: int, length: int, data: Any, fua: bool,
                 cb: Callback) -> None:
    """Hand one checked, unsplit request to the module."""
    if op == "read":
        bdev.submit_read(offset, length, cb)
    elif op == "write":
        bdev.submit_write(offset, data, cb, fua)
    elif op == "unmap":
        bdev.submit_unmap(offset, length, cb)
    elif op == "write_zeroes":
        bdev.submit_write_zeroes(offset, length, cb)
    elif op == "read_md":
        bdev.submit_read_md(offset, length, cb)
    elif op == "write_md":
        bdev.submit_write_md(offset, data[0], data[1], cb, fua)
    else:
        bdev.submit_flush(offset, length, cb)


def _nomem_park(bdev: Bdev, op: str, kind: str, offset: int, length: int, data: Any,
                fua: bool, cb: Callback, start: int) -> None:
    """Queue a request the module answered -ENOMEM; a timer submits the queue again.

    SPDK's layer retries when other I/O of the channel completes, or on a poller when none
    is outstanding; one short timer per bdev does both jobs here without counting the
    requests in flight on the hot path.
    """
    queue = bdev._nomem_queue
    if queue is None:
        queue = bdev._nomem_queue = []
        asyncio.get_running_loop().call_later(NOMEM_RETRY_DELAY, _nomem_retry, bdev)
    queue.append((op, kind, offset, length, data, fua, cb, start))


def _nomem_retry(bdev: Bdev) -> None:
    queue, bdev._nomem_queue = bdev._nomem_queue, None
    for op, kind, offset, length, data, fua, cb, start in queue or ():
        done = _completion(bdev, op, kind, offset, length, data, fua, cb, start)
        if bdev.state is _REGISTERED:
            _call_module(bdev, op, offset, length, data, fua, done)
        else:
            done(-errno.ENODEV, None)


def _completion(bdev: Bdev, op: str, kind: str, offset: int, length: int, data: Any,
                fua: bool, cb: Callback, start: int = 0) -> Callback:
    """Wrap ``cb``: count the request in the bdev's stats, retry it on -ENOMEM.

    This is the completion of every request the module takes whole (the hot path), so
    IoStat.record is inlined, and what the completion needs is bound as default
    arguments: one tuple per request instead of a closure cell per variable (measured
    cheaper, and local reads in the call). ``kind`` "" counts nothing (flush, pieces of a
    request); ``start`` is the first submission's, for a retried request.
    """

    def done(status: int, rdata: Any, stat: IoStat = bdev.stat, kind: str = kind,
             length: int = length, cb: Callback = cb, start: int = start or _now(),
             bdev: Bdev = bdev, op: str = op, offset: int = offset, data: Any = data,
             fua: bool = fua) -> None:
        if status:
            errors = stat.errors
            if status == _ENOMEM:
                errors["nomem"] = errors.get("nomem", 0) + 1
                if _now() - start < NOMEM_GIVE_UP_NS:
                    _nomem_park(bdev, op, kind, offset, length, data, fua, cb, start)
                    return
            elif kind:  # a piece's failure is counted by its parent; a flush's not at all
                errors["failed"] = errors.get("failed", 0) + 1
        elif kind:
            ticks = _now() - start
            stat.bytes[kind] += length
            stat.ops[kind] += 1
            stat.lat_sum[kind] += ticks
            if ticks > stat.lat_max[kind]:
                stat.lat_max[kind] = ticks
            low = stat.lat_min[kind]
            if low == 0 or ticks < low:
                stat.lat_min[kind] = ticks
        cb(status, rdata)

    return done


def _counted(stat: IoStat, kind: str, length: int, cb: Callback) -> Callback:
    """Count a split or emulated request once, as a whole (its pieces count nothing)."""
    start = _now()

    def done(status: int, data: Any) -> None:
        if status:
            # -ENOMEM was counted by the piece that gave up on it.
            if status != _ENOMEM:
                stat.errors["failed"] = stat.errors.get("failed", 0) + 1
        else:
            stat.record(kind, length, _now() - start)
        cb(status, data)

    return done


def _submit_piece(bdev: Bdev, op: str, offset: int, length: int, data: Any, fua: bool,
                  cb: Callback) -> None:
    """One request of at most ``max_io_bytes``, retried on -ENOMEM, counted by its parent."""
    if op == "write_zeroes" and "write_zeroes" not in bdev.io_types:
        _emulate_write_zeroes(bdev, offset, length, cb)
        return
    _call_module(bdev, op, offset, length, data, fua,
                 _completion(bdev, op, "", offset, length, data, fua, cb))


def _piece_size(bdev: Bdev) -> int:
    limit = bdev.max_io_bytes
    if not limit:
        return _NO_LIMIT
    bs = bdev.block_size
    return max(limit - limit % bs, bs)


def _split(bdev: Bdev, op: str, offset: int, length: int, data: Any, fua: bool,
           cb: Callback) -> None:
    """Submit a request in pieces the module takes; complete ``cb`` once, when all did.

    Pieces of a read or write (at most the request, bounded by the protocols) go out
    together; those of unmap and write-zeroes one at a time. The first error wins;
    a read completes with the pieces' data joined in order (copied: each piece's data is
    valid during its own callback only).
    """
    step = _piece_size(bdev)
    if length <= step:
        _submit_piece(bdev, op, offset, length, data, fua, cb)
        return
    if op not in ("read", "write"):
        _in_sequence(bdev, op, offset, length, step, None, cb)
        return
    whole = memoryview(bytearray(length)) if op == "read" else None
    payload = memoryview(data) if op == "write" else None
    state = [-(-length // step), 0]  # pieces left, first error

    def piece_done(at: int, status: int, piece: Any) -> None:
        if status:
            if not state[1]:
                state[1] = status
        elif whole is not None:
            whole[at:at + len(piece)] = piece
        state[0] -= 1
        if state[0] == 0:
            cb(state[1], whole if not state[1] else None)

    for at in range(0, length, step):
        n = min(step, length - at)
        _submit_piece(bdev, op, offset + at, n,
                      payload[at:at + n] if payload is not None else None, fua,
                      functools.partial(piece_done, at))


def _then_flush(bdev: Bdev, offset: int, length: int, cb: Callback) -> Callback:
    """FUA for a module without it: the write, then a flush of its range."""

    def written(status: int, _data: Any) -> None:
        if status:
            cb(status, None)
        else:
            _submit_piece(bdev, "flush", offset, length, None, False, cb)

    return written


def _emulate_write_zeroes(bdev: Bdev, offset: int, length: int, cb: Callback) -> None:
    """Write zeros in pieces of at most 1 MiB (and ``max_io_bytes``), one at a time."""
    chunk = min(length, ZERO_CHUNK, _piece_size(bdev))
    _in_sequence(bdev, "write", offset, length, chunk, memoryview(bytes(chunk)), cb)


def _in_sequence(bdev: Bdev, op: str, offset: int, length: int, chunk: int,
                 zeros: memoryview | None, cb: Callback) -> None:
    """Submit ``op`` over the range in pieces of ``chunk`` bytes, one after the other.

    For requests whose length has no bound (write-zeroes, unmap): one piece in flight,
    whatever the length. A loop, not a chain of callbacks: it goes on by itself while
    the pieces complete inside their submit call (a synchronous module), and a piece that
    completes later resumes it from its completion; so the stack stays flat. ``zeros``
    is the payload of emulated write-zeroes (``op`` "write").
    """
    end = offset + length
    pos = offset
    inline = False  # the piece just submitted completed inside the call
    waiting = False  # the loop returned; the piece's completion resumes it
    failed = False

    def piece_done(status: int, _data: Any) -> None:
        nonlocal inline, waiting, failed
        if status:
            failed = True
            waiting = False
            cb(status, None)
        elif waiting:
            waiting = False
            run()
        else:
            inline = True

    def run() -> None:
        nonlocal pos, inline, waiting
        while pos < end:
            n = min(chunk, end - pos)
            at = pos
            pos += n
            inline = False
            _submit_piece(bdev, op, at, n, zeros[:n] if zeros is not None else None, False,
                          piece_done)
            if failed:
                return
            if not inline:
                waiting = True
                return
        cb(0, None)

    run()


def _timed(histogram: Histogram, op: str, cb: Callback) -> Callback:
    """Tally the request's latency in ``histogram`` when it completes."""
    if histogram.io_type is not None and histogram.io_type != op:
        return cb
    start = _now()

    def done(status: int, data: Any) -> None:
        histogram.tally(_now() - start)
        cb(status, data)

    return done


def _left_module(bdev: Bdev, cb: Callback, status: int, data: Any) -> None:
    bdev.inflight -= 1
    cb(status, data)


class Descriptor:
    """An open bdev: where consumers submit I/O. Requests are validated here, once.

    Past validation the descriptor also owns what a module need not implement: FUA (write
    then flush, unless the module has ``fua_native``), splitting at ``max_io_bytes``,
    write-zeroes emulation, and retrying -ENOMEM.
    """

    def __init__(self, bdev: Bdev, write: bool, event_cb: EventCallback | None,
                 layer: BdevLayer) -> None:
        self.bdev = bdev
        self.write_allowed = write
        self.event_cb = event_cb
        self.layer = layer
        self.closed = False
        # Requests above this length leave the fast path to be split.
        self._max_io = _piece_size(bdev)
        self.claim: Claim | None = None  # the claim this descriptor holds, if any

    # -- validation -------------------------------------------------------------------
    def _check(self, offset: int, length: int, io_type: str, writes: bool) -> int:
        bdev = self.bdev
        if self.closed or bdev.state is not BdevState.REGISTERED:
            return -errno.ENODEV
        if writes and not self.write_allowed:
            return -errno.EBADF
        bs = bdev.block_size
        if offset < 0 or length <= 0 or offset % bs or length % bs or offset + length > bdev.size:
            return -errno.EINVAL
        if not bdev.supports(io_type):
            return -errno.ENOTSUP
        return 0

    def _submit(self, op: str, offset: int, length: int, data: Any, fua: bool,
                cb: Callback) -> None:
        """Everything off the fast path: check, then FUA emulation, split, emulation."""
        rc = self._check(offset, length, op, op != "read")
        if rc:
            cb(rc, None)
            return
        if self.bdev._hooked:
            self._submit_hooked(op, offset, length, data, fua, cb)
            return
        self._dispatch(op, offset, length, data, fua, cb)

    def _submit_hooked(self, op: str, offset: int, length: int, data: Any, fua: bool,
                cb: Callback) -> None:
        """A checked request on a bdev with QoS, a histogram or queue-depth sampling.

        In SPDK's order: the latency (histogram) runs from here, the QoS queue comes next,
        and the request counts in the queue depth once it reaches the module.
        """
        bdev = self.bdev
        io_type = _IO_TYPE.get(op, op)
        if bdev.histogram is not None:
            cb = _timed(bdev.histogram, io_type, cb)
        qos = bdev.qos
        if (qos is not None and (io_type == "read" or io_type == "write")
                and not qos.admit(io_type == "read", length)):
            qos.enqueue(io_type == "read", length,
                        functools.partial(self._released, op, offset, length, data, fua, cb),
                        lambda status: cb(status, None))
            return
        self._released(op, offset, length, data, fua, cb)

    def _released(self, op: str, offset: int, length: int, data: Any, fua: bool,
                  cb: Callback) -> None:
        bdev = self.bdev
        if self.closed or bdev.state is not _REGISTERED:
            cb(-errno.ENODEV, None)  # it waited in the QoS queue while the bdev went away
            return
        if bdev.qd_sampler is not None:
            bdev.inflight += 1
            cb = functools.partial(_left_module, bdev, cb)
        self._dispatch(op, offset, length, data, fua, cb)

    def _dispatch(self, op: str, offset: int, length: int, data: Any, fua: bool,
                  cb: Callback) -> None:
        bdev = self.bdev
        kind = _STAT_KIND[op]
        if op == "read_md" or op == "write_md":
            # Whole, as the module takes it: data and metadata are not split or emulated.
            _call_module(bdev, op, offset, length, data, fua,
                         _completion(bdev, op, kind, offset, length, data, fua, cb))
            return
        native = op == "write" and bdev.fua_native
        emulate_fua = fua and not native and "flush" in bdev.io_types
        fua = fua and native
        if (not emulate_fua and length <= self._max_io
                and (op != "write_zeroes" or "write_zeroes" in bdev.io_types)):
            _call_module(bdev, op, offset, length, data, fua,
                         _completion(bdev, op, kind, offset, length, data, fua, cb))
            return
        done = _counted(bdev.stat, kind, length, cb)
        if emulate_fua:
            done = _then_flush(bdev, offset, length, done)
        _split(bdev, op, offset, length, data, fua, done)

    # -- I/O --------------------------------------------------------------------------
    # read and write are the hot path (bench/bdev_io.py): the common case is tested in one
    # expression with no calls; _submit handles refusals and everything uncommon.
    def read(self, offset: int, length: int, cb: Callback) -> None:
        bdev = self.bdev
        bs = bdev.block_size
        if (self.closed or bdev.state is not _REGISTERED or offset < 0 or length <= 0
                or offset % bs or length % bs or offset + length > bs * bdev.num_blocks
                or "read" not in bdev.io_types or length > self._max_io or bdev._hooked):
            self._submit("read", offset, length, None, False, cb)
            return
        bdev.submit_read(offset, length,
                         _completion(bdev, "read", "read", offset, length, None, False, cb))

    def write(self, offset: int, data: Any, cb: Callback, fua: bool = False) -> None:
        """Write ``data``; with ``fua`` it is durable when ``cb`` runs."""
        length = len(data)
        bdev = self.bdev
        bs = bdev.block_size
        if (self.closed or not self.write_allowed or bdev.state is not _REGISTERED
                or offset < 0 or length <= 0 or offset % bs or length % bs
                or offset + length > bs * bdev.num_blocks or "write" not in bdev.io_types
                or length > self._max_io or (fua and not bdev.fua_native) or bdev._hooked):
            self._submit("write", offset, length, data, bool(fua), cb)
            return
        bdev.submit_write(offset, data,
                          _completion(bdev, "write", "write", offset, length, data, fua, cb),
                          fua)

    # -- zero-copy writes (SPDK's spdk_bdev_zcopy_start/end) --------------------------------
    def zcopy_buffer(self, offset: int, length: int) -> memoryview | None:
        """Memory to receive a write of the range into (then ``zcopy_commit``), or None.

        None unless the request would take the fast path whole: a valid range on a module
        with zero-copy buffers, no QoS or histogram (they must see the request go by),
        within ``max_io_bytes``. A caller that gets None uses ``write``.
        """
        bdev = self.bdev
        bs = bdev.block_size
        if (self.closed or not self.write_allowed or bdev.state is not _REGISTERED
                or offset < 0 or length <= 0 or offset % bs or length % bs
                or offset + length > bs * bdev.num_blocks or length > self._max_io
                or bdev._hooked or "zcopy" not in bdev.io_types):
            return None
        return bdev.zcopy_buffer(offset, length)

    def zcopy_commit(self, offset: int, length: int, cb: Callback, fua: bool = False) -> None:
        """The ``zcopy_buffer`` of the range was filled: complete the write."""
        rc = self._check(offset, length, "write", True)
        if rc:
            cb(rc, None)
            return
        bdev = self.bdev
        bdev.submit_zcopy_commit(offset, length,
                                 _completion(bdev, "write", "write", offset, length, None,
                                             fua, cb), fua)

    # -- separate metadata (SPDK's spdk_bdev_{read,write}_blocks_with_md) ------------------
    # Off the hot path: a bdev with separate metadata (md_size, not md_interleave) takes
    # its metadata here, ``md_size`` bytes per block; plain read/write move the data alone.
    # QoS, histograms and queue-depth sampling count these as reads and writes, as SPDK's.
    def _check_md(self, offset: int, length: int, md: Any, writes: bool) -> int:
        rc = self._check(offset, length, "write" if writes else "read", writes)
        if rc:
            return rc
        bdev = self.bdev
        if not bdev.md_size or bdev.md_interleave:
            return -errno.EINVAL  # SPDK: a metadata buffer needs separate metadata
        if md is not None and len(md) != length // bdev.block_size * bdev.md_size:
            return -errno.EINVAL
        return 0

    def read_md(self, offset: int, length: int, cb: Callback) -> None:
        """Read data and metadata: ``cb(status, (data, md))``, both valid in the callback."""
        rc = self._check_md(offset, length, None, False)
        if rc:
            cb(rc, None)
        elif self.bdev._hooked:
            self._submit_hooked("read_md", offset, length, None, False, cb)
        else:
            self._dispatch("read_md", offset, length, None, False, cb)

    def write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool = False) -> None:
        """Write ``data`` and its metadata ``md`` (``md_size`` bytes per block)."""
        length = len(data)
        rc = self._check_md(offset, length, md, True)
        if rc:
            cb(rc, None)
        elif self.bdev._hooked:
            self._submit_hooked("write_md", offset, length, (data, md), fua, cb)
        else:
            self._dispatch("write_md", offset, length, (data, md), fua, cb)

    def unmap(self, offset: int, length: int, cb: Callback, fua: bool = False) -> None:
        self._submit("unmap", offset, length, None, fua, cb)

    def write_zeroes(self, offset: int, length: int, cb: Callback, fua: bool = False) -> None:
        """Zero the range: the module's write_zeroes, or writes of zeros where it has none."""
        self._submit("write_zeroes", offset, length, None, fua, cb)

    def flush(self, offset: int, length: int, cb: Callback) -> None:
        rc = self._check(offset, length, "flush", False)
        if rc:
            cb(rc, None)
            return
        bdev = self.bdev
        if bdev._hooked:
            if bdev.histogram is not None:
                cb = _timed(bdev.histogram, "flush", cb)
            if bdev.qd_sampler is not None:
                bdev.inflight += 1
                cb = functools.partial(_left_module, bdev, cb)
        bdev.submit_flush(offset, length,
                          _completion(bdev, "flush", "", offset, length, None, False, cb))

    def reset(self, cb: Callback) -> None:
        if self.closed or self.bdev.state is not BdevState.REGISTERED:
            cb(-errno.ENODEV, None)
            return
        self.bdev.submit_reset(cb)

    def block_status(self, offset: int, length: int, cb: Callback) -> None:
        """The bdev's allocation of the range (see :meth:`Bdev.get_block_status`)."""
        bdev = self.bdev
        if self.closed or bdev.state is not BdevState.REGISTERED:
            cb(-errno.ENODEV, None)
        elif offset < 0 or length <= 0 or offset + length > bdev.size:
            cb(-errno.EINVAL, None)
        elif not bdev.reports_holes:
            cb(0, [(length, 0)])
        else:
            bdev.get_block_status(offset, length, cb)

    # -- coroutine helpers for control-plane code and tests -----------------------------
    def _awaitable(self, submit: Callable[[Callback], None]) -> Awaitable[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def done(status: int, data: Any) -> None:
            if fut.done():
                return
            if status:
                fut.set_exception(OperationError(-status))
            else:
                fut.set_result(bytes(data) if data is not None else None)

        submit(done)
        return fut

    def read_async(self, offset: int, length: int) -> Awaitable[bytes]:
        return self._awaitable(lambda cb: self.read(offset, length, cb))

    def write_async(self, offset: int, data: Any, fua: bool = False) -> Awaitable[None]:
        return self._awaitable(lambda cb: self.write(offset, data, cb, fua))

    async def read_md_async(self, offset: int, length: int) -> tuple[bytes, bytes]:
        fut: asyncio.Future[tuple[bytes, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, data: Any) -> None:
            if status:
                fut.set_exception(OperationError(-status))
            else:
                fut.set_result((bytes(data[0]), bytes(data[1])))

        self.read_md(offset, length, done)
        return await fut

    def write_md_async(self, offset: int, data: Any, md: Any,
                       fua: bool = False) -> Awaitable[None]:
        return self._awaitable(lambda cb: self.write_md(offset, data, md, cb, fua))

    def unmap_async(self, offset: int, length: int, fua: bool = False) -> Awaitable[None]:
        return self._awaitable(lambda cb: self.unmap(offset, length, cb, fua))

    def write_zeroes_async(self, offset: int, length: int,
                           fua: bool = False) -> Awaitable[None]:
        return self._awaitable(lambda cb: self.write_zeroes(offset, length, cb, fua))

    def flush_async(self, offset: int = 0, length: int | None = None) -> Awaitable[None]:
        n = self.bdev.size - offset if length is None else length
        return self._awaitable(lambda cb: self.flush(offset, n, cb))

    def reset_async(self) -> Awaitable[None]:
        return self._awaitable(self.reset)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.layer._descriptor_closed(self)


class BdevModule:
    """A bdev module: told of every new bdev (examine), writes its module-level config."""

    name: ClassVar[str]
    #: The module's RPC methods; the app binds each handler to the module instance.
    rpc: ClassVar[RpcTable | None] = None

    def __init__(self, layer: BdevLayer) -> None:
        self.layer = layer

    def examine(self, bdev: Bdev) -> Awaitable[None] | None:
        """A bdev registered; vbdev modules attach to bases they are waiting for.

        Return None when done, or an awaitable when examine must read the bdev (an lvstore
        looking for its metadata): the layer runs it, and ``bdev_wait_for_examine`` answers
        only once every such examine finished.
        """
        return None

    def write_config(self) -> list[Any]:
        """Module-level config entries (a nested list is a batch)."""
        return []

    async def fini(self) -> None:
        """Shutdown: the layer already unregistered every bdev."""


M = TypeVar("M", bound=BdevModule)


class BdevLayer:
    """All bdevs of one target, in registration order, and the modules, in module order."""

    def __init__(self) -> None:
        self.bdevs: dict[str, Bdev] = {}  # primary name -> bdev, registration order
        self._names: dict[str, Bdev] = {}  # names and aliases: one namespace
        self.modules: list[BdevModule] = []
        self.options: dict[str, Any] = {
            "bdev_io_pool_size": 65535, "bdev_io_cache_size": 256, "bdev_auto_examine": True,
            "iobuf_small_cache_size": 128, "iobuf_large_cache_size": 16,
        }
        self.examine_allowlist: list[str] = []
        self.observers: list[Observer] = []
        self._examining: set[asyncio.Future[None]] = set()
        self._examine_done = asyncio.Event()
        self._examine_done.set()

    # -- modules ----------------------------------------------------------------------
    def add_module(self, module: BdevModule) -> None:
        """Add in SPDK's order (``spdk_bdev_module_list_add``, lib/bdev/bdev.c).

        A module with an examine callback goes to the head of the list, so it is ready
        before the modules that register bases; the list is also the order of the module
        configs in ``save_config``, so vbdev creates come first and replay deferred.
        """
        if type(module).examine is not BdevModule.examine:
            self.modules.insert(0, module)
        else:
            self.modules.append(module)

    def module(self, cls: type[M]) -> M:
        for m in self.modules:
            if isinstance(m, cls):
                return m
        raise LookupError(cls.__name__)

    # -- names ------------------------------------------------------------------------
    def get(self, name: str) -> Bdev | None:
        """A bdev by name or alias (registered or unregistering)."""
        return self._names.get(name)

    def __iter__(self) -> Iterator[Bdev]:
        return iter(list(self.bdevs.values()))

    def register(self, bdev: Bdev) -> None:
        """Add ``bdev`` under its name and UUID alias, then run examine. -EEXIST on clash."""
        # Aliases a module set before registering (an lvol's "lvs/lvol") come after the UUID.
        extra = [a for a in bdev.aliases if a not in (bdev.name, bdev.uuid)]
        names = [bdev.name] + ([bdev.uuid] if bdev.uuid != bdev.name else []) + extra
        for n in names:
            if n in self._names:
                log.error("Bdev name %s already exists", n)
                raise OperationError(errno.EEXIST, f"bdev name or alias {n} already exists")
        bdev.aliases = names[1:]
        bdev.layer = self
        bdev.state = BdevState.REGISTERED
        for n in names:
            self._names[n] = bdev
        self.bdevs[bdev.name] = bdev
        log.debug("registered bdev %s", bdev.name)
        self._tell("bdev_register", bdev.name)
        if self.options["bdev_auto_examine"] or bdev.name in self.examine_allowlist:
            self.examine(bdev)

    def examine(self, bdev: Bdev) -> None:
        for module in self.modules:
            try:
                pending = module.examine(bdev)
            except Exception:
                log.exception("module %s failed to examine %s", module.name, bdev.name)
                continue
            if pending is not None:
                task = asyncio.ensure_future(pending)
                self._examining.add(task)
                self._examine_done.clear()
                task.add_done_callback(partial(self._examine_finished, module, bdev))

    def _examine_finished(self, module: BdevModule, bdev: Bdev,
                          task: asyncio.Future[None]) -> None:
        self._examining.discard(task)
        if not self._examining:
            self._examine_done.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("module %s failed to examine %s: %s", module.name, bdev.name,
                      task.exception())

    async def wait_for_examine(self) -> None:
        """Return once no examine is running (at once when none is)."""
        await self._examine_done.wait()

    # -- descriptors and claims -------------------------------------------------------
    # The rules are SPDK's (lib/bdev/bdev.c: bdev_open, spdk_bdev_module_claim_bdev,
    # spdk_bdev_module_claim_bdev_desc and its claim_verify_* helpers), with one deliberate
    # addition: an exclusive_write claim is refused, like a read_many_write_one claim, while
    # another descriptor is open for writing. SPDK's v1 claim ignores such writers, which
    # lets a target reach a state its own saved config cannot rebuild (an nbd export of a
    # bdev that a passthru then claimed: on replay the claim comes first and the export's
    # open fails). docs/vbdev-framework.md has the table.
    def open(self, name: str, write: bool, event_cb: EventCallback | None = None) -> Descriptor:
        bdev = self._names.get(name)
        if bdev is None or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"bdev {name} not found")
        if write and bdev.claim_type is not ClaimType.NONE:
            raise self._claimed(bdev, "already claimed")
        desc = Descriptor(bdev, write, event_cb, self)
        bdev.descriptors.add(desc)
        return desc

    # -- aliases ----------------------------------------------------------------------
    def add_alias(self, bdev: Bdev, alias: str) -> None:
        """Give ``bdev`` another name (SPDK's ``spdk_bdev_alias_add``); -EEXIST on a clash."""
        if alias in self._names:
            raise OperationError(errno.EEXIST, f"bdev name or alias {alias} already exists")
        self._names[alias] = bdev
        bdev.aliases.append(alias)

    def remove_alias(self, bdev: Bdev, alias: str) -> None:
        if self._names.get(alias) is bdev:
            del self._names[alias]
        if alias in bdev.aliases:
            bdev.aliases.remove(alias)

    @staticmethod
    def _claimed(bdev: Bdev, detail: str, code: int = errno.EPERM) -> OperationError:
        holders = ", ".join(sorted({c.module for c in bdev.claims})) or "none"
        log.error("bdev %s %s: type %s by module %s", bdev.name, detail, bdev.claim_type.value,
                  holders)
        return OperationError(code, f"bdev {bdev.name} is claimed by module {holders}")

    def claim(self, desc: Descriptor, module: str,
              claim_type: ClaimType = ClaimType.EXCLUSIVE_WRITE, *, key: int = 0) -> Claim:
        """Claim ``desc``'s bdev for ``module``; -EPERM (or -EINVAL, -EBUSY) as SPDK.

        ``key`` is the shared key of ``read_many_write_shared`` claims (non-zero, the same
        for every claimer). A claim of a type that writes makes a read-only ``desc`` writable.
        """
        bdev = desc.bdev
        if claim_type is ClaimType.NONE:
            raise OperationError(errno.EINVAL, "claim type not_claimed cannot be claimed")
        if desc.closed or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"bdev {bdev.name} is being deleted")
        current = bdev.claim_type
        if current is not ClaimType.NONE and current is not claim_type:
            raise self._claimed(bdev, "already claimed")
        if desc.claim is not None:
            log.error("%s: descriptor already has a claim by module %s", bdev.name,
                      desc.claim.module)
            raise OperationError(errno.EPERM, f"bdev {bdev.name}: this descriptor already "
                                              f"holds a claim by module {desc.claim.module}")
        others_write = any(d.write_allowed for d in bdev.descriptors if d is not desc)
        if claim_type is ClaimType.EXCLUSIVE_WRITE or claim_type is ClaimType.READ_MANY_WRITE_ONE:
            if key:
                raise OperationError(errno.EINVAL, f"{bdev.name}: key option not supported "
                                                   f"with {claim_type.value} claims")
            if current is not ClaimType.NONE:
                raise self._claimed(bdev, "already claimed")
            if others_write:
                raise self._open_for_write(bdev, claim_type)
        elif claim_type is ClaimType.READ_MANY_WRITE_NONE:
            if desc.write_allowed:
                raise OperationError(errno.EINVAL, f"{bdev.name}: cannot obtain a "
                                                   "read_many_write_none claim with a "
                                                   "writable descriptor")
            if key:
                raise OperationError(errno.EINVAL, f"{bdev.name}: key option not supported "
                                                   "with read_many_write_none claims")
            if current is ClaimType.NONE and others_write:
                raise self._open_for_write(bdev, claim_type)
        else:  # READ_MANY_WRITE_SHARED
            if not key:
                raise OperationError(errno.EINVAL, f"{bdev.name}: shared_claim_key option "
                                                   "required with read_many_write_shared claims")
            if current is ClaimType.NONE and others_write:
                raise self._open_for_write(bdev, claim_type)
            if current is claim_type and key != bdev.claim_key:
                raise self._claimed(bdev, "already claimed with another key")
        claim = Claim(module, desc)
        desc.claim = claim
        if current is ClaimType.NONE:
            bdev.claim_type = claim_type
            bdev.claim_key = key
        bdev.claims.append(claim)
        if claim_type in _PROMOTES_TO_WRITE:
            desc.write_allowed = True
        return claim

    @staticmethod
    def _open_for_write(bdev: Bdev, claim_type: ClaimType) -> OperationError:
        log.error("%s: cannot obtain a %s claim while another descriptor is open for writing",
                  bdev.name, claim_type.value)
        return OperationError(errno.EPERM, f"bdev {bdev.name} is open for writing by another "
                                           f"consumer: cannot claim it {claim_type.value}")

    def release_claim(self, target: Bdev | Descriptor) -> None:
        """Release the claim held through a descriptor, or (a Bdev) every claim on it.

        A Bdev is SPDK's ``spdk_bdev_module_release_bdev`` of a v1 claim; closing a
        descriptor releases its claim too, as SPDK does for v2 claims.
        """
        claims = [target.claim] if isinstance(target, Descriptor) else list(target.claims)
        for claim in claims:
            if claim is None:
                continue
            bdev = claim.desc.bdev
            claim.desc.claim = None
            if claim in bdev.claims:
                bdev.claims.remove(claim)
            if not bdev.claims:
                bdev.claim_type = ClaimType.NONE
                bdev.claim_key = 0

    def _descriptor_closed(self, desc: Descriptor) -> None:
        bdev = desc.bdev
        if desc.claim is not None:
            self.release_claim(desc)
        bdev.descriptors.discard(desc)
        if not bdev.descriptors and bdev._closed is not None and not bdev._closed.done():
            bdev._closed.set_result(None)

    # -- removal ----------------------------------------------------------------------
    async def unregister(self, bdev: Bdev) -> None:
        """Send REMOVE to every descriptor, wait for them to close, destroy the bdev."""
        if bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"bdev {bdev.name} is being deleted")
        bdev.state = BdevState.UNREGISTERING
        log.debug("unregistering bdev %s", bdev.name)
        loop = asyncio.get_running_loop()
        bdev._closed = loop.create_future()
        if not bdev.descriptors:
            bdev._closed.set_result(None)
        bdev.on_removed()
        if bdev.qos is not None:
            bdev.qos.fail_all(-errno.ENODEV)
        if bdev.qd_sampler is not None:
            bdev.qd_sampler.stop()
        for desc in list(bdev.descriptors):
            if desc.event_cb is not None:
                # Asynchronous, as in SPDK: the owner reacts on its own time.
                loop.call_soon(_notify, desc, BdevEvent.REMOVE)
        await bdev._closed
        for n in [bdev.name, *bdev.aliases]:
            if self._names.get(n) is bdev:
                del self._names[n]
        self.bdevs.pop(bdev.name, None)
        bdev.state = BdevState.GONE
        self._tell("bdev_unregister", bdev.name)
        await bdev.destruct()
        log.debug("bdev %s removed", bdev.name)

    async def unregister_by_name(self, name: str, module: str) -> None:
        """The ``*_delete`` RPCs: -ENODEV unless ``name`` is a live bdev of ``module``."""
        bdev = self._names.get(name)
        if bdev is None or bdev.state is not BdevState.REGISTERED or bdev.module_name != module:
            raise OperationError(errno.ENODEV, f"no {module} bdev named {name}")
        await self.unregister(bdev)

    def resize(self, bdev: Bdev, num_blocks: int) -> None:
        """Change the size and tell every descriptor (exports update their devices)."""
        bdev.num_blocks = num_blocks
        self._tell("bdev_resize", bdev.name)
        for desc in list(bdev.descriptors):
            if desc.event_cb is not None:
                asyncio.get_running_loop().call_soon(_notify, desc, BdevEvent.RESIZE)

    def _tell(self, event: str, name: str) -> None:
        for observer in self.observers:
            try:
                observer(event, name)
            except Exception:
                log.exception("observer of %s %s failed", event, name)

    async def shutdown(self) -> None:
        """Unregister every bdev, newest first, so vbdevs go before their bases."""
        for bdev in reversed(list(self.bdevs.values())):
            if bdev.state is BdevState.REGISTERED:
                try:
                    await asyncio.wait_for(self.unregister(bdev), 10)
                except Exception:
                    log.exception("bdev %s did not unregister cleanly", bdev.name)
        for module in reversed(self.modules):
            await module.fini()


def _notify(desc: Descriptor, event: BdevEvent) -> None:
    if desc.closed or desc.event_cb is None:
        return
    try:
        desc.event_cb(event, desc.bdev)
    except Exception:
        log.exception("event callback of a descriptor on %s failed", desc.bdev.name)
