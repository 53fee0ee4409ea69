"""Identify and log page structures byte by byte (offsets from ``include/linux/nvme.h``)."""

from __future__ import annotations

import struct

import pytest

from pybdev.proto import nvme


def test_identify_controller_offsets() -> None:
    ident = nvme.IdentifyController(sn="SPDK00000000000001", mn="SPDK bdev Controller",
                                    fr="26.09", subnqn="nqn.2016-06.io.spdk:cnode1",
                                    cntlid=7, nn=32, maxcmd=128, kas=100, ioccsz=260)
    raw = ident.encode()
    assert len(raw) == 4096
    assert raw[4:24] == b"SPDK00000000000001  "
    assert raw[24:64] == b"SPDK bdev Controller".ljust(40)
    assert raw[64:72] == b"26.09   "
    assert raw[76] == 0x02 and raw[77] == 5
    assert struct.unpack_from("<HI", raw, 78) == (7, 0x00010300)
    assert struct.unpack_from("<I", raw, 92)[0] == 0x100
    assert raw[111] == 1
    assert struct.unpack_from("<H", raw, 320)[0] == 100
    assert raw[512:514] == b"\x66\x44"
    assert struct.unpack_from("<HIHH", raw, 514) == (128, 32, 0x0C, 0)
    assert raw[525] == 1
    assert struct.unpack_from("<I", raw, 536)[0] == 0x100001
    assert raw[768:768 + 27] == b"nqn.2016-06.io.spdk:cnode1\0"
    assert struct.unpack_from("<IIHBB", raw, 1792) == (260, 1, 0, 0, 1)
    assert nvme.IdentifyController.decode(raw) == ident


def test_identify_namespace_offsets() -> None:
    ns = nvme.IdentifyNamespace(nsze=1 << 21, ncap=1 << 21, nuse=1 << 21, nmic=1,
                                nguid=bytes(range(16)), eui64=bytes(range(8)), lbads=9,
                                dlfeat=0x09)
    raw = ns.encode()
    assert struct.unpack_from("<QQQ", raw, 0) == (1 << 21,) * 3
    assert raw[25] == 0 and raw[26] == 0 and raw[30] == 1 and raw[33] == 9
    assert raw[104:120] == bytes(range(16)) and raw[120:128] == bytes(range(8))
    assert raw[128:132] == b"\0\0\x09\0"
    back = nvme.IdentifyNamespace.decode(raw)
    assert back == ns and back.block_size == 512
    assert nvme.IdentifyNamespace().encode() == bytes(4096)
    meta = bytearray(raw)
    meta[128] = 8
    with pytest.raises(nvme.DecodeError):
        nvme.IdentifyNamespace.decode(meta)


def test_ns_list() -> None:
    raw = nvme.encode_ns_list([5, 1, 3], after=1)
    assert raw[:12] == struct.pack("<III", 3, 5, 0) and len(raw) == 4096
    assert nvme.decode_ns_list(raw) == [3, 5]
    full = nvme.encode_ns_list(list(range(1, 2000)))
    assert nvme.decode_ns_list(full) == list(range(1, 1025))


def test_ns_descriptors() -> None:
    descs = [nvme.NsIdDescriptor(nvme.Nidt.UUID, bytes(range(16))),
             nvme.NsIdDescriptor(nvme.Nidt.NGUID, bytes(range(16, 32))),
             nvme.NsIdDescriptor(nvme.Nidt.CSI, b"\0")]
    raw = nvme.encode_ns_descriptors(descs)
    assert raw[:4] == b"\x03\x10\0\0" and raw[4:20] == bytes(range(16))
    assert raw[20:24] == b"\x02\x10\0\0" and raw[40:45] == b"\x04\x01\0\0\0"
    assert raw[45:] == bytes(4096 - 45)
    assert nvme.decode_ns_descriptors(raw) == descs
    with pytest.raises(ValueError):
        nvme.encode_ns_descriptors([nvme.NsIdDescriptor(nvme.Nidt.UUID, b"short")])
    bad = bytearray(raw)
    bad[1] = 8  # UUID with NIDL 8
    with pytest.raises(nvme.DecodeError) as info:
        nvme.decode_ns_descriptors(bad)
    assert info.value.offset == 1


def test_discovery_log() -> None:
    entry = nvme.DiscoveryEntry(nvme.TRTYPE_TCP, nvme.ADRFAM_IPV4, nvme.SUBTYPE_NVME, 0x02, 1,
                                "4420", "nqn.2016-06.io.spdk:cnode1", "127.0.0.1")
    raw = entry.encode()
    assert raw[:12] == struct.pack("<BBBBHHHH", 3, 1, 2, 2, 1, 0xFFFF, 128, 0)
    assert raw[32:64] == b"4420".ljust(32) and raw[512:521] == b"127.0.0.1"
    assert raw[256:283] == b"nqn.2016-06.io.spdk:cnode1\0" and raw[768] == 0
    page = nvme.encode_discovery_log(9, [entry, entry])
    assert len(page) == 3072 and struct.unpack_from("<QQH", page, 0) == (9, 2, 0)
    assert nvme.decode_discovery_header(page) == (9, 2)
    assert nvme.decode_discovery_entries(page) == [entry, entry]
    with pytest.raises(nvme.DecodeError):
        nvme.decode_discovery_entries(page[:2047])


def test_changed_ns_list_and_smart() -> None:
    assert nvme.encode_changed_ns_list([4, 2])[:12] == struct.pack("<III", 2, 4, 0)
    assert nvme.encode_changed_ns_list(list(range(1, 1100)))[:8] == b"\xff\xff\xff\xff\0\0\0\0"
    smart = nvme.SmartLog(temperature_k=300, data_units_read=5).encode()
    assert len(smart) == 512 and smart[1:3] == struct.pack("<H", 300)
    assert smart[32:48] == (5).to_bytes(16, "little")
