"""NVMe/TCP PDUs byte by byte: encoders against hand-written layouts from
``include/linux/nvme-tcp.h``, and the parser's acceptance and rejection rules."""

from __future__ import annotations

import struct

import pytest

from pybdev.proto import nvme
from pybdev.proto.nvme import Fes


def ch(typ: int, flags: int, hlen: int, pdo: int, plen: int) -> bytes:
    return struct.pack("<BBBBI", typ, flags, hlen, pdo, plen)


def controller(hdgst: bool = False, ddgst: bool = False, **kw: int) -> nvme.PduParser:
    parser = nvme.PduParser(nvme.CONTROLLER, **kw)
    assert parser.feed(nvme.encode_ic_req(hdgst=hdgst, ddgst=ddgst)) == [
        nvme.ICReq(0, 0, hdgst, ddgst, 0)]
    return parser


def host(hdgst: bool = False, ddgst: bool = False, **kw: int) -> nvme.PduParser:
    parser = nvme.PduParser(nvme.HOST, **kw)
    (resp,) = parser.feed(nvme.encode_ic_resp(131072, hdgst=hdgst, ddgst=ddgst))
    assert resp == nvme.ICResp(0, 0, hdgst, ddgst, 131072)
    return parser


# ------------------------------------------------------------------------- IC PDUs

def test_ic_req_bytes() -> None:
    raw = nvme.encode_ic_req(hpda=3, hdgst=True, ddgst=False, maxr2t=0)
    assert raw == ch(0, 0, 128, 0, 128) + b"\0\0" + b"\x03" + b"\x01" + bytes(4) + bytes(112)
    assert len(raw) == 128


def test_ic_resp_bytes() -> None:
    raw = nvme.encode_ic_resp(131072, cpda=0, hdgst=True, ddgst=True)
    assert raw == (ch(1, 0, 128, 0, 128) + b"\0\0\0\x03" + struct.pack("<I", 131072)
                   + bytes(112))


def test_ic_req_parsed_in_one_byte_pieces() -> None:
    parser = nvme.PduParser(nvme.CONTROLLER)
    raw = nvme.encode_ic_req(hpda=1, ddgst=True, maxr2t=5)
    events: list[nvme.Pdu] = []
    for i in range(len(raw)):
        events += parser.feed(raw[i:i + 1])
    assert events == [nvme.ICReq(0, 1, False, True, 5)]
    assert (parser.hdgst, parser.ddgst) == (False, True)
    assert parser.buffered == 0


@pytest.mark.parametrize(("raw", "fes", "fei"), [
    (nvme.encode_ic_req(pfv=1), Fes.UNSUPPORTED_PARAMETER, 8),
    (nvme.encode_ic_req(hpda=32), Fes.INVALID_HEADER_FIELD, 10),
    (ch(0, 0, 128, 0, 129) + bytes(121), Fes.INVALID_HEADER_FIELD, 4),
    (ch(0, 0, 127, 0, 128) + bytes(120), Fes.INVALID_HEADER_FIELD, 2),
    (ch(0, 0, 128, 0, 128) + b"\0\0\0\x04" + bytes(116), Fes.INVALID_HEADER_FIELD, 11),
    (ch(4, 0, 72, 0, 72) + bytes(64), Fes.PDU_SEQUENCE_ERROR, 0),
    (ch(1, 0, 128, 0, 128) + bytes(120), Fes.INVALID_HEADER_FIELD, 0),  # ICResp to a target
    (ch(0x42, 0, 24, 0, 24) + bytes(16), Fes.INVALID_HEADER_FIELD, 0),
])
def test_bad_ic_req(raw: bytes, fes: int, fei: int) -> None:
    with pytest.raises(nvme.PduError) as info:
        nvme.PduParser(nvme.CONTROLLER).feed(raw)
    assert (info.value.fes, info.value.fei) == (fes, fei)
    assert info.value.header == raw[:128]


def test_second_ic_req_is_a_sequence_error() -> None:
    with pytest.raises(nvme.PduError) as info:
        controller().feed(nvme.encode_ic_req())
    assert info.value.fes == Fes.PDU_SEQUENCE_ERROR


def test_ic_resp_maxh2cdata_checked_by_host() -> None:
    for bad in (0, 4092, 4097):
        with pytest.raises(nvme.PduError) as info:
            nvme.PduParser(nvme.HOST).feed(nvme.encode_ic_resp(bad))
        assert info.value.fei == 12


# ------------------------------------------------------------------------- capsules

SQE = nvme.encode_read(0x1234, 1, 0x10, 8, 512)


def test_capsule_cmd_without_data_bytes() -> None:
    (raw,) = nvme.Framer().capsule_cmd(SQE)
    assert bytes(raw) == ch(4, 0, 72, 0, 72) + SQE


def test_capsule_cmd_with_data_and_digests() -> None:
    data = b"\xab" * 16
    parts = nvme.Framer(hdgst=True, ddgst=True).capsule_cmd(SQE, data)
    raw = b"".join(parts)
    header = ch(4, 3, 72, 76, 76 + 16 + 4) + SQE
    assert raw == header + struct.pack("<I", nvme.crc32c(header)) + data + struct.pack(
        "<I", nvme.crc32c(data))
    (cmd,) = controller(True, True).feed(raw)
    assert cmd == nvme.CapsuleCmd(nvme.decode_sqe(SQE), data, True)


def test_capsule_cmd_padding_to_peer_alignment() -> None:
    raw = b"".join(nvme.Framer(pda=7).capsule_cmd(SQE, b"d" * 8))  # 32-byte alignment
    assert raw[3] == 96 and raw[72:96] == bytes(24) and raw[96:] == b"d" * 8
    assert struct.unpack_from("<I", raw, 4)[0] == 104
    parser = controller(pda=7)
    assert parser.feed(raw)[0].data == b"d" * 8
    misaligned = bytearray(b"".join(nvme.Framer().capsule_cmd(SQE, b"d" * 8)))
    with pytest.raises(nvme.PduError) as info:
        controller(pda=7).feed(misaligned)
    assert (info.value.fes, info.value.fei) == (Fes.INVALID_HEADER_FIELD, 3)


def test_capsule_resp_bytes_and_parse() -> None:
    cqe = nvme.encode_cqe(0xBEEF, nvme.status(0, 0x80, dnr=True), dw0=7, sqhd=3, sqid=1)
    assert cqe == struct.pack("<IIHHHH", 7, 0, 3, 1, 0xBEEF, (0x4080 << 1))
    raw = nvme.Framer().capsule_resp(cqe)
    assert raw == ch(5, 0, 24, 0, 24) + cqe
    (resp,) = host().feed(raw)
    assert resp.cqe == nvme.Cqe(7, 0, 3, 1, 0xBEEF, 0x4080)
    assert (resp.cqe.sct, resp.cqe.sc, resp.cqe.dnr) == (0, 0x80, True)
    digested = nvme.Framer(hdgst=True).capsule_resp(cqe)
    assert digested[:8] == ch(5, 1, 24, 0, 28)
    assert digested[24:] == struct.pack("<I", nvme.crc32c(digested[:24]))
    assert host(hdgst=True).feed(digested) == [resp]


# ------------------------------------------------------------------------- data PDUs

def test_c2h_data_bytes_fast_path_and_flags() -> None:
    data = b"0123456789abcdef"
    raw = b"".join(nvme.Framer().c2h_data(7, 512, data, last=True, success=True))
    assert raw == ch(7, 0x0C, 24, 24, 40) + struct.pack("<HHIII", 7, 0, 512, 16, 0) + data
    assert host().feed(raw) == [nvme.C2HData(7, 512, data, True, True, True)]
    raw = b"".join(nvme.Framer().c2h_data(7, 0, data, last=False, success=True))
    assert raw[1] == 0  # SUCCESS only together with LAST_PDU


def test_c2h_success_without_last_is_rejected() -> None:
    raw = bytearray(b"".join(nvme.Framer().c2h_data(7, 0, b"x" * 4)))
    raw[1] = 0x08
    with pytest.raises(nvme.PduError) as info:
        host().feed(bytes(raw))
    assert (info.value.fes, info.value.fei) == (Fes.INVALID_HEADER_FIELD, 1)


def test_h2c_data_bytes_and_roundtrip_with_digests() -> None:
    data = bytes(range(256)) * 2
    raw = b"".join(nvme.Framer(True, True).h2c_data(9, 3, 4096, data, last=True))
    header = ch(6, 0x07, 24, 28, 28 + 512 + 4) + struct.pack("<HHIII", 9, 3, 4096, 512, 0)
    assert raw[:24] == header and raw[24:28] == struct.pack("<I", nvme.crc32c(header))
    assert controller(True, True).feed(raw) == [nvme.H2CData(9, 3, 4096, data, True, True)]


def test_data_digest_mismatch_is_reported_not_fatal() -> None:
    raw = bytearray(b"".join(nvme.Framer(False, True).h2c_data(9, 3, 0, b"abcd" * 4)))
    raw[-1] ^= 1
    parser = controller(False, True)
    (pdu,) = parser.feed(bytes(raw))
    assert pdu.ddgst_ok is False
    (again,) = parser.feed(b"".join(nvme.Framer(False, True).h2c_data(9, 3, 16, b"x" * 4)))
    assert again.ddgst_ok is True


def test_header_digest_mismatch_is_fatal() -> None:
    raw = bytearray(b"".join(nvme.Framer(True).capsule_cmd(SQE)))
    raw[72] ^= 0xFF
    with pytest.raises(nvme.PduError) as info:
        controller(True).feed(bytes(raw))
    assert info.value.fes == Fes.HDGST_ERROR


def test_datal_must_match_plen() -> None:
    raw = bytearray(b"".join(nvme.Framer().h2c_data(1, 0, 0, b"x" * 8)))
    struct.pack_into("<I", raw, 16, 9)
    with pytest.raises(nvme.PduError) as info:
        controller().feed(bytes(raw))
    assert (info.value.fes, info.value.fei) == (Fes.INVALID_HEADER_FIELD, 16)


def test_r2t_bytes() -> None:
    raw = nvme.Framer().r2t(5, 2, 8192, 65536)
    assert raw == ch(9, 0, 24, 0, 24) + struct.pack("<HHIII", 5, 2, 8192, 65536, 0)
    assert host().feed(raw) == [nvme.R2T(5, 2, 8192, 65536)]
    with pytest.raises(nvme.PduError):
        host().feed(nvme.Framer().r2t(5, 2, 0, 0))


def test_term_req_bytes_and_parse() -> None:
    offending = bytes(range(200))
    raw = nvme.Framer.term_req(nvme.PDU_C2H_TERM_REQ, Fes.INVALID_HEADER_FIELD, 2, offending)
    assert raw[:24] == ch(3, 0, 24, 24, 152) + struct.pack("<HI", 1, 2) + bytes(10)
    assert raw[24:] == offending[:128]
    assert host().feed(raw) == [nvme.TermReq(3, 1, 2, offending[:128])]
    bare = nvme.Framer.term_req(nvme.PDU_H2C_TERM_REQ, Fes.PDU_SEQUENCE_ERROR)
    assert bare == ch(2, 0, 24, 0, 24) + struct.pack("<HI", 2, 0) + bytes(10)
    # a TermReq may come before the IC exchange ended
    assert nvme.PduParser(nvme.CONTROLLER).feed(bare) == [nvme.TermReq(2, 2, 0, b"")]


# ------------------------------------------------------------------------- limits

@pytest.mark.parametrize(("mutate", "fes", "fei"), [
    (lambda b: b.__setitem__(2, 24), Fes.INVALID_HEADER_FIELD, 2),  # HLEN
    (lambda b: b.__setitem__(1, 1), Fes.INVALID_HEADER_FIELD, 1),  # HDGSTF not negotiated
    (lambda b: b.__setitem__(1, 2), Fes.INVALID_HEADER_FIELD, 1),  # DDGSTF not negotiated
    (lambda b: b.__setitem__(1, 4), Fes.INVALID_HEADER_FIELD, 1),  # LAST_PDU on a capsule
    (lambda b: b.__setitem__(3, 71), Fes.INVALID_HEADER_FIELD, 3),  # PDO inside the header
    (lambda b: b.__setitem__(3, 200), Fes.INVALID_HEADER_FIELD, 3),  # PDO past PDO_MAX
    (lambda b: struct.pack_into("<I", b, 4, 71), Fes.INVALID_HEADER_FIELD, 4),  # PLEN < HLEN
    (lambda b: struct.pack_into("<I", b, 4, 72 + 8193),  # in-capsule data over the limit
     Fes.DATA_TRANSFER_LIMIT_EXCEEDED, 4),
    (lambda b: struct.pack_into("<I", b, 4, 0xFFFFFFFF), Fes.DATA_TRANSFER_LIMIT_EXCEEDED, 4),
])
def test_capsule_header_checks_before_buffering(mutate, fes: int, fei: int) -> None:
    raw = bytearray(b"".join(nvme.Framer().capsule_cmd(SQE, b"z" * 64)))
    mutate(raw)
    with pytest.raises(nvme.PduError) as info:
        controller().feed(bytes(raw[:8]))  # the common header alone is enough
    assert (info.value.fes, info.value.fei) == (fes, fei)


def test_h2c_data_over_maxh2cdata() -> None:
    raw = b"".join(nvme.Framer().h2c_data(1, 0, 0, b"x" * 8192))
    with pytest.raises(nvme.PduError) as info:
        controller(max_data=4096).feed(raw[:8])
    assert info.value.fes == Fes.DATA_TRANSFER_LIMIT_EXCEEDED


def test_pdus_decoded_before_a_fault_are_kept() -> None:
    good = b"".join(nvme.Framer().capsule_cmd(SQE))
    with pytest.raises(nvme.PduError) as info:
        controller().feed(good + good + ch(0x55, 0, 24, 0, 24))
    assert len(info.value.parsed) == 2


def test_many_pdus_in_one_feed_and_split_across_feeds() -> None:
    framer = nvme.Framer(True, True)
    stream = b"".join(b"".join(framer.capsule_cmd(nvme.encode_flush(i, 1))) for i in range(10))
    stream += b"".join(framer.h2c_data(3, 0, 0, b"q" * 1000, last=True))
    parser = controller(True, True)
    events = parser.feed(stream[:333]) + parser.feed(stream[333:])
    assert [e.cmd.cid for e in events[:10]] == list(range(10))
    assert events[10] == nvme.H2CData(3, 0, 0, b"q" * 1000, True, True)
    assert parser.buffered == 0
