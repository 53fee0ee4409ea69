"""nbd RPCs with SPDK's params, results and codes (SPDK's lib/nbd), extended to network exports.

``nbd_start_disk {bdev_name, nbd_device?, num_connections?}``: ``nbd_device`` may be an
NBD URI (``nbd://HOST[:PORT]/NAME``, ``nbd+unix:///NAME?socket=PATH``) for a network
export, or a ``/dev/nbdN`` path (or nothing) for a kernel export; ``num_connections``
(pybdev's, kernel exports only) gives the kernel several sockets.  Answers the ``nbd_device`` in
use (for ``nbd://HOST:0/NAME``, the URI with the port the kernel chose).

Codes: decode failure -32603 "spdk_json_decode_object failed"; unknown bdev or device
-19; device or export name already used -16; claimed bdev -1; malformed URI -19
"illegal nbd device ..."; non-loopback address without ``--nbd-allow-remote`` -13;
``num_connections`` out of range -32603 (a decode failure), with a URI -22.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, Field

from pybdev.nbd.kernel import MAX_CONNECTIONS
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR
from pybdev.rpc.registry import RpcTable
from pybdev.rpc.types import Params, Str, integral

RPC = RpcTable()

if TYPE_CHECKING:
    from pybdev.nbd.subsystem import NbdSubsystem

DECODE_ERROR = (INTERNAL_ERROR, DECODE_FAILED)
DISK_SCHEMA = {
    "type": "object",
    "properties": {"nbd_device": {"type": "string"}, "bdev_name": {"type": "string"},
                   "num_connections": {"type": "integer", "minimum": 2}},
}


Connections = Annotated[int, Field(ge=1, le=MAX_CONNECTIONS), BeforeValidator(integral)]


class StartDiskParams(Params):
    bdev_name: Str = Field(description="The bdev to export")
    nbd_device: Str | None = Field(
        None, description=(
            "/dev/nbdN (kernel export; the first free one when omitted), or an NBD URI: "
            "nbd://HOST[:PORT]/NAME or nbd+unix:///NAME?socket=PATH (network export)"))
    num_connections: Connections | None = Field(
        None, description=(
            "pybdev extension, kernel exports only: sockets the kernel spreads the device's "
            "requests over (default 1, as SPDK)"))


@RPC.method("nbd_start_disk", StartDiskParams, decode_error=DECODE_ERROR,
            result={"type": "string"},
            aliases=("start_nbd_disk",))
async def nbd_start_disk(nbd: NbdSubsystem, p: StartDiskParams) -> str:
    """Export a bdev over NBD: to the kernel (/dev/nbdN) or to the network (an NBD URI)."""
    export = await nbd.start_disk(p.bdev_name, p.nbd_device, p.num_connections)
    return export.nbd_device


class StopDiskParams(Params):
    nbd_device: Str = Field(description="The export, as nbd_start_disk answered it")


@RPC.method("nbd_stop_disk", StopDiskParams, decode_error=DECODE_ERROR,
            result={"type": "boolean"},
            aliases=("stop_nbd_disk",))
async def nbd_stop_disk(nbd: NbdSubsystem, p: StopDiskParams) -> bool:
    """Stop an export: answer requests in flight, close its connections or device."""
    await nbd.stop_disk(p.nbd_device)
    return True


class GetDisksParams(Params):
    nbd_device: Str | None = Field(None, description="Only this export")


@RPC.method("nbd_get_disks", GetDisksParams, decode_error=DECODE_ERROR,
            result={"type": "array", "items": DISK_SCHEMA},
            aliases=("get_nbd_disks",))
def nbd_get_disks(nbd: NbdSubsystem, p: GetDisksParams) -> list[dict[str, Any]]:
    """List exports (all, or one by ``nbd_device``) in start order."""
    return nbd.get_disks(p.nbd_device)
