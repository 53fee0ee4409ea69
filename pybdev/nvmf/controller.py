"""NVMe-oF controllers: the admin and fabrics command set and the NVM I/O commands.

One :class:`Controller` per association (admin Connect with CNTLID 0xFFFF); its queue
pairs are TCP connections (:mod:`pybdev.nvmf.tcp`).  Commands complete through
``qpair.complete(cid, status, dw0)`` or ``qpair.send_data(cid, data)``; every field of a
command is checked here before use (``docs/nvmf.md`` lists the statuses, which follow
SPDK's ``lib/nvmf/ctrlr.c`` / ``ctrlr_bdev.c`` and the kernel's ``drivers/nvme/target``).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import uuid as uuidlib
from typing import TYPE_CHECKING, Any, Final, Protocol

from pybdev import __version__
from pybdev.export import io
from pybdev.export.status import NVME_STATUS
from pybdev.proto import nvme
from pybdev.proto.nvme import (
    AER_NS_ATTR_CHANGED,
    CSTS_CFS,
    CSTS_RDY,
    CSTS_SHST_COMPLETE,
    NSID_ALL,
    OAES_DISCOVERY_CHANGE,
    OAES_NS_ATTR,
    AdminOpc,
    Cns,
    Fid,
    IoOpc,
    Lid,
    Sc,
)

if TYPE_CHECKING:
    from pybdev.nvmf.namespace import Namespace
    from pybdev.nvmf.target import ListenAddress, NvmSubsystem, Target, TransportOpts

log = logging.getLogger("pybdev.nvmf")

DNR = nvme.STATUS_DNR
VS = 0x00010300  # NVMe 1.3: the host then needs CNS 0x03, which is served
AERL = 3
_U32 = struct.Struct("<I")


class QPair(Protocol):
    qid: int
    sqsize: int

    def complete(self, cid: int, status: int = 0, dw0: int = 0, dw1: int = 0) -> None: ...
    def send_data(self, cid: int, data: Any) -> None: ...
    def close(self, reason: str) -> None: ...
    @property
    def local_address(self) -> tuple[str, str]: ...


class Controller:
    """An association of one host with one subsystem: admin state, features, AERs."""

    def __init__(self, target: Target, sub: NvmSubsystem, cntlid: int, hostnqn: str,
                 hostid: bytes, kato: int, admin: QPair, opts: TransportOpts) -> None:
        self.target = target
        self.sub = sub
        self.cntlid = cntlid
        self.hostnqn = hostnqn
        self.hostid = hostid
        self.opts = opts
        self.admin = admin
        self.io_qpairs: dict[int, QPair] = {}
        self.cc = 0
        self.csts = 0
        self.aec = 0
        self.aers: list[int] = []  # CIDs of held Asynchronous Event Requests
        self.events: list[int] = []  # AEN DW0s waiting for an AER
        self.changed_ns: set[int] = set()
        self.ns_notice_masked = False  # until the host reads the changed-ns log
        self.destroyed = False
        self.kato = self._kato(kato)
        self._last_keepalive = time.monotonic()
        self._ka_timer: asyncio.TimerHandle | None = None
        if self.kato:
            self._ka_timer = asyncio.get_running_loop().call_later(
                self.kato / 1000, self._check_keepalive)

    # -- lifecycle ---------------------------------------------------------------------
    def _kato(self, kato: int) -> int:
        """SPDK's rounding (``nvmf_ctrlr_create``): 0 stays 0, small goes to min_kato."""
        if kato == 0:
            return 0
        if kato <= self.opts.min_kato:
            return self.opts.min_kato
        step = self.opts.kas * 100
        return -(-kato // step) * step

    def _check_keepalive(self) -> None:
        if self.destroyed:
            return
        idle = time.monotonic() - self._last_keepalive
        if idle * 1000 >= self.kato:
            log.warning("controller %d of %s: keep-alive timeout (%d ms)", self.cntlid,
                        self.sub.nqn, self.kato)
            self.destroy("keep-alive timeout")
            return
        self._ka_timer = asyncio.get_running_loop().call_later(
            self.kato / 1000 - idle, self._check_keepalive)

    def touch(self) -> None:
        self._last_keepalive = time.monotonic()

    def destroy(self, reason: str) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        log.info("controller %d of %s (%s) ends: %s", self.cntlid, self.sub.nqn, self.hostnqn,
                 reason)
        if self._ka_timer is not None:
            self._ka_timer.cancel()
        if self.sub.controllers.get(self.cntlid) is self:
            del self.sub.controllers[self.cntlid]
        for qp in list(self.io_qpairs.values()):
            qp.close(reason)
        self.io_qpairs.clear()
        self.admin.close(reason)

    def qpair_closed(self, qp: QPair) -> None:
        if qp is self.admin:
            self.destroy("admin queue closed")
        elif self.io_qpairs.get(qp.qid) is qp:
            del self.io_qpairs[qp.qid]

    def listener_removed(self, address: ListenAddress) -> None:
        if self.admin.local_address == address.key:
            self.destroy("listener removed")

    @property
    def ready(self) -> bool:
        return bool(self.csts & CSTS_RDY)

    @property
    def is_discovery(self) -> bool:
        return self.sub.is_discovery

    def to_json(self) -> dict[str, Any]:
        return {"cntlid": self.cntlid,
                "cntrltype": "discovery" if self.is_discovery else "io",
                "hostnqn": self.hostnqn, "hostid": str(uuidlib.UUID(bytes=self.hostid)),
                "num_io_qpairs": len(self.io_qpairs)}

    # -- properties (Fabrics Property Get/Set) -----------------------------------------
    def cap(self) -> int:
        depth = self.opts.max_aq_depth if self.is_discovery else self.opts.max_queue_depth
        return ((depth - 1) | 1 << 16 | 30 << 24 | 1 << 37)

    def property_get(self, offset: int, size: int) -> int | None:
        if offset == nvme.PROP_CAP and size == 8:
            return self.cap()
        if size != 4:
            return None
        return {nvme.PROP_VS: VS, nvme.PROP_CC: self.cc, nvme.PROP_CSTS: self.csts}.get(offset)

    def property_set(self, offset: int, size: int, value: int) -> bool:
        if offset != nvme.PROP_CC or size != 4:
            return False
        old, self.cc = self.cc, value & 0xFFFFFFFF
        en, was_en = value & 1, old & 1
        shn = (value >> 14) & 3
        if shn and not (old >> 14) & 3:
            self.csts = CSTS_SHST_COMPLETE  # nothing to flush: bdevs complete on their own
            self.cc = 0
            return True
        if not shn:
            self.csts &= ~CSTS_SHST_COMPLETE
        if en and not was_en:
            css, mps, ams = (value >> 4) & 7, (value >> 7) & 0xF, (value >> 11) & 7
            iosqes, iocqes = (value >> 16) & 0xF, (value >> 20) & 0xF
            if (mps or ams or css not in (0, 6)
                    or (not self.is_discovery and (iosqes != 6 or iocqes != 4))):
                self.csts |= CSTS_CFS
            else:
                self.csts |= CSTS_RDY
        elif was_en and not en:
            self.csts &= ~CSTS_RDY
            for qp in list(self.io_qpairs.values()):
                qp.close("controller disabled")
            self.io_qpairs.clear()
        return True

    # -- asynchronous events -----------------------------------------------------------
    def ns_changed(self, nsid: int) -> None:
        self.changed_ns.add(nsid)
        if self.aec & OAES_NS_ATTR and not self.ns_notice_masked:
            self.ns_notice_masked = True
            self._post(AER_NS_ATTR_CHANGED)

    def discovery_changed(self) -> None:
        if self.aec & OAES_DISCOVERY_CHANGE:
            self._post(nvme.AER_DISCOVERY_CHANGE)

    def _post(self, dw0: int) -> None:
        if self.aers:
            self.admin.complete(self.aers.pop(0), 0, dw0)
        else:
            self.events.append(dw0)

    # -- admin commands ----------------------------------------------------------------
    def admin_command(self, qp: QPair, cmd: nvme.Sqe, data: bytes | None) -> None:
        self.touch()
        opc, cid = cmd.opc, cmd.cid
        if not self.ready:
            qp.complete(cid, Sc.COMMAND_SEQUENCE_ERROR | DNR)
            return
        if opc == AdminOpc.KEEP_ALIVE:
            qp.complete(cid)
        elif opc == AdminOpc.IDENTIFY:
            self._identify(qp, cmd)
        elif opc == AdminOpc.GET_LOG_PAGE:
            self._get_log_page(qp, cmd)
        elif opc == AdminOpc.ASYNC_EVENT_REQUEST:
            if len(self.aers) > AERL:
                qp.complete(cid, Sc.AER_LIMIT_EXCEEDED | DNR)
            elif self.events:
                qp.complete(cid, 0, self.events.pop(0))
            else:
                self.aers.append(cid)
        elif opc == AdminOpc.SET_FEATURES:
            self._set_features(qp, cmd)
        elif opc == AdminOpc.GET_FEATURES:
            self._get_features(qp, cmd)
        elif opc == AdminOpc.ABORT and not self.is_discovery:
            qp.complete(cid, 0, 1)  # "not aborted": legal, and what the kernel target does
        else:
            qp.complete(cid, Sc.INVALID_OPCODE | DNR)

    def identify_controller(self) -> bytes:
        sub, opts = self.sub, self.opts
        if self.is_discovery:
            ident = nvme.IdentifyController(
                sn=sub.serial_number, mn=sub.model_number, fr=__version__[:8],
                subnqn=sub.nqn, cntlid=self.cntlid, cntrltype=nvme.CNTRLTYPE_DISCOVERY,
                mdts=0, ver=VS, lpa=0x04, maxcmd=opts.max_aq_depth, oaes=OAES_DISCOVERY_CHANGE,
                cmic=0, nn=0, oncs=0, vwc=0, kas=opts.kas, ioccsz=0, iorcsz=0, msdbd=0,
                sgls=0x100001)
            return ident.encode()
        mdts = max(opts.max_io_size // 4096, 1).bit_length() - 1
        ident = nvme.IdentifyController(
            sn=sub.serial_number, mn=sub.model_number, fr=__version__[:8], subnqn=sub.nqn,
            cntlid=self.cntlid, mdts=mdts, ver=VS, maxcmd=opts.max_queue_depth,
            nn=sub.max_namespaces, kas=opts.kas, ioccsz=(64 + opts.in_capsule_data_size) // 16,
            oaes=OAES_NS_ATTR, ctratt=0x01)
        return ident.encode()

    def _identify(self, qp: QPair, cmd: nvme.Sqe) -> None:
        cns = cmd.cdw10 & 0xFF
        cid = cmd.cid
        if cmd.sgl_len != 4096:
            qp.complete(cid, Sc.SGL_LENGTH_INVALID | DNR)
            return
        if cns == Cns.CONTROLLER:
            qp.send_data(cid, self.identify_controller())
            return
        if self.is_discovery:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)
            return
        nsid = cmd.nsid
        namespaces = self.sub.namespaces
        if cns == Cns.NAMESPACE:
            if nsid == 0 or nsid == NSID_ALL:
                qp.complete(cid, Sc.INVALID_NAMESPACE | DNR)
                return
            ns = namespaces.get(nsid)
            qp.send_data(cid, identify_namespace(ns) if ns else bytes(4096))
        elif cns == Cns.ACTIVE_NS_LIST:
            if nsid >= 0xFFFFFFFE:
                qp.complete(cid, Sc.INVALID_NAMESPACE | DNR)
                return
            qp.send_data(cid, nvme.encode_ns_list(list(namespaces), after=nsid))
        elif cns == Cns.NS_ID_DESCRIPTORS:
            ns = namespaces.get(nsid)
            if ns is None:
                qp.complete(cid, Sc.INVALID_NAMESPACE | DNR)
                return
            descs = []
            if ns.eui64 and any(ns.eui64):
                descs.append(nvme.NsIdDescriptor(nvme.Nidt.EUI64, ns.eui64))
            if ns.nguid and any(ns.nguid):
                descs.append(nvme.NsIdDescriptor(nvme.Nidt.NGUID, ns.nguid))
            if ns.uuid:
                descs.append(nvme.NsIdDescriptor(nvme.Nidt.UUID, uuidlib.UUID(ns.uuid).bytes))
            descs.append(nvme.NsIdDescriptor(nvme.Nidt.CSI, b"\0"))
            qp.send_data(cid, nvme.encode_ns_descriptors(descs))
        else:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)

    def _get_log_page(self, qp: QPair, cmd: nvme.Sqe) -> None:
        lid, length, offset, rae = nvme.log_page_fields(cmd)
        cid = cmd.cid
        if cmd.sgl_len != length or offset % 4:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)
            return
        if self.is_discovery:
            if lid != Lid.DISCOVERY:
                qp.complete(cid, Sc.INVALID_LOG_PAGE | DNR)
                return
            page = self.discovery_log()
        elif lid == Lid.ERROR:
            page = bytes(64)
        elif lid in (Lid.SMART, Lid.FIRMWARE_SLOT):
            page = bytes(512) if lid == Lid.FIRMWARE_SLOT else nvme.encode_smart_log()
        elif lid == Lid.CHANGED_NS_LIST:
            page = nvme.encode_changed_ns_list(sorted(self.changed_ns))
            if not rae:
                self.changed_ns.clear()
                self.ns_notice_masked = False
        elif lid == Lid.COMMANDS_EFFECTS:
            page = commands_effects_log()
        else:
            qp.complete(cid, Sc.INVALID_LOG_PAGE | DNR)
            return
        if offset > len(page):
            qp.complete(cid, Sc.INVALID_FIELD | DNR)
            return
        window = page[offset:offset + length]
        qp.send_data(cid, window + bytes(length - len(window)))

    def discovery_log(self) -> bytes:
        entries = []
        transport = self.target.transports.get("TCP")
        for sub in self.target.sorted_subsystems():
            if not sub.is_discovery and not sub.host_allowed(self.hostnqn):
                continue
            for lst in sub.listeners:
                a = lst.address
                entries.append(nvme.DiscoveryEntry(
                    trtype=nvme.TRTYPE_TCP,
                    adrfam=nvme.ADRFAM_IPV6 if a.adrfam.lower() == "ipv6" else nvme.ADRFAM_IPV4,
                    subtype=(nvme.SUBTYPE_CURRENT_DISCOVERY if sub.is_discovery
                             else nvme.SUBTYPE_NVME),
                    treq=0x02, portid=transport.portid(a) if transport else 0,
                    trsvcid=a.trsvcid, subnqn=sub.nqn, traddr=a.traddr,
                    asqsz=self.opts.max_aq_depth, eflags=3 if sub.is_discovery else 0))
        return nvme.encode_discovery_log(self.target.genctr, entries)

    def _set_features(self, qp: QPair, cmd: nvme.Sqe) -> None:
        fid, cid, value = cmd.cdw10 & 0xFF, cmd.cid, cmd.cdw11
        if fid == Fid.KEEP_ALIVE_TIMER:
            self.kato = self._kato(value)
            qp.complete(cid)
        elif fid == Fid.ASYNC_EVENT_CONFIGURATION:
            allowed = OAES_DISCOVERY_CHANGE if self.is_discovery else OAES_NS_ATTR | 0xFF
            if value & ~allowed:
                qp.complete(cid, Sc.INVALID_FIELD | DNR)
                return
            self.aec = value
            qp.complete(cid)
        elif self.is_discovery:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)
        elif fid == Fid.NUMBER_OF_QUEUES:
            if self.io_qpairs:
                qp.complete(cid, Sc.COMMAND_SEQUENCE_ERROR)
            elif value & 0xFFFF == 0xFFFF or value >> 16 == 0xFFFF:
                qp.complete(cid, Sc.INVALID_FIELD | DNR)
            else:
                n = self.opts.max_io_qpairs_per_ctrlr - 1
                qp.complete(cid, 0, n | n << 16)
        elif fid == Fid.VOLATILE_WRITE_CACHE:
            qp.complete(cid)
        else:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)

    def _get_features(self, qp: QPair, cmd: nvme.Sqe) -> None:
        fid, cid = cmd.cdw10 & 0xFF, cmd.cid
        if fid == Fid.KEEP_ALIVE_TIMER:
            qp.complete(cid, 0, self.kato)
        elif fid == Fid.ASYNC_EVENT_CONFIGURATION:
            qp.complete(cid, 0, self.aec)
        elif self.is_discovery:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)
        elif fid == Fid.NUMBER_OF_QUEUES:
            n = self.opts.max_io_qpairs_per_ctrlr - 1
            qp.complete(cid, 0, n | n << 16)
        elif fid == Fid.VOLATILE_WRITE_CACHE:
            qp.complete(cid, 0, 1)
        elif fid == Fid.HOST_IDENTIFIER and cmd.cdw11 & 1 and cmd.sgl_len == 16:
            qp.send_data(cid, self.hostid)
        else:
            qp.complete(cid, Sc.INVALID_FIELD | DNR)

    # -- I/O commands ------------------------------------------------------------------
    def io_command(self, qp: QPair, cmd: nvme.Sqe, data: Any) -> None:
        cid = cmd.cid
        ns = self.sub.namespaces.get(cmd.nsid)
        if not self.ready:
            qp.complete(cid, Sc.COMMAND_SEQUENCE_ERROR | DNR)
            return
        desc = ns.desc if ns is not None else None
        if ns is None or desc is None:
            qp.complete(cid, Sc.INVALID_NAMESPACE | DNR)
            return
        opc = cmd.opc
        op = NVME_OPS[opc]
        bdev = desc.bdev
        bs = bdev.block_size
        if op == io.READ or op == io.WRITE or op == io.WRITE_ZEROES:
            slba = cmd.cdw10 | cmd.cdw11 << 32
            nlb = (cmd.cdw12 & 0xFFFF) + 1
            if slba + nlb > bdev.num_blocks:
                qp.complete(cid, Sc.LBA_OUT_OF_RANGE | DNR)
                return
            length = nlb * bs
            ns.inflight += 1
            if op == io.READ:
                if cmd.sgl_len != length:
                    ns.inflight -= 1
                    qp.complete(cid, Sc.SGL_LENGTH_INVALID | DNR)
                    return
                desc.read(slba * bs, length, _ReadDone(qp, cid, ns))
            elif op == io.WRITE:
                if data is None or len(data) != length:
                    ns.inflight -= 1
                    qp.complete(cid, Sc.SGL_LENGTH_INVALID | DNR)
                    return
                desc.write(slba * bs, data, _Done(qp, cid, ns), bool(cmd.cdw12 & 1 << 30))
            else:
                io.submit(desc, op, slba * bs, length, None, bool(cmd.cdw12 & 1 << 30),
                          _Done(qp, cid, ns))
        elif op == io.FLUSH:
            if not bdev.supports("flush"):
                qp.complete(cid)
                return
            ns.inflight += 1
            io.submit(desc, op, 0, 0, None, False, _Done(qp, cid, ns))
        elif opc == IoOpc.DATASET_MANAGEMENT:
            self._dsm(qp, cmd, ns, data)
        else:
            qp.complete(cid, Sc.INVALID_OPCODE | DNR)

    def _dsm(self, qp: QPair, cmd: nvme.Sqe, ns: Namespace, data: bytes | None) -> None:
        cid = cmd.cid
        nr = (cmd.cdw10 & 0xFF) + 1
        # The Linux host always sends 4 KiB of ranges whatever NR says (nvme_setup_discard
        # allocates NVME_DSM_MAX_RANGES): read NR ranges and ignore the rest.
        if data is None or not nr * 16 <= len(data) <= 4096:
            qp.complete(cid, Sc.SGL_LENGTH_INVALID | DNR)
            return
        if not cmd.cdw11 & 0x4:  # only deallocate does anything; the rest are hints
            qp.complete(cid)
            return
        desc = ns.desc
        assert desc is not None  # io_command checked it
        bdev = desc.bdev
        ranges = [(s, n) for s, n in nvme.decode_dsm_ranges(data, nr) if n]
        for slba, nlb in ranges:
            if slba + nlb > bdev.num_blocks:
                qp.complete(cid, Sc.LBA_OUT_OF_RANGE | DNR)
                return
        if not ranges or not bdev.supports("unmap"):
            qp.complete(cid)
            return
        left = [len(ranges), 0]
        done = _Done(qp, cid, ns)
        ns.inflight += 1

        def one(status: int, _data: Any) -> None:
            left[0] -= 1
            if status and not left[1]:
                left[1] = status
            if left[0] == 0:
                done(left[1], None)

        bs = bdev.block_size
        for slba, nlb in ranges:
            io.submit(desc, io.UNMAP, slba * bs, nlb * bs, None, False, one)


# NVM command set opcodes -> the export base's operations (pybdev/export/io.py).  DSM is
# not one of them: its ranges come in the data and each becomes an unmap.
NVME_OPS: Final = io.op_table({
    IoOpc.READ: io.READ,
    IoOpc.WRITE: io.WRITE,
    IoOpc.FLUSH: io.FLUSH,
    IoOpc.WRITE_ZEROES: io.WRITE_ZEROES,
})


class _Done:
    """Completion of a command without data to the host (a callable object: no closure)."""

    __slots__ = ("cid", "ns", "qp")

    def __init__(self, qp: QPair, cid: int, ns: Namespace) -> None:
        self.qp = qp
        self.cid = cid
        self.ns = ns

    def __call__(self, status: int, _data: Any) -> None:
        self.ns.io_done()
        if status:
            self.qp.complete(self.cid, NVME_STATUS(status))
        else:
            self.qp.complete(self.cid)


class _ReadDone(_Done):
    __slots__ = ()

    def __call__(self, status: int, data: Any) -> None:
        self.ns.io_done()
        if status:
            self.qp.complete(self.cid, NVME_STATUS(status))
        else:
            self.qp.send_data(self.cid, data)


def identify_namespace(ns: Namespace) -> bytes:
    bdev = ns.bdev
    lbads = bdev.block_size.bit_length() - 1
    return nvme.IdentifyNamespace(
        nsze=bdev.num_blocks, ncap=bdev.num_blocks, nuse=bdev.num_blocks, nmic=1,
        nguid=ns.nguid or bytes(16), eui64=ns.eui64 or bytes(8), lbads=lbads,
        ).encode()  # no ANAGRPID: ANA reporting is not implemented


def commands_effects_log() -> bytes:
    page = bytearray(4096)
    for opc in (AdminOpc.GET_LOG_PAGE, AdminOpc.IDENTIFY, AdminOpc.ABORT,
                AdminOpc.SET_FEATURES, AdminOpc.GET_FEATURES, AdminOpc.ASYNC_EVENT_REQUEST,
                AdminOpc.KEEP_ALIVE):
        _U32.pack_into(page, opc * 4, 1)
    for iop in (IoOpc.FLUSH, IoOpc.WRITE, IoOpc.READ, IoOpc.WRITE_ZEROES,
                IoOpc.DATASET_MANAGEMENT):
        # CSUPP, and LBCC (the command may change logical block content) for all but Read
        _U32.pack_into(page, 1024 + iop * 4, 1 | (2 if iop != IoOpc.READ else 0))
    return bytes(page)
