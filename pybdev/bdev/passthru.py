"""passthru: a vbdev that forwards every request to its base (SPDK's vbdev_passthru.c).

The module keeps an *association* list ``(base_bdev_name, name, uuid)`` (the framework's
configs, docs/vbdev-framework.md). A create adds an association and builds the vbdev at
once if the base exists; otherwise it succeeds anyway and the vbdev is built when a bdev
whose primary name is ``base_bdev_name`` registers (examine). Building opens the base for
write and claims it ``exclusive_write``. When the base goes away the passthru unregisters
itself but the association stays, so the vbdev comes back with the base; only
``bdev_passthru_delete`` (of a built vbdev) removes the association.

The UUID is the one given, or a name-based (version 5) UUID over the namespace
``7e25812e-c8c0-4d3f-8599-16d790555b85`` and the base UUID's 16 bytes, as
``spdk_uuid_generate_sha1`` computes it, so a passthru keeps its UUID across restarts.

One deliberate difference from SPDK: a RESIZE of the base resizes the passthru (SPDK's
passthru ignores the event and keeps the old size).
"""

from __future__ import annotations

import errno
import logging
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from pybdev.bdev.core import Descriptor
from pybdev.bdev.vbdev import StackedBdev, VbdevConfig, VbdevModule, VirtualBdev, sha1_uuid
from pybdev.errors import OperationError
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import NameParams, Params, Str, Uuid

RPC = RpcTable()

log = logging.getLogger("pybdev.bdev.passthru")

NAMESPACE = uuidlib.UUID("7e25812e-c8c0-4d3f-8599-16d790555b85")
__all__ = ["NAMESPACE", "Association", "PassthruBdev", "PassthruModule", "sha1_uuid"]


@dataclass(eq=False)
class Association(VbdevConfig):
    base_bdev_name: str
    name: str
    uuid: str | None

    @property
    def base_names(self) -> tuple[str, ...]:
        return (self.base_bdev_name,)


class PassthruBdev(VirtualBdev):
    product_name = "passthru"
    module_name = "passthru"

    def driver_specific(self) -> dict[str, Any]:
        return {"passthru": {"name": self.name, "base_bdev_name": self.base_name}}


class PassthruModule(VbdevModule[Association]):
    name = "passthru"
    rpc = RPC

    @property
    def associations(self) -> list[Association]:
        return self.configs

    def create(self, *, base_bdev_name: str, name: str, uuid: str | None = None) -> str:
        """Add the association and build the vbdev if the base exists (else deferred).

        Raises OperationError: -17 for a name already associated, -1 when the base is
        claimed or open for writing, -17 when the name or UUID clashes at register. The
        association stays after a build error, as in SPDK.
        """
        if any(a.name == name for a in self.configs):
            log.error("passthru bdev %s already exists", name)
            raise OperationError(errno.EEXIST, f"passthru bdev {name} already exists")
        self.add(Association(base_bdev_name, name, uuid))
        return name

    def construct(self, config: Association, descs: list[Descriptor]) -> list[StackedBdev]:
        base = descs[0].bdev
        uuid = config.uuid or sha1_uuid(NAMESPACE, uuidlib.UUID(base.uuid).bytes)
        log.info("creating passthru bdev %s on %s", config.name, base.name)
        return [PassthruBdev(config.name, uuid, descs[0])]

    def config_entry(self, config: Association) -> dict[str, Any]:
        bdev = config.attachment.bdevs[0] if config.attachment else None
        uuid = bdev.uuid if bdev is not None else config.uuid
        return {"method": "bdev_passthru_create",
                "params": {"base_bdev_name": config.base_bdev_name, "name": config.name,
                           "uuid": uuid}}

    async def delete(self, name: str) -> None:
        """Unregister a built passthru and forget its association (-19 if none is built)."""
        config = self.built_config_of(name)
        if config is None:
            raise OperationError(errno.ENODEV, f"no passthru bdev named {name}")
        # Forgotten at once, as SPDK does, so the base coming back does not rebuild it.
        await self.remove(config)



class PassthruCreateParams(Params):
    name: Str = Field(description="Name of the new passthru bdev")
    base_bdev_name: Str = Field(
        description=(
            "The bdev it passes I/O to; it may be created later (the passthru then waits "
            "for it)"))
    uuid: Uuid | None = Field(
        None, description="UUID of the passthru bdev; derived from the base's when omitted")


@RPC.method("bdev_passthru_create", PassthruCreateParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "string"},
            aliases=("construct_passthru_bdev",))
def bdev_passthru_create(module: PassthruModule, p: PassthruCreateParams) -> str:
    """Create a passthru vbdev on a base (deferred until the base exists); answers its name."""
    return module.create(base_bdev_name=p.base_bdev_name, name=p.name, uuid=p.uuid)


@RPC.method("bdev_passthru_delete", NameParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"},
            aliases=("delete_passthru_bdev",))
async def bdev_passthru_delete(module: PassthruModule, p: NameParams) -> bool:
    """Delete a passthru vbdev, releasing its base."""
    await module.delete(p.name)
    return True
