"""The ublk UAPI layouts and numbers against the spec's tables (spec/ublk.md)."""

from __future__ import annotations

import pytest

from pybdev.ublk import uapi


def test_struct_sizes() -> None:
    assert uapi.CTRL_CMD.size == 32
    assert uapi.DEV_INFO.size == 64
    assert uapi.IO_DESC.size == 24
    assert uapi.IO_CMD.size == 16
    assert uapi.PARAM_BASIC.size == 32
    assert uapi.PARAM_DISCARD.size == 20
    assert uapi.PARAMS_HEADER.size == 8


def _offsets(fmt_fields: list[tuple[str, int]]) -> dict[str, int]:
    return dict(fmt_fields)


def test_ctrl_cmd_offsets() -> None:
    raw = uapi.pack_ctrl_cmd(0x11223344, queue_id=0x5566, length=0x7788,
                             addr=0x0102030405060708, data=0x1112131415161718)
    assert raw[0:4] == (0x11223344).to_bytes(4, "little")  # dev_id @0
    assert raw[4:6] == (0x5566).to_bytes(2, "little")  # queue_id @4
    assert raw[6:8] == (0x7788).to_bytes(2, "little")  # len @6
    assert raw[8:16] == (0x0102030405060708).to_bytes(8, "little")  # addr @8
    assert raw[16:24] == (0x1112131415161718).to_bytes(8, "little")  # data[0] @16
    assert raw[24:32] == bytes(8)  # dev_path_len, pad, reserved
    assert uapi.pack_ctrl_cmd(1)[4:6] == b"\xff\xff"  # not per-queue


def test_dev_info_offsets() -> None:
    info = uapi.DevInfo(nr_hw_queues=0x0102, queue_depth=0x0304, state=0x0506,
                        max_io_buf_bytes=0x0708090A, dev_id=0x0B0C0D0E, ublksrv_pid=-2,
                        flags=0x1122334455667788, ublksrv_flags=0x99, owner_uid=7,
                        owner_gid=8)
    raw = info.pack()
    assert len(raw) == 64
    assert int.from_bytes(raw[0:2], "little") == 0x0102
    assert int.from_bytes(raw[2:4], "little") == 0x0304
    assert int.from_bytes(raw[4:6], "little") == 0x0506
    assert int.from_bytes(raw[8:12], "little") == 0x0708090A
    assert int.from_bytes(raw[12:16], "little") == 0x0B0C0D0E
    assert int.from_bytes(raw[16:20], "little", signed=True) == -2
    assert int.from_bytes(raw[24:32], "little") == 0x1122334455667788
    assert int.from_bytes(raw[32:40], "little") == 0x99
    assert int.from_bytes(raw[40:44], "little") == 7
    assert int.from_bytes(raw[44:48], "little") == 8
    assert uapi.DevInfo.unpack(raw) == info


def test_io_desc_and_cmd_offsets() -> None:
    raw = uapi.IO_DESC.pack(0x01020304, 0x05060708, 0x1112131415161718, 0x2122232425262728)
    assert raw[0] == 0x04  # op in bits 0-7 of op_flags @0
    assert int.from_bytes(raw[4:8], "little") == 0x05060708  # nr_sectors @4
    assert int.from_bytes(raw[8:16], "little") == 0x1112131415161718  # start_sector @8
    assert int.from_bytes(raw[16:24], "little") == 0x2122232425262728  # addr @16
    raw = uapi.IO_CMD.pack(3, 7, -5, 0xABCDEF)
    assert int.from_bytes(raw[0:2], "little") == 3
    assert int.from_bytes(raw[2:4], "little") == 7
    assert int.from_bytes(raw[4:8], "little", signed=True) == -5
    assert int.from_bytes(raw[8:16], "little") == 0xABCDEF


def test_params_layout() -> None:
    p = uapi.Params(logical_bs_shift=9, physical_bs_shift=12, io_min_shift=9, io_opt_shift=13,
                    max_sectors=1024, dev_sectors=0x123456789, attrs=uapi.UBLK_ATTR_VOLATILE_CACHE,
                    discard=(0, 4096, 32768, 16384, 1))
    raw = p.pack()
    assert len(raw) == 60
    assert int.from_bytes(raw[0:4], "little") == 60  # len
    assert int.from_bytes(raw[4:8], "little") == 3  # BASIC | DISCARD
    basic = raw[8:40]
    assert int.from_bytes(basic[0:4], "little") == 4  # attrs
    assert tuple(basic[4:8]) == (9, 12, 13, 9)  # logical, physical, io_opt, io_min
    assert int.from_bytes(basic[8:12], "little") == 1024  # max_sectors
    assert int.from_bytes(basic[16:24], "little") == 0x123456789  # dev_sectors
    disc = raw[40:60]
    assert int.from_bytes(disc[4:8], "little") == 4096  # granularity
    assert int.from_bytes(disc[8:12], "little") == 32768
    assert int.from_bytes(disc[12:16], "little") == 16384
    assert int.from_bytes(disc[16:18], "little") == 1
    nodisc = uapi.Params(9, 9, 9, 9, 128, 8).pack()
    assert int.from_bytes(nodisc[4:8], "little") == 1 and nodisc[40:] == bytes(20)


@pytest.mark.parametrize(("value", "expected"), [
    (uapi.UBLK_U_CMD_GET_QUEUE_AFFINITY, 0x80207501),
    (uapi.UBLK_U_CMD_GET_DEV_INFO, 0x80207502),
    (uapi.UBLK_U_CMD_ADD_DEV, 0xC0207504),
    (uapi.UBLK_U_CMD_DEL_DEV, 0xC0207505),
    (uapi.UBLK_U_CMD_START_DEV, 0xC0207506),
    (uapi.UBLK_U_CMD_STOP_DEV, 0xC0207507),
    (uapi.UBLK_U_CMD_SET_PARAMS, 0xC0207508),
    (uapi.UBLK_U_CMD_GET_PARAMS, 0x80207509),
    (uapi.UBLK_U_CMD_START_USER_RECOVERY, 0xC0207510),
    (uapi.UBLK_U_CMD_END_USER_RECOVERY, 0xC0207511),
    (uapi.UBLK_U_CMD_GET_DEV_INFO2, 0x80207512),
    (uapi.UBLK_U_CMD_GET_FEATURES, 0x80207513),
    (uapi.UBLK_U_IO_FETCH_REQ, 0xC0107520),
    (uapi.UBLK_U_IO_COMMIT_AND_FETCH_REQ, 0xC0107521),
    (uapi.UBLK_U_IO_NEED_GET_DATA, 0xC0107522),
])
def test_ioctl_encodings(value: int, expected: int) -> None:
    assert value == expected


def test_offsets() -> None:
    assert uapi.user_copy_offset(1, 5, 512) == 0x2008A000200
    assert uapi.user_copy_offset(0, 0) == 0x80000000
    assert uapi.desc_area_offset(0) == 0
    assert uapi.desc_area_offset(1) == 98304
    assert uapi.desc_area_length(128) == 4096
    assert uapi.desc_area_length(512) == 12288
    assert uapi.desc_area_length(1024) == 24576
    assert uapi.UBLK_IO_RES_ABORT == -19


def test_feature_names() -> None:
    assert uapi.feature_names(0x1FE) == [
        "URING_CMD_COMP_IN_TASK", "NEED_GET_DATA", "USER_RECOVERY", "USER_RECOVERY_REISSUE",
        "UNPRIVILEGED_DEV", "CMD_IOCTL_ENCODE", "USER_COPY", "ZONED"]
