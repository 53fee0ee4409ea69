"""nvme: NVMe-oF namespaces attached over NVMe/TCP as bdevs (SPDK's ``bdev_nvme``).

RPCs, with SPDK's parameters, results and errors (``module/bdev/nvme/bdev_nvme_rpc.c``,
``bdev_nvme.c``); the behaviour is in docs/nvme-initiator.md:

* ``bdev_nvme_attach_controller`` (``-t tcp``) -> the new bdev names ``["<name>n<nsid>"]``.
* ``bdev_nvme_detach_controller``, ``bdev_nvme_get_controllers``,
  ``bdev_nvme_reset_controller``, ``bdev_nvme_set_options``, ``bdev_nvme_set_hotplug``.

The controller and its queue pairs are in :mod:`pybdev.bdev.nvme_ctrlr` and
:mod:`pybdev.bdev.nvme_qpair`; the wire protocol in :mod:`pybdev.proto.nvme`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import uuid as uuidlib
from typing import TYPE_CHECKING, Any, Literal

from pybdev.bdev.core import Bdev, BdevModule, BdevState, Callback, ReadBuffer
from pybdev.bdev.nvme_ctrlr import Controller, CtrlrOptions, Namespace, Trid
from pybdev.errors import OperationError
from pybdev.proto import nvme
from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR, INVALID_PARAMS
from pybdev.rpc.registry import BOTH, RpcTable
from pybdev.rpc.types import I32, U8, U16, U32, U64, Params, Str
from pybdev.tasks import background

if TYPE_CHECKING:
    from pybdev.bdev.core import BdevLayer

RPC = RpcTable()
log = logging.getLogger("pybdev.bdev.nvme")

# SPDK's field sizes (include/spdk/nvme.h, nvmf_spec.h): a value must leave room for NUL.
TRSTRING_MAX = 32
TRADDR_MAX = 256
TRSVCID_MAX = 32
NQN_MAX = 223
DEFAULT_MAX_BDEVS = 128
HOTPLUG_PERIOD_DEFAULT = 100000
HOTPLUG_PERIOD_MAX = 10000000
DIGESTS = ("sha256", "sha384", "sha512")
DHGROUPS = ("null", "ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192")
_UUID_NQN = re.compile(r"^nqn\.2014-08\.org\.nvmexpress:uuid:([0-9a-fA-F-]{36})$")

#: The host identity of this process when an attach names none (SPDK makes one per
#: process too: ``nqn.2014-08.org.nvmexpress:uuid:`` + a random UUID).
HOST_UUID = uuidlib.uuid4()
DEFAULT_HOSTNQN = f"nqn.2014-08.org.nvmexpress:uuid:{HOST_UUID}"


def default_options() -> dict[str, Any]:
    """``bdev_nvme_set_options`` as SPDK saves it by default (``bdev_nvme_opts_config_json``)."""
    return {
        "action_on_timeout": "none", "timeout_us": 0, "timeout_admin_us": 0,
        "keep_alive_timeout_ms": 10000, "arbitration_burst": 0, "low_priority_weight": 0,
        "medium_priority_weight": 0, "high_priority_weight": 0,
        "nvme_adminq_poll_period_us": 10000, "nvme_ioq_poll_period_us": 0,
        "io_queue_requests": 0, "delay_cmd_submit": True, "transport_retry_count": 4,
        "bdev_retry_count": 3, "transport_ack_timeout": 0, "ctrlr_loss_timeout_sec": 0,
        "reconnect_delay_sec": 0, "fast_io_fail_timeout_sec": 0,
        "disable_auto_failback": False, "generate_uuids": False, "transport_tos": 0,
        "nvme_error_stat": False, "rdma_srq_size": 0, "io_path_stat": False,
        "allow_accel_sequence": False, "rdma_max_cq_size": 0, "rdma_cm_event_timeout_ms": 0,
        "dhchap_digests": list(DIGESTS), "dhchap_dhgroups": list(DHGROUPS),
        "rdma_umr_per_io": False, "tcp_connect_timeout_ms": 0, "enable_flush": False,
        "multipath_opts": {"policy": "active_passive"},
    }


def resiliency_ok(loss: int, delay: int, fast: int) -> bool:
    """SPDK's ``bdev_nvme_check_io_error_resiliency_params``."""
    if loss < -1:
        return False
    if loss == -1:
        return delay != 0 and not (fast and fast < delay)
    if loss:
        return delay != 0 and delay <= loss and not (fast and (fast < delay or fast > loss))
    return delay == 0 and fast == 0


# ---------------------------------------------------------------------------- bdev


class NvmeBdev(Bdev):
    """One active namespace of an attached controller."""

    product_name = "NVMe disk"
    module_name = "nvme"
    fua_native = True
    read_buffer = ReadBuffer.HELD  # reads complete with fresh bytes from the socket

    def __init__(self, entry: NvmeController, ns: Namespace) -> None:
        ctrl = entry.ctrlr
        cdata = ctrl.cdata
        assert cdata is not None
        io_types = {"read", "write", "flush", "reset"}
        if cdata.oncs & 0x4:
            io_types.add("unmap")
        if cdata.oncs & 0x8:
            io_types.add("write_zeroes")
        bs = ns.block_size
        nguid = ns.ident.nguid
        uuid = str(uuidlib.UUID(bytes=bytes(nguid))) if any(nguid) else None
        limit = max(min(ctrl.max_io_bytes, 0x10000 * bs), bs)
        super().__init__(f"{entry.name}n{ns.nsid}", bs, ns.num_blocks, uuid,
                         io_types=frozenset(io_types), write_cache=bool(cdata.vwc & 1),
                         max_io_bytes=limit - limit % bs)
        self.entry = entry
        self.ctrl = ctrl
        self.nsid = ns.nsid
        self.ns = ns
        self.shift = bs.bit_length() - 1

    def submit_read(self, offset: int, length: int, cb: Callback) -> None:
        self.ctrl.io_request(nvme.IoOpc.READ, self.nsid, offset >> self.shift,
                             length >> self.shift, length, None, cb)

    def submit_write(self, offset: int, data: Any, cb: Callback, fua: bool) -> None:
        self.ctrl.io_request(nvme.IoOpc.WRITE, self.nsid, offset >> self.shift,
                             len(data) >> self.shift, 0, data, cb, fua)

    def submit_unmap(self, offset: int, length: int, cb: Callback) -> None:
        slba, nlb = offset >> self.shift, length >> self.shift
        self.ctrl.io_request(nvme.IoOpc.DATASET_MANAGEMENT, self.nsid, slba, nlb, 0,
                             nvme.encode_dsm_ranges([(slba, nlb)]), cb)

    def submit_write_zeroes(self, offset: int, length: int, cb: Callback) -> None:
        self.ctrl.io_request(nvme.IoOpc.WRITE_ZEROES, self.nsid, offset >> self.shift,
                             length >> self.shift, 0, None, cb)

    def submit_flush(self, offset: int, length: int, cb: Callback) -> None:
        # SPDK sends Flush only with enable_flush and a volatile write cache.
        if self.ctrl.opts.enable_flush and self.write_cache:
            self.ctrl.io_request(nvme.IoOpc.FLUSH, self.nsid, 0, 1, 0, None, cb)
        else:
            cb(0, None)

    def driver_specific(self) -> dict[str, Any]:
        return {"nvme": [self.entry.path_json(self.ns)], "mp_policy": "active_passive"}


# ---------------------------------------------------------------------------- controller


class NvmeController:
    """An attached controller: the :class:`Controller`, its bdevs, its saved params."""

    def __init__(self, module: NvmeModule, name: str, ctrlr: Controller,
                 config: dict[str, Any]) -> None:
        self.module = module
        self.name = name
        self.ctrlr = ctrlr
        self.config = config  # the attach_controller params save_config replays
        self.bdevs: dict[int, NvmeBdev] = {}
        self.deleting = False
        ctrlr.on_namespaces = self._namespaces_changed
        ctrlr.on_gone = self._gone

    def register_namespaces(self) -> list[str]:
        names = []
        for nsid in sorted(self.ctrlr.namespaces):
            bdev = self._register(self.ctrlr.namespaces[nsid])
            if bdev is not None:
                names.append(bdev.name)
        return names

    def _register(self, ns: Namespace) -> NvmeBdev | None:
        try:
            bdev = NvmeBdev(self, ns)
            self.module.layer.register(bdev)
        except OperationError as e:
            log.error("%s: namespace %d not registered: %s", self.name, ns.nsid, e)
            return None
        self.bdevs[ns.nsid] = bdev
        log.info("NVMe bdev %s: %d x %d bytes", bdev.name, bdev.num_blocks, bdev.block_size)
        return bdev

    def _namespaces_changed(self, namespaces: dict[int, Namespace]) -> None:
        if self.deleting:
            return
        layer = self.module.layer
        for nsid, bdev in list(self.bdevs.items()):
            ns = namespaces.get(nsid)
            if ns is None or ns.block_size != bdev.block_size:
                del self.bdevs[nsid]
                if bdev.state is BdevState.REGISTERED:
                    log.info("%s: namespace %d is gone; removing %s", self.name, nsid,
                             bdev.name)
                    background(layer.unregister(bdev), f"removing {bdev.name}")
                continue
            bdev.ns = ns
            if ns.num_blocks != bdev.num_blocks:
                layer.resize(bdev, ns.num_blocks)
        for nsid, ns in sorted(namespaces.items()):
            if nsid not in self.bdevs:
                name = f"{self.name}n{nsid}"
                if layer.get(name) is not None:
                    continue  # the old bdev is still unregistering; the next scan adds it
                self._register(ns)

    def _gone(self) -> None:
        if not self.deleting:
            background(self.module.detach(self.name), f"deleting NVMe controller {self.name}")

    def path_json(self, ns: Namespace) -> dict[str, Any]:
        """SPDK's ``nvme_namespace_info_json``."""
        ctrl = self.ctrlr
        cdata = ctrl.cdata
        assert cdata is not None
        oacs = cdata.oacs
        ctrlr_data: dict[str, Any] = {
            "cntlid": cdata.cntlid, "vendor_id": f"0x{cdata.vid:04x}",
            "model_number": cdata.mn, "serial_number": cdata.sn,
            "firmware_revision": cdata.fr}
        if cdata.subnqn:
            ctrlr_data["subnqn"] = cdata.subnqn
        ctrlr_data["oacs"] = {"security": oacs & 1, "format": (oacs >> 1) & 1,
                              "firmware": (oacs >> 2) & 1, "ns_manage": (oacs >> 3) & 1}
        ctrlr_data["multi_ctrlr"] = bool(cdata.cmic & 0x2)
        ctrlr_data["ana_reporting"] = bool(cdata.cmic & 0x8)
        vs = ctrl.vs
        ver = f"{vs >> 16}.{(vs >> 8) & 0xFF}" + (f".{vs & 0xFF}" if vs & 0xFF else "")
        ns_data: dict[str, Any] = {"id": ns.nsid}
        if cdata.cmic & 0x8:
            ns_data["ana_state"] = "optimized"
        ns_data["can_share"] = bool(ns.ident.nmic & 1)
        out: dict[str, Any] = {"trid": ctrl.trid.to_json(), "ctrlr_data": ctrlr_data,
                               "vs": {"nvme_version": ver}, "ns_data": ns_data}
        if oacs & 1:
            out["security"] = {"opal": False}
        return out

    def info(self) -> dict[str, Any]:
        """SPDK's ``rpc_dump_nvme_bdev_controller_info`` / ``nvme_ctrlr_info_json``."""
        ctrl = self.ctrlr
        state = "deleting" if self.deleting else ctrl.state
        opts = ctrl.opts
        return {"name": self.name, "ctrlrs": [{
            "state": state, "trid": ctrl.trid.to_json(),
            "cntlid": ctrl.cdata.cntlid if ctrl.cdata is not None else ctrl.cntlid,
            "host": {"nqn": opts.hostnqn, "addr": opts.hostaddr, "svcid": opts.hostsvcid,
                     "no_shn_notification": False}}]}


# ---------------------------------------------------------------------------- params


class MultipathOpts(Params):
    policy: Literal["active_passive", "active_active"] | None = None
    selector: Literal["round_robin", "queue_depth"] | None = None
    min_io: U32 | None = None


class AttachParams(Params):
    name: Str
    trtype: Str
    traddr: Str
    adrfam: Str | None = None
    trsvcid: Str | None = None
    priority: Str | None = None
    subnqn: Str | None = None
    hostnqn: Str | None = None
    hostaddr: Str | None = None
    hostsvcid: Str | None = None
    prchk_reftag: bool = False
    prchk_guard: bool = False
    hdgst: bool = False
    ddgst: bool = False
    fabrics_connect_timeout_us: U64 | None = None
    multipath: Literal["disable", "failover", "multipath"] | None = None
    num_io_queues: U32 | None = None
    ctrlr_loss_timeout_sec: I32 | None = None
    reconnect_delay_sec: U32 | None = None
    fast_io_fail_timeout_sec: U32 | None = None
    psk: Str | None = None
    max_bdevs: U32 = DEFAULT_MAX_BDEVS
    dhchap_key: Str | None = None
    dhchap_ctrlr_key: Str | None = None
    allow_unrecognized_csi: bool = False
    multipath_opts: MultipathOpts | None = None
    disable_sq_flow_control: bool = False


class DetachParams(Params):
    name: Str
    trtype: Str | None = None
    traddr: Str | None = None
    adrfam: Str | None = None
    trsvcid: Str | None = None
    subnqn: Str | None = None
    hostaddr: Str | None = None
    hostsvcid: Str | None = None


class GetControllersParams(Params):
    name: Str | None = None


class ResetParams(Params):
    name: Str
    cntlid: U16 | None = None


class SetHotplugParams(Params):
    enable: bool
    period_us: U64 | None = None


class SetOptionsParams(Params):
    action_on_timeout: Literal["none", "reset", "abort"] | None = None
    timeout_us: U64 | None = None
    timeout_admin_us: U64 | None = None
    keep_alive_timeout_ms: U32 | None = None
    arbitration_burst: U32 | None = None
    low_priority_weight: U32 | None = None
    medium_priority_weight: U32 | None = None
    high_priority_weight: U32 | None = None
    nvme_adminq_poll_period_us: U64 | None = None
    nvme_ioq_poll_period_us: U64 | None = None
    io_queue_requests: U32 | None = None
    delay_cmd_submit: bool | None = None
    transport_retry_count: U32 | None = None
    bdev_retry_count: I32 | None = None
    transport_ack_timeout: U8 | None = None
    ctrlr_loss_timeout_sec: I32 | None = None
    reconnect_delay_sec: U32 | None = None
    fast_io_fail_timeout_sec: U32 | None = None
    disable_auto_failback: bool | None = None
    generate_uuids: bool | None = None
    transport_tos: U8 | None = None
    nvme_error_stat: bool | None = None
    rdma_srq_size: U32 | None = None
    io_path_stat: bool | None = None
    allow_accel_sequence: bool | None = None
    rdma_max_cq_size: U32 | None = None
    rdma_cm_event_timeout_ms: U16 | None = None
    dhchap_digests: list[Literal["sha256", "sha384", "sha512"]] | None = None
    dhchap_dhgroups: list[Literal["null", "ffdhe2048", "ffdhe3072", "ffdhe4096",
                                  "ffdhe6144", "ffdhe8192"]] | None = None
    rdma_umr_per_io: bool | None = None
    tcp_connect_timeout_ms: U32 | None = None
    enable_flush: bool | None = None
    multipath_opts: MultipathOpts | None = None


# ---------------------------------------------------------------------------- module


def _too_long(field: str, value: str | None, limit: int) -> None:
    if value is not None and len(value.encode()) > limit:
        raise OperationError(errno.EINVAL, message=f"{field} too long: {value}")


def _adrfam(value: str | None) -> str | None:
    if value is None:
        return None
    names = {"ipv4": "IPv4", "ipv6": "IPv6", "ib": "IB", "fc": "FC"}
    found = names.get(value.lower())
    if found is None:
        raise OperationError(errno.EINVAL, message=f"Failed to parse adrfam: {value}")
    return found


class NvmeModule(BdevModule):
    name = "nvme"
    rpc = RPC

    def __init__(self, layer: BdevLayer) -> None:
        super().__init__(layer)
        self.options = default_options()
        self.hotplug = {"period_us": HOTPLUG_PERIOD_DEFAULT, "enable": False}
        self.controllers: dict[str, NvmeController] = {}
        self._attaching: set[str] = set()

    # -- options ------------------------------------------------------------------------
    def set_options(self, given: dict[str, Any]) -> None:
        new = dict(self.options)
        new.update(given)
        if new["timeout_us"] == 0 and new["timeout_admin_us"] != 0:
            raise OperationError(errno.EINVAL, "timeout_admin_us needs timeout_us")
        if new["bdev_retry_count"] < -1:
            raise OperationError(errno.EINVAL, "bdev_retry_count can't be less than -1")
        if not resiliency_ok(new["ctrlr_loss_timeout_sec"], new["reconnect_delay_sec"],
                             new["fast_io_fail_timeout_sec"]):
            raise OperationError(errno.EINVAL, "ctrlr_loss_timeout_sec, reconnect_delay_sec "
                                               "and fast_io_fail_timeout_sec disagree")
        if self.controllers:
            raise OperationError(errno.EPERM, message="RPC not permitted with nvme "
                                                      "controllers already attached")
        self.options = new

    def set_hotplug(self, enable: bool, period_us: int | None) -> None:
        period = period_us or HOTPLUG_PERIOD_DEFAULT
        self.hotplug = {"period_us": min(period, HOTPLUG_PERIOD_MAX), "enable": enable}

    # -- attach / detach ----------------------------------------------------------------
    async def attach(self, p: AttachParams) -> list[str]:
        """Connect to the controller and register one bdev per active namespace."""
        if p.max_bdevs == 0:
            raise OperationError(errno.EINVAL, message="max_bdevs cannot be zero")
        if len(p.trtype.encode()) > TRSTRING_MAX:
            raise OperationError(errno.EINVAL, message=f"Failed to parse trtype: {p.trtype}")
        _too_long("traddr", p.traddr, TRADDR_MAX)
        adrfam = _adrfam(p.adrfam)
        _too_long("trsvcid", p.trsvcid, TRSVCID_MAX)
        _too_long("subnqn", p.subnqn, NQN_MAX)
        _too_long("hostnqn", p.hostnqn, NQN_MAX)
        _too_long("hostaddr", p.hostaddr, TRADDR_MAX)
        _too_long("hostsvcid", p.hostsvcid, TRSVCID_MAX)
        hostnqn = p.hostnqn or DEFAULT_HOSTNQN
        existing = self.controllers.get(p.name)
        if existing is not None or p.name in self._attaching:
            self._second_path(p, existing, hostnqn)
        num_io_queues = 1024 if p.num_io_queues is None else p.num_io_queues
        if not 1 <= num_io_queues <= 0x10000:
            raise OperationError(errno.EINVAL, message="num_io_queues out of bounds, "
                                                       "min: 1 max: 65536")
        trid = Trid("TCP" if p.trtype.upper() == "TCP" else p.trtype.upper(), p.traddr,
                    adrfam, p.trsvcid or "", p.subnqn or "")
        for other in self.controllers.values():
            t = other.ctrlr.trid
            if ((t.trtype, t.traddr, t.trsvcid, t.subnqn) == (trid.trtype, trid.traddr,
                                                              trid.trsvcid, trid.subnqn)
                    and other.ctrlr.opts.hostnqn == hostnqn):
                raise OperationError(errno.EEXIST, f"a controller with traddr {p.traddr} "
                                                   f"and hostnqn {hostnqn} already exists")
        if not p.name:
            raise OperationError(errno.EINVAL, "controller name must not be empty")
        o = self.options
        loss = o["ctrlr_loss_timeout_sec"] if p.ctrlr_loss_timeout_sec is None \
            else p.ctrlr_loss_timeout_sec
        delay = o["reconnect_delay_sec"] if p.reconnect_delay_sec is None \
            else p.reconnect_delay_sec
        fast = o["fast_io_fail_timeout_sec"] if p.fast_io_fail_timeout_sec is None \
            else p.fast_io_fail_timeout_sec
        if not resiliency_ok(loss, delay, fast):
            raise OperationError(errno.EINVAL, "ctrlr_loss_timeout_sec, reconnect_delay_sec "
                                               "and fast_io_fail_timeout_sec disagree")
        for key in (p.psk, p.dhchap_key, p.dhchap_ctrlr_key):
            if key is not None:
                raise OperationError(errno.ENOKEY, f"key {key!r}: pybdev has no keyring "
                                                   f"(TLS and DH-HMAC-CHAP are not supported)")
        if trid.trtype != "TCP":
            raise OperationError(errno.ENODEV, f"transport {p.trtype} is not available "
                                               f"(pybdev's initiator speaks TCP only)")
        m = _UUID_NQN.match(hostnqn)
        hostid = uuidlib.UUID(m.group(1)).bytes if m else HOST_UUID.bytes
        fct = (o.get("fabrics_connect_timeout_us", 500000)
               if p.fabrics_connect_timeout_us is None else p.fabrics_connect_timeout_us)
        opts = CtrlrOptions(
            hostnqn=hostnqn, hostid=hostid, hostaddr=p.hostaddr or "",
            hostsvcid=p.hostsvcid or "", hdgst=p.hdgst, ddgst=p.ddgst,
            num_io_queues=num_io_queues, ctrlr_loss_timeout_sec=loss,
            reconnect_delay_sec=delay, fast_io_fail_timeout_sec=fast,
            keep_alive_timeout_ms=o["keep_alive_timeout_ms"],
            fabrics_connect_timeout_us=fct,
            disable_sq_flow_control=p.disable_sq_flow_control,
            bdev_retry_count=o["bdev_retry_count"], enable_flush=o["enable_flush"])
        multipath = p.multipath or "multipath"
        mp_opts = {"policy": (p.multipath_opts.policy if p.multipath_opts is not None
                              and p.multipath_opts.policy else
                              o["multipath_opts"].get("policy", "active_passive"))}
        config: dict[str, Any] = {"name": p.name, **trid.to_json(),
                                  "prchk_reftag": p.prchk_reftag,
                                  "prchk_guard": p.prchk_guard,
                                  "ctrlr_loss_timeout_sec": loss, "reconnect_delay_sec": delay,
                                  "fast_io_fail_timeout_sec": fast, "hostnqn": hostnqn,
                                  "hdgst": p.hdgst, "ddgst": p.ddgst}
        if p.hostaddr:
            config["hostaddr"] = p.hostaddr
        if p.hostsvcid:
            config["hostsvcid"] = p.hostsvcid
        if multipath == "multipath":
            config["multipath"] = "multipath"
        config.update({"fabrics_connect_timeout_us": fct, "num_io_queues": num_io_queues,
                       "disable_sq_flow_control": p.disable_sq_flow_control,
                       "multipath_opts": mp_opts})
        ctrlr = Controller(p.name, trid, opts)
        self._attaching.add(p.name)
        try:
            try:
                await ctrlr.connect()
            except OperationError as e:
                log.error("attaching %s at %s:%s failed: %s", p.name, p.traddr,
                          p.trsvcid, e.message)
                raise OperationError(errno.EIO, e.message) from None
            entry = NvmeController(self, p.name, ctrlr, config)
            self.controllers[p.name] = entry
        finally:
            self._attaching.discard(p.name)
        names = entry.register_namespaces()
        log.info("NVMe controller %s attached to %s at %s:%s: %s", p.name, trid.subnqn,
                 p.traddr, p.trsvcid, ", ".join(names) or "no namespaces")
        await self.layer.wait_for_examine()
        return names[:p.max_bdevs]

    @staticmethod
    def _second_path(p: AttachParams, existing: NvmeController | None, hostnqn: str) -> None:
        """SPDK's checks for an attach under a name in use; pybdev keeps one path."""
        if p.multipath == "disable":
            raise OperationError(errno.EALREADY, message=f"A controller named {p.name} already "
                                                         f"exists and multipath is disabled")
        if existing is None:
            raise OperationError(errno.EALREADY, message=f"A controller named {p.name} is "
                                                         f"being attached")
        t = existing.ctrlr.trid
        o = existing.ctrlr.opts
        if (p.traddr == t.traddr and (p.trsvcid or "") == t.trsvcid
                and (p.hostaddr or "") == o.hostaddr and (p.hostsvcid or "") == o.hostsvcid):
            raise OperationError(errno.EALREADY, message=f"A controller named {p.name} already "
                                                         f"exists with the specified network "
                                                         f"path")
        if (p.subnqn or "") != t.subnqn:
            raise OperationError(errno.EINVAL, message=f"A controller named {p.name} already "
                                                       f"exists, but uses a different subnqn "
                                                       f"({t.subnqn})")
        if hostnqn != o.hostnqn and p.hostnqn is not None:
            raise OperationError(errno.EINVAL, message=f"A controller named {p.name} already "
                                                       f"exists, but uses a different hostnqn "
                                                       f"({o.hostnqn})")
        if p.prchk_reftag or p.prchk_guard:
            raise OperationError(errno.EINVAL, message=f"A controller named {p.name} already "
                                                       f"exists. To add a path, do not specify "
                                                       f"PI options.")
        raise OperationError(errno.EOPNOTSUPP, f"a second path to controller {p.name}: "
                                               f"pybdev's initiator keeps one path")

    def get(self, name: str) -> NvmeController:
        entry = self.controllers.get(name)
        if entry is None:
            raise OperationError(errno.ENODEV, f"no NVMe controller named {name}")
        return entry

    async def detach(self, name: str, path: DetachParams | None = None) -> None:
        entry = self.get(name)
        if path is not None and not _path_matches(entry, path):
            raise OperationError(errno.ENODEV, f"controller {name} has no such path")
        if entry.deleting:
            raise OperationError(errno.EALREADY, f"controller {name} is being deleted")
        entry.deleting = True
        try:
            for bdev in list(entry.bdevs.values()):
                if bdev.state is BdevState.REGISTERED:
                    await self.layer.unregister(bdev)
            entry.bdevs.clear()
            await entry.ctrlr.shutdown()
        finally:
            self.controllers.pop(name, None)
        log.info("NVMe controller %s detached", name)

    async def reset(self, name: str, cntlid: int | None) -> None:
        entry = self.get(name)
        if cntlid is not None and cntlid != 0 and cntlid != entry.ctrlr.cntlid:
            raise OperationError(errno.ENODEV, f"controller {name} has no cntlid {cntlid}")
        await entry.ctrlr.reset()

    # -- module hooks -------------------------------------------------------------------
    def write_config(self) -> list[Any]:
        batch = [{"method": "bdev_nvme_attach_controller", "params": dict(c.config)}
                 for c in self.controllers.values()]
        return [{"method": "bdev_nvme_set_options", "params": dict(self.options)}, batch,
                {"method": "bdev_nvme_set_hotplug", "params": dict(self.hotplug)}]

    async def fini(self) -> None:
        for entry in list(self.controllers.values()):
            entry.deleting = True
            try:
                await asyncio.wait_for(entry.ctrlr.shutdown(), 5)
            except Exception:
                log.exception("NVMe controller %s did not shut down cleanly", entry.name)
        self.controllers.clear()


def _path_matches(entry: NvmeController, p: DetachParams) -> bool:
    t = entry.ctrlr.trid
    o = entry.ctrlr.opts
    checks = [(p.trtype, t.trtype, True), (p.traddr, t.traddr, False),
              (p.adrfam, t.adrfam or "", True), (p.trsvcid, t.trsvcid, False),
              (p.subnqn, t.subnqn, False), (p.hostaddr, o.hostaddr, False),
              (p.hostsvcid, o.hostsvcid, False)]
    for given, have, fold in checks:
        if given is None:
            continue
        if (given.lower() != have.lower()) if fold else (given != have):
            return False
    return True


# ---------------------------------------------------------------------------- RPC


@RPC.method("bdev_nvme_attach_controller", AttachParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED),
            result={"type": "array", "items": {"type": "string"}})
async def bdev_nvme_attach_controller(module: NvmeModule, p: AttachParams) -> list[str]:
    """Attach an NVMe-oF controller over TCP; one bdev per active namespace (<name>n<nsid>)."""
    return await module.attach(p)


@RPC.method("bdev_nvme_detach_controller", DetachParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
async def bdev_nvme_detach_controller(module: NvmeModule, p: DetachParams) -> bool:
    """Detach an NVMe controller: delete its bdevs, shut the controller down, disconnect."""
    given = any(v is not None for k, v in p.model_dump().items() if k != "name")
    await module.detach(p.name, p if given else None)
    return True


@RPC.method("bdev_nvme_get_controllers", GetControllersParams,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED),
            result={"type": "array", "items": {"type": "object"}})
def bdev_nvme_get_controllers(module: NvmeModule, p: GetControllersParams) -> list[Any]:
    """List the attached NVMe controllers (SPDK's format)."""
    if p.name is not None:
        entry = module.controllers.get(p.name)
        if entry is None:
            raise OperationError(errno.EINVAL, message=f"Controller {p.name} does not exist")
        return [entry.info()]
    return [c.info() for c in module.controllers.values()]


@RPC.method("bdev_nvme_reset_controller", ResetParams,
            decode_error=(INVALID_PARAMS, "Invalid argument"), result={"type": "boolean"})
async def bdev_nvme_reset_controller(module: NvmeModule, p: ResetParams) -> bool:
    """Reset an NVMe controller: a new association; I/O waits and resumes."""
    await module.reset(p.name, p.cntlid)
    return True


@RPC.method("bdev_nvme_set_options", SetOptionsParams, states=BOTH,
            decode_error=(INTERNAL_ERROR, DECODE_FAILED), result={"type": "boolean"})
def bdev_nvme_set_options(module: NvmeModule, p: SetOptionsParams) -> bool:
    """Set the options of the nvme bdev module (before any controller is attached)."""
    given = p.model_dump(exclude_none=True)
    if "multipath_opts" in given:
        given["multipath_opts"] = {k: v for k, v in given["multipath_opts"].items()
                                   if v is not None} or {"policy": "active_passive"}
        given["multipath_opts"].setdefault("policy", "active_passive")
    module.set_options(given)
    return True


@RPC.method("bdev_nvme_set_hotplug", SetHotplugParams,
            decode_error=(INVALID_PARAMS, "Invalid argument"), result={"type": "boolean"})
def bdev_nvme_set_hotplug(module: NvmeModule, p: SetHotplugParams) -> bool:
    """Hotplug of PCIe NVMe devices: accepted and saved (pybdev has no PCIe)."""
    module.set_hotplug(p.enable, p.period_us)
    return True
