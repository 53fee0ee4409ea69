"""HostQueue (the host side of one NVMe/TCP queue pair), byte by byte."""

from __future__ import annotations

import struct

import pytest

from pybdev.proto import nvme


def connected(**kw: object) -> nvme.HostQueue:
    q = nvme.HostQueue(**kw)  # type: ignore[arg-type]
    req = q.ic_req()
    assert req[:8] == b"\x00\x00\x80\x00\x80\x00\x00\x00" and len(req) == 128
    (ev,) = q.feed(nvme.encode_ic_resp(8192, hdgst=q.hdgst, ddgst=q.ddgst))
    assert isinstance(ev, nvme.ICResp) and q.maxh2cdata == 8192
    return q


def read_sqe(cid: int) -> bytes:
    return nvme.encode_read(cid, 1, 0, 8, 512)


def test_ic_req_asks_for_digests() -> None:
    q = nvme.HostQueue(hdgst=True, ddgst=True)
    assert q.ic_req()[11] == 0x03


@pytest.mark.parametrize("kw,why", [
    ({"hdgst": True}, "digests granted"), ({"cpda": 1}, "CPDA 1")])
def test_icresp_must_grant_what_was_asked(kw: dict[str, object], why: str) -> None:
    q = nvme.HostQueue()
    with pytest.raises(nvme.PduError, match=why):
        q.feed(nvme.encode_ic_resp(8192, **kw))  # type: ignore[arg-type]


def test_read_in_one_c2hdata_then_capsule_resp() -> None:
    q = connected()
    bufs = q.submit(read_sqe, "ctx", read=4096)
    pdu = b"".join(bytes(b) for b in bufs)
    assert pdu[0] == nvme.PDU_CAPSULE_CMD and len(pdu) == 72
    sqe = nvme.decode_sqe(pdu, 8)
    assert sqe.sgl_type == nvme.SGL_TRANSPORT_DATA_BLOCK and sqe.sgl_len == 4096
    data = bytes(range(256)) * 16
    f = nvme.Framer()
    wire = b"".join(bytes(b) for b in f.c2h_data(sqe.cid, 0, data))
    wire += f.capsule_resp(nvme.encode_cqe(sqe.cid, dw0=7))
    # byte by byte: nothing completes before the CapsuleResp's last byte
    events: list[object] = []
    for i in range(len(wire)):
        events += q.feed(wire[i:i + 1])
        if i < len(wire) - 1:
            assert events == []
    (done,) = events
    assert done == nvme.Completion("ctx", 0, 7, 0, data)
    assert q.outstanding == 0


def test_read_in_pieces_with_success_flag() -> None:
    q = connected()
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in q.submit(read_sqe, 1, read=4096)), 8)
    f = nvme.Framer()
    wire = b"".join(bytes(b) for b in f.c2h_data(sqe.cid, 0, b"a" * 1024, last=False))
    wire += b"".join(bytes(b) for b in f.c2h_data(sqe.cid, 1024, b"b" * 3072, success=True))
    (done,) = q.feed(wire)
    assert done.status == 0 and done.data == b"a" * 1024 + b"b" * 3072


@pytest.mark.parametrize("datao,n,match", [
    (512, 512, "offset 512"), (0, 8192, "beyond")])
def test_c2hdata_out_of_place_is_fatal(datao: int, n: int, match: str) -> None:
    q = connected(max_data=1 << 16)
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in q.submit(read_sqe, 1, read=4096)), 8)
    wire = b"".join(bytes(b) for b in nvme.Framer().c2h_data(sqe.cid, datao, bytes(n)))
    with pytest.raises(nvme.PduError, match=match) as e:
        q.feed(wire)
    assert e.value.fes == nvme.Fes.DATA_TRANSFER_OUT_OF_RANGE


def test_success_without_all_data_is_fatal() -> None:
    q = connected()
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in q.submit(read_sqe, 1, read=4096)), 8)
    wire = b"".join(bytes(b) for b in nvme.Framer().c2h_data(sqe.cid, 0, bytes(512),
                                                             success=True))
    with pytest.raises(nvme.PduError, match="SUCCESS"):
        q.feed(wire)


def test_capsule_resp_of_a_short_read_fails_the_command() -> None:
    q = connected()
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in q.submit(read_sqe, 1, read=4096)), 8)
    f = nvme.Framer()
    wire = b"".join(bytes(b) for b in f.c2h_data(sqe.cid, 0, bytes(512)))
    wire += f.capsule_resp(nvme.encode_cqe(sqe.cid))
    (done,) = q.feed(wire)
    assert done.status == nvme.Sc.DATA_TRANSFER_ERROR


def test_small_write_goes_in_the_capsule() -> None:
    q = connected()
    q.in_capsule = 4096
    payload = b"x" * 4096
    bufs = q.submit(lambda c: nvme.encode_write(c, 1, 0, 8, 512), 1, write=payload)
    wire = b"".join(bytes(b) for b in bufs)
    typ, _flags, hlen, pdo, plen = nvme.CH.unpack_from(wire)
    assert (typ, hlen, pdo, plen) == (nvme.PDU_CAPSULE_CMD, 72, 72, 72 + 4096)
    sqe = nvme.decode_sqe(wire, 8)
    assert (sqe.sgl_type, sqe.sgl_len, sqe.sgl_addr) == (nvme.SGL_DATA_BLOCK_OFFSET, 4096, 0)
    assert wire[72:] == payload


def test_large_write_answers_r2t_split_at_maxh2cdata() -> None:
    q = connected()
    q.in_capsule = 0
    payload = bytes(range(256)) * 80  # 20 KiB: 8 KiB + 8 KiB + 4 KiB
    bufs = q.submit(lambda c: nvme.encode_write(c, 1, 0, 40, 512), 1, write=payload)
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in bufs), 8)
    assert sqe.sgl_type == nvme.SGL_TRANSPORT_DATA_BLOCK
    f = nvme.Framer()
    assert q.feed(f.r2t(sqe.cid, 5, 0, 20480)) == []
    out = b"".join(bytes(b) for b in q.data_to_send())
    p = nvme.PduParser(nvme.CONTROLLER, max_data=8192)
    p.feed(nvme.encode_ic_req())
    pdus = p.feed(out)
    assert [(d.datao, len(d.data), d.last, d.ttag) for d in pdus] == [
        (0, 8192, False, 5), (8192, 8192, False, 5), (16384, 4096, True, 5)]
    assert b"".join(d.data for d in pdus) == payload
    (done,) = q.feed(f.capsule_resp(nvme.encode_cqe(sqe.cid)))
    assert done.status == 0 and done.data is None


@pytest.mark.parametrize("r2to,r2tl", [(4096, 4096), (0, 65536)])
def test_r2t_out_of_range_is_fatal(r2to: int, r2tl: int) -> None:
    q = connected()
    q.in_capsule = 0
    bufs = q.submit(lambda c: nvme.encode_write(c, 1, 0, 16, 512), 1, write=bytes(8192))
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in bufs), 8)
    with pytest.raises(nvme.PduError, match="R2T"):
        q.feed(nvme.Framer().r2t(sqe.cid, 0, r2to, r2tl))


def test_r2t_for_a_read_or_unknown_command_is_fatal() -> None:
    q = connected()
    sqe = nvme.decode_sqe(b"".join(bytes(b) for b in q.submit(read_sqe, 1, read=4096)), 8)
    with pytest.raises(nvme.PduError, match="not a write"):
        q.feed(nvme.Framer().r2t(sqe.cid, 0, 0, 512))
    q = connected()
    with pytest.raises(nvme.PduError, match="not in flight"):
        q.feed(nvme.Framer().r2t(3, 0, 0, 512))


def test_digests_both_ways() -> None:
    q = connected(hdgst=True, ddgst=True)
    bufs = q.submit(read_sqe, 1, read=512)
    wire = b"".join(bytes(b) for b in bufs)
    assert wire[1] & nvme.FLAG_HDGSTF and len(wire) == 76
    assert struct.unpack_from("<I", wire, 72)[0] == nvme.crc32c(wire[:72])
    sqe = nvme.decode_sqe(wire, 8)
    f = nvme.Framer(True, True)
    good = b"".join(bytes(b) for b in f.c2h_data(sqe.cid, 0, b"z" * 512))
    bad = good[:-1] + bytes([good[-1] ^ 1])  # data digest broken: only the command fails
    (done,) = q.feed(bad + f.capsule_resp(nvme.encode_cqe(sqe.cid)))
    assert done.status == nvme.Sc.DATA_TRANSFER_ERROR


def test_cids_are_bounded_and_reused() -> None:
    q = connected(depth=2)
    q.submit(read_sqe, 1, read=512)
    q.submit(read_sqe, 2, read=512)
    with pytest.raises(nvme.QueueFull):
        q.submit(read_sqe, 3, read=512)
    assert sorted(q.fail_all()) == [1, 2] and q.outstanding == 0
    q.submit(read_sqe, 4, read=512)
