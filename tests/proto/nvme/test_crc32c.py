"""CRC32C against known vectors (RFC 3720 appendix B.4, the iSCSI digest) and a
bit-at-a-time reference."""

from __future__ import annotations

import os

import pytest

from pybdev.proto.nvme import crc32c
from pybdev.proto.nvme.crc32c import IMPLEMENTATION, crc32c_pure


def reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(("data", "expected"), [
    (b"", 0),
    (b"123456789", 0xE3069283),
    (bytes(32), 0x8A9136AA),
    (b"\xff" * 32, 0x62A8AB43),
    (bytes(range(32)), 0x46DD794E),
    (bytes(range(31, -1, -1)), 0x113FDB5C),
])
def test_known_vectors(data: bytes, expected: int) -> None:
    assert crc32c(data) == expected


@pytest.mark.parametrize("size", [1, 3, 7, 8, 9, 15, 16, 17, 72, 1000, 4099])
def test_matches_bitwise_reference_at_every_tail_length(size: int) -> None:
    data = os.urandom(size)
    assert crc32c(data) == reference(data)
    assert crc32c(bytearray(data)) == crc32c(memoryview(data)) == reference(data)


def test_continues_over_pieces() -> None:
    data = os.urandom(5000)
    assert crc32c(data[1234:], crc32c(data[:1234])) == crc32c(data)


def test_unaligned_memoryview_slice() -> None:
    data = os.urandom(100)
    assert crc32c(memoryview(data)[3:97]) == reference(data[3:97])


@pytest.mark.parametrize("size", [0, 1, 9, 255, 256, 4096, 131072, 131072 * 2 + 3])
def test_pure_fallback_matches(size: int) -> None:
    data = os.urandom(size)
    assert crc32c_pure(data) == crc32c(data) == crc32c(bytearray(data))
    if size > 10:
        part = crc32c_pure(data[:7])
        assert crc32c_pure(memoryview(data)[7:], part) == crc32c(data[7:], part) == crc32c(data)


def test_the_c_extension_is_used() -> None:
    # a dependency in pyproject.toml: installed with pybdev, so digests are not Python's
    assert IMPLEMENTATION == "c"
