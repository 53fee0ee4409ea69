"""Sans-IO framing of SPDK's JSON-RPC stream: bytes in, complete JSON values out.

SPDK frames nothing (spec §1.2): a connection carries a sequence of JSON values, any
whitespace between them, several per read or one split across reads. :class:`JsonStream`
finds where each top-level value ends without parsing it, so the dispatcher parses each
value once, and enforces SPDK's limits: 256 KiB of buffered request and nesting depth 64.
"""

from __future__ import annotations

import re

MAX_REQUEST_BYTES = 256 * 1024
MAX_NESTING = 64

_WS = re.compile(rb"[ \t\r\n]*")
_STRUCTURAL = re.compile(rb'[\[\]{}"]')
# The rest of a string after its opening quote, up to and including the closing quote.
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_SCALAR = re.compile(rb'[^ \t\r\n\[\]{}",:]*')


class FramingError(Exception):
    """The stream cannot be a sequence of JSON values (SPDK answers -32700 and closes)."""


class JsonStream:
    """Buffer of one connection's bytes; :meth:`next_value` yields complete values."""

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES, max_depth: int = MAX_NESTING) -> None:
        self._buf = bytearray()
        self._max_bytes = max_bytes
        self._max_depth = max_depth

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_value(self) -> bytes | None:
        """The next complete value (surrounding whitespace dropped), or None until more bytes.

        Raises :class:`FramingError` for nesting beyond the limit, a token that cannot
        start a value, or a value that outgrew the request size limit.
        """
        buf = self._buf
        start = _WS.match(buf).end()  # type: ignore[union-attr]
        if start == len(buf):
            buf.clear()
            return None
        end = self._value_end(buf, start)
        if end is None:
            if len(buf) - start > self._max_bytes:
                raise FramingError(f"request exceeds {self._max_bytes} bytes")
            if start:
                del buf[:start]
            return None
        value = bytes(buf[start:end])
        del buf[:end]
        return value

    def _value_end(self, buf: bytearray, start: int) -> int | None:
        first = buf[start]
        if first == 0x22:  # '"'
            m = _STRING_REST.match(buf, start + 1)
            return m.end() if m else None
        if first not in b"[{":
            m = _SCALAR.match(buf, start)
            end = m.end()  # type: ignore[union-attr]
            if end == start:
                raise FramingError(f"unexpected character {chr(first)!r}")
            # A number at the end of the buffer may still be growing.
            return end if end < len(buf) else None
        depth = 0
        pos = start
        while True:
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                return None
            ch = buf[m.start()]
            if ch == 0x22:
                s = _STRING_REST.match(buf, m.end())
                if s is None:
                    return None
                pos = s.end()
                continue
            pos = m.end()
            if ch in b"[{":
                depth += 1
                if depth > self._max_depth:
                    raise FramingError(f"nesting deeper than {self._max_depth}")
            else:
                depth -= 1
                if depth == 0:
                    return pos
