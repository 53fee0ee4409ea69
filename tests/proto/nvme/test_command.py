"""SQE/CQE layouts and the command encoders and accessors, byte by byte
(offsets from ``include/linux/nvme.h``)."""

from __future__ import annotations

import struct
import uuid

import pytest

from pybdev.proto import nvme


def test_sqe_layout() -> None:
    raw = nvme.encode_sqe(0x02, 0xABCD, 7, cdw10=10, cdw11=11, cdw12=12, cdw13=13, cdw14=14,
                          cdw15=15, data_len=4096, cdw2=2, cdw3=3)
    assert len(raw) == 64
    assert raw[0] == 0x02 and raw[1] == 0x40
    assert struct.unpack_from("<HIII", raw, 2) == (0xABCD, 7, 2, 3)
    assert raw[16:24] == bytes(8)  # MPTR
    assert raw[24:40] == bytes(8) + struct.pack("<I", 4096) + bytes(3) + b"\x5a"
    assert struct.unpack_from("<6I", raw, 40) == (10, 11, 12, 13, 14, 15)
    sqe = nvme.decode_sqe(raw)
    assert (sqe.opc, sqe.cid, sqe.nsid, sqe.sgl_len, sqe.sgl_type) == (2, 0xABCD, 7, 4096, 0x5A)
    assert nvme.encode_sqe(1, 1, data_len=512, in_capsule=True)[39] == 0x01


def test_cqe_status_encoding() -> None:
    assert nvme.status(1, 0x84, dnr=True) == 0x4184
    raw = nvme.encode_cqe(5, nvme.status(1, 0x84, dnr=True), dw0=0x10200)
    assert struct.unpack_from("<H", raw, 14)[0] == 0x8308  # wire value from docs/nvmf.md
    cqe = nvme.decode_cqe(raw)
    assert (cqe.sct, cqe.sc, cqe.dnr, cqe.dw0, cqe.cid) == (1, 0x84, True, 0x10200, 5)
    assert nvme.status(0, 0x80) == nvme.Sc.LBA_OUT_OF_RANGE


def test_connect_sqe_and_data() -> None:
    raw = nvme.encode_connect(1, qid=3, sqsize=127, kato=5000, cattr=4)
    assert raw[0] == 0x7F and raw[4] == 0x01
    assert struct.unpack_from("<HHHBxI", raw, 40) == (0, 3, 127, 4, 5000)
    assert raw[24:40] == bytes(8) + struct.pack("<I", 1024) + bytes(3) + b"\x01"
    sqe = nvme.decode_sqe(raw)
    assert sqe.fctype == nvme.FabricsType.CONNECT
    assert nvme.connect_fields(sqe) == (0, 3, 127, 4, 5000)
    hostid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    data = nvme.ConnectData(hostid.bytes, 0xFFFF, "nqn.2016-06.io.spdk:cnode1",
                            "nqn.2014-08.org.nvmexpress:uuid:x").encode()
    assert len(data) == 1024 and data[:16] == hostid.bytes and data[16:18] == b"\xff\xff"
    assert data[256:256 + 27] == b"nqn.2016-06.io.spdk:cnode1\0"
    assert data[512:512 + 34] == b"nqn.2014-08.org.nvmexpress:uuid:x\0"
    decoded = nvme.ConnectData.decode(data)
    assert decoded.subnqn == "nqn.2016-06.io.spdk:cnode1" and decoded.cntlid == 0xFFFF
    assert decoded.hostid_uuid == str(hostid)


@pytest.mark.parametrize(("mutate", "offset"), [
    (lambda d: d.__setitem__(slice(256, 512), b"a" * 256), 256),  # no NUL
    (lambda d: d.__setitem__(slice(512, 515), b"\xff\xfe\0"), 512),  # not UTF-8
])
def test_connect_data_rejects(mutate, offset: int) -> None:
    data = bytearray(nvme.ConnectData(bytes(16), 1, "s", "h").encode())
    mutate(data)
    with pytest.raises(nvme.DecodeError) as info:
        nvme.ConnectData.decode(data)
    assert info.value.offset == offset
    with pytest.raises(nvme.DecodeError):
        nvme.ConnectData.decode(bytes(1023))


def test_property_commands() -> None:
    get = nvme.decode_sqe(nvme.encode_property_get(2, nvme.PROP_CAP, size=8))
    assert get.fctype == nvme.FabricsType.PROPERTY_GET
    assert nvme.property_fields(get)[:2] == (8, 0)
    put = nvme.encode_property_set(3, nvme.PROP_CC, 0x00460001)
    assert put[40] == 0 and struct.unpack_from("<IQ", put, 44) == (0x14, 0x00460001)
    assert nvme.property_fields(nvme.decode_sqe(put)) == (4, 0x14, 0x00460001)


def test_identify_and_log_page_fields() -> None:
    raw = nvme.encode_identify(4, nvme.Cns.ACTIVE_NS_LIST, nsid=9, cntid=2, csi=0)
    assert raw[0] == 6 and struct.unpack_from("<I", raw, 4)[0] == 9
    assert struct.unpack_from("<I", raw, 40)[0] == 2 | 2 << 16
    log = nvme.encode_get_log_page(5, nvme.Lid.DISCOVERY, 4096 * 16 + 4, offset=1 << 33,
                                   nsid=0, rae=True)
    numd = (4096 * 16 + 4) // 4 - 1
    assert struct.unpack_from("<IIII", log, 40) == (
        0x70 | 1 << 15 | (numd & 0xFFFF) << 16, numd >> 16, 0, 2)
    assert nvme.log_page_fields(nvme.decode_sqe(log)) == (0x70, 4096 * 16 + 4, 1 << 33, True)


def test_features_aer_keepalive() -> None:
    sf = nvme.encode_set_features(1, nvme.Fid.NUMBER_OF_QUEUES, 3 | 3 << 16)
    assert sf[0] == 9 and struct.unpack_from("<II", sf, 40) == (7, 0x30003)
    gf = nvme.encode_get_features(1, nvme.Fid.KEEP_ALIVE_TIMER, sel=1)
    assert gf[0] == 0x0A and struct.unpack_from("<I", gf, 40)[0] == 0x10F
    assert nvme.encode_async_event_request(31)[0] == 0x0C
    assert nvme.encode_keep_alive(1)[0] == 0x18


def test_io_commands() -> None:
    rd = nvme.decode_sqe(nvme.encode_read(1, 1, 0x1_0000_0002, 256, 512))
    assert (rd.opc, rd.cdw10, rd.cdw11, rd.cdw12, rd.sgl_len) == (2, 2, 1, 255, 131072)
    assert nvme.rw_fields(rd) == (0x1_0000_0002, 256, False)
    wr = nvme.decode_sqe(nvme.encode_write(1, 1, 5, 1, 4096, fua=True, in_capsule=True))
    assert (wr.opc, wr.cdw12, wr.sgl_type) == (1, 1 << 30, 0x01)
    assert nvme.rw_fields(wr) == (5, 1, True)
    wz = nvme.decode_sqe(nvme.encode_write_zeroes(1, 1, 0, 8, deac=True))
    assert (wz.opc, wz.cdw12, wz.sgl_len) == (8, 7 | 1 << 25, 0)
    assert nvme.decode_sqe(nvme.encode_flush(1, 1)).opc == 0
    with pytest.raises(ValueError):
        nvme.encode_read(1, 1, 0, 0, 512)


def test_dsm_ranges() -> None:
    sqe = nvme.decode_sqe(nvme.encode_dsm(1, 1, 2))
    assert (sqe.opc, sqe.cdw10, sqe.cdw11, sqe.sgl_len, sqe.sgl_type) == (9, 1, 4, 32, 0x01)
    data = nvme.encode_dsm_ranges([(100, 8), (1 << 40, 1)])
    assert data == struct.pack("<IIQIIQ", 0, 8, 100, 0, 1, 1 << 40)
    assert nvme.decode_dsm_ranges(data, 2) == [(100, 8), (1 << 40, 1)]
    with pytest.raises(nvme.DecodeError):
        nvme.decode_dsm_ranges(data, 3)
