"""The vbdev framework: bdevs stacked on other bdevs, built when their bases appear.

A vbdev module (passthru, error, delay, split, or a plugin) subclasses :class:`VbdevModule`
and writes three things: a :class:`VbdevConfig` subclass with its create parameters, the
:meth:`VbdevModule.construct` that turns a config and its opened bases into unregistered
bdevs, and :meth:`VbdevModule.config_entry`, the ``save_config`` entry of a config. The
framework does the rest, the way SPDK's vbdev modules each do it by hand:

- **configs** (SPDK's "associations") are kept whether or not their bases exist; a create
  whose base is missing succeeds and the vbdev is built when the base registers (examine),
  so a saved config replays in any order;
- **build**: open every base, claim it (:attr:`VbdevModule.claim_type`), construct, register,
  rolling back what was done when a step fails;
- **hot-remove**: when any base goes away, every vbdev built on it unregisters (a stack comes
  down from the top); once the last one is destroyed the claims are released and the bases
  closed. The config stays (it is built again when the base comes back) unless the module
  says otherwise (:attr:`VbdevModule.keep_unbuilt`, SPDK's error and split drop theirs).

Shapes: one vbdev over one base (passthru, error, delay); one vbdev over several bases
(RAID-like: built only once every base is present, torn down when any goes); several vbdevs
over one base, each on an offset range (SPDK's partition model, ``lib/bdev/part.c``: the
base is opened and claimed once, and each part forwards with its offset; split). A module
may also attach bases it opened and claimed itself and add parts over the attachment's life
(:meth:`VbdevModule.attach`, :meth:`Attachment.add`, :attr:`VbdevModule.holds_bases`: the
lvol module, whose lvstore is found on the base and owns it with or without lvols).
docs/vbdev-framework.md describes the life cycle and the claim rules.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import struct
import uuid as uuidlib
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pybdev.bdev.core import (
    Bdev,
    BdevEvent,
    BdevModule,
    BdevState,
    Callback,
    ClaimType,
    Descriptor,
)
from pybdev.errors import OperationError

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

log = logging.getLogger("pybdev.bdev.vbdev")

PART_NAMESPACE = uuidlib.UUID("976b899e-3e1e-4d71-ab69-c2b08e9df8b8")
# I/O types a part never claims, even if its base has them (SPDK's
# bdev_part_io_type_supported: NVMe passthrough commands cannot be remapped).
PART_EXCLUDED_IO = frozenset(("nvme_admin", "nvme_io", "nvme_io_md"))


def sha1_uuid(namespace: uuidlib.UUID, name: bytes) -> str:
    """RFC 4122 version-5 UUID over raw bytes (``spdk_uuid_generate_sha1``)."""
    digest = hashlib.sha1(namespace.bytes + name, usedforsecurity=False).digest()
    return str(uuidlib.UUID(bytes=digest[:16], version=5))


def part_uuid(base_uuid: str, offset_blocks: int, num_blocks: int) -> str:
    """SPDK's bdev_part UUID for a range of a base (``spdk_bdev_part_construct_ext``)."""
    name = uuidlib.UUID(base_uuid).bytes + struct.pack("<QQ", offset_blocks, num_blocks)
    return sha1_uuid(PART_NAMESPACE, name)


class VbdevConfig:
    """A create request of a vbdev module, built or waiting for its bases.

    Subclass it (a dataclass works) with the module's parameters; ``base_names`` are the
    primary names of the bases, all of which must exist before the build.
    """

    attachment: Attachment | None = None

    @property
    def base_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def built(self) -> bool:
        return self.attachment is not None


C = TypeVar("C", bound=VbdevConfig)


class StackedBdev(Bdev):
    """A bdev built by a :class:`VbdevModule` over one or more bases.

    ``attachment`` holds the base descriptors (``attachment.descs``, in ``base_names``
    order). Destroying the bdev tells the attachment, which releases the bases once every
    bdev built on them is gone.
    """

    #: Follow the base's size changes (whole-base vbdevs only; a part keeps its range).
    follows_resize: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attachment: Attachment | None = None
        self._unregister_task: asyncio.Task[None] | None = None  # keeps it referenced

    def on_base_resize(self, base: Bdev) -> None:
        if self.follows_resize and self.layer is not None:
            self.layer.resize(self, base.num_blocks)

    def on_base_event(self, event: BdevEvent, base: Bdev) -> None:
        """The ``event_cb`` for a base opened by hand, without a :class:`VbdevModule`."""
        if self.attachment is not None:
            self.attachment.on_base_event(event, base)
        elif event is BdevEvent.REMOVE and self.layer is not None:
            if self.state is BdevState.REGISTERED:
                self._unregister_task = asyncio.get_running_loop().create_task(
                    self.layer.unregister(self))
        elif event is BdevEvent.RESIZE:
            self.on_base_resize(base)

    async def destruct(self) -> None:
        if self.attachment is not None:
            self.attachment.detach(self)


class VirtualBdev(StackedBdev):
    """A stacked bdev over one range of one base: forwards every request to it.

    The range starts at ``offset_blocks`` and covers ``num_blocks`` (the whole base by
    default). Geometry and I/O types are the base's. Without an attachment (built by hand,
    not by a :class:`VbdevModule`) destroying it closes ``base_desc``, which releases its
    claim.
    """

    follows_resize = True
    # The flag goes to the base's descriptor, which honours it or emulates it there.
    fua_native = True
    # SPDK's bdev_part (split, error) copies the base's metadata format but not its
    # dif_pi_format; passthru and delay copy it too.
    copies_pi_format: ClassVar[bool] = True

    def __init__(self, name: str, uuid: str | None, base_desc: Descriptor, *,
                 offset_blocks: int = 0, num_blocks: int | None = None,
                 io_types: frozenset[str] | None = None) -> None:
        base = base_desc.bdev
        super().__init__(
            name, base.block_size, base.num_blocks if num_blocks is None else num_blocks, uuid,
            io_types=base.io_types if io_types is None else io_types,
            physical_block_size=base.physical_block_size, write_cache=base.write_cache,
            optimal_io_boundary=base.optimal_io_boundary, numa_id=base.numa_id,
            max_io_bytes=base.max_io_bytes,
        )
        self.base_desc = base_desc
        self.base_name = base.name
        # Reads complete with the base's data, so it stays valid as long as the base says.
        self.read_buffer = base.read_buffer
        self.offset_blocks = offset_blocks
        self.offset = offset_blocks * base.block_size  # bytes, added to every request
        if base.md_size:
            # The base's metadata format, as SPDK's passthru and bdev_part copy it (a split
            # part past the base's start remaps reference tags: split.SplitRemapBdev).
            self.md_size = base.md_size
            self.md_interleave = base.md_interleave
            self.dif_type = base.dif_type
            self.dif_is_head_of_md = base.dif_is_head_of_md
            if self.copies_pi_format:
                self.dif_pi_format = base.dif_pi_format
            self.dif_check_flags = base.dif_check_flags

    def on_base_resize(self, base: Bdev) -> None:
        if self.offset_blocks == 0:
            super().on_base_resize(base)

    # Requests were checked by our descriptor against our geometry; the base's descriptor
    # checks them again, which is cheap, and counts them in the base's stats.
    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        self.base_desc.read(offset + self.offset, length, cb)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        self.base_desc.write(offset + self.offset, data, cb, fua)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        self.base_desc.unmap(offset + self.offset, length, cb)

    def submit_read_md(self, offset: int, length: int, cb: Callback) -> None:
        self.base_desc.read_md(offset + self.offset, length, cb)

    def submit_write_md(self, offset: int, data: Any, md: Any, cb: Callback, fua: bool) -> None:
        self.base_desc.write_md(offset + self.offset, data, md, cb, fua)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        self.base_desc.write_zeroes(offset + self.offset, length, cb)

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        self.base_desc.flush(offset + self.offset, length, cb)

    def submit_reset(self, cb: Callback) -> None:
        self.base_desc.reset(cb)

    async def destruct(self) -> None:
        if self.attachment is None:
            self.base_desc.close()
        else:
            await super().destruct()


class Attachment:
    """A built config: its bases, opened and claimed, and the bdevs registered on them.

    Normally the bases are released with the last bdev. A module with
    :attr:`VbdevModule.holds_bases` keeps them while it has no bdev (an lvstore with no
    lvol still owns its base); they are released by :meth:`release` (the module's delete),
    or once every bdev is gone after a base was removed.
    """

    def __init__(self, module: VbdevModule[Any], config: VbdevConfig,
                 descs: list[Descriptor]) -> None:
        self.module = module
        self.config = config
        self.descs = descs
        self.bdevs: list[StackedBdev] = []
        self.base_removed = False
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, bdev: StackedBdev) -> None:
        """Register one more bdev over these bases (a part made after the build)."""
        if not self.descs:
            raise OperationError(errno.ENODEV, "the bases of this vbdev are released")
        bdev.attachment = self
        try:
            self.module.layer.register(bdev)
        except BaseException:
            bdev.attachment = None
            raise
        self.bdevs.append(bdev)

    def on_base_event(self, event: BdevEvent, base: Bdev) -> None:
        if event is BdevEvent.REMOVE:
            self.base_removed = True
            self.unregister_all()
            if not self.bdevs:
                self.release()
        elif event is BdevEvent.RESIZE:
            for bdev in self.bdevs:
                bdev.on_base_resize(base)

    def unregister_all(self) -> list[asyncio.Task[None]]:
        """Start unregistering every bdev built here; the tasks, to await if wanted."""
        layer = self.module.layer
        tasks = []
        for bdev in list(self.bdevs):
            if bdev.state is not BdevState.REGISTERED:
                continue
            task = asyncio.get_running_loop().create_task(layer.unregister(bdev))
            self._tasks.add(task)
            task.add_done_callback(self._unregistered)
            tasks.append(task)
        return tasks

    def _unregistered(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a %s vbdev did not unregister after its base went away: %s",
                      self.module.name, task.exception())

    def detach(self, bdev: StackedBdev) -> None:
        """``bdev`` was destroyed; the last one gone releases the bases."""
        if bdev in self.bdevs:
            self.bdevs.remove(bdev)
        if not self.bdevs and (self.base_removed or not self.module.holds_bases):
            self.release()

    def release(self) -> None:
        for desc in self.descs:
            desc.close()  # closing releases the claim held through it
        self.descs = []
        if self.config.attachment is self:
            self.config.attachment = None
            self.module.unbuilt(self.config)


class VbdevModule(BdevModule, Generic[C]):
    """Base of the vbdev modules: configs, examine, build with rollback, hot-remove."""

    #: How each base is claimed (SPDK's vbdevs take ``exclusive_write``).
    claim_type: ClassVar[ClaimType] = ClaimType.EXCLUSIVE_WRITE
    #: Open the bases for writing (SPDK's part base opens read-only; its claim promotes).
    open_for_write: ClassVar[bool] = True
    #: Keep a config whose vbdevs were destroyed (base gone) or failed to build, so it is
    #: built again when the base comes back (passthru, delay); False forgets it (error,
    #: split).
    keep_unbuilt: ClassVar[bool] = True
    #: ``save_config`` writes configs still waiting for their bases (error, split), or only
    #: the built ones (passthru, delay).
    saves_pending: ClassVar[bool] = False
    #: Keep the bases opened and claimed while no vbdev is built on them (an lvstore owns
    #: its base with or without lvols); :meth:`Attachment.release` lets go of them.
    holds_bases: ClassVar[bool] = False

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self.configs: list[C] = []  # in create order, which is also the save order

    # -- what modules implement -------------------------------------------------------
    def construct(self, config: C, descs: list[Descriptor]) -> list[StackedBdev]:
        """The vbdevs of ``config`` over its opened, claimed bases, not registered yet."""
        raise NotImplementedError

    def config_entry(self, config: C) -> dict[str, Any]:
        """The ``save_config`` entry that creates ``config`` again."""
        raise NotImplementedError

    # -- the framework ----------------------------------------------------------------
    def add(self, config: C) -> Attachment | None:
        """Keep ``config`` and build it now if its bases exist (None: deferred).

        A build error other than a missing base is raised; the config stays if
        :attr:`keep_unbuilt` (as SPDK's passthru and delay keep their association).
        """
        self.configs.append(config)
        try:
            return self.build(config)
        except OperationError as e:
            if e.errno == errno.ENODEV:
                log.info("%s vbdev creation deferred pending base bdev arrival (%s)",
                         self.name, ", ".join(config.base_names))
                return None
            if not self.keep_unbuilt and config in self.configs:
                self.configs.remove(config)
            raise

    def build(self, config: C) -> Attachment:
        """Open and claim every base, construct, register; undo all of it on failure."""
        if config.attachment is not None:
            return config.attachment
        layer = self.layer
        descs: list[Descriptor] = []
        try:
            for name in config.base_names:
                desc = layer.open(name, write=self.open_for_write)
                descs.append(desc)
                layer.claim(desc, self.name, self.claim_type)
            bdevs = self.construct(config, descs)
        except BaseException:
            for desc in descs:
                desc.close()
            raise
        return self.attach(config, descs, bdevs)

    def attach(self, config: C, descs: list[Descriptor],
               bdevs: list[StackedBdev]) -> Attachment:
        """Take ``descs`` (opened and claimed) as ``config``'s bases and register ``bdevs``.

        :meth:`build` ends here; a module that opens and claims its bases itself (the lvol
        module reads a base before it claims it) calls it directly. Registration failing
        undoes it all: registered bdevs come down, the bases are released.
        """
        attachment = Attachment(self, config, descs)
        for desc in descs:
            desc.event_cb = attachment.on_base_event
        config.attachment = attachment
        if config not in self.configs:
            self.configs.append(config)
        for bdev in bdevs:
            try:
                attachment.add(bdev)
            except BaseException:
                if attachment.bdevs:
                    # Registered parts may already carry vbdevs of their own (examine):
                    # they come down as on a hot-remove, which also releases the base.
                    attachment.base_removed = True
                    attachment.unregister_all()
                else:
                    attachment.release()
                raise
        return attachment

    def examine(self, bdev: Bdev) -> Awaitable[None] | None:
        for config in list(self.configs):
            if config.attachment is not None or bdev.name not in config.base_names:
                continue
            if not all(self._present(n) for n in config.base_names):
                continue  # built when the last base arrives
            try:
                self.build(config)
            except OperationError as e:
                log.error("could not create %s vbdev over %s at examine: %s", self.name,
                          ", ".join(config.base_names), e)
                if not self.keep_unbuilt and config in self.configs:
                    self.configs.remove(config)
        return None

    def _present(self, name: str) -> bool:
        bdev = self.layer.bdevs.get(name)
        return bdev is not None and bdev.state is BdevState.REGISTERED

    def unbuilt(self, config: C) -> None:
        """Every vbdev of ``config`` was destroyed and its bases released."""
        if not self.keep_unbuilt and config in self.configs:
            self.configs.remove(config)

    async def remove(self, config: C) -> None:
        """Forget ``config`` and unregister its vbdevs (the delete RPCs)."""
        if config in self.configs:
            self.configs.remove(config)
        if config.attachment is not None:
            tasks = config.attachment.unregister_all()
            if tasks:
                await asyncio.gather(*tasks)

    def built_config_of(self, name: str) -> C | None:
        """The config whose registered vbdev is called ``name`` (primary name or alias)."""
        bdev = self.layer.get(name)
        if not isinstance(bdev, StackedBdev) or bdev.state is not BdevState.REGISTERED:
            return None
        attachment = bdev.attachment
        if attachment is None or attachment.module is not self:
            return None
        config: C = attachment.config  # type: ignore[assignment]
        return config

    def write_config(self) -> list[Any]:
        # Create order, not build order (SPDK writes passthru and delay nodes as they were
        # built): replay creates the configs in the saved order but builds them in the order
        # the bases appear, so only the create order is the same after a restart.
        if self.saves_pending:
            return [self.config_entry(c) for c in self.configs]
        return [self.config_entry(c) for c in self.configs if c.attachment is not None
                and any(b.state is BdevState.REGISTERED for b in c.attachment.bdevs)]

    async def fini(self) -> None:
        self.configs.clear()
