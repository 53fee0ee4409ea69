"""A small blocking NVMe/TCP initiator for the tests, built on pybdev.proto.nvme.

One :class:`Queue` per TCP connection; :class:`Host` does what the Linux host does to
bring a controller up (Connect, CAP, CC.EN, CSTS.RDY, Identify) and opens I/O queues.
Writes go in-capsule up to ``in_capsule`` bytes, otherwise by R2T/H2CData split at
MAXH2CDATA; reads reassemble C2HData PDUs and accept the SUCCESS flag.
"""

from __future__ import annotations

import socket
import uuid
from typing import Any

from pybdev.proto import nvme

HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:11111111-2222-3333-4444-555555555555"
HOSTID = uuid.UUID("11111111-2222-3333-4444-555555555555").bytes


class TermReqReceived(Exception):
    def __init__(self, pdu: nvme.TermReq) -> None:
        super().__init__(f"C2HTermReq FES {pdu.fes:#x} FEI {pdu.fei}")
        self.pdu = pdu


class Queue:
    def __init__(self, port: int, *, hdgst: bool = False, ddgst: bool = False,
                 host: str = "127.0.0.1", timeout: float = 10, hpda: int = 0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.parser = nvme.PduParser(nvme.HOST, max_data=1 << 22)
        self.sock.sendall(nvme.encode_ic_req(hpda=hpda, hdgst=hdgst, ddgst=ddgst))
        (resp,) = self._recv(1)
        assert isinstance(resp, nvme.ICResp), resp
        assert (resp.hdgst, resp.ddgst) == (hdgst, ddgst), nvme.check_ic_resp(resp, hdgst,
                                                                              ddgst)
        self.icresp = resp
        self.framer = nvme.Framer(hdgst, ddgst, resp.cpda)
        self.cid = 0
        self.in_capsule = 8192
        self.backlog: list[nvme.Pdu] = []

    def close(self) -> None:
        self.sock.close()

    def _recv(self, n: int = 1) -> list[nvme.Pdu]:
        out: list[nvme.Pdu] = []
        while len(out) < n:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("target closed the connection")
            out += self.parser.feed(data)
        return out

    def next_pdu(self) -> nvme.Pdu:
        if not self.backlog:
            self.backlog = self._recv(1)
        pdu = self.backlog.pop(0)
        if isinstance(pdu, nvme.TermReq):
            raise TermReqReceived(pdu)
        return pdu

    def send(self, *parts: Any) -> None:
        self.sock.sendall(b"".join(bytes(p) for p in parts))

    def next_cid(self) -> int:
        self.cid = (self.cid + 1) & 0xFFFF
        return self.cid

    def submit(self, sqe: bytes, data: bytes | None = None) -> None:
        """Send a command (its in-capsule data, if any) without waiting."""
        self.send(*self.framer.capsule_cmd(sqe, data))

    def wait(self, cid: int, write_data: bytes | None = None) -> tuple[nvme.Cqe | None, bytes]:
        """Serve R2Ts for ``cid`` and collect its C2H data until it completes."""
        received = bytearray()
        while True:
            pdu = self.next_pdu()
            if isinstance(pdu, nvme.R2T):
                assert pdu.cccid == cid and write_data is not None
                maxh2c = self.icresp.maxh2cdata
                end = pdu.r2to + pdu.r2tl
                for off in range(pdu.r2to, end, maxh2c):
                    chunk = write_data[off:min(off + maxh2c, end)]
                    self.send(*self.framer.h2c_data(cid, pdu.ttag, off, chunk,
                                                    last=off + len(chunk) == end))
            elif isinstance(pdu, nvme.C2HData):
                assert pdu.cccid == cid and pdu.datao == len(received)
                received += pdu.data
                if pdu.success:
                    return None, bytes(received)
            elif isinstance(pdu, nvme.CapsuleResp):
                assert pdu.cqe.cid == cid, (pdu.cqe, cid)
                return pdu.cqe, bytes(received)
            else:
                raise AssertionError(f"unexpected {pdu}")

    def command(self, make: Any, data: bytes | None = None,
                in_capsule: bool | None = None) -> tuple[nvme.Cqe | None, bytes]:
        """``make(cid)`` builds the SQE; data goes in-capsule when it fits."""
        cid = self.next_cid()
        if in_capsule is None:
            in_capsule = data is not None and len(data) <= self.in_capsule
        sqe = make(cid)
        if data is not None and in_capsule:
            sqe = nvme.in_capsule_sqe(sqe, len(data))
            self.submit(sqe, data)
            return self.wait(cid)
        self.submit(sqe)
        return self.wait(cid, data)

    def ok(self, make: Any, data: bytes | None = None, **kw: Any) -> tuple[int, bytes]:
        cqe, out = self.command(make, data, **kw)
        assert cqe is None or cqe.status == 0, cqe
        return (cqe.dw0 | cqe.dw1 << 32) if cqe else 0, out

    def connect(self, subnqn: str, qid: int = 0, sqsize: int = 31, cntlid: int = 0xFFFF,
                kato: int = 0, hostnqn: str = HOSTNQN, cattr: int = 0) -> nvme.Cqe | None:
        data = nvme.ConnectData(HOSTID, cntlid, subnqn, hostnqn).encode()
        cqe, _ = self.command(lambda cid: nvme.encode_connect(cid, qid, sqsize, kato, cattr),
                              data)
        return cqe


class Host:
    """A controller as the Linux host brings it up."""

    def __init__(self, port: int, subnqn: str, *, hostnqn: str = HOSTNQN, kato: int = 0,
                 **kw: Any) -> None:
        self.port = port
        self.kw = kw
        self.subnqn = subnqn
        self.hostnqn = hostnqn
        self.admin = Queue(port, **kw)
        cqe = self.admin.connect(subnqn, 0, 31, kato=kato, hostnqn=hostnqn)
        assert cqe is not None and cqe.status == 0, cqe
        self.cntlid = cqe.dw0 & 0xFFFF
        self.cap, _ = self.admin.ok(lambda c: nvme.encode_property_get(c, nvme.PROP_CAP, 8))
        discovery = subnqn == nvme.DISCOVERY_NQN
        cc = 0x00460001 if not discovery else 0x1
        self.admin.ok(lambda c: nvme.encode_property_set(c, nvme.PROP_CC, cc))
        csts, _ = self.admin.ok(lambda c: nvme.encode_property_get(c, nvme.PROP_CSTS))
        assert csts & 1, hex(csts)
        _, raw = self.admin.ok(lambda c: nvme.encode_identify(c, nvme.Cns.CONTROLLER))
        self.ident = nvme.IdentifyController.decode(raw)
        self.io: list[Queue] = []

    def open_io(self, n: int = 1, sqsize: int = 127, **kw: Any) -> list[Queue]:
        self.admin.ok(lambda c: nvme.encode_set_features(
            c, nvme.Fid.NUMBER_OF_QUEUES, (n - 1) | (n - 1) << 16))
        for qid in range(1, n + 1):
            q = Queue(self.port, **(kw or self.kw))
            cqe = q.connect(self.subnqn, qid, sqsize, self.cntlid, hostnqn=self.hostnqn)
            assert cqe is not None and cqe.status == 0, cqe
            q.in_capsule = self.ident.ioccsz * 16 - 64
            self.io.append(q)
        return self.io

    def identify_ns(self, nsid: int) -> nvme.IdentifyNamespace:
        _, raw = self.admin.ok(lambda c: nvme.encode_identify(c, nvme.Cns.NAMESPACE, nsid))
        return nvme.IdentifyNamespace.decode(raw)

    def close(self) -> None:
        for q in self.io:
            q.close()
        self.admin.ok(lambda c: nvme.encode_property_set(c, nvme.PROP_CC, 0x00464001))
        self.admin.close()
