"""nvmf RPCs with SPDK's params, results, codes and texts (``docs/nvmf.md``).

Decoding is strict except for the methods SPDK decodes relaxed (unknown keys ignored):
``nvmf_create_transport``, ``nvmf_subsystem_add_listener``, ``nvmf_subsystem_add_ns``,
``nvmf_subsystem_add_host``.  A decode failure is -32602 ``Invalid parameters``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import ConfigDict, Field

from pybdev.nvmf.target import (
    TGT_NAME,
    ListenAddress,
    Listener,
    TransportOpts,
    invalid_params,
)
from pybdev.nvmf.tcp import TcpTransport
from pybdev.rpc.errors import INTERNAL_ERROR, INVALID_PARAMS, RpcError
from pybdev.rpc.registry import RpcTable, State
from pybdev.rpc.types import I32, U8, U16, U32, U64, Params, Str, Uuid

if TYPE_CHECKING:
    from pybdev.nvmf.subsystem import NvmfSubsystem
    from pybdev.nvmf.target import NvmSubsystem, Target

RPC = RpcTable()

TRUE = {"type": "boolean"}
ARRAY = {"type": "array", "items": {"type": "object"}}


class Relaxed(Params):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


def _target(part: NvmfSubsystem, tgt_name: str | None, by_nqn: bool = True) -> Target:
    if tgt_name is not None and tgt_name != TGT_NAME:
        if by_nqn:
            raise RpcError(INVALID_PARAMS, f"NVMf target '{tgt_name}' not found")
        raise RpcError(INTERNAL_ERROR, "Unable to find a target.")
    return part.target


def _sub(part: NvmfSubsystem, nqn: str, tgt_name: str | None) -> NvmSubsystem:
    return _target(part, tgt_name).get(nqn)


# ---------------------------------------------------------------------------- transports


class CreateTransportParams(Relaxed):
    trtype: Str
    tgt_name: Str | None = None
    max_queue_depth: U16 | None = None
    max_io_qpairs_per_ctrlr: U16 | None = None
    in_capsule_data_size: U32 | None = None
    max_io_size: U32 | None = None
    io_unit_size: U32 | None = None
    max_aq_depth: U32 | None = None
    num_shared_buffers: U32 | None = None
    buf_cache_size: U32 | None = None
    iobuf_small_cache_size: U32 | None = None
    iobuf_large_cache_size: U32 | None = None
    zcopy: bool | None = None
    c2h_success: bool | None = None
    dif_insert_or_strip: bool | None = None
    sock_priority: U32 | None = None
    abort_timeout_sec: U32 | None = None
    control_msg_num: U16 | None = None
    acceptor_poll_rate: U32 | None = None
    ack_timeout: U32 | None = None
    kas: U16 | None = None
    min_kato: U32 | None = None
    disable_command_passthru: bool | None = None
    data_wr_pool_size: U32 | None = None


@RPC.method("nvmf_create_transport", CreateTransportParams, result=TRUE)
def nvmf_create_transport(part: NvmfSubsystem, p: CreateTransportParams) -> bool:
    """Create the NVMe-oF TCP transport with SPDK's options and defaults."""
    target = _target(part, p.tgt_name, by_nqn=False)
    if p.trtype.upper() != "TCP":
        raise RpcError(INVALID_PARAMS, f"Invalid transport type '{p.trtype}'")
    if "TCP" in target.transports:
        raise RpcError(INTERNAL_ERROR, "Transport type 'TCP' already exists")
    opts = TransportOpts()
    given = p.model_dump(exclude_none=True)
    for key, value in given.items():
        if key in TransportOpts.names():
            setattr(opts, key, value)
    if p.buf_cache_size:
        opts.iobuf_small_cache_size = p.buf_cache_size
    if opts.max_io_qpairs_per_ctrlr > 65534:
        raise RpcError(INVALID_PARAMS, "max_io_qpairs_per_ctrlr too large")
    if opts.sock_priority > 16 or opts.max_io_size < 4096 or opts.max_io_qpairs_per_ctrlr == 0:
        raise RpcError(INTERNAL_ERROR, "Failed to create transport.")
    if opts.max_queue_depth < 2:
        opts.max_queue_depth = 128
    if not 2 <= opts.max_aq_depth <= 4096:
        opts.max_aq_depth = 128
    opts.in_capsule_data_size = min(opts.in_capsule_data_size, opts.max_io_size)
    target.transports["TCP"] = TcpTransport(target, opts)
    return True


class GetTransportsParams(Params):
    tgt_name: Str | None = None
    trtype: Str | None = None


@RPC.method("nvmf_get_transports", GetTransportsParams, result=ARRAY)
def nvmf_get_transports(part: NvmfSubsystem, p: GetTransportsParams) -> list[dict[str, Any]]:
    """List the transports and their options."""
    target = _target(part, p.tgt_name, by_nqn=False)
    if p.trtype is not None and p.trtype.upper() not in target.transports:
        raise RpcError(-19, "No such device")
    return [t.opts.dump() for name, t in target.transports.items()
            if p.trtype is None or name == p.trtype.upper()]


# ---------------------------------------------------------------------------- subsystems


class CreateSubsystemParams(Params):
    nqn: Str = Field(description="NVMe Qualified Name of the subsystem")
    tgt_name: Str | None = Field(None, description="Target name (only the default target exists)")
    serial_number: Str | None = Field(None, description="Serial number reported to hosts")
    model_number: Str | None = Field(None, description="Model number reported to hosts")
    allow_any_host: bool = Field(
        False, description=(
            "Let every host connect (otherwise only those added with "
            "nvmf_subsystem_add_host)"))
    max_namespaces: U32 = Field(0, description="Maximum number of namespaces (0: the default)")
    ana_reporting: bool = False
    min_cntlid: U16 = Field(1, description="Lowest controller ID")
    max_cntlid: U16 = Field(0xFFEF, description="Highest controller ID")
    dmrsl: U32 = 2097152
    wzsl: U8 = 12
    passthrough: bool = False
    enable_nssr: bool = False
    admin_label: Str | None = None


def _printable(text: str, limit: int) -> bool:
    return len(text) <= limit and all(0x20 <= ord(c) <= 0x7E for c in text)


@RPC.method("nvmf_create_subsystem", CreateSubsystemParams, result=TRUE)
def nvmf_create_subsystem(part: NvmfSubsystem, p: CreateSubsystemParams) -> bool:
    """Create an NVM subsystem (no listeners, no namespaces, no hosts yet)."""
    target = _target(part, p.tgt_name)
    kw: dict[str, Any] = {}
    if p.serial_number is not None:
        if not _printable(p.serial_number, 20):
            raise invalid_params()
        kw["serial_number"] = p.serial_number
    if p.model_number is not None:
        if not _printable(p.model_number, 40):
            raise invalid_params()
        kw["model_number"] = p.model_number
    if p.admin_label is not None:
        if not (4 <= len(p.admin_label) <= 256 and _printable(p.admin_label, 256)):
            raise RpcError(INVALID_PARAMS, "Invalid admin_label")
        kw["admin_label"] = p.admin_label
    if not 1 <= p.min_cntlid <= p.max_cntlid <= 0xFFEF:
        raise RpcError(INVALID_PARAMS, f"Invalid cntlid range [{p.min_cntlid}-{p.max_cntlid}]")
    target.create_subsystem(
        p.nqn, allow_any_host=p.allow_any_host, max_namespaces=p.max_namespaces or 32,
        max_namespaces_given=p.max_namespaces, ana_reporting=p.ana_reporting,
        min_cntlid=p.min_cntlid, max_cntlid=p.max_cntlid, dmrsl=p.dmrsl, wzsl=p.wzsl,
        passthrough=p.passthrough, enable_nssr=p.enable_nssr, **kw)
    return True


class NqnParams(Params):
    nqn: Str = Field(description="NQN of the subsystem")
    tgt_name: Str | None = Field(None, description="Target name")


@RPC.method("nvmf_delete_subsystem", NqnParams, result=TRUE)
async def nvmf_delete_subsystem(part: NvmfSubsystem, p: NqnParams) -> bool:
    """Disconnect the subsystem's hosts, remove its listeners and namespaces, delete it."""
    await _target(part, p.tgt_name).delete_subsystem(p.nqn)
    return True


class GetSubsystemsParams(Params):
    nqn: Str | None = Field(None, description="Only this subsystem")
    tgt_name: Str | None = Field(None, description="Target name")


@RPC.method("nvmf_get_subsystems", GetSubsystemsParams, result=ARRAY)
def nvmf_get_subsystems(part: NvmfSubsystem, p: GetSubsystemsParams) -> list[dict[str, Any]]:
    """List the subsystems (the discovery subsystem included) in NQN order."""
    target = _target(part, p.tgt_name)
    if p.nqn is not None:
        return [target.get(p.nqn).to_json()]
    return [s.to_json() for s in target.sorted_subsystems()]


# ---------------------------------------------------------------------------- listeners


class ListenAddressParams(Params):
    trtype: Str = Field(description="Transport type: TCP")
    traddr: Str = Field(max_length=255)
    adrfam: Str | None = Field(None, description="Address family: IPv4 or IPv6")
    trsvcid: Str | None = Field(default=None, max_length=31)


ADRFAMS = {"ipv4": "IPv4", "ipv6": "IPv6", "ib": "IB", "fc": "FC"}


def _address(a: ListenAddressParams) -> ListenAddress:
    adrfam = ADRFAMS.get((a.adrfam or "ipv4").lower())
    if adrfam is None or a.trtype.upper() != "TCP" or a.trsvcid is None:
        raise invalid_params()
    return ListenAddress(a.trtype.upper(), adrfam, a.traddr, a.trsvcid)


class AddListenerParams(Relaxed):
    nqn: Str
    listen_address: ListenAddressParams
    tgt_name: Str | None = None
    secure_channel: bool = False
    ana_state: Literal["optimized", "non_optimized", "inaccessible"] | None = None
    sock_impl: Str | None = None
    numa_id: I32 | None = None


@RPC.method("nvmf_subsystem_add_listener", AddListenerParams, result=TRUE)
async def nvmf_subsystem_add_listener(part: NvmfSubsystem, p: AddListenerParams) -> bool:
    """Listen for hosts of the subsystem on a TCP address (loopback unless allowed)."""
    target = _target(part, p.tgt_name)
    sub = target.get(p.nqn)
    await target.add_listener(sub, Listener(_address(p.listen_address), p.secure_channel,
                                            p.ana_state or "optimized", p.sock_impl))
    return True


class RemoveListenerParams(Params):
    nqn: Str
    listen_address: ListenAddressParams
    tgt_name: Str | None = None


@RPC.method("nvmf_subsystem_remove_listener", RemoveListenerParams, result=TRUE)
def nvmf_subsystem_remove_listener(part: NvmfSubsystem, p: RemoveListenerParams) -> bool:
    """Stop listening for the subsystem on an address; its controllers there disconnect."""
    target = _target(part, p.tgt_name)
    target.remove_listener(target.get(p.nqn), _address(p.listen_address))
    return True


@RPC.method("nvmf_subsystem_get_listeners", NqnParams, result=ARRAY)
def nvmf_subsystem_get_listeners(part: NvmfSubsystem, p: NqnParams) -> list[dict[str, Any]]:
    """List the subsystem's listeners."""
    sub = _sub(part, p.nqn, p.tgt_name)
    out = []
    for lst in sub.listeners:
        entry: dict[str, Any] = {"address": lst.address.to_json()}
        if sub.ana_reporting:
            entry["ana_states"] = [{"ana_group": g, "ana_state": lst.ana_state}
                                   for g in range(1, sub.max_namespaces + 1)]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- namespaces


class NamespaceParams(Params):
    bdev_name: Str = Field(description="The bdev the namespace serves")
    nsid: U32 = Field(0, description="Namespace ID (0: the lowest free)")
    nguid: Str | None = Field(
        None, description="Namespace globally unique identifier (32 hex digits)")
    eui64: Str | None = None
    uuid: Uuid | None = Field(None, description="Namespace UUID")
    anagrpid: U32 = 0
    ptpl_file: Str | None = None
    no_auto_visible: bool = False
    hide_metadata: bool = False


class AddNsParams(Relaxed):
    nqn: Str
    namespace: NamespaceParams
    tgt_name: Str | None = None


@RPC.method("nvmf_subsystem_add_ns", AddNsParams, result={"type": "integer"})
def nvmf_subsystem_add_ns(part: NvmfSubsystem, p: AddNsParams) -> int:
    """Add a bdev as a namespace; answers its NSID.  The bdev is claimed."""
    target = _target(part, p.tgt_name)
    ns = p.namespace
    return target.add_ns(target.get(p.nqn), ns.bdev_name, ns.nsid, ns.nguid, ns.eui64,
                         ns.uuid, ns.anagrpid, ns.no_auto_visible, ns.ptpl_file)


class RemoveNsParams(Params):
    nqn: Str = Field(description="NQN of the subsystem")
    nsid: U32 = Field(description="Namespace ID")
    tgt_name: Str | None = Field(None, description="Target name")


@RPC.method("nvmf_subsystem_remove_ns", RemoveNsParams, result=TRUE)
async def nvmf_subsystem_remove_ns(part: NvmfSubsystem, p: RemoveNsParams) -> bool:
    """Remove a namespace (hosts get a namespace-attribute notice) and release its bdev."""
    target = _target(part, p.tgt_name)
    await target.remove_ns(target.get(p.nqn), p.nsid)
    return True


# ---------------------------------------------------------------------------- hosts


class AddHostParams(Relaxed):
    nqn: Str
    host: Str
    tgt_name: Str | None = None
    psk: Str | None = None
    dhchap_key: Str | None = None
    dhchap_ctrlr_key: Str | None = None


@RPC.method("nvmf_subsystem_add_host", AddHostParams, result=TRUE)
def nvmf_subsystem_add_host(part: NvmfSubsystem, p: AddHostParams) -> bool:
    """Allow a host NQN to connect."""
    target = _target(part, p.tgt_name)
    sub = target.get(p.nqn)
    if p.psk is not None or p.dhchap_key is not None or p.dhchap_ctrlr_key is not None:
        raise invalid_params()  # no keyring: TLS and DH-HMAC-CHAP are not implemented
    target.add_host(sub, p.host)
    return True


class RemoveHostParams(Params):
    nqn: Str = Field(description="NQN of the subsystem")
    host: Str = Field(description="Host NQN")
    tgt_name: Str | None = Field(None, description="Target name")
    timeout_ms: U64 | None = None


@RPC.method("nvmf_subsystem_remove_host", RemoveHostParams, result=TRUE)
def nvmf_subsystem_remove_host(part: NvmfSubsystem, p: RemoveHostParams) -> bool:
    """Disallow a host NQN and disconnect its controllers."""
    target = _target(part, p.tgt_name)
    target.remove_host(target.get(p.nqn), p.host)
    return True


class AllowAnyHostParams(Params):
    nqn: Str = Field(description="NQN of the subsystem")
    allow_any_host: bool = Field(description="Let every host connect")
    tgt_name: Str | None = Field(None, description="Target name")


@RPC.method("nvmf_subsystem_allow_any_host", AllowAnyHostParams, result=TRUE)
def nvmf_subsystem_allow_any_host(part: NvmfSubsystem, p: AllowAnyHostParams) -> bool:
    """Let any host connect, or only the listed ones."""
    target = _target(part, p.tgt_name)
    sub = target.get(p.nqn)
    sub.allow_any_host = p.allow_any_host
    target.bump_genctr()
    return True


# ---------------------------------------------------------------------------- runtime state


@RPC.method("nvmf_subsystem_get_controllers", NqnParams, result=ARRAY)
def nvmf_subsystem_get_controllers(part: NvmfSubsystem,
                                   p: NqnParams) -> list[dict[str, Any]]:
    """List the controllers (host associations) of a subsystem."""
    sub = _sub(part, p.nqn, p.tgt_name)
    return [c.to_json() for _, c in sorted(sub.controllers.items())]


@RPC.method("nvmf_subsystem_get_qpairs", NqnParams, result=ARRAY)
def nvmf_subsystem_get_qpairs(part: NvmfSubsystem, p: NqnParams) -> list[dict[str, Any]]:
    """List the queue pairs (TCP connections) of a subsystem's controllers."""
    sub = _sub(part, p.nqn, p.tgt_name)
    out = []
    for _, ctrlr in sorted(sub.controllers.items()):
        for qp in [ctrlr.admin, *(q for _, q in sorted(ctrlr.io_qpairs.items()))]:
            out.append(qp.to_json())  # type: ignore[attr-defined]
    return out


class TgtNameParams(Params):
    tgt_name: Str | None = None


@RPC.method("nvmf_get_stats", TgtNameParams, result={"type": "object"})
def nvmf_get_stats(part: NvmfSubsystem, p: TgtNameParams) -> dict[str, Any]:
    """Statistics of the (one) poll group: the event loop."""
    target = _target(part, p.tgt_name, by_nqn=False)
    tcp = target.transports.get("TCP")
    conns = list(tcp.connections) if tcp else []
    stats = tcp.stats if tcp else {"admin_qpairs": 0, "io_qpairs": 0, "completed_nvme_io": 0}
    return {"tick_rate": 1_000_000_000, "poll_groups": [{
        "name": "nvmf_tgt_poll_group_000",
        "admin_qpairs": stats["admin_qpairs"], "io_qpairs": stats["io_qpairs"],
        "current_admin_qpairs": sum(1 for c in conns if c.qid == 0),
        "current_io_qpairs": sum(1 for c in conns if c.qid > 0),
        "current_unassociated_qpairs": sum(1 for c in conns if c.qid < 0),
        "pending_bdev_io": 0, "completed_nvme_io": stats["completed_nvme_io"],
        "transports": [{"trtype": "TCP"}] if tcp else [],
    }]}


# ---------------------------------------------------------------------------- startup config


class AdminCmdPassthru(Params):
    identify_ctrlr: bool = False
    identify_uuid_list: bool = False
    get_log_page: bool = False
    get_set_features: bool = False
    sanitize: bool = False
    security_send_recv: bool = False
    fw_update: bool = False
    nvme_mi: bool = False
    vendor_specific: bool = False


class SetConfigParams(Params):
    admin_cmd_passthru: AdminCmdPassthru | None = None
    poll_groups_mask: Str | None = None
    discovery_filter: Str | None = None
    discovery_filters: list[Literal["match_any", "transport", "address", "svcid"]] | None = None
    dhchap_digests: list[Str] | None = None
    dhchap_dhgroups: list[Str] | None = None
    dup_host_policy: Literal["allow", "restrict_per_listener"] | None = None


@RPC.method("nvmf_set_config", SetConfigParams, states=State.STARTUP, result=TRUE)
def nvmf_set_config(part: NvmfSubsystem, p: SetConfigParams) -> bool:
    """Set the target's global options before it starts (stored and dumped)."""
    config = part.target.config
    if p.admin_cmd_passthru is not None:
        if any(p.admin_cmd_passthru.model_dump().values()):
            raise invalid_params()  # there is no NVMe device to pass commands through to
        config["admin_cmd_passthru"] = p.admin_cmd_passthru.model_dump()
    if p.discovery_filters is not None:
        config["discovery_filters"] = [f for f in p.discovery_filters if f != "match_any"]
    for key in ("dhchap_digests", "dhchap_dhgroups", "dup_host_policy", "poll_groups_mask"):
        value = getattr(p, key)
        if value is not None:
            config[key] = value
    return True


class MaxSubsystemsParams(Params):
    max_subsystems: U32


@RPC.method("nvmf_set_max_subsystems", MaxSubsystemsParams, states=State.STARTUP, result=TRUE)
def nvmf_set_max_subsystems(part: NvmfSubsystem, p: MaxSubsystemsParams) -> bool:
    """Set how many subsystems the target may hold (once, before it starts)."""
    target = part.target
    if target.max_subsystems_set:
        raise RpcError(INTERNAL_ERROR, "Must not call more than once")
    target.max_subsystems = p.max_subsystems
    target.max_subsystems_set = True
    return True


class CrdtParams(Params):
    crdt1: U16 = 0
    crdt2: U16 = 0
    crdt3: U16 = 0


@RPC.method("nvmf_set_crdt", CrdtParams, states=State.STARTUP, result=TRUE)
def nvmf_set_crdt(part: NvmfSubsystem, p: CrdtParams) -> bool:
    """Set the command retry delay times (stored and dumped; Identify reports 0)."""
    part.target.crdt = (p.crdt1, p.crdt2, p.crdt3)
    return True


