"""An NVMe-oF controller seen from the initiator: bring-up, I/O queues, keep-alive,
asynchronous events, loss and reconnect (docs/nvme-initiator.md).

The bring-up is the kernel's and SPDK's host sequence over NVMe/TCP: admin queue (ICReq,
Connect with KATO, Property Get CAP, Property Set CC.EN, Property Get CSTS until RDY,
VS, Identify Controller, Set Features Number of Queues, Async Event Configuration and
an AER when the controller reports namespace changes), then one TCP connection per I/O
queue (Connect with the controller's CNTLID), then the namespace scan (active NSID list,
Identify Namespace).  Every step has a deadline.

Failure semantics are SPDK's ``bdev_nvme`` ones (``module/bdev/nvme/bdev_nvme.c``): a
lost connection (socket closed, protocol violation, a keep-alive or admin command
unanswered, I/O unanswered for :data:`IO_TIMEOUT`) starts a reset; I/O in flight and new
I/O wait in a bounded queue; reconnects are tried every ``reconnect_delay_sec``; after
``fast_io_fail_timeout_sec`` waiting I/O fails with -EIO; after ``ctrlr_loss_timeout_sec``
(never with -1) the controller is given up and its owner deletes it.  With
``ctrlr_loss_timeout_sec`` 0 there is one immediate reconnect attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pybdev.bdev.nvme_qpair import LOST, Qpair, describe_status, open_qpair
from pybdev.errors import OperationError
from pybdev.proto import nvme
from pybdev.tasks import background

log = logging.getLogger("pybdev.bdev.nvme")

#: I/O queues opened per controller at most (each is one TCP connection).
MAX_IO_QUEUES = 2
#: Entries per I/O queue at most (further capped by CAP.MQES + 1 and MAXCMD).
IO_QUEUE_SIZE = 128
ADMIN_QUEUE_SIZE = 32
#: Largest single read or write sent (further capped by the controller's MDTS).
MAX_TRANSFER = 1 << 20
#: TCP connect + ICResp, and every bring-up command, must answer within this.
CONNECT_TIMEOUT = 10.0
ADMIN_TIMEOUT = 10.0
#: A queue with commands waiting and no byte from the controller for this long is lost.
IO_TIMEOUT = 30.0
#: I/O requests waiting for a reconnect, at most; more get -ENOMEM (the bdev layer retries).
PENDING_MAX = 4096
#: Active namespace list pages read at most (1024 NSIDs each).
NS_LIST_PAGES = 4
SHUTDOWN_TIMEOUT = 2.0

CC_ENABLE = 0x00460001  # IOCQES 4, IOSQES 6, EN
CC_SHUTDOWN = 0x00464001  # ... SHN = 01 (normal)
AEN_NS_ATTR = 0x100
_MAX_NLB = 0x10000


@dataclass
class Trid:
    trtype: str  # "TCP"
    traddr: str
    adrfam: str | None = None  # "IPv4" / "IPv6" / None (resolved by address)
    trsvcid: str = ""
    subnqn: str = ""

    def to_json(self) -> dict[str, str]:
        """SPDK's ``nvme_bdev_dump_trid_json``: keys only when set."""
        out = {"trtype": self.trtype}
        if self.adrfam:
            out["adrfam"] = self.adrfam
        for key in ("traddr", "trsvcid", "subnqn"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclass
class CtrlrOptions:
    hostnqn: str
    hostid: bytes
    hostaddr: str = ""
    hostsvcid: str = ""
    hdgst: bool = False
    ddgst: bool = False
    num_io_queues: int = 1024
    ctrlr_loss_timeout_sec: int = 0
    reconnect_delay_sec: int = 0
    fast_io_fail_timeout_sec: int = 0
    keep_alive_timeout_ms: int = 10000
    fabrics_connect_timeout_us: int = 500000
    disable_sq_flow_control: bool = False
    bdev_retry_count: int = 3
    enable_flush: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class _Io:
    """One read, write, flush, write-zeroes or DSM command of a bdev."""

    __slots__ = ("cb", "ctrl", "data", "fua", "nlb", "nsid", "opc", "read", "retries",
                 "slba")

    def __init__(self, ctrl: Controller, opc: int, nsid: int, slba: int, nlb: int,
                 read: int, data: Any, cb: Callable[[int, Any], None], fua: bool) -> None:
        self.ctrl = ctrl
        self.opc = opc
        self.nsid = nsid
        self.slba = slba
        self.nlb = nlb
        self.read = read
        self.data = data
        self.cb = cb
        self.fua = fua
        self.retries = 0

    def sqe(self, cid: int) -> bytes:
        opc = self.opc
        if opc == nvme.IoOpc.FLUSH:
            return nvme.encode_flush(cid, self.nsid)
        if opc == nvme.IoOpc.DATASET_MANAGEMENT:
            return nvme.encode_dsm(cid, self.nsid, 1, in_capsule=False)
        ln = len(self.data) if self.data is not None else self.read
        return nvme.encode_sqe(opc, cid, self.nsid, cdw10=self.slba & 0xFFFFFFFF,
                               cdw11=self.slba >> 32,
                               cdw12=(self.nlb - 1) | (self.fua << 30), data_len=ln)

    def __call__(self, st: int, dw0: int, dw1: int, data: Any) -> None:
        if not st:
            self.cb(0, data if self.read else None)
        elif st == LOST:
            self.ctrl._requeue(self)
        elif st < 0:
            self.cb(st, None)
        elif not st & 0x4000 and self.retries < self.ctrl.opts.bdev_retry_count:
            self.retries += 1
            self.ctrl.submit(self)
        else:
            self.cb(status_errno(st), None)


def status_errno(st: int) -> int:
    sc = st & 0x7FF
    if sc in (nvme.Sc.INVALID_OPCODE, nvme.Sc.INVALID_FIELD):
        return -errno.ENOTSUP
    if sc == nvme.Sc.LBA_OUT_OF_RANGE or sc == nvme.Sc.CAPACITY_EXCEEDED:
        return -errno.ENOSPC if sc == nvme.Sc.CAPACITY_EXCEEDED else -errno.EINVAL
    return -errno.EIO


@dataclass
class Namespace:
    nsid: int
    ident: nvme.IdentifyNamespace

    @property
    def block_size(self) -> int:
        return self.ident.block_size

    @property
    def num_blocks(self) -> int:
        return self.ident.nsze


class Controller:
    """One controller of one subsystem at one address (a bdev_nvme "nvme_ctrlr")."""

    def __init__(self, name: str, trid: Trid, opts: CtrlrOptions) -> None:
        self.name = name
        self.trid = trid
        self.opts = opts
        self.loop = asyncio.get_running_loop()
        self.admin: Qpair | None = None
        self.io: list[Qpair] = []
        self._rr = 0
        self.cntlid = 0
        self.cap = 0
        self.vs = 0
        self.cdata: nvme.IdentifyController | None = None
        self.namespaces: dict[int, Namespace] = {}
        self.max_io_bytes = MAX_TRANSFER
        self.connected = False
        self.resetting = False
        self.reconnect_delayed = False
        self.deleting = False
        self.fail_io = False
        self.pending: deque[_Io] = deque()
        self._ka: asyncio.TimerHandle | None = None
        self._recovery: asyncio.Future[None] | None = None
        self._fast_fail: asyncio.TimerHandle | None = None
        #: Set by the owner: the namespaces changed (after an event or a reconnect).
        self.on_namespaces: Callable[[dict[int, Namespace]], None] | None = None
        #: Set by the owner: the controller is given up (ctrlr_loss_timeout_sec).
        self.on_gone: Callable[[], None] | None = None

    # -- state --------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """SPDK's ``nvme_ctrlr_get_state_str`` values."""
        if self.deleting:
            return "deleting"
        if self.reconnect_delayed:
            return "reconnect_is_delayed"
        if self.resetting or not self.connected:
            return "resetting"
        return "enabled"

    # -- bring-up -----------------------------------------------------------------------
    def _family(self) -> int:
        if self.trid.adrfam == "IPv4":
            return socket.AF_INET
        if self.trid.adrfam == "IPv6":
            return socket.AF_INET6
        return socket.AF_UNSPEC

    async def _open(self, label: str, depth: int, io_timeout: float) -> Qpair:
        return await open_qpair(
            label, self.trid.traddr, int(self.trid.trsvcid or 4420), self._family(),
            hdgst=self.opts.hdgst, ddgst=self.opts.ddgst, depth=depth,
            max_data=max(MAX_TRANSFER, 8192), io_timeout=io_timeout, timeout=CONNECT_TIMEOUT,
            # hostaddr picks the source address; hostsvcid is not applied (one port
            # cannot serve the several connections of a controller)
            local_addr=(self.opts.hostaddr, 0) if self.opts.hostaddr else None)

    async def _fabric_connect(self, qp: Qpair, qid: int, sqsize: int, cntlid: int,
                              kato: int) -> int:
        data = nvme.ConnectData(self.opts.hostid, cntlid, self.trid.subnqn,
                                self.opts.hostnqn).encode()
        cattr = 0x04 if self.opts.disable_sq_flow_control else 0
        timeout = max(self.opts.fabrics_connect_timeout_us / 1e6, CONNECT_TIMEOUT)
        st, dw0, _, _ = await qp.command(
            lambda cid: nvme.encode_connect(cid, qid, sqsize, kato, cattr), write=data,
            timeout=timeout, what=f"Connect (queue {qid})")
        if st:
            raise OperationError(errno.EIO, f"{self.name}: Connect to {self.trid.subnqn} "
                                            f"(queue {qid}) refused: {describe_status(st)}")
        return dw0 & 0xFFFF

    async def connect(self) -> None:
        """Bring the controller up (first attach or reconnect); OperationError on failure,
        with everything opened so far closed again."""
        try:
            await self._connect()
        except BaseException:
            self._close_qpairs()
            raise

    async def _connect(self) -> None:
        kato = self.opts.keep_alive_timeout_ms
        admin_timeout = max(kato / 1000, 1.0) if kato else ADMIN_TIMEOUT
        admin = await self._open(f"{self.name} admin queue", ADMIN_QUEUE_SIZE, admin_timeout)
        self.admin = admin
        self.cntlid = await self._fabric_connect(admin, 0, ADMIN_QUEUE_SIZE - 1, 0xFFFF, kato)
        ok = admin.ok
        dw0, dw1, _ = await ok(lambda c: nvme.encode_property_get(c, nvme.PROP_CAP, 8),
                               "Property Get CAP")
        self.cap = dw0 | dw1 << 32
        await ok(lambda c: nvme.encode_property_set(c, nvme.PROP_CC, CC_ENABLE),
                 "Property Set CC")
        ready_within = min(max(((self.cap >> 24) & 0xFF) * 0.5, 1.0), 30.0)
        deadline = self.loop.time() + ready_within
        while True:
            csts, _, _ = await ok(lambda c: nvme.encode_property_get(c, nvme.PROP_CSTS),
                                  "Property Get CSTS")
            if csts == 0xFFFFFFFF or csts & 0x2:
                raise OperationError(errno.EIO, f"{self.name}: controller fatal status "
                                                f"(CSTS {csts:#x})")
            if csts & 1:
                break
            if self.loop.time() > deadline:
                raise OperationError(errno.ETIMEDOUT, f"{self.name}: controller not ready "
                                                      f"after {ready_within:g} s")
            await asyncio.sleep(0.01)
        self.vs, _, _ = await ok(lambda c: nvme.encode_property_get(c, nvme.PROP_VS),
                                 "Property Get VS")
        _, _, raw = await ok(lambda c: nvme.encode_identify(c, nvme.Cns.CONTROLLER),
                             "Identify Controller", read=4096)
        try:
            cdata = nvme.IdentifyController.decode(raw)
        except nvme.DecodeError as e:
            raise OperationError(errno.EIO, f"{self.name}: bad Identify Controller: {e}") \
                from None
        if cdata.icdoff != 0 or cdata.ioccsz < 4:
            raise OperationError(errno.EIO, f"{self.name}: controller needs ICDOFF "
                                            f"{cdata.icdoff}, IOCCSZ {cdata.ioccsz}")
        self.cdata = cdata
        mdts = (4096 << cdata.mdts) if cdata.mdts and cdata.mdts < 20 else MAX_TRANSFER
        self.max_io_bytes = min(MAX_TRANSFER, mdts)
        n = max(1, min(self.opts.num_io_queues, MAX_IO_QUEUES))
        dw0, _, _ = await ok(lambda c: nvme.encode_set_features(
            c, nvme.Fid.NUMBER_OF_QUEUES, (n - 1) | (n - 1) << 16), "Set Features Queues")
        n = min(n, min(dw0 & 0xFFFF, dw0 >> 16) + 1)
        depth = min(IO_QUEUE_SIZE, (self.cap & 0xFFFF) + 1, cdata.maxcmd or IO_QUEUE_SIZE)
        if depth < 2:
            raise OperationError(errno.EIO, f"{self.name}: I/O queue size {depth}")
        in_capsule = cdata.ioccsz * 16 - 64
        io: list[Qpair] = []
        try:
            for qid in range(1, n + 1):
                qp = await self._open(f"{self.name} I/O queue {qid}", depth, IO_TIMEOUT)
                io.append(qp)
                await self._fabric_connect(qp, qid, depth - 1, self.cntlid, 0)
                qp.q.in_capsule = in_capsule
        except BaseException:
            for qp in io:
                qp.close()
            raise
        self.io = io
        if cdata.oaes & AEN_NS_ATTR:
            await ok(lambda c: nvme.encode_set_features(
                c, nvme.Fid.ASYNC_EVENT_CONFIGURATION, AEN_NS_ATTR), "Set Features AEC")
            self._submit_aer()
        self.namespaces = await self._scan()
        # Losses are reported only from here on: during the bring-up a lost connection
        # fails the command that waits, and the attach (or reconnect attempt) with it.
        for qp in (admin, *io):
            if qp.dead:
                raise OperationError(errno.ECONNRESET, f"{qp.label}: connection lost")
            qp.on_lost = self._lost
        self.connected = True
        self._schedule_keep_alive()

    async def _scan(self) -> dict[int, Namespace]:
        admin = self.admin
        assert admin is not None
        nsids: list[int] = []
        after = 0
        for _ in range(NS_LIST_PAGES):
            _, _, raw = await admin.ok(
                partial(_identify, cns=nvme.Cns.ACTIVE_NS_LIST, nsid=after),
                "Identify active namespace list", read=4096)
            page = [n for n in nvme.decode_ns_list(raw) if n > after]
            nsids += page
            if len(page) < 1024:
                break
            after = page[-1]
        out: dict[int, Namespace] = {}
        for nsid in nsids:
            _, _, raw = await admin.ok(partial(_identify, cns=nvme.Cns.NAMESPACE, nsid=nsid),
                                       f"Identify Namespace {nsid}", read=4096)
            try:
                ident = nvme.IdentifyNamespace.decode(raw)
            except nvme.DecodeError as e:
                log.warning("%s: namespace %d skipped: %s", self.name, nsid, e)
                continue
            if not ident.ncap or not ident.nsze:
                continue
            if not 9 <= ident.lbads <= 16:
                log.warning("%s: namespace %d skipped: block size 2^%d", self.name, nsid,
                            ident.lbads)
                continue
            out[nsid] = Namespace(nsid, ident)
        return out

    # -- admin background: keep-alive, AER ----------------------------------------------
    def _schedule_keep_alive(self) -> None:
        kato = self.opts.keep_alive_timeout_ms
        if kato and self._ka is None:
            self._ka = self.loop.call_later(kato / 2000, self._keep_alive)

    def _keep_alive(self) -> None:
        self._ka = None
        admin = self.admin
        if admin is None or admin.dead or not self.connected or self.deleting:
            return
        timeout = max(self.opts.keep_alive_timeout_ms / 1000, 1.0)
        fut = admin.command(nvme.encode_keep_alive, timeout=timeout, what="Keep Alive")
        fut.add_done_callback(_quiet)
        self._schedule_keep_alive()

    def _submit_aer(self) -> None:
        admin = self.admin
        if admin is None or admin.dead:
            return

        def done(st: int, dw0: int, dw1: int, data: Any) -> None:
            admin.exempt -= 1
            if st:
                if st > 0:
                    log.info("%s: AER ended with %s", self.name, describe_status(st))
                return
            self._submit_aer()
            if dw0 & 0x7 == 2 and (dw0 >> 8) & 0xFF == 0:  # notice: namespace attribute
                background(self._ns_changed(), f"{self.name}: namespace rescan")

        admin.exempt += 1
        if not admin.submit(nvme.encode_async_event_request, done):
            admin.exempt -= 1

    async def _ns_changed(self) -> None:
        admin = self.admin
        if admin is None or not self.connected:
            return
        try:
            await admin.ok(lambda c: nvme.encode_get_log_page(c, nvme.Lid.CHANGED_NS_LIST,
                                                              4096), "Get Log Page 0x04",
                           read=4096)
            namespaces = await self._scan()
        except OperationError as e:
            log.warning("%s: namespace rescan failed: %s", self.name, e)
            return
        self.namespaces = namespaces
        if self.on_namespaces is not None:
            self.on_namespaces(namespaces)

    # -- I/O ----------------------------------------------------------------------------
    def io_request(self, opc: int, nsid: int, slba: int, nlb: int, read: int, data: Any,
                   cb: Callable[[int, Any], None], fua: bool = False) -> None:
        self.submit(_Io(self, opc, nsid, slba, nlb, read, data, cb, fua))

    def submit(self, io: _Io) -> None:
        if self.connected:
            qps = self.io
            n = len(qps)
            for _ in range(n):
                self._rr = (self._rr + 1) % n
                if qps[self._rr].submit(io.sqe, io, io.read, io.data):
                    return
            io.cb(-errno.ENOMEM, None)  # every queue full: the bdev layer retries
            return
        self._requeue(io)

    def _requeue(self, io: _Io) -> None:
        if self.fail_io or self.deleting or not (self.resetting or self.connected):
            io.cb(-errno.EIO, None)
        elif self.connected:
            self.submit(io)
        elif len(self.pending) >= PENDING_MAX:
            io.cb(-errno.ENOMEM, None)
        else:
            self.pending.append(io)

    def _fail_pending(self) -> None:
        pending = self.pending
        self.pending = deque()
        for io in pending:
            io.cb(-errno.EIO, None)

    # -- loss, reset, reconnect ----------------------------------------------------------
    def _close_qpairs(self) -> None:
        self.connected = False
        if self._ka is not None:
            self._ka.cancel()
            self._ka = None
        qps = [q for q in [self.admin, *self.io] if q is not None]
        self.admin = None
        self.io = []
        for qp in qps:
            qp.on_lost = None
            qp.close()

    def _lost(self, reason: str) -> None:
        if self.deleting or self.resetting:
            return
        log.error("%s: lost the controller at %s:%s (%s)", self.name, self.trid.traddr,
                  self.trid.trsvcid, reason)
        self._start_recovery(immediate=True)

    def _start_recovery(self, immediate: bool) -> None:
        self.resetting = True
        self._close_qpairs()
        fast = self.opts.fast_io_fail_timeout_sec
        if fast and self._fast_fail is None:
            self._fast_fail = self.loop.call_later(fast, self._fast_io_fail)
        self._recovery = background(self._recover(immediate), f"{self.name}: reconnect")

    def _fast_io_fail(self) -> None:
        self._fast_fail = None
        if self.resetting:
            log.warning("%s: fast_io_fail_timeout_sec reached; failing I/O until the "
                        "controller is back", self.name)
            self.fail_io = True
            self._fail_pending()

    async def _recover(self, immediate: bool) -> None:
        loss = self.opts.ctrlr_loss_timeout_sec
        delay = self.opts.reconnect_delay_sec
        started = self.loop.time()
        first = True
        while not self.deleting:
            if not (first and immediate):
                self.reconnect_delayed = True
                await asyncio.sleep(delay)
                self.reconnect_delayed = False
                if self.deleting:
                    return
            first = False
            try:
                await self.connect()
            except OperationError as e:
                log.warning("%s: reconnect failed: %s", self.name, e)
            else:
                self._recovered()
                return
            if loss == 0 or delay == 0 or (
                    loss > 0 and self.loop.time() - started + delay > loss):
                break
        if self.deleting:
            return
        log.error("%s: controller lost for good (ctrlr_loss_timeout_sec %d); deleting it",
                  self.name, loss)
        self.resetting = False
        self.fail_io = True
        self._fail_pending()
        if self.on_gone is not None:
            self.on_gone()

    def _recovered(self) -> None:
        log.info("%s: reconnected (cntlid %d)", self.name, self.cntlid)
        self.resetting = False
        self.fail_io = False
        if self._fast_fail is not None:
            self._fast_fail.cancel()
            self._fast_fail = None
        pending = self.pending
        self.pending = deque()
        for io in pending:
            self.submit(io)
        if self.on_namespaces is not None:
            self.on_namespaces(self.namespaces)

    async def reset(self) -> None:
        """bdev_nvme_reset_controller: new association now; I/O waits meanwhile."""
        if self.deleting:
            raise OperationError(errno.ENXIO, f"controller {self.name} is being deleted")
        if self.resetting:
            raise OperationError(errno.EBUSY, f"controller {self.name} is resetting")
        self.resetting = True
        self._close_qpairs()
        try:
            await self.connect()
        except OperationError as e:
            log.error("%s: reset failed: %s", self.name, e)
            self.resetting = False
            self._start_recovery(immediate=False)
            raise OperationError(errno.EIO, f"reset of {self.name} failed: {e}") from None
        self._recovered()

    async def shutdown(self) -> None:
        """Detach: CC.SHN on a live admin queue (bounded), close everything."""
        self.deleting = True
        if self._fast_fail is not None:
            self._fast_fail.cancel()
            self._fast_fail = None
        rec = self._recovery
        if rec is not None and not rec.done():
            rec.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rec
        admin = self.admin
        if admin is not None and not admin.dead and self.connected:
            for qp in self.io:
                qp.close()
            with contextlib.suppress(OperationError):
                await admin.command(
                    lambda c: nvme.encode_property_set(c, nvme.PROP_CC, CC_SHUTDOWN),
                    timeout=SHUTDOWN_TIMEOUT, what="Property Set CC.SHN")
        self._close_qpairs()
        self._fail_pending()


def _quiet(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _identify(cid: int, cns: int, nsid: int) -> bytes:
    return nvme.encode_identify(cid, cns, nsid)
