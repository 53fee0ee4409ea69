"""JsonStream: SPDK's unframed stream of JSON values, byte by byte."""

from __future__ import annotations

import pytest

from pybdev.rpc.framing import FramingError, JsonStream


def values(*chunks: bytes) -> list[bytes]:
    s = JsonStream()
    out = []
    for chunk in chunks:
        s.feed(chunk)
        while (v := s.next_value()) is not None:
            out.append(v)
    return out


def test_back_to_back_values_in_one_read() -> None:
    assert values(b'{"a":1}{"b":2}\n[3]') == [b'{"a":1}', b'{"b":2}', b"[3]"]


def test_value_split_at_every_byte() -> None:
    doc = b' {"method": "x", "params": {"s": "a}\\"{["}, "id": 1} '
    assert values(*[doc[i:i + 1] for i in range(len(doc))]) == [doc.strip()]


def test_braces_inside_strings_do_not_count() -> None:
    assert values(b'{"s":"}}}]]"}') == [b'{"s":"}}}]]"}']


def test_escaped_quote_and_backslash_at_end_of_string() -> None:
    assert values(b'{"s":"\\\\"}', b'{"t":"\\""}') == [b'{"s":"\\\\"}', b'{"t":"\\""}']


def test_incomplete_value_waits() -> None:
    s = JsonStream()
    s.feed(b'{"a": [1, 2')
    assert s.next_value() is None
    s.feed(b"]}")
    assert s.next_value() == b'{"a": [1, 2]}'


def test_number_at_end_of_buffer_may_still_grow() -> None:
    s = JsonStream()
    s.feed(b"12")
    assert s.next_value() is None
    s.feed(b"3 ")
    assert s.next_value() == b"123"


def test_nesting_limit() -> None:
    assert values(b"[" * 64 + b"]" * 64) == [b"[" * 64 + b"]" * 64]
    with pytest.raises(FramingError, match="nesting"):
        values(b"[" * 65)


def test_size_limit() -> None:
    s = JsonStream(max_bytes=1000)
    s.feed(b'{"a":"' + b"x" * 2000)
    with pytest.raises(FramingError, match="exceeds"):
        s.next_value()


def test_stray_closing_bracket_is_an_error() -> None:
    with pytest.raises(FramingError):
        values(b"]")


def test_whitespace_only_consumes_nothing_harmful() -> None:
    s = JsonStream()
    s.feed(b" \r\n\t ")
    assert s.next_value() is None
    assert s.buffered == 0
