"""What both roles of the NBD handshake share (part of :mod:`pybdev.proto.nbd`).

Protocol strings (export names, descriptions, messages, metadata context names) are
UTF-8 without NUL and at most ``MAX_STRING`` bytes; block sizes are powers of two.
"""

from __future__ import annotations

import struct
from typing import Final

from .const import MAX_STRING

U16: Final = struct.Struct(">H")
U32: Final = struct.Struct(">I")


def is_pow2(value: int) -> bool:
    return value > 0 and not value & (value - 1)


def decode_string(raw: bytes | bytearray | memoryview) -> str | None:
    """A protocol string (UTF-8, no NUL, at most 4096 bytes), or None if it is not one."""
    if len(raw) > MAX_STRING:
        return None
    data = bytes(raw)
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def encode_string(text: str) -> bytes:
    """``text`` as a protocol string, cut to ``MAX_STRING`` bytes."""
    return text.encode("utf-8", "replace")[:MAX_STRING]
