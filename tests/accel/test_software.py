"""The Python implementations behind accel's ``software`` module."""

from __future__ import annotations

import zlib

from pybdev.accel import software


def test_crc32c_check_value_and_seed() -> None:
    # The CRC-32C check value (RFC 3720 appendix B.4) and chaining through the seed, as
    # SPDK's accel_crc32c takes it (uninverted).
    assert software.crc32c(b"123456789") == 0xE3069283
    assert software.crc32c(bytes(32)) == 0x8A9136AA
    whole = software.crc32c(b"hello world")
    assert software.crc32c(b" world", software.crc32c(b"hello")) == whole
    assert whole != zlib.crc32(b"hello world")  # Castagnoli, not the zlib polynomial


def test_copy_fill_dualcast_compare_xor() -> None:
    dst = bytearray(8)
    software.copy(dst, b"abcdefgh")
    assert dst == b"abcdefgh"
    software.fill(dst, 0x1FF)
    assert dst == b"\xff" * 8
    a, b = bytearray(3), bytearray(3)
    software.dualcast(a, b, b"xyz")
    assert a == b == b"xyz"
    assert software.compare(b"abc", b"abc") == 0
    assert software.compare(b"abd", b"abc") == 1 and software.compare(b"abb", b"abc") == -1
    out = bytearray(4)
    software.xor(out, [b"\x0f\x0f\x00\xff", b"\xf0\x0f\x00\x0f", b"\x00\x00\x01\x00"])
    assert out == b"\xff\x00\x01\xf0"
    assert software.copy_crc32c(dst, b"123456789") == 0xE3069283 and dst[:9] != b"\xff" * 9
