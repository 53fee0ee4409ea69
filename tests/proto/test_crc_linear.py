"""The shared GF(2) CRC core against an independent implementation: zlib's CRC-32."""

from __future__ import annotations

import os
import zlib

import pytest

from pybdev.proto.crc_linear import LinearCrc, reflect

CRC32 = LinearCrc(32, reflect(0xEDB88320, 32))  # zlib's polynomial, reflected like CRC32C


@pytest.mark.parametrize("size", [256, 512, 4096, 4096 + 520, 65536])
def test_reflected_crc_matches_zlib(size: int) -> None:
    data = os.urandom(size)
    assert CRC32.reflected(data, 0) == zlib.crc32(data)


def test_reflected_crc_continues_from_a_previous_result() -> None:
    head, tail = os.urandom(300), os.urandom(1000)
    assert CRC32.reflected(tail, zlib.crc32(head)) == zlib.crc32(head + tail)


def test_reflect() -> None:
    assert reflect(0b0011, 4) == 0b1100
    assert reflect(reflect(0x82F63B78, 32), 32) == 0x82F63B78
