"""Property tests: random and mutated byte streams against the NBD protocol parsers.

Whatever the peer sends, the state machines must only ever produce their own events, the
parsers only results or :class:`ProtocolError`, and no buffer may grow past its bound.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybdev.proto import nbd

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAX_OPTION = 512
EXPORTS = {
    "disk0": nbd.ExportInfo("disk0", 1 << 20, nbd.NBD_FLAG_SEND_FLUSH | nbd.NBD_FLAG_SEND_DF),
    "": nbd.ExportInfo("", 4096, min_block_size=512),
    "strict": nbd.ExportInfo("strict", 1 << 16, min_block_size=4096, require_block_size=True),
}
REPLY_MAGIC = struct.pack(">Q", nbd.NBD_OPT_REPLY_MAGIC)


def opt(option: int, data: bytes = b"") -> bytes:
    return b"IHAVEOPT" + struct.pack(">II", option, len(data)) + data


def info(name: bytes, *requests: int) -> bytes:
    return (
        struct.pack(">I", len(name))
        + name
        + struct.pack(f">H{len(requests)}H", len(requests), *requests)
    )


def meta(name: bytes, *queries: bytes) -> bytes:
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q
    return out


CLIENT_PARTS = [
    b"\x00\x00\x00\x03",
    b"\x00\x00\x00\x01",
    opt(nbd.NBD_OPT_LIST),
    opt(nbd.NBD_OPT_STRUCTURED_REPLY),
    opt(nbd.NBD_OPT_SET_META_CONTEXT, meta(b"disk0", b"base:allocation")),
    opt(nbd.NBD_OPT_LIST_META_CONTEXT, meta(b"", b"base:")),
    opt(nbd.NBD_OPT_INFO, info(b"disk0", 0, 1, 2, 3)),
    opt(nbd.NBD_OPT_GO, info(b"strict")),
    opt(nbd.NBD_OPT_GO, info(b"disk0", 3)),
    opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0"),
    opt(nbd.NBD_OPT_STARTTLS),
    opt(99, b"x" * 40),
    opt(nbd.NBD_OPT_ABORT),
]


@st.composite
def mutated(draw: st.DrawFn, parts: list[bytes], prefix: bytes = b"") -> bytes:
    data = bytearray(prefix + b"".join(draw(st.lists(st.sampled_from(parts), max_size=8))))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "u32"]))
        if op == "flip":
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        else:
            value = draw(st.sampled_from([0, 1, 3, 0xFFFFFFFF, 1 << 16, 4097, 65537, 1 << 31]))
            data[i : i + 4] = struct.pack(">I", value)
    return bytes(data)


def chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out = []
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        out.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        out.append(data[pos:])
    return out


streams = st.one_of(
    st.binary(max_size=1500),
    st.binary(max_size=1500).map(lambda b: b"\x00\x00\x00\x03" + b),
    mutated(CLIENT_PARTS, prefix=b"\x00\x00\x00\x03"),
    mutated(CLIENT_PARTS),
)
splits = st.lists(st.integers(1, 64), max_size=30)


def check_option_replies(out: bytes, event: nbd.ServerEvent | None) -> None:
    """The server's output after the greeting is a run of well-formed option replies,
    possibly ended by the reply to NBD_OPT_EXPORT_NAME."""
    pos = 0
    while out[pos : pos + 8] == REPLY_MAGIC:
        length = struct.unpack_from(">I", out, pos + 16)[0]
        assert pos + 20 + length <= len(out)
        pos += 20 + length
    rest = len(out) - pos
    if isinstance(event, nbd.TransmissionReady) and not event.via_go:
        assert rest in (10, 134)
    else:
        assert rest == 0


@FUZZ
@given(data=streams, sizes=splits, no_zeroes=st.booleans())
def test_server_handshake_survives_any_stream(
    data: bytes, sizes: list[int], no_zeroes: bool
) -> None:
    hs = nbd.ServerHandshake(
        EXPORTS.get,
        exports=lambda: EXPORTS.values(),
        no_zeroes=no_zeroes,
        max_option_length=MAX_OPTION,
    )
    hs.data_to_send()
    out = b""
    event = None
    for piece in chunks(data, sizes):
        result = hs.receive_data(piece)
        out += hs.data_to_send()
        assert result is None or isinstance(result, nbd.TransmissionReady | nbd.Closed)
        if result is not None:
            assert event is None and hs.done and hs.event is result
            event = result
        # Bounded memory: at most one incomplete option is ever buffered.
        assert len(hs._buf) < 16 + MAX_OPTION
    check_option_replies(out, event)
    if isinstance(event, nbd.TransmissionReady):
        assert event.flags & nbd.NBD_FLAG_HAS_FLAGS
        event.validator()


@FUZZ
@given(data=st.binary(max_size=400), sizes=splits)
def test_client_handshake_survives_any_server(data: bytes, sizes: list[int]) -> None:
    hs = nbd.ClientHandshake("disk0", meta_contexts=[nbd.BASE_ALLOCATION], max_reply_length=1024)
    greeting = b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"
    for piece in chunks(greeting + data, sizes):
        result = hs.receive_data(piece)
        hs.data_to_send()
        assert result is None or isinstance(
            result, nbd.ClientReady | nbd.ExportList | nbd.ClientFailed
        )
        assert len(hs._buf) < 20 + 1024 + 134


SERVER_REPLIES = [
    REPLY_MAGIC + struct.pack(">III", 8, 1, 0),
    REPLY_MAGIC + struct.pack(">III", 10, 4, 19) + b"\x00\x00\x00\x01base:allocation",
    REPLY_MAGIC + struct.pack(">III", 10, 1, 0),
    REPLY_MAGIC + struct.pack(">III", 7, 3, 12) + struct.pack(">HQH", 0, 4096, 1),
    REPLY_MAGIC + struct.pack(">III", 7, 3, 14) + struct.pack(">HIII", 3, 512, 4096, 1 << 20),
    REPLY_MAGIC + struct.pack(">III", 7, 1, 0),
    REPLY_MAGIC + struct.pack(">III", 7, nbd.NBD_REP_ERR_UNSUP, 0),
    struct.pack(">QH", 4096, 1) + bytes(124),
]


@FUZZ
@given(data=mutated(SERVER_REPLIES), sizes=splits, fixed=st.booleans())
def test_client_handshake_survives_mutated_server(
    data: bytes, sizes: list[int], fixed: bool
) -> None:
    hs = nbd.ClientHandshake("disk0", meta_contexts=[nbd.BASE_ALLOCATION])
    greeting = b"NBDMAGIC" + b"IHAVEOPT" + (b"\x00\x03" if fixed else b"\x00\x00")
    for piece in chunks(greeting + data, sizes):
        result = hs.receive_data(piece)
        hs.data_to_send()
        assert result is None or isinstance(
            result, nbd.ClientReady | nbd.ExportList | nbd.ClientFailed
        )


REQUEST_PARTS = [
    nbd.encode_request(nbd.NBD_CMD_READ, 1, 0, 4096),
    nbd.encode_request(nbd.NBD_CMD_WRITE, 2, 512, 16) + bytes(range(16)),
    nbd.encode_request(nbd.NBD_CMD_WRITE, 3, 0, 0),
    nbd.encode_request(nbd.NBD_CMD_FLUSH, 4),
    nbd.encode_request(nbd.NBD_CMD_TRIM, 5, 0, 1 << 20, nbd.NBD_CMD_FLAG_FUA),
    nbd.encode_request(nbd.NBD_CMD_BLOCK_STATUS, 6, 0, 1 << 30, nbd.NBD_CMD_FLAG_REQ_ONE),
    nbd.encode_request(nbd.NBD_CMD_DISC, 7),
]
request_streams = st.one_of(st.binary(max_size=600), mutated(REQUEST_PARTS))
MAX_WRITE = 1 << 16


def materialise(requests: list[nbd.Request]) -> list[tuple[object, ...]]:
    return [(*r[:5], None if r[5] is None else bytes(r[5])) for r in requests]


@FUZZ
@given(data=request_streams, sizes=splits)
def test_request_parser_incremental_equals_one_shot(data: bytes, sizes: list[int]) -> None:
    validator = nbd.RequestValidator(
        1 << 20, 0xFFFF, min_block_size=512, structured_replies=True, block_status=True
    )
    try:
        requests, pos, need = nbd.parse_requests(data, max_write=MAX_WRITE)
        expected = materialise(requests)
        error = False
    except nbd.ProtocolError as exc:
        expected = materialise(exc.parsed)
        error = True
    else:
        assert 0 <= pos <= len(data)
        assert (need == 0) == (pos == len(data))
        assert need == 0 or len(data) - pos < need <= 28 + MAX_WRITE
    for typ, flags, _, offset, length, _ in expected:
        assert validator.check(typ, flags, offset, length) in (0, 1, 22, 28, 75)  # type: ignore[arg-type]

    # The same stream, received piecemeal into a compacted buffer as a server would.
    buf = bytearray()
    got: list[tuple[object, ...]] = []
    failed = False
    for piece in chunks(data, sizes):
        buf += piece
        try:
            requests, pos, need = nbd.parse_requests(buf, max_write=MAX_WRITE)
        except nbd.ProtocolError as exc:
            got += materialise(exc.parsed)
            failed = True
            break
        got += materialise(requests)
        del requests
        del buf[:pos]
        assert len(buf) < 28 or len(buf) < need  # only an incomplete request remains
    assert got == expected
    assert failed == error


def lookup(cookie: int) -> tuple[int, int, int] | None:
    if cookie % 11 == 10:
        return None
    return cookie % 8, (cookie >> 4) % 8192, (cookie >> 8) % 3000


REPLY_PARTS = [
    nbd.encode_simple_reply(0x10),
    nbd.encode_simple_reply(0x200, 5),
    nbd.encode_data_chunk_header(0x8, 0, 16, False) + bytes(16),
    nbd.encode_hole_chunk(0x8, 0, 16, False),
    nbd.encode_none_chunk(0x8),
    nbd.encode_block_status_chunk(0x7, 1, [(512, 3), (512, 0)]),
    nbd.encode_error_chunk(0x7, 5, "no"),
    nbd.encode_error_offset_chunk(0x8, 5, 0, "at"),
]


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), mutated(REPLY_PARTS)), structured=st.booleans())
def test_reply_parser_survives_any_stream(data: bytes, structured: bool) -> None:
    parser = nbd.ReplyParser(lookup, structured=structured, max_chunk=1 << 16)
    try:
        replies, pos, need = parser.parse(data)
    except nbd.ProtocolError as exc:
        assert 0 <= exc.offset <= len(data)
        return
    assert 0 <= pos <= len(data) and (need == 0) == (pos == len(data))
    for reply in replies:
        assert isinstance(
            reply,
            nbd.SimpleReply
            | nbd.DataChunk
            | nbd.HoleChunk
            | nbd.BlockStatusChunk
            | nbd.ErrorChunk
            | nbd.NoneChunk,
        )
        assert isinstance(reply.done, bool)
