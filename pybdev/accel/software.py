"""The accel operations pybdev implements, in Python: SPDK's ``software`` accel module.

Each function does what SPDK's ``lib/accel/accel_sw.c`` does for the opcode of the same
name, on bytes-like buffers. They are what ``accel_get_module_info`` lists for the
``software`` module; no other opcode is claimed (no compress, crypto or DIF here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pybdev.proto.nvme.crc32c import crc32c as _crc32c

Buffer = bytes | bytearray | memoryview


def crc32c(data: Buffer, seed: int = 0) -> int:
    """CRC-32C (Castagnoli) as ``spdk_crc32c_update(data, len, ~seed) ^ 0xffffffff``.

    SPDK's accel takes the seed uninverted, which is the usual chaining value, so this is
    the NVMe/TCP digest function (C extension when installed): ``crc32c(b"123456789")``
    is the standard check value 0xE3069283 with seed 0.
    """
    return _crc32c(data, seed)


def copy(dst: bytearray | memoryview, src: Buffer) -> None:
    dst[: len(src)] = src


def fill(dst: bytearray | memoryview, pattern: int) -> None:
    """Fill ``dst`` with the 64-bit ``pattern``'s first byte, as SPDK's fill (a byte fill)."""
    dst[:] = bytes([pattern & 0xFF]) * len(dst)


def dualcast(dst1: bytearray | memoryview, dst2: bytearray | memoryview, src: Buffer) -> None:
    dst1[: len(src)] = src
    dst2[: len(src)] = src


def compare(a: Buffer, b: Buffer) -> int:
    """0 when equal, else the sign of the first differing byte (memcmp)."""
    ba, bb = bytes(a), bytes(b)
    return 0 if ba == bb else (1 if ba > bb else -1)


def copy_crc32c(dst: bytearray | memoryview, src: Buffer, seed: int = 0) -> int:
    copy(dst, src)
    return crc32c(src, seed)


def xor(dst: bytearray | memoryview, sources: Sequence[Buffer]) -> None:
    """``dst`` = the byte-wise XOR of every source (all of ``len(dst)`` bytes)."""
    n = len(dst)
    acc = int.from_bytes(bytes(sources[0][:n]), "little")
    for src in sources[1:]:
        acc ^= int.from_bytes(bytes(src[:n]), "little")
    dst[:] = acc.to_bytes(n, "little")


#: Opcode name -> implementation, in SPDK's opcode order (lib/accel/accel.c g_opcode_strings).
OPERATIONS: dict[str, Callable[..., Any]] = {
    "copy": copy, "fill": fill, "dualcast": dualcast, "compare": compare,
    "crc32c": crc32c, "copy_crc32c": copy_crc32c, "xor": xor,
}
