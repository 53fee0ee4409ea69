"""passthru: a vbdev that forwards every request to its base (spec §4.11, vbdev_passthru.c).

The module keeps an *association* list ``(base_bdev_name, name, uuid)``. A create adds
an association and builds the vbdev at once if the base exists; otherwise it succeeds
anyway and the vbdev is built when a bdev whose primary name is ``base_bdev_name``
registers (examine). Building opens the base for write and claims it
``exclusive_write``. When the base goes away the passthru unregisters itself but the
association stays, so the vbdev comes back with the base; only ``bdev_passthru_delete``
(of a built vbdev) removes the association.

The UUID is the one given, or a name-based (version 5) UUID over the namespace
``7e25812e-c8c0-4d3f-8599-16d790555b85`` and the base UUID's 16 bytes, as
``spdk_uuid_generate_sha1`` computes it, so a passthru keeps its UUID across restarts.

One deliberate difference from SPDK: a RESIZE of the base resizes the passthru (SPDK's
passthru ignores the event and keeps the old size).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import Bdev, BdevModule, BdevState, Descriptor, VirtualBdev
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import NameParams, Params, Str, Uuid

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

log = logging.getLogger("pybdev.bdev.passthru")

NAMESPACE = uuidlib.UUID("7e25812e-c8c0-4d3f-8599-16d790555b85")


def sha1_uuid(namespace: uuidlib.UUID, name: bytes) -> str:
    """RFC 4122 version-5 UUID over raw bytes (``uuid.uuid5`` takes only str before 3.12)."""
    digest = hashlib.sha1(namespace.bytes + name, usedforsecurity=False).digest()
    return str(uuidlib.UUID(bytes=digest[:16], version=5))


@dataclass
class Association:
    base_bdev_name: str
    name: str
    uuid: str | None


class PassthruBdev(VirtualBdev):
    product_name = "passthru"
    module_name = "passthru"

    def __init__(self, name: str, uuid: str, base_desc: Descriptor,
                 module: PassthruModule) -> None:
        super().__init__(name, uuid, base_desc)
        self.module = module

    def driver_specific(self) -> dict[str, Any]:
        return {"passthru": {"name": self.name, "base_bdev_name": self.base_name}}

    async def destruct(self) -> None:
        await super().destruct()
        self.module.forget(self)


class PassthruModule(BdevModule):
    name = "passthru"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self.associations: list[Association] = []
        self.nodes: list[PassthruBdev] = []  # built vbdevs, in build order (config order)

    def create(self, *, base_bdev_name: str, name: str, uuid: str | None = None) -> str:
        """Add the association and build the vbdev if the base exists (else deferred).

        Raises OperationError: -17 for a name already associated, -1 when the base is
        claimed, -17 when the name or UUID clashes at register. The association stays
        after a build error, as in SPDK.
        """
        if any(a.name == name for a in self.associations):
            log.error("passthru bdev %s already exists", name)
            raise OperationError(errno.EEXIST, f"passthru bdev {name} already exists")
        assoc = Association(base_bdev_name, name, uuid)
        self.associations.append(assoc)
        try:
            self._build(assoc)
        except OperationError as e:
            if e.errno != errno.ENODEV:
                raise
            log.info("vbdev %s creation deferred pending base bdev %s arrival",
                     name, base_bdev_name)
        return name

    def _build(self, assoc: Association) -> PassthruBdev:
        layer = self.layer
        desc = layer.open(assoc.base_bdev_name, write=True)
        try:
            base = desc.bdev
            uuid = assoc.uuid or sha1_uuid(NAMESPACE, uuidlib.UUID(base.uuid).bytes)
            pt = PassthruBdev(assoc.name, uuid, desc, self)
            layer.claim(desc, self.name)
            try:
                layer.register(pt)
            except BaseException:
                layer.release_claim(base)
                raise
        except BaseException:
            desc.close()
            raise
        desc.event_cb = pt.on_base_event
        self.nodes.append(pt)
        log.info("created passthru bdev %s on %s", pt.name, base.name)
        return pt

    def examine(self, bdev: Bdev) -> None:
        built = {n.name for n in self.nodes}
        for assoc in list(self.associations):
            if assoc.base_bdev_name != bdev.name or assoc.name in built:
                continue
            try:
                self._build(assoc)
            except OperationError as e:
                log.error("could not create passthru bdev %s on %s: %s", assoc.name, bdev.name, e)

    async def delete(self, name: str) -> None:
        """Unregister a built passthru and forget its association (-19 if none is built)."""
        bdev = self.layer.get(name)
        if not isinstance(bdev, PassthruBdev) or bdev.state is not BdevState.REGISTERED:
            raise OperationError(errno.ENODEV, f"no passthru bdev named {name}")
        # Forgotten at once, as SPDK does, so the base coming back does not rebuild it.
        self.associations = [a for a in self.associations if a.name != bdev.name]
        await self.layer.unregister(bdev)

    def forget(self, bdev: PassthruBdev) -> None:
        """The vbdev was destroyed (deleted or its base removed); the association stays."""
        if bdev in self.nodes:
            self.nodes.remove(bdev)

    def write_config(self) -> list[Any]:
        return [{"method": "bdev_passthru_create",
                 "params": {"base_bdev_name": n.base_name, "name": n.name, "uuid": n.uuid}}
                for n in self.nodes if n.state is BdevState.REGISTERED]

    async def fini(self) -> None:
        self.associations.clear()
        self.nodes.clear()





class PassthruCreateParams(Params):
    name: Str
    base_bdev_name: Str
    uuid: Uuid | None = None


@RPC.method("bdev_passthru_create", PassthruCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_passthru_bdev",))
def bdev_passthru_create(module: PassthruModule, p: PassthruCreateParams) -> str:
    """Create a passthru vbdev on a base (deferred until the base exists); answers its name."""
    return module.create(
        base_bdev_name=p.base_bdev_name, name=p.name, uuid=p.uuid)



@RPC.method("bdev_passthru_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_passthru_bdev",))
async def bdev_passthru_delete(module: PassthruModule, p: NameParams) -> bool:
    """Delete a passthru vbdev, releasing its base."""
    await module.delete(p.name)
    return True
