"""The NVMe-oF target's model: transports, subsystems, namespaces, hosts, listeners.

Mirrors SPDK's ``lib/nvmf`` objects as far as its RPCs show them (``docs/nvmf.md``).
pybdev has one target (SPDK's default ``nvmf_tgt``), one transport type (TCP) and one
poll group (the event loop).  Errors are raised as :class:`RpcError` with SPDK's codes and
texts, since those are what every caller of this API needs.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pybdev.bdev.core import BdevLayer
from pybdev.errors import OperationError
from pybdev.netaddr import is_loopback_ip
from pybdev.nvmf.namespace import CLAIM_MODULE, Namespace
from pybdev.nvmf.nqn import nqn_is_valid
from pybdev.proto.nvme import DISCOVERY_NQN
from pybdev.rpc.errors import INTERNAL_ERROR, INVALID_PARAMS, RpcError

if TYPE_CHECKING:
    from pybdev.nvmf.controller import Controller
    from pybdev.nvmf.tcp import TcpTransport

log = logging.getLogger("pybdev.nvmf")

TGT_NAME = "nvmf_tgt"
__all__ = ["CLAIM_MODULE", "Namespace", "NvmSubsystem", "Target"]
DEFAULT_SERIAL = "00000000000000000000"
DEFAULT_MODEL = "SPDK bdev Controller"
DEFAULT_NAMESPACES = 32
MAX_CNTLID = 0xFFEF
DEFAULT_MAX_SUBSYSTEMS = 1024
UINT32_MAX = 0xFFFFFFFF


def invalid_params(message: str = "Invalid parameters") -> RpcError:
    return RpcError(INVALID_PARAMS, message)


def not_found(nqn: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Subsystem with NQN '{nqn}' not found")


@dataclass
class TransportOpts:
    """``nvmf_create_transport`` options with SPDK's TCP defaults (``lib/nvmf/tcp.c``)."""

    max_queue_depth: int = 128
    max_io_qpairs_per_ctrlr: int = 127
    in_capsule_data_size: int = 4096
    max_io_size: int = 131072
    max_aq_depth: int = 128
    iobuf_small_cache_size: int = UINT32_MAX
    iobuf_large_cache_size: int = UINT32_MAX
    dif_insert_or_strip: bool = False
    zcopy: bool = False
    c2h_success: bool = True
    sock_priority: int = 0
    abort_timeout_sec: int = 1
    ack_timeout: int = 0
    data_wr_pool_size: int = 0
    disable_command_passthru: bool = False
    kas: int = 100
    min_kato: int = 10000
    # accepted, not dumped (HEAD): SPDK keeps them for older configs
    control_msg_num: int = 32
    acceptor_poll_rate: int = 10000

    DUMPED = ("max_queue_depth", "max_io_qpairs_per_ctrlr", "in_capsule_data_size",
              "max_io_size", "max_aq_depth", "iobuf_small_cache_size",
              "iobuf_large_cache_size", "dif_insert_or_strip", "zcopy", "c2h_success",
              "sock_priority", "abort_timeout_sec", "ack_timeout", "data_wr_pool_size",
              "disable_command_passthru", "kas", "min_kato")

    def dump(self) -> dict[str, Any]:
        return {"trtype": "TCP", **{k: getattr(self, k) for k in self.DUMPED}}

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


@dataclass
class ListenAddress:
    trtype: str
    adrfam: str
    traddr: str
    trsvcid: str

    def to_json(self) -> dict[str, str]:
        return {"trtype": self.trtype, "adrfam": self.adrfam, "traddr": self.traddr,
                "trsvcid": self.trsvcid}

    @property
    def key(self) -> tuple[str, str]:
        return (self.traddr, self.trsvcid)


@dataclass
class Listener:
    address: ListenAddress
    secure_channel: bool = False
    ana_state: str = "optimized"
    sock_impl: str | None = None


@dataclass
class NvmSubsystem:
    """One NVM subsystem (or the discovery subsystem) of the target."""

    nqn: str
    subtype: str = "NVMe"
    serial_number: str = DEFAULT_SERIAL
    model_number: str = DEFAULT_MODEL
    allow_any_host: bool = False
    max_namespaces: int = DEFAULT_NAMESPACES
    max_namespaces_given: int = 0
    ana_reporting: bool = False
    min_cntlid: int = 1
    max_cntlid: int = MAX_CNTLID
    dmrsl: int = 2097152
    wzsl: int = 12
    passthrough: bool = False
    enable_nssr: bool = False
    admin_label: str | None = None
    hosts: list[str] = field(default_factory=list)  # newest first, as SPDK lists them
    namespaces: dict[int, Namespace] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    controllers: dict[int, Controller] = field(default_factory=dict)
    next_cntlid: int = 0
    deleting: bool = False

    @property
    def is_discovery(self) -> bool:
        return self.subtype == "Discovery"

    def host_allowed(self, hostnqn: str) -> bool:
        return self.allow_any_host or hostnqn in self.hosts

    def listener(self, traddr: str, trsvcid: str) -> Listener | None:
        for lst in self.listeners:
            if lst.address.key == (traddr, trsvcid):
                return lst
        return None

    def allocate_cntlid(self) -> int | None:
        span = self.max_cntlid - self.min_cntlid + 1
        for i in range(span):
            cntlid = self.min_cntlid + (self.next_cntlid + i) % span
            if cntlid not in self.controllers:
                self.next_cntlid = (cntlid - self.min_cntlid + 1) % span
                return cntlid
        return None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "nqn": self.nqn, "subtype": self.subtype,
            "listen_addresses": [lst.address.to_json() for lst in self.listeners],
            "allow_any_host": self.allow_any_host,
            "hosts": [{"nqn": h} for h in self.hosts],
        }
        if self.is_discovery:
            return out
        out["serial_number"] = self.serial_number
        out["model_number"] = self.model_number
        if self.admin_label is not None:
            out["admin_label"] = self.admin_label
        if self.max_namespaces_given:
            out["max_namespaces"] = self.max_namespaces
        out.update(passthrough=self.passthrough, min_cntlid=self.min_cntlid,
                   max_cntlid=self.max_cntlid, dmrsl=self.dmrsl, wzsl=self.wzsl)
        out["namespaces"] = [ns.to_json(self.ana_reporting)
                             for _, ns in sorted(self.namespaces.items())]
        return out

    def create_params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nqn": self.nqn, "allow_any_host": self.allow_any_host,
                               "serial_number": self.serial_number,
                               "model_number": self.model_number}
        if self.max_namespaces_given:
            out["max_namespaces"] = self.max_namespaces
        out.update(min_cntlid=self.min_cntlid, max_cntlid=self.max_cntlid,
                   ana_reporting=self.ana_reporting, dmrsl=self.dmrsl, wzsl=self.wzsl,
                   passthrough=self.passthrough, enable_nssr=self.enable_nssr)
        if self.admin_label is not None:
            out["admin_label"] = self.admin_label
        return out


def parse_hex(value: str, size: int, what: str) -> bytes:
    if len(value) != size * 2:
        raise invalid_params(f"Invalid {what}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise invalid_params(f"Invalid {what}") from None


class Target:
    """SPDK's default target: its transports and subsystems, and the discovery log."""

    def __init__(self, layer: BdevLayer, allow_remote: bool = False) -> None:
        self.layer = layer
        self.allow_remote = allow_remote
        self.transports: dict[str, TcpTransport] = {}
        self.subsystems: dict[str, NvmSubsystem] = {}
        self.max_subsystems = DEFAULT_MAX_SUBSYSTEMS
        self.max_subsystems_set = False
        #: the TCP transport's data buffers over all connections (--nvmf-max-buffered-mb)
        self.max_buffered = 256 << 20
        self.config: dict[str, Any] = default_config()
        self.genctr = 0
        self.crdt = (0, 0, 0)
        self.discovery = NvmSubsystem(DISCOVERY_NQN, subtype="Discovery", allow_any_host=True)
        self.subsystems[DISCOVERY_NQN] = self.discovery
        #: called with (subsystem, nsid) when a namespace comes or goes (AEN to hosts)
        self.ns_changed: Callable[[NvmSubsystem, int], None] = lambda s, n: None

    # -- lookups ---------------------------------------------------------------------------
    def get(self, nqn: str) -> NvmSubsystem:
        sub = self.subsystems.get(nqn)
        if sub is None:
            raise not_found(nqn)
        return sub

    def sorted_subsystems(self) -> list[NvmSubsystem]:
        return [self.subsystems[n] for n in sorted(self.subsystems)]

    def bump_genctr(self) -> None:
        self.genctr += 1
        for ctrlr in list(self.discovery.controllers.values()):
            ctrlr.discovery_changed()

    # -- subsystems ------------------------------------------------------------------------
    def create_subsystem(self, nqn: str, **kw: Any) -> NvmSubsystem:
        if nqn in self.subsystems or not nqn_is_valid(nqn) or (
                len(self.subsystems) >= self.max_subsystems):
            raise RpcError(INTERNAL_ERROR, f"Unable to create subsystem {nqn}")
        sub = NvmSubsystem(nqn, **kw)
        self.subsystems[nqn] = sub
        self.bump_genctr()
        return sub

    async def delete_subsystem(self, nqn: str) -> None:
        sub = self.get(nqn)
        if sub.is_discovery:
            raise invalid_params()
        if sub.deleting:
            raise RpcError(INTERNAL_ERROR, "Subsystem is already being destroyed.")
        sub.deleting = True
        for ctrlr in list(sub.controllers.values()):
            ctrlr.destroy("subsystem deleted")
        for lst in list(sub.listeners):
            self._unlisten(lst.address)
        sub.listeners.clear()
        # no controller is left to notify: each namespace just stops (drains, unclaims)
        await asyncio.gather(*(ns.stop() for ns in list(sub.namespaces.values())))
        del self.subsystems[nqn]
        self.bump_genctr()

    # -- namespaces ------------------------------------------------------------------------
    def add_ns(self, sub: NvmSubsystem, bdev_name: str, nsid: int = 0, nguid: str | None = None,
               eui64: str | None = None, uuid: str | None = None, anagrpid: int = 0,
               no_auto_visible: bool = False, ptpl_file: str | None = None) -> int:
        if sub.is_discovery:
            raise invalid_params()
        nguid_b = parse_hex(nguid, 16, "nguid") if nguid else None
        eui_b = parse_hex(eui64, 8, "eui64") if eui64 else None
        if nsid == 0:
            free = [n for n in range(1, sub.max_namespaces + 1) if n not in sub.namespaces]
            if not free:
                raise invalid_params()
            nsid = free[0]
        elif nsid in sub.namespaces or nsid > sub.max_namespaces or nsid == 0xFFFFFFFF:
            raise invalid_params()
        if anagrpid > sub.max_namespaces:
            raise invalid_params()
        ns = Namespace(self.layer, sub, nsid, bdev_name, self.ns_changed)
        try:
            ns.open()
        except OperationError:
            raise invalid_params() from None
        bdev = ns.bdev
        if bdev.md_size:
            # SPDK refuses separate metadata ("Can't attach bdev with separate metadata.")
            # and exposes interleaved metadata as an extended LBA format, which pybdev's
            # target does not have yet: it refuses both.
            log.error("Can't attach bdev %s with %s metadata: pybdev's NVMe/TCP namespaces "
                      "carry no metadata", bdev.name,
                      "interleaved" if bdev.md_interleave else "separate")
            ns.unclaim_and_close()
            raise invalid_params()
        ns.uuid = uuid if uuid is not None else bdev.uuid
        ns.nguid = nguid_b if nguid_b is not None else uuidlib.UUID(ns.uuid).bytes
        ns.eui64 = eui_b
        ns.anagrpid = anagrpid or nsid
        ns.no_auto_visible = no_auto_visible
        ns.ptpl_file = ptpl_file
        sub.namespaces[nsid] = ns
        self.ns_changed(sub, nsid)
        return nsid

    async def remove_ns(self, sub: NvmSubsystem, nsid: int) -> None:
        """The namespace leaves (hosts notified), its commands finish, its bdev is freed:
        the same stop as a hot-remove of the bdev (:mod:`pybdev.nvmf.namespace`)."""
        ns = sub.namespaces.get(nsid)
        if ns is None:
            raise invalid_params()
        await ns.stop()

    # -- hosts -----------------------------------------------------------------------------
    def add_host(self, sub: NvmSubsystem, host: str) -> None:
        if not nqn_is_valid(host) or host in sub.hosts:
            raise RpcError(INTERNAL_ERROR, "Internal error")
        sub.hosts.insert(0, host)
        self.bump_genctr()

    def remove_host(self, sub: NvmSubsystem, host: str) -> None:
        if host not in sub.hosts:
            raise RpcError(INTERNAL_ERROR, "Internal error")
        sub.hosts.remove(host)
        for ctrlr in list(sub.controllers.values()):
            if ctrlr.hostnqn == host:
                ctrlr.destroy("host removed")
        self.bump_genctr()

    # -- listeners -------------------------------------------------------------------------
    def check_address(self, address: ListenAddress) -> None:
        """Loopback only, unless the target was started with ``--nvmf-allow-remote``."""
        if self.allow_remote:
            return
        try:
            loopback = is_loopback_ip(address.traddr)
        except ValueError:  # a host name: SPDK listens on addresses only
            loopback = False
        if not loopback:
            raise OperationError(errno.EACCES,
                                 f"{address.traddr} is not a loopback address; start the "
                                 "target with --nvmf-allow-remote to listen on it")

    async def add_listener(self, sub: NvmSubsystem, listener: Listener) -> None:
        address = listener.address
        transport = self.transports.get(address.trtype.upper())
        if transport is None or sub.listener(*address.key) is not None:
            raise invalid_params()
        if listener.secure_channel and sub.allow_any_host:
            raise RpcError(INTERNAL_ERROR,
                           "Cannot establish secure channel, when 'allow_any_host' is set")
        if listener.secure_channel:
            raise invalid_params()  # TLS is not implemented
        try:
            self.check_address(address)
            await transport.listen(address)
        except OperationError as e:
            log.error("cannot listen on %s:%s: %s", address.traddr, address.trsvcid, e)
            raise invalid_params() from None
        sub.listeners.append(listener)
        self.bump_genctr()

    def remove_listener(self, sub: NvmSubsystem, address: ListenAddress) -> None:
        lst = sub.listener(*address.key)
        if lst is None or address.trtype.upper() not in self.transports:
            raise invalid_params()
        sub.listeners.remove(lst)
        for ctrlr in list(sub.controllers.values()):
            ctrlr.listener_removed(address)
        self._unlisten(address)
        self.bump_genctr()

    def _unlisten(self, address: ListenAddress) -> None:
        transport = self.transports.get(address.trtype.upper())
        if transport is not None:
            transport.unlisten(address)


def default_config() -> dict[str, Any]:
    """``nvmf_set_config``'s defaults as SPDK dumps them (HEAD)."""
    return {
        "discovery_filters": [],
        "admin_cmd_passthru": {k: False for k in (
            "identify_ctrlr", "identify_uuid_list", "get_log_page", "get_set_features",
            "sanitize", "security_send_recv", "fw_update", "nvme_mi", "vendor_specific")},
        "dhchap_digests": ["sha256", "sha384", "sha512"],
        "dhchap_dhgroups": ["null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144",
                            "ffdhe8192"],
        "dup_host_policy": "allow",
    }
