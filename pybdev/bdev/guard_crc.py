"""The guard CRCs of protection information that the standard library lacks, in pure Python.

CRC-16/T10-DIF (the 16-bit guard) and CRC-64/NVME (the 64-bit guard), as SPDK's
``spdk_crc16_t10dif`` and ``spdk_crc64_nvme``; the 32-bit guard is CRC-32C, which
``pybdev.proto.nvme.crc32c`` has. Short input goes through a byte table; a data block
(256 bytes and more) through :class:`pybdev.proto.crc_linear.LinearCrc` (the CRC's
linearity over GF(2): big-integer ANDs and bit counts, which run in C).
"""

from __future__ import annotations

from typing import Final

from pybdev.proto.crc_linear import LinearCrc, reflect

__all__ = ["crc16_t10dif", "crc64_nvme"]

_MASK_MIN: Final = 256  # bytes: below this the table loop is as fast
_MAX_BITS: Final = 1 << 16  # masks cover 8 KiB (a 4 KiB block and its metadata); longer: pieces
_ONES64: Final = (1 << 64) - 1


# ------------------------------------------------------------------------- CRC-16/T10-DIF
_P16: Final = 0x8BB7


def _table16() -> list[int]:
    out = []
    for b in range(256):
        c = b << 8
        for _ in range(8):
            c = ((c << 1) ^ _P16) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        out.append(c)
    return out


_T16: Final = _table16()
_M16: Final = LinearCrc(16, _P16)


def crc16_t10dif(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-16/T10-DIF (poly 0x8BB7, no reflection, no final XOR), as ``spdk_crc16_t10dif``.

    ``crc`` is the seed or a previous result. ``crc16_t10dif(b"123456789") == 0xD0DB``.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < _MASK_MIN:
        t = _T16
        for b in mv:
            crc = t[(crc >> 8) ^ b] ^ ((crc << 8) & 0xFFFF)
        return crc
    step = _MAX_BITS >> 3
    for start in range(0, n, step):
        piece = mv[start:start + step]
        if len(piece) < _MASK_MIN:
            return crc16_t10dif(piece, crc)
        nbits = len(piece) << 3
        message = int.from_bytes(piece, "big") ^ (crc << (nbits - 16))
        crc = _M16.crc(message, nbits)
    return crc


# --------------------------------------------------------------------------- CRC-64/NVME
_P64_REFLECTED: Final = 0x9A6C9329AC4BC9B5
_P64: Final = reflect(_P64_REFLECTED, 64)


def _table64() -> list[int]:
    out = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ _P64_REFLECTED if c & 1 else c >> 1
        out.append(c)
    return out


_T64: Final = _table64()
_M64: Final = LinearCrc(64, _P64)


def crc64_nvme(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-64/NVME (reflected poly 0x9A6C9329AC4BC9B5, inverted in and out), as SPDK's.

    ``crc`` is 0 or a previous result. ``crc64_nvme(b"123456789") == 0xAE8B14860A799888``.
    """
    mv = memoryview(data).cast("B")
    n = len(mv)
    if n < _MASK_MIN:
        t = _T64
        c = crc ^ _ONES64
        for b in mv:
            c = t[(c ^ b) & 0xFF] ^ (c >> 8)
        return c ^ _ONES64
    step = _MAX_BITS >> 3
    for start in range(0, n, step):
        piece = mv[start:start + step]
        if len(piece) < _MASK_MIN:
            return crc64_nvme(piece, crc)
        crc = _M64.reflected(bytes(piece), crc)
    return crc
