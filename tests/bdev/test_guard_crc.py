"""The guard CRCs (pybdev/bdev/guard_crc.py) against a bit-at-a-time reference."""

from __future__ import annotations

import random

import pytest

from pybdev.bdev.guard_crc import crc16_t10dif, crc64_nvme


def bitwise16(data: bytes, crc: int) -> int:
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8BB7) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def bitwise64(data: bytes, crc: int) -> int:
    c = crc ^ (1 << 64) - 1
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0x9A6C9329AC4BC9B5 if c & 1 else c >> 1
    return c ^ (1 << 64) - 1


def test_check_values() -> None:
    assert crc16_t10dif(b"123456789") == 0xD0DB
    assert crc64_nvme(b"123456789") == 0xAE8B14860A799888


# Both sides of the table/mask threshold (256 bytes) and of the 8 KiB mask pieces.
@pytest.mark.parametrize("length", [0, 1, 8, 255, 256, 512, 520, 4096, 4112, 8192, 8200])
def test_table_and_masks_agree_with_the_bitwise_crc(length: int) -> None:
    rng = random.Random(length)
    data = rng.randbytes(length)
    for seed in (0, 0x1D0F, 0xFFFF):
        assert crc16_t10dif(data, seed) == bitwise16(data, seed)
    for seed in (0, 0x0123456789ABCDEF, (1 << 64) - 1):
        assert crc64_nvme(data, seed) == bitwise64(data, seed)
    # A memoryview over part of a larger buffer, as the DIF code passes.
    buf = bytearray(b"\xaa" * 3 + data + b"\x55" * 5)
    assert crc16_t10dif(memoryview(buf)[3:3 + length]) == bitwise16(data, 0)
    assert crc64_nvme(memoryview(buf)[3:3 + length]) == bitwise64(data, 0)
