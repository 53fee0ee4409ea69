"""JsonStream: SPDK's unframed stream of JSON values, byte by byte."""

from __future__ import annotations

import pytest

from pybdev.rpc.framing import _SHALLOW_VALUE, FramingError, JsonStream


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


# --- grammar checked as bytes arrive (SPDK's spdk_json_parse) -------------------------------

import json  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pybdev.rpc.dispatcher import ParseError, parse_json  # noqa: E402


@pytest.mark.parametrize("doc", [
    b"{bad json", b"NaN", b"-Infinity", b"Infinity", b'{"id":NaN', b'{"a" 1', b"[1,]",
    b'{"a":1,}', b"{,", b'{"a":tx', b'["\\q"', b'["\x01"', b"[01", b"[1.x", b"[-a", b"}",
    b'{"a"::', b"[1 2", b'{"a":1 "b"', b"[\"a\":1",
])
def test_invalid_prefix_fails_at_once(doc: bytes) -> None:
    """A value that can never become JSON is refused without waiting for more bytes (by
    the framer, or by the parser when the brackets happen to close)."""
    assert outcome([doc]) == ([], "error")
    assert outcome([doc[i:i + 1] for i in range(len(doc))]) == ([], "error")


@pytest.mark.parametrize("doc", [
    b'{"a":tru', b'{"a":"\\u00', b'{"a":"\\', b"[-", b"[1.", b"[1e", b"[1e+", b'{"a"',
    b'{"a":', b"[[[", b'"abc', b"[0.5",
])
def test_valid_prefix_waits(doc: bytes) -> None:
    assert values(doc) == []


def test_complete_value_over_the_size_limit_is_refused() -> None:
    # A whole value beyond the limit is refused like an incomplete one (it used to pass).
    doc = b'{"method":"x","params":{"s":"' + b"x" * 2000 + b'"}}'
    for chunks in ([doc], [doc[i:i + 100] for i in range(0, len(doc), 100)]):
        s = JsonStream(max_bytes=1000)
        with pytest.raises(FramingError, match="exceeds"):
            for c in chunks:
                s.feed(c)
                s.next_value()
    s = JsonStream(max_bytes=len(doc))
    s.feed(doc)
    assert s.next_value() == doc


def test_long_tokens_trickled_byte_by_byte_are_linear() -> None:
    # Resumed scans: a 200 KB string or number fed one byte at a time is still framed
    # (a rescan from the token's start each time would take minutes, not a second).
    for doc in (b'["' + b"x" * 200_000 + b'"]', b"[" + b"7" * 200_000 + b"]"):
        s = JsonStream()
        got = None
        for i in range(len(doc)):
            s.feed(doc[i:i + 1])
            got = s.next_value() or got
        assert got == doc


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


def outcome(chunks: list[bytes]) -> tuple[list[object], str]:
    """What the framer and parser together make of a stream: parsed values, then how it
    ended ("error", "pending" or "clean")."""
    s = JsonStream()
    out: list[object] = []
    try:
        for c in chunks:
            s.feed(c)
            while (v := s.next_value()) is not None:
                out.append(parse_json(v))
    except (FramingError, ParseError):
        return out, "error"
    return out, "pending" if s.buffered else "clean"


@settings(max_examples=300, deadline=None)
@given(doc=json_values, indent=st.sampled_from([None, 1]), data=st.data())
def test_any_json_document_in_any_chunks(doc: object, indent: int | None,
                                         data: st.DataObject) -> None:
    raw = (json.dumps([doc], indent=indent) + "\n").encode()
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(raw) - 1)), max_size=8)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    assert outcome(chunks) == ([[doc]], "clean")
    # Every prefix of it waits for more (never an error).
    assert outcome([raw[:data.draw(st.integers(0, len(raw)))]])[1] != "error"


@settings(max_examples=300, deadline=None)
@given(doc=json_values, junk=st.binary(min_size=1, max_size=3), data=st.data())
def test_chunking_never_changes_the_outcome(doc: object, junk: bytes,
                                            data: st.DataObject) -> None:
    raw = json.dumps({"a": [doc]}).encode()
    at = data.draw(st.integers(0, len(raw)))
    bad = raw[:at] + junk + raw[at:] + b"\n"
    whole = outcome([bad])
    bytewise = outcome([bad[i:i + 1] for i in range(len(bad))])
    assert whole == bytewise


@settings(max_examples=300, deadline=None)
@given(doc=json_values, spaced=st.booleans())
def test_one_pattern_for_shallow_values_ends_where_the_scan_does(doc: object,
                                                                 spaced: bool) -> None:
    """The regular expression that finds most requests whole agrees with the bracket
    scan, or leaves the value (deeper than three) to it."""
    one = json.dumps({"params": [doc]}, separators=None if spaced else (",", ":")).encode()
    buf = bytearray(one + b'{"next":1}')
    m = _SHALLOW_VALUE.match(buf)
    assert m is None or m.end() == len(one)
    assert JsonStream()._structural_end(buf) == len(one)
    assert values(bytes(buf)) == [one, b'{"next":1}']


def test_deep_and_incomplete_values_leave_the_pattern_for_the_scan() -> None:
    deep = b'{"a":{"b":{"c":{"d":[1]}}}}'
    assert _SHALLOW_VALUE.match(deep) is None
    assert values(deep + b"[2]") == [deep, b"[2]"]
    assert _SHALLOW_VALUE.match(b'{"a":{"b":"}"}') is None  # waits for its last brace
    assert values(b'{"a":{"b":"}"}', b"}") == [b'{"a":{"b":"}"}}']
