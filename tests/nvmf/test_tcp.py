"""The NVMe/TCP target against the test initiator (tests/nvmf/initiator.py): connect,
identify, I/O patterns, flush, deallocate, events and malformed input."""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Callable

import pytest

from pybdev.proto import nvme
from pybdev.proto.nvme import Sc
from tests.conftest import Target, wait_until
from tests.nvmf.conftest import NQN, Nvmf, free_port
from tests.nvmf.initiator import HOSTNQN, Host, Queue, TermReqReceived

DNR = nvme.STATUS_DNR


def read(q: Queue, slba: int, nlb: int, bs: int = 512) -> bytes:
    _, data = q.ok(lambda c: nvme.encode_read(c, 1, slba, nlb, bs))
    assert len(data) == nlb * bs
    return data


def write(q: Queue, slba: int, data: bytes, bs: int = 512, **kw: bool) -> None:
    q.ok(lambda c: nvme.encode_write(c, 1, slba, len(data) // bs, bs), data, **kw)


def test_controller_bring_up_and_identify(nvmf: Nvmf) -> None:
    host = Host(nvmf.port, NQN, kato=5000)
    cap = host.cap
    assert cap & 0xFFFF == 127 and (cap >> 37) & 1 and (cap >> 48) & 0xF == 0
    ident = host.ident
    assert ident.cntlid == host.cntlid >= 1
    assert (ident.sn, ident.mn, ident.subnqn) == ("SPDK00000000000001", "pybdev test", NQN)
    assert ident.kas and ident.sgls & 1 and ident.ioccsz >= 4 and ident.iorcsz == 1
    assert ident.icdoff == 0 and ident.cmic & 2 and ident.maxcmd == 128 and ident.nn == 32
    assert ident.cntrltype == 1 and ident.oaes & nvme.OAES_NS_ATTR
    vs, _ = host.admin.ok(lambda c: nvme.encode_property_get(c, nvme.PROP_VS))
    assert vs == 0x00010300
    ns = host.identify_ns(1)
    assert (ns.nsze, ns.ncap, ns.block_size, ns.nmic) == (4096, 4096, 512, 1)
    assert host.identify_ns(2) == nvme.IdentifyNamespace()  # inactive: zeros, success
    _, raw = host.admin.ok(lambda c: nvme.encode_identify(c, nvme.Cns.ACTIVE_NS_LIST))
    assert nvme.decode_ns_list(raw) == [1]
    _, raw = host.admin.ok(lambda c: nvme.encode_identify(c, nvme.Cns.NS_ID_DESCRIPTORS, 1))
    kinds = [d.nidt for d in nvme.decode_ns_descriptors(raw)]
    assert kinds == [nvme.Nidt.NGUID, nvme.Nidt.UUID, nvme.Nidt.CSI]
    bdev = nvmf.target.rpc("bdev_get_bdevs", {"name": "Malloc0"})[0]
    uuid_desc = nvme.decode_ns_descriptors(raw)[1].nid
    assert uuid_desc.hex() == bdev["uuid"].replace("-", "")
    assert bdev["claimed"] is True
    cqe, _ = host.admin.command(lambda c: nvme.encode_identify(c, nvme.Cns.NAMESPACE,
                                                               0xFFFFFFFF))
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    _, smart = host.admin.ok(lambda c: nvme.encode_get_log_page(c, nvme.Lid.SMART, 512))
    assert len(smart) == 512
    ctrls = nvmf.target.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})
    assert ctrls == [{"cntlid": host.cntlid, "cntrltype": "io", "hostnqn": HOSTNQN,
                      "hostid": "11111111-2222-3333-4444-555555555555", "num_io_qpairs": 0}]
    host.close()


def test_io_patterns(nvmf: Nvmf) -> None:
    host = Host(nvmf.port, NQN)
    q1, q2 = host.open_io(2)
    assert len(nvmf.target.rpc("nvmf_subsystem_get_qpairs", {"nqn": NQN})) == 3
    small = os.urandom(4096)
    write(q1, 8, small)  # in-capsule
    assert read(q2, 8, 8) == small
    big = os.urandom(131072)
    write(q2, 256, big)  # by R2T: larger than the in-capsule size
    assert read(q1, 256, 256) == big
    write(q1, 0, os.urandom(512), in_capsule=False)  # R2T for a small write
    q1.ok(lambda c: nvme.encode_flush(c, 1))
    # FUA write, then write zeroes and deallocate
    q1.ok(lambda c: nvme.encode_write(c, 1, 600, 1, 512, fua=True), b"\x5a" * 512)
    assert read(q1, 600, 1) == b"\x5a" * 512
    q1.ok(lambda c: nvme.encode_write_zeroes(c, 1, 256, 8))
    assert read(q1, 256, 8) == bytes(4096)
    q1.ok(lambda c: nvme.encode_dsm(c, 1, 2), nvme.encode_dsm_ranges([(264, 8), (272, 8)]))
    assert read(q1, 264, 16) == bytes(8192)  # malloc unmap zeroes
    assert read(q1, 280, 8) == big[24 * 512:32 * 512]
    # as the Linux host sends a discard: NR 0 but 4 KiB of (mostly zero) ranges
    q1.ok(lambda c: nvme.encode_dsm(c, 1, 1), nvme.encode_dsm_ranges([(280, 8)]).ljust(4096,
                                                                                   b"\0"))
    assert read(q1, 280, 8) == bytes(4096)
    stats = nvmf.target.rpc("nvmf_get_stats")["poll_groups"][0]
    assert stats["current_io_qpairs"] == 2 and stats["completed_nvme_io"] >= 12
    host.close()


def test_io_errors(nvmf: Nvmf) -> None:
    host = Host(nvmf.port, NQN)
    (q,) = host.open_io(1)
    cqe, _ = q.command(lambda c: nvme.encode_read(c, 1, 4095, 2, 512))
    assert cqe is not None and cqe.status == Sc.LBA_OUT_OF_RANGE | DNR
    cqe, _ = q.command(lambda c: nvme.encode_read(c, 7, 0, 1, 512))
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    # SGL length that does not match NLB
    cqe, _ = q.command(lambda c: nvme.encode_read(c, 1, 0, 2, 256))
    assert cqe is not None and cqe.status == Sc.SGL_LENGTH_INVALID | DNR
    cqe, _ = q.command(lambda c: nvme.encode_sqe(0x55, c, 1))
    assert cqe is not None and cqe.status == Sc.INVALID_OPCODE | DNR
    # an SGL descriptor type TCP does not use (keyed, RDMA)
    cqe, _ = q.command(lambda c: nvme.encode_read(c, 1, 0, 1, 512)[:39] + b"\x40"
                       + nvme.encode_read(c, 1, 0, 1, 512)[40:])
    assert cqe is not None and cqe.status == Sc.SGL_DESCRIPTOR_TYPE_INVALID | DNR
    assert read(q, 0, 1) is not None  # the queue still works
    host.close()


def test_pipelined_commands_on_one_queue(nvmf: Nvmf) -> None:
    host = Host(nvmf.port, NQN)
    (q,) = host.open_io(1, sqsize=31)
    pattern = [os.urandom(512) for _ in range(32)]
    for i, block in enumerate(pattern):
        write(q, i, block)
    cids = []
    for i in range(32):
        cid = q.next_cid()
        cids.append(cid)
        q.submit(nvme.encode_read(cid, 1, i, 1, 512))
    for i, cid in enumerate(cids):
        _cqe, data = q.wait(cid)
        assert data == pattern[i]
    host.close()


def test_digests_and_c2h_success(nvmf: Nvmf) -> None:
    host = Host(nvmf.port, NQN, hdgst=True, ddgst=True)
    (q,) = host.open_io(1)
    data = os.urandom(65536)
    write(q, 0, data)
    assert read(q, 0, 128) == data
    host.close()
    # SQ flow control disabled: reads complete with C2HData SUCCESS, no CapsuleResp
    host = Host(nvmf.port, NQN)
    q = Queue(nvmf.port)
    cqe = q.connect(NQN, 1, 31, host.cntlid, cattr=nvme.CATTR_DISABLE_SQ_FLOW)
    assert cqe is not None and cqe.status == 0 and cqe.sqhd == 0xFFFF
    cqe, got = q.command(lambda c: nvme.encode_read(c, 1, 0, 8, 512))
    assert cqe is None and got == data[:4096]
    q.close()
    host.close()


def test_bad_data_digest_fails_only_the_command(nvmf: Nvmf) -> None:
    host = Host(nvmf.port, NQN, ddgst=True)
    (q,) = host.open_io(1)
    cid = q.next_cid()
    raw = bytearray(b"".join(bytes(p) for p in q.framer.capsule_cmd(
        nvme.encode_write(cid, 1, 0, 1, 512, in_capsule=True), b"x" * 512)))
    raw[-1] ^= 0xFF
    q.send(raw)
    cqe, _ = q.wait(cid)
    assert cqe is not None and cqe.status == Sc.TRANSIENT_TRANSPORT_ERROR
    assert read(q, 0, 1) != b"x" * 512
    host.close()


@pytest.mark.parametrize("garbage", [
    struct.pack("<BBBBI", 0x07, 0, 24, 0, 24) + bytes(16),  # C2HData from a host
    struct.pack("<BBBBI", 0x04, 0, 72, 0, 0xFFFFFFF0),  # PLEN far beyond the limits
    struct.pack("<BBBBI", 0x04, 0, 60, 0, 72) + bytes(64),  # wrong HLEN
    struct.pack("<BBBBI", 0x06, 0x04, 24, 24, 32) + struct.pack("<HHIII", 9, 9, 0, 8, 0)
    + bytes(8),  # H2CData nobody asked for
])
def test_malformed_pdu_terminates_only_that_connection(nvmf: Nvmf, garbage: bytes) -> None:
    other = Host(nvmf.port, NQN)
    (good,) = other.open_io(1)
    victim = Host(nvmf.port, NQN)
    (bad,) = victim.open_io(1)
    bad.send(garbage)
    with pytest.raises(TermReqReceived) as info:
        read(bad, 0, 1)
    assert 1 <= info.value.pdu.fes <= 6
    with pytest.raises((ConnectionError, OSError)):
        bad.next_pdu()
    assert read(good, 0, 1) is not None
    other.close()


def test_garbage_before_icreq(nvmf: Nvmf) -> None:
    with socket.create_connection(("127.0.0.1", nvmf.port)) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        parser = nvme.PduParser(nvme.HOST)
        got = parser.feed(s.recv(4096))
        assert isinstance(got[0], nvme.TermReq)
        assert s.recv(4096) == b""
    Host(nvmf.port, NQN).close()


def test_connect_rules(nvmf: Nvmf) -> None:
    t = nvmf.target
    t.rpc("nvmf_subsystem_allow_any_host", {"nqn": NQN, "allow_any_host": False})
    q = Queue(nvmf.port)
    cqe = q.connect(NQN)
    assert cqe is not None and cqe.status == Sc.CONNECT_INVALID_HOST | DNR
    assert cqe.dw0 == nvme.CONNECT_IATTR_DATA | 512
    t.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": HOSTNQN})
    host = Host(nvmf.port, NQN)
    q = Queue(nvmf.port)
    cqe = q.connect("nqn.2016-06.io.spdk:nope")
    assert cqe is not None and cqe.status == Sc.CONNECT_INVALID_PARAMETERS | DNR
    cqe = q.connect(NQN, qid=1, sqsize=127, cntlid=0x999)
    assert cqe is not None and cqe.status == Sc.CONNECT_INVALID_PARAMETERS | DNR
    cqe = q.connect(NQN, qid=1, sqsize=128, cntlid=host.cntlid)
    assert cqe is not None and cqe.status == Sc.CONNECT_INVALID_PARAMETERS | DNR
    # a command before Connect
    q2 = Queue(nvmf.port)
    cqe, _ = q2.command(lambda c: nvme.encode_keep_alive(c))
    assert cqe is not None and cqe.status == Sc.INVALID_OPCODE | DNR
    # a second controller gets another CNTLID
    host2 = Host(nvmf.port, NQN)
    assert host2.cntlid != host.cntlid
    # removing the host disconnects its controllers
    t.rpc("nvmf_subsystem_remove_host", {"nqn": NQN, "host": HOSTNQN})
    with pytest.raises((ConnectionError, OSError)):
        host.admin.ok(lambda c: nvme.encode_keep_alive(c))
    assert t.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) == []


def test_namespace_events(nvmf: Nvmf) -> None:
    t = nvmf.target
    host = Host(nvmf.port, NQN)
    host.admin.ok(lambda c: nvme.encode_set_features(
        c, nvme.Fid.ASYNC_EVENT_CONFIGURATION, nvme.OAES_NS_ATTR))
    aer = host.admin.next_cid()
    host.admin.submit(nvme.encode_async_event_request(aer))
    t.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 2048, "block_size": 4096})
    assert t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {
        "bdev_name": "Malloc1", "nsid": 5}}) == 5
    cqe, _ = host.admin.wait(aer)
    assert cqe is not None and cqe.dw0 == nvme.AER_NS_ATTR_CHANGED
    _, log = host.admin.ok(lambda c: nvme.encode_get_log_page(c, nvme.Lid.CHANGED_NS_LIST,
                                                               4096))
    assert nvme.decode_ns_list(log) == [5]
    assert host.identify_ns(5).block_size == 4096
    # hot-remove of the bdev removes the namespace and notifies
    aer = host.admin.next_cid()
    host.admin.submit(nvme.encode_async_event_request(aer))
    t.rpc("bdev_malloc_delete", {"name": "Malloc1"})
    cqe, _ = host.admin.wait(aer)
    assert cqe is not None and cqe.dw0 == nvme.AER_NS_ATTR_CHANGED
    _, raw = host.admin.ok(lambda c: nvme.encode_identify(c, nvme.Cns.ACTIVE_NS_LIST))
    assert nvme.decode_ns_list(raw) == [1]
    assert [n["nsid"] for n in t.rpc("nvmf_get_subsystems", {"nqn": NQN})[0]["namespaces"]] \
        == [1]
    host.close()


def test_discovery(nvmf: Nvmf) -> None:
    t = nvmf.target
    t.rpc("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:hidden"})
    t.rpc("nvmf_subsystem_add_listener", {"nqn": "nqn.2016-06.io.spdk:hidden",
                                          "listen_address": nvmf.listen_address()})
    host = Host(nvmf.port, nvme.DISCOVERY_NQN)
    assert host.ident.cntrltype == nvme.CNTRLTYPE_DISCOVERY
    assert host.ident.subnqn == nvme.DISCOVERY_NQN
    _, head = host.admin.ok(lambda c: nvme.encode_get_log_page(c, nvme.Lid.DISCOVERY, 1024,
                                                                nsid=0))
    _genctr, numrec = nvme.decode_discovery_header(head)
    assert numrec == 1  # "hidden" does not allow this host
    _, page = host.admin.ok(lambda c: nvme.encode_get_log_page(
        c, nvme.Lid.DISCOVERY, 1024 + numrec * 1024, nsid=0))
    (entry,) = nvme.decode_discovery_entries(page)
    assert (entry.subnqn, entry.traddr, entry.trsvcid) == (NQN, "127.0.0.1", str(nvmf.port))
    assert (entry.trtype, entry.adrfam, entry.subtype) == (3, 1, 2)
    _, window = host.admin.ok(lambda c: nvme.encode_get_log_page(
        c, nvme.Lid.DISCOVERY, 1024, offset=1024, nsid=0))
    assert window == page[1024:]
    cqe, _ = host.admin.command(lambda c: nvme.encode_identify(c, nvme.Cns.NAMESPACE, 1))
    assert cqe is not None and cqe.status == Sc.INVALID_FIELD | DNR
    host.close()


def test_keep_alive_timeout_ends_the_controller(start_target: Callable[..., Target]) -> None:
    t = start_target()
    port = free_port()
    t.rpc("nvmf_create_transport", {"trtype": "TCP", "min_kato": 1000, "kas": 10})
    t.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    t.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": str(port)}})
    host = Host(port, NQN, kato=1000)
    wait_until(lambda: t.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) == [],
               timeout=10, what="keep-alive expiry")
    with pytest.raises((ConnectionError, OSError)):
        host.admin.ok(lambda c: nvme.encode_keep_alive(c))


def test_fuzzed_connections_leave_the_target_serving(nvmf: Nvmf) -> None:
    """Mutated PDU streams from many connections; a good connection keeps working."""
    import random

    rng = random.Random(1234)
    good = Host(nvmf.port, NQN)
    (gq,) = good.open_io(1)
    framer = nvme.Framer()
    pieces = [
        b"".join(framer.capsule_cmd(nvme.encode_read(7, 1, 0, 8, 512))),
        b"".join(framer.capsule_cmd(nvme.encode_write(8, 1, 0, 1, 512, in_capsule=True),
                                    b"w" * 512)),
        b"".join(framer.capsule_cmd(nvme.encode_connect(9, 0, 31), nvme.ConnectData(
            bytes(16), 0xFFFF, NQN, HOSTNQN).encode())),
        b"".join(framer.capsule_cmd(nvme.encode_write(10, 1, 0, 256, 512))),
        b"".join(framer.h2c_data(10, 0, 0, b"d" * 4096, last=False)),
        b"".join(framer.capsule_cmd(nvme.encode_property_set(11, nvme.PROP_CC, 0x460001))),
    ]
    for _ in range(40):
        stream = bytearray(nvme.encode_ic_req() + b"".join(
            rng.choice(pieces) for _ in range(rng.randint(1, 6))))
        for _ in range(rng.randint(0, 4)):
            stream[rng.randrange(len(stream))] = rng.randrange(256)
        with socket.create_connection(("127.0.0.1", nvmf.port), timeout=5) as s:
            s.sendall(stream)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
        data = os.urandom(512)
        write(gq, 100, data)
        assert read(gq, 100, 1) == data
    good.close()


def test_fuzzed_commands_leave_the_target_serving(nvmf: Nvmf) -> None:
    """Well-framed capsules with random SQE fields on admin and I/O queues: every one is
    answered (or ends its connection), and another connection keeps working."""
    import random

    rng = random.Random(99)
    good = Host(nvmf.port, NQN)
    (gq,) = good.open_io(1)
    opcodes = [0x00, 0x01, 0x02, 0x06, 0x08, 0x09, 0x0A, 0x18, 0x7F, 0x55, 0x02]  # no AER: held
    for round_ in range(6):
        victim = Host(nvmf.port, NQN)
        (io,) = victim.open_io(1)
        for q in (victim.admin, io):
            for _ in range(25):
                cid = q.next_cid()
                sqe = bytearray(rng.randbytes(64))
                sqe[0] = rng.choice(opcodes)
                sqe[1] = rng.choice([0x40, 0x40, 0x41, 0x00])
                sqe[2:4] = cid.to_bytes(2, "little")
                sqe[4:8] = rng.choice([0, 1, 2, 0xFFFFFFFF]).to_bytes(4, "little")
                sqe[39] = rng.choice([0x5A, 0x5A, 0x01, 0x40])
                sqe[32:36] = rng.choice([0, 512, 4096, 1 << 20]).to_bytes(4, "little")
                sqe[44:48] = rng.choice([0, 1, 7, 0xFFFF]).to_bytes(4, "little")
                data = rng.randbytes(rng.choice([0, 16, 512])) if sqe[39] == 0x01 else None
                if data is not None:
                    sqe[32:36] = len(data).to_bytes(4, "little")
                try:
                    q.submit(bytes(sqe), data or None)
                    q.wait(cid, write_data=bytes(1 << 20))
                except (TermReqReceived, ConnectionError, OSError, AssertionError):
                    break
        data = os.urandom(512)
        write(gq, 50 + round_, data)
        assert read(gq, 50 + round_, 1) == data
    good.close()


def test_resize_notifies_hosts(nvmf: Nvmf) -> None:
    t = nvmf.target
    t.rpc("bdev_null_create", {"name": "Null0", "num_blocks": 1024, "block_size": 512})
    assert t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "Null0"}}) \
        == 2
    host = Host(nvmf.port, NQN)
    host.admin.ok(lambda c: nvme.encode_set_features(
        c, nvme.Fid.ASYNC_EVENT_CONFIGURATION, nvme.OAES_NS_ATTR))
    aer = host.admin.next_cid()
    host.admin.submit(nvme.encode_async_event_request(aer))
    t.rpc("bdev_null_resize", {"name": "Null0", "new_size": 2})  # MiB
    cqe, _ = host.admin.wait(aer)
    assert cqe is not None and cqe.dw0 == nvme.AER_NS_ATTR_CHANGED
    assert host.identify_ns(2).nsze == 4096
    host.close()


def test_remove_ns_answers_commands_in_flight_then_frees_the_bdev(nvmf: Nvmf) -> None:
    """nvmf_subsystem_remove_ns is the export base's stop: the NSID goes at once, the
    command in flight is answered (not dropped), then the claim is released."""
    t = nvmf.target
    t.rpc("bdev_malloc_create", {"name": "Slow", "num_blocks": 1024, "block_size": 512})
    t.rpc("bdev_delay_create", {"base_bdev_name": "Slow", "name": "Delayed",
                                "avg_read_latency": 1_000_000, "p99_read_latency": 1_000_000,
                                "avg_write_latency": 0, "p99_write_latency": 0})
    assert t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {
        "bdev_name": "Delayed", "nsid": 2}}) == 2
    assert t.rpc("bdev_get_bdevs", {"name": "Delayed"})[0]["claimed"]
    host = Host(nvmf.port, NQN)
    (q,) = host.open_io(1)
    cid = q.next_cid()
    q.submit(nvme.encode_read(cid, 2, 0, 8, 512))
    assert t.rpc("nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 2}) is True
    # the RPC answered after the drain: the read's answer is already here
    assert select.select([q.sock], [], [], 0)[0] == [q.sock]
    cqe, data = q.wait(cid)
    assert (cqe is None or cqe.status == 0) and data == bytes(4096)
    assert not t.rpc("bdev_get_bdevs", {"name": "Delayed"})[0]["claimed"]
    cqe, _ = q.command(lambda c: nvme.encode_read(c, 2, 0, 1, 512))
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    t.rpc("bdev_delay_delete", {"name": "Delayed"})  # nothing holds it any more
    host.close()


def test_io_to_a_hot_removed_namespace_fails_with_dnr(nvmf: Nvmf) -> None:
    """Reads and writes to the NSID of a deleted bdev are refused with Invalid Namespace
    and Do Not Retry (the Linux host then fails them at once instead of requeueing),
    including a write whose R2T went out before the deletion: nothing is acknowledged."""
    t = nvmf.target
    t.rpc("bdev_malloc_create", {"name": "Doomed", "num_blocks": 2048, "block_size": 512})
    assert t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {
        "bdev_name": "Doomed", "nsid": 2}}) == 2
    host = Host(nvmf.port, NQN)
    (q,) = host.open_io()
    big = os.urandom(64 * 1024)  # beyond the in-capsule size: goes through R2T
    q.ok(lambda c: nvme.encode_write(c, 2, 0, 8, 512), b"\x5a" * 4096)
    q.ok(lambda c: nvme.encode_write(c, 2, 8, len(big) // 512, 512), big, in_capsule=False)
    # a write waiting for its data when the bdev goes
    cid = q.next_cid()
    q.submit(nvme.encode_write(cid, 2, 0, len(big) // 512, 512))
    r2t = q.next_pdu()
    assert isinstance(r2t, nvme.R2T) and r2t.cccid == cid
    t.rpc("bdev_malloc_delete", {"name": "Doomed"})
    q.send(*q.framer.h2c_data(cid, r2t.ttag, 0, big, last=True))
    cqe, _ = q.wait(cid)
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    cqe, _ = q.command(lambda c: nvme.encode_write(c, 2, 0, 8, 512), b"\xa5" * 4096,
                       in_capsule=True)
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    cqe, _ = q.command(lambda c: nvme.encode_write(c, 2, 0, len(big) // 512, 512), big,
                       in_capsule=False)
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    cqe, _ = q.command(lambda c: nvme.encode_read(c, 2, 0, 8, 512))
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    cqe, _ = q.command(lambda c: nvme.encode_flush(c, 2))
    assert cqe is not None and cqe.status == Sc.INVALID_NAMESPACE | DNR
    assert read(q, 0, 8) is not None  # namespace 1 still serves
    host.close()
