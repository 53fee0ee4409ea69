"""Sans-IO framing of SPDK's JSON-RPC stream: bytes in, complete JSON values out.

SPDK frames nothing (``lib/jsonrpc/jsonrpc_server.c``): a connection carries a sequence
of JSON values, any whitespace between them, several per read or one split across reads.
A value that arrives whole is found by a cheap structural scan and validated by the
parser. A value that looks incomplete is validated token by token as bytes arrive, the
way SPDK's ``spdk_json_parse`` does (``lib/json/json_parse.c``): bytes that can no longer
become valid JSON (``{bad``, ``NaN``, a control character in a string) fail at once
instead of waiting for a closing brace that may never come. That scan resumes where it
stopped, so a request trickled in byte by byte costs linear time. SPDK's limits hold for
complete and incomplete values alike: 256 KiB per request (``SPDK_JSONRPC_RECV_BUF_SIZE``,
``lib/jsonrpc/jsonrpc_internal.h``) and nesting depth 64 (``SPDK_JSON_MAX_NESTING_DEPTH``).
"""

from __future__ import annotations

import re

MAX_REQUEST_BYTES = 256 * 1024
MAX_NESTING = 64

_WS = re.compile(rb"[ \t\r\n]*")
# A complete string after its opening quote: no raw control characters, valid escapes only.
_STRING_REST = re.compile(
    rb'[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
)
# The same, ending at the end of the buffer: still a valid string prefix.
_STRING_PREFIX = re.compile(
    rb'([^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*)'
    rb"(?:\\(?:u[0-9a-fA-F]{0,3})?)?"
)
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_PREFIX = re.compile(rb"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?")
_DIGITS = re.compile(rb"[0-9]*")
# For the fast structural scan of a value that arrived whole.
_STRUCTURAL = re.compile(rb'[\[\]{}"]')
_STRING_END = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}
# A whole value nested at most three deep (a request, its params, one object in them) in
# one regular expression: a fifth of the structural scan's time on a typical request.
# Possessive quantifiers: nothing backtracks, so a value that is incomplete or deeper
# fails in linear time and goes to the scan.
_ATOM = rb'[^{}\[\]"]++|"(?:[^"\\]++|\\.)*+"'
_DEPTH1 = rb"[{\[](?:" + _ATOM + rb")*+[}\]]"
_DEPTH2 = rb"[{\[](?:" + _ATOM + rb"|" + _DEPTH1 + rb")*+[}\]]"
_SHALLOW_VALUE = re.compile(rb"[{\[](?:" + _ATOM + rb"|" + _DEPTH2 + rb")*+[}\]]", re.S)

# What the scanner expects next.
_VALUE = 0  # a value (top level, after ':' or after ',' in an array)
_VALUE_OR_CLOSE = 1  # just after '['
_NAME = 2  # after ',' in an object
_NAME_OR_CLOSE = 3  # just after '{'
_COLON = 4  # after a member name
_SEP = 5  # after a value inside a container: ',' or the closing bracket
_DONE = 6  # the top-level value is complete


class FramingError(Exception):
    """The stream cannot be a sequence of JSON values (SPDK answers -32700 and closes)."""


class JsonStream:
    """Buffer of one connection's bytes; :meth:`next_value` yields complete values."""

    def __init__(
        self,
        max_bytes: int = MAX_REQUEST_BYTES,
        max_depth: int = MAX_NESTING,
    ) -> None:
        self._buf = bytearray()
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._reset()

    def _reset(self) -> None:
        # The value being scanned starts at offset 0 of the buffer once _pos > 0.
        self._pos = 0
        self._stack: list[int] = []  # the opening bracket of each open container
        self._state = _VALUE
        # Progress inside a token cut by the end of the buffer, so that a long string or
        # number trickled in small reads is not rescanned from its start every time.
        self._resume = 0
        self._validating = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_value(self) -> bytes | None:
        """The next complete value (surrounding whitespace dropped), or None until more bytes.

        Raises :class:`FramingError` when the bytes cannot start or continue a JSON value, or
        when the value breaks a limit (size, nesting).
        """
        buf = self._buf
        if not self._validating:
            start = _WS.match(buf).end()  # type: ignore[union-attr]
            if start:
                del buf[:start]
            if not buf:
                return None
            # Most requests arrive whole: find their end with a cheap structural scan and
            # leave validation to the parser (which answers -32700 for invalid JSON). Only
            # a value that looks incomplete goes through the validating scan, which knows
            # whether it can still become valid JSON.
            end = self._structural_end(buf)
            if end is None:
                self._validating = True
        if self._validating:
            end = self._scan(buf)
        if end is None:
            if len(buf) > self._max_bytes:
                raise FramingError(f"request exceeds {self._max_bytes} bytes")
            return None
        if end > self._max_bytes:
            raise FramingError(f"request exceeds {self._max_bytes} bytes")
        value = bytes(buf[:end])
        del buf[:end]
        self._reset()
        return value

    def _scan(self, buf: bytearray) -> int | None:
        """Advance the scan; the end offset of a complete value, or None when incomplete."""
        pos, state, stack = self._pos, self._state, self._stack
        n = len(buf)
        try:
            while True:
                pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
                if pos >= n:
                    return None
                c = buf[pos]
                if c == 0x22:  # '"'
                    if state not in (_VALUE, _VALUE_OR_CLOSE, _NAME, _NAME_OR_CLOSE):
                        raise FramingError("unexpected string")
                    at = max(pos + 1, self._resume)
                    m = _STRING_REST.match(buf, at)
                    if m is None:
                        p = _STRING_PREFIX.match(buf, at)
                        if p.end() == n:  # type: ignore[union-attr]
                            self._resume = p.end(1)  # type: ignore[union-attr]
                            return None
                        raise FramingError("invalid string")
                    self._resume = 0
                    pos = m.end()
                    state = _COLON if state in (_NAME, _NAME_OR_CLOSE) else _SEP
                elif c in b"{[":
                    if state not in (_VALUE, _VALUE_OR_CLOSE):
                        raise FramingError(f"unexpected {chr(c)!r}")
                    if len(stack) >= self._max_depth:
                        raise FramingError(f"nesting deeper than {self._max_depth}")
                    stack.append(c)
                    pos += 1
                    state = _NAME_OR_CLOSE if c == 0x7B else _VALUE_OR_CLOSE
                    continue
                elif c in b"}]":
                    opener = 0x7B if c == 0x7D else 0x5B
                    if not stack or stack[-1] != opener or state not in (
                        _SEP, _NAME_OR_CLOSE if opener == 0x7B else _VALUE_OR_CLOSE
                    ):
                        raise FramingError(f"unexpected {chr(c)!r}")
                    stack.pop()
                    pos += 1
                    state = _SEP
                elif c == 0x3A:  # ':'
                    if state != _COLON:
                        raise FramingError("unexpected ':'")
                    pos += 1
                    state = _VALUE
                    continue
                elif c == 0x2C:  # ','
                    if state != _SEP or not stack:
                        raise FramingError("unexpected ','")
                    pos += 1
                    state = _NAME if stack[-1] == 0x7B else _VALUE
                    continue
                elif c in _LITERALS:
                    if state not in (_VALUE, _VALUE_OR_CLOSE):
                        raise FramingError("unexpected literal")
                    lit = _LITERALS[c]
                    got = bytes(buf[pos:pos + len(lit)])
                    if got != lit:
                        if len(got) < len(lit) and lit.startswith(got):
                            return None
                        raise FramingError("invalid literal")
                    pos += len(lit)
                    state = _SEP
                elif c == 0x2D or 0x30 <= c <= 0x39:  # '-' or a digit
                    if state not in (_VALUE, _VALUE_OR_CLOSE):
                        raise FramingError("unexpected number")
                    if self._resume > pos + 2 and _DIGITS.fullmatch(buf, self._resume):
                        # Digits appended to a valid prefix longer than "-0" keep it valid.
                        self._resume = n
                        return None
                    m = _NUMBER.match(buf, pos)
                    if m is None or m.end() >= n or buf[m.end()] in b".eE+-0123456789":
                        # At the end of the buffer a number may still grow.
                        if _NUMBER_PREFIX.match(buf, pos).end() == n:  # type: ignore[union-attr]
                            self._resume = n
                            return None
                        raise FramingError("invalid number")
                    self._resume = 0
                    pos = m.end()
                    state = _SEP
                else:
                    raise FramingError(f"unexpected character {chr(c)!r}")
                if not stack:
                    return pos
        finally:
            self._pos, self._state = pos, state
            if pos > self._max_bytes:
                raise FramingError(f"request exceeds {self._max_bytes} bytes")

    def _structural_end(self, buf: bytearray) -> int | None:
        """Where the value at offset 0 ends if its brackets close, else None (not validated)."""
        first = buf[0]
        if first == 0x22:  # '"'
            m = _STRING_END.match(buf, 1)
            return m.end() if m else None
        if first not in b"[{":
            return None  # a top-level scalar (never a request) goes the validating way
        shallow = _SHALLOW_VALUE.match(buf)
        if shallow is not None:
            return shallow.end()
        depth = 0
        pos = 0
        while True:
            m = _STRUCTURAL.search(buf, pos)
            if m is None:
                return None
            ch = buf[m.start()]
            if ch == 0x22:
                s = _STRING_END.match(buf, m.end())
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

