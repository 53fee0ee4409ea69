"""Byte-level tests of the NBD transmission phase (pybdev.proto.nbd.transmission)."""

from __future__ import annotations

import struct

import pytest

from pybdev.proto import nbd

REQ_MAGIC = b"\x25\x60\x95\x13"
SIMPLE_MAGIC = b"\x67\x44\x66\x98"
STRUCT_MAGIC = b"\x66\x8e\x33\xef"


def req(typ: int, cookie: int = 1, offset: int = 0, length: int = 0, flags: int = 0) -> bytes:
    return REQ_MAGIC + struct.pack(">HHQQI", flags, typ, cookie, offset, length)


def chunk(typ: int, cookie: int, payload: bytes = b"", flags: int = 1) -> bytes:
    return STRUCT_MAGIC + struct.pack(">HHQI", flags, typ, cookie, len(payload)) + payload


# ---------------------------------------------------------------------------------------------
# parse_requests
# ---------------------------------------------------------------------------------------------


def test_parse_single_read() -> None:
    data = bytes.fromhex("25609513000100000102030405060708000000000000100000000200")
    requests, pos, need = nbd.parse_requests(bytearray(data))
    assert requests == [(0, 1, 0x0102030405060708, 4096, 512, None)]
    assert (pos, need) == (28, 0)


def test_parse_write_payload_is_a_view() -> None:
    buf = bytearray(req(nbd.NBD_CMD_WRITE, 7, 512, 5) + b"hello")
    [(typ, flags, cookie, offset, length, payload)] = nbd.parse_requests(buf)[0]
    assert (typ, flags, cookie, offset, length) == (1, 0, 7, 512, 5)
    assert isinstance(payload, memoryview) and payload.tobytes() == b"hello"
    buf[28] = ord("j")
    assert payload.tobytes() == b"jello"  # no copy was made
    with pytest.raises(BufferError):
        del buf[:1]  # a live view pins the buffer: no silent corruption
    payload.release()
    del buf[:1]


def test_parse_batch_and_partial_tail() -> None:
    stream = (
        req(nbd.NBD_CMD_READ, 1, 0, 4096)
        + req(nbd.NBD_CMD_WRITE, 2, 4096, 4)
        + b"abcd"
        + req(nbd.NBD_CMD_FLUSH, 3)
        + req(nbd.NBD_CMD_TRIM, 4, 0, 8192, nbd.NBD_CMD_FLAG_FUA)
        + req(nbd.NBD_CMD_DISC, 5)
    )
    requests, pos, need = nbd.parse_requests(stream)
    assert [r[:5] for r in requests] == [
        (0, 0, 1, 0, 4096),
        (1, 0, 2, 4096, 4),
        (3, 0, 3, 0, 0),
        (4, 1, 4, 0, 8192),
        (2, 0, 5, 0, 0),
    ]
    assert requests[1][5] is not None and requests[1][5].tobytes() == b"abcd"
    assert (pos, need) == (len(stream), 0)


@pytest.mark.parametrize("cut", range(1, 28))
def test_parse_waits_for_complete_header(cut: int) -> None:
    stream = req(nbd.NBD_CMD_READ, 1, 0, 512) + req(nbd.NBD_CMD_READ, 2, 0, 512)
    requests, pos, need = nbd.parse_requests(stream[: 28 + cut])
    assert [r[2] for r in requests] == [1]
    assert (pos, need) == (28, 28)


@pytest.mark.parametrize("cut", [0, 1, 27, 28, 29, 4123])
def test_parse_waits_for_complete_write_payload(cut: int) -> None:
    stream = req(nbd.NBD_CMD_WRITE, 9, 0, 4096) + bytes(4096)
    requests, pos, need = nbd.parse_requests(b"x" * 10 + stream[:cut], pos=10)
    if cut < 28:
        assert (requests, pos, need) == ([], 10, 28 if cut else 0)
    else:
        assert (requests, pos, need) == ([], 10, 28 + 4096)


def test_parse_respects_window() -> None:
    stream = req(0, 1) + req(0, 2) + req(0, 3)
    requests, pos, need = nbd.parse_requests(stream, 28, 56)
    assert [r[2] for r in requests] == [2] and (pos, need) == (56, 0)


def test_parse_accepts_memoryview_and_bytes() -> None:
    stream = req(1, 1, 0, 3) + b"abc"
    for buf in (stream, bytearray(stream), memoryview(stream)):
        [request] = nbd.parse_requests(buf)[0]
        assert request[5] is not None and bytes(request[5]) == b"abc"


def test_parse_zero_length_write() -> None:
    requests, _, need = nbd.parse_requests(req(1, 1, 0, 0) + req(0, 2, 0, 1))
    assert requests[0][5] is not None and len(requests[0][5]) == 0
    assert [r[2] for r in requests] == [1, 2] and need == 0


def test_parse_unknown_command_has_no_payload() -> None:
    requests, _, need = nbd.parse_requests(req(42, 1, 0, 4096) + req(0, 2))
    assert [r[:2] for r in requests] == [(42, 0), (0, 0)] and need == 0


@pytest.mark.parametrize(
    "magic",
    [b"\x25\x60\x95\x14", b"\x12\x56\x09\x53", b"\x21\xe4\x1c\x71", b"\x00\x00\x00\x00"],
)
def test_parse_bad_magic_raises_with_parsed_requests(magic: bytes) -> None:
    stream = req(0, 1, 0, 512) + magic + req(0, 2)[4:]
    with pytest.raises(nbd.ProtocolError) as info:
        nbd.parse_requests(stream)
    assert [r[2] for r in info.value.parsed] == [1]
    assert info.value.offset == 28


def test_parse_bad_magic_detected_from_header_alone() -> None:
    with pytest.raises(nbd.ProtocolError):
        nbd.parse_requests(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n")


def test_parse_write_over_limit_raises_before_payload() -> None:
    header = req(nbd.NBD_CMD_WRITE, 1, 0, (1 << 25) + 1)
    with pytest.raises(nbd.ProtocolError, match="exceeds"):
        nbd.parse_requests(header)
    # The limit is the caller's choice.
    assert nbd.parse_requests(header, max_write=1 << 26)[1:] == (0, 28 + (1 << 25) + 1)


def test_peek_request() -> None:
    buf = b"junk" + req(nbd.NBD_CMD_WRITE, 77, 1 << 40, 1 << 20, nbd.NBD_CMD_FLAG_FUA)
    assert nbd.peek_request(buf, 4) == (1, 1, 77, 1 << 40, 1 << 20)
    with pytest.raises(nbd.ProtocolError):
        nbd.peek_request(buf, 0)


def test_zero_copy_flow() -> None:
    """The documented large-write path: header parsed, payload received elsewhere."""
    payload = bytes(range(256)) * 4096  # 1 MiB
    buf = bytearray(req(nbd.NBD_CMD_READ, 1, 0, 4096) + req(nbd.NBD_CMD_WRITE, 2, 0, len(payload)))
    buf += payload[:1000]
    requests, pos, need = nbd.parse_requests(buf)
    assert len(requests) == 1 and need == 28 + len(payload)
    typ, _, cookie, _, length, _ = (*nbd.peek_request(buf, pos), None)
    assert (typ, cookie, length) == (nbd.NBD_CMD_WRITE, 2, len(payload))
    dest = bytearray(length)
    have = len(buf) - pos - 28
    dest[:have] = buf[pos + 28 :]
    dest[have:] = payload[have:]  # stands for sock.recv_into(memoryview(dest)[have:])
    assert dest == payload


def test_encode_request_bytes() -> None:
    assert nbd.encode_request(nbd.NBD_CMD_READ, 0x0102030405060708, 4096, 512) == bytes.fromhex(
        "25609513000000000102030405060708000000000000100000000200"
    )
    assert nbd.encode_request(1, 5, 0, 4, nbd.NBD_CMD_FLAG_FUA) == req(1, 5, 0, 4, 1)
    assert nbd.encode_request(nbd.NBD_CMD_DISC, 9) == req(2, 9)


def test_encode_request_roundtrip() -> None:
    stream = nbd.encode_request(1, 3, 8192, 2, 1) + b"zz" + nbd.encode_request(7, 4, 0, 1 << 30, 8)
    requests, _, _ = nbd.parse_requests(stream)
    assert [r[:5] for r in requests] == [(1, 1, 3, 8192, 2), (7, 8, 4, 0, 1 << 30)]


# ---------------------------------------------------------------------------------------------
# RequestValidator
# ---------------------------------------------------------------------------------------------

READ, WRITE, DISC, FLUSH, TRIM, CACHE, ZERO, BS = range(8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = (1 << i for i in range(6))
ALL_TX = (
    nbd.NBD_FLAG_HAS_FLAGS
    | nbd.NBD_FLAG_SEND_FLUSH
    | nbd.NBD_FLAG_SEND_FUA
    | nbd.NBD_FLAG_SEND_TRIM
    | nbd.NBD_FLAG_SEND_WRITE_ZEROES
    | nbd.NBD_FLAG_SEND_DF
    | nbd.NBD_FLAG_SEND_CACHE
    | nbd.NBD_FLAG_SEND_FAST_ZERO
)
SIZE = 1 << 20
MAX = 64 * 1024


def full(**kwargs: object) -> nbd.RequestValidator:
    args: dict[str, object] = {
        "min_block_size": 512,
        "max_payload": MAX,
        "structured_replies": True,
        "block_status": True,
    }
    args.update(kwargs)
    flags = args.pop("flags", ALL_TX)
    return nbd.RequestValidator(SIZE, flags, **args)  # type: ignore[arg-type]


OK, EINVAL, EPERM, ENOSPC, EOVERFLOW = 0, 22, 1, 28, 75


@pytest.mark.parametrize(
    ("typ", "flags", "offset", "length", "expected"),
    [
        # valid requests
        (READ, 0, 0, 4096, OK),
        (READ, FUA | DF, SIZE - 512, 512, OK),
        (WRITE, FUA, 512, MAX, OK),
        (FLUSH, 0, 0, 0, OK),
        (FLUSH, FUA, 0, 0, OK),
        (TRIM, FUA, 0, SIZE, OK),
        (CACHE, 0, 0, SIZE, OK),
        (ZERO, NO_HOLE | FAST_ZERO | FUA, 0, SIZE, OK),
        (BS, REQ_ONE, 0, SIZE, OK),
        (DISC, 0, 0, 0, OK),
        # payload-less commands are not limited by the maximum payload
        (TRIM, 0, 0, SIZE, OK),
        # unknown commands
        (8, 0, 0, 512, EINVAL),
        (9, 0, 0, 512, EINVAL),
        (0xFFFF, 0, 0, 512, EINVAL),
        # unknown flags and flags not documented for the command
        (READ, PAYLOAD_LEN, 0, 512, EINVAL),
        (READ, 1 << 15, 0, 512, EINVAL),
        (READ, NO_HOLE, 0, 512, EINVAL),
        (READ, REQ_ONE, 0, 512, EINVAL),
        (WRITE, DF, 0, 512, EINVAL),
        (WRITE, NO_HOLE, 0, 512, EINVAL),
        (TRIM, NO_HOLE, 0, 512, EINVAL),
        (BS, DF, 0, 512, EINVAL),
        (ZERO, DF, 0, 512, EINVAL),
        (FLUSH, DF, 0, 0, EINVAL),
        # flush carries no range
        (FLUSH, 0, 512, 0, EINVAL),
        (FLUSH, 0, 0, 512, EINVAL),
        # zero length
        (READ, 0, 0, 0, EINVAL),
        (WRITE, 0, 0, 0, EINVAL),
        (TRIM, 0, 0, 0, EINVAL),
        (ZERO, 0, 0, 0, EINVAL),
        (BS, 0, 0, 0, EINVAL),
        # misaligned to the 512-byte minimum block
        (READ, 0, 1, 512, EINVAL),
        (READ, 0, 0, 511, EINVAL),
        (WRITE, 0, 256, 512, EINVAL),
        (WRITE, 0, 0, 1000, EINVAL),
        (TRIM, 0, 100, 512, EINVAL),
        (ZERO, 0, 0, 513, EINVAL),
        (CACHE, 0, 1, 512, EINVAL),
        (BS, 0, 0, 100, EINVAL),
        # over the maximum payload: EINVAL for writes, EOVERFLOW for structured reads
        (WRITE, 0, 0, MAX + 512, EINVAL),
        (READ, 0, 0, MAX + 512, EOVERFLOW),
        # out of range: ENOSPC for writes and write zeroes, EINVAL for the rest
        (WRITE, 0, SIZE - 512, 1024, ENOSPC),
        (WRITE, 0, SIZE, 512, ENOSPC),
        (ZERO, 0, SIZE - 512, 1024, ENOSPC),
        (READ, 0, SIZE - 512, 1024, EINVAL),
        (READ, 0, 1 << 63, 512, EINVAL),
        (TRIM, 0, SIZE, 512, EINVAL),
        (CACHE, 0, SIZE, 512, EINVAL),
        (BS, 0, SIZE - 512, 1024, EINVAL),
        ((1 << 16) - 1, (1 << 16) - 1, (1 << 64) - 1, (1 << 32) - 1, EINVAL),
    ],
)
def test_validator(typ: int, flags: int, offset: int, length: int, expected: int) -> None:
    assert full().check(typ, flags, offset, length) == expected


def test_validator_read_over_max_with_simple_replies_is_einval() -> None:
    validator = full(structured_replies=False, block_status=False)
    assert validator.check(READ, 0, 0, MAX + 512) == EINVAL


@pytest.mark.parametrize(
    ("missing", "typ", "flags"),
    [
        (nbd.NBD_FLAG_SEND_FLUSH, FLUSH, 0),
        (nbd.NBD_FLAG_SEND_TRIM, TRIM, 0),
        (nbd.NBD_FLAG_SEND_WRITE_ZEROES, ZERO, 0),
        (nbd.NBD_FLAG_SEND_CACHE, CACHE, 0),
        (nbd.NBD_FLAG_SEND_FUA, WRITE, FUA),
        (nbd.NBD_FLAG_SEND_FUA, READ, FUA),
        (nbd.NBD_FLAG_SEND_FUA, FLUSH, FUA),
        (nbd.NBD_FLAG_SEND_DF, READ, DF),
        (nbd.NBD_FLAG_SEND_FAST_ZERO, ZERO, FAST_ZERO),
    ],
)
def test_validator_unexposed_features_are_einval(missing: int, typ: int, flags: int) -> None:
    validator = full(flags=ALL_TX & ~missing)
    offset_length = (0, 0) if typ == FLUSH else (0, 512)
    assert validator.check(typ, flags, *offset_length) == EINVAL
    assert full().check(typ, flags, *offset_length) == OK


def test_validator_df_needs_structured_replies() -> None:
    assert full(structured_replies=False).check(READ, DF, 0, 512) == EINVAL


def test_validator_block_status_needs_context_and_structured() -> None:
    assert full(block_status=False).check(BS, 0, 0, 512) == EINVAL
    assert full(structured_replies=False).check(BS, 0, 0, 512) == EINVAL


@pytest.mark.parametrize(
    ("typ", "flags", "offset", "length", "expected"),
    [
        (WRITE, 0, 0, 512, EPERM),
        (WRITE, 0, 1, 1, EPERM),  # EPERM wins over alignment and range
        (TRIM, 0, 0, 512, EPERM),
        (ZERO, NO_HOLE, 0, 512, EPERM),
        (WRITE, DF, 0, 512, EINVAL),  # bad flags are still EINVAL
        (READ, 0, 0, 512, OK),
        (FLUSH, 0, 0, 0, OK),
        (CACHE, 0, 0, 512, OK),
    ],
)
def test_validator_read_only(typ: int, flags: int, offset: int, length: int, expected: int) -> None:
    validator = full(flags=ALL_TX | nbd.NBD_FLAG_READ_ONLY)
    assert validator.check(typ, flags, offset, length) == expected


def test_validator_defaults_accept_byte_granularity() -> None:
    validator = nbd.RequestValidator(1000, nbd.NBD_FLAG_HAS_FLAGS)
    assert validator.check(READ, 0, 3, 997) == OK
    assert validator.check(WRITE, 0, 999, 1) == OK
    assert validator.check(WRITE, 0, 999, 2) == ENOSPC
    assert validator.check(READ, 0, 0, 1 << 25) == EINVAL  # beyond the export anyway
    assert validator.check(FLUSH, 0, 0, 0) == EINVAL  # not exposed


def test_validator_resize() -> None:
    validator = full()
    assert validator.check(READ, 0, SIZE, 512) == EINVAL
    validator.size = 2 * SIZE
    assert validator.check(READ, 0, SIZE, 512) == OK


def test_validator_rejects_bad_block_size() -> None:
    with pytest.raises(ValueError):
        nbd.RequestValidator(4096, 1, min_block_size=3)


# ---------------------------------------------------------------------------------------------
# Reply encoders
# ---------------------------------------------------------------------------------------------


def test_encode_simple_reply() -> None:
    assert nbd.encode_simple_reply(0x0102030405060708) == bytes.fromhex(
        "67446698000000000102030405060708"
    )
    assert nbd.encode_simple_reply(1, nbd.NBD_ENOSPC) == SIMPLE_MAGIC + bytes.fromhex(
        "0000001c0000000000000001"
    )


def test_encode_chunk_header() -> None:
    assert nbd.encode_chunk_header(5, nbd.NBD_REPLY_TYPE_OFFSET_DATA, 0, 20) == bytes.fromhex(
        "668e33ef00000001000000000000000500000014"
    )


def test_encode_data_chunk_header() -> None:
    assert nbd.encode_data_chunk_header(5, 4096, 512) == bytes.fromhex(
        "668e33ef000100010000000000000005000002080000000000001000"
    )
    assert nbd.encode_data_chunk_header(5, 0, 1, done=False)[4:6] == b"\x00\x00"


def test_encode_hole_chunk() -> None:
    assert nbd.encode_hole_chunk(6, 8192, 4096, done=False) == bytes.fromhex(
        "668e33ef0000000200000000000000060000000c000000000000200000001000"
    )


def test_encode_none_chunk() -> None:
    assert nbd.encode_none_chunk(7) == bytes.fromhex("668e33ef00010000000000000000000700000000")


def test_encode_error_chunk() -> None:
    assert (
        nbd.encode_error_chunk(8, nbd.NBD_EIO, "bad")
        == bytes.fromhex("668e33ef00018001000000000000000800000009000000050003") + b"bad"
    )
    assert nbd.encode_error_chunk(8, nbd.NBD_EIO) == chunk(
        nbd.NBD_REPLY_TYPE_ERROR, 8, b"\x00\x00\x00\x05\x00\x00"
    )


def test_encode_error_chunk_message_is_a_valid_string() -> None:
    encoded = nbd.encode_error_chunk(1, 5, "a\0b" + "é" * 3000)
    length = struct.unpack_from(">I", encoded, 16)[0]
    msglen = struct.unpack_from(">H", encoded, 24)[0]
    message = encoded[26:]
    assert length == 6 + msglen == 6 + len(message) and msglen <= 4096
    assert b"\0" not in message
    message.decode("utf-8")  # cut on a character boundary


def test_encode_error_offset_chunk() -> None:
    assert nbd.encode_error_offset_chunk(9, nbd.NBD_EIO, 512, "x") == bytes.fromhex(
        "668e33ef0001800200000000000000090000000f000000050001"
    ) + b"x" + bytes.fromhex("0000000000000200")


def test_encode_block_status_chunk() -> None:
    encoded = nbd.encode_block_status_chunk(10, 1, [(4096, 3), (8192, 0)])
    assert encoded == bytes.fromhex(
        "668e33ef00010005000000000000000a000000140000000100001000000000030000200000000000"
    )
    with pytest.raises(ValueError):
        nbd.encode_block_status_chunk(10, 1, [])


def test_encode_read_reply_header_and_error_reply() -> None:
    assert nbd.encode_read_reply_header(3, 4096, 512, False) == nbd.encode_simple_reply(3)
    assert nbd.encode_read_reply_header(3, 4096, 512, True) == nbd.encode_data_chunk_header(
        3, 4096, 512
    )
    assert nbd.encode_error_reply(3, 22, False, "ignored") == nbd.encode_simple_reply(3, 22)
    assert nbd.encode_error_reply(3, 22, True, "why") == nbd.encode_error_chunk(3, 22, "why")


# ---------------------------------------------------------------------------------------------
# ReplyParser
# ---------------------------------------------------------------------------------------------

INFLIGHT = {
    1: (READ, 4096, 1024),
    2: (WRITE, 0, 512),
    3: (BS, 0, 1 << 20),
    4: (FLUSH, 0, 0),
    5: (READ, 0, 0),
}


def parser(structured: bool = True) -> nbd.ReplyParser:
    return nbd.ReplyParser(INFLIGHT.get, structured=structured)


def test_simple_reply_non_read() -> None:
    replies, pos, need = parser(False).parse(
        nbd.encode_simple_reply(2) + nbd.encode_simple_reply(4, 5)
    )
    assert replies == [nbd.SimpleReply(2, 0, None), nbd.SimpleReply(4, 5, None)]
    assert (pos, need) == (32, 0) and all(r.done for r in replies)


def test_simple_read_reply_with_data() -> None:
    data = bytes(range(256)) * 4
    stream = nbd.encode_simple_reply(1) + data + nbd.encode_simple_reply(2)
    replies, pos, need = parser(False).parse(stream)
    assert replies[0].cookie == 1 and replies[0].data is not None
    assert replies[0].data.tobytes() == data
    assert replies[1] == nbd.SimpleReply(2, 0, None)
    assert (pos, need) == (len(stream), 0)


def test_simple_read_error_has_no_data() -> None:
    replies, pos, _ = parser(False).parse(
        nbd.encode_simple_reply(1, 5) + nbd.encode_simple_reply(2)
    )
    assert [r.cookie for r in replies] == [1, 2] and replies[0].data is None and pos == 32


def test_simple_zero_length_read() -> None:
    [reply], pos, need = parser(False).parse(nbd.encode_simple_reply(5))
    assert reply.data is not None and len(reply.data) == 0 and (pos, need) == (16, 0)


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 1039])
def test_simple_read_waits_for_data(cut: int) -> None:
    stream = nbd.encode_simple_reply(1) + bytes(1024)
    replies, pos, need = parser(False).parse(stream[:cut])
    assert replies == [] and pos == 0
    assert need == (16 if cut < 16 else 16 + 1024)


def test_structured_multi_chunk_read() -> None:
    stream = (
        nbd.encode_data_chunk_header(1, 4096 + 512, 512, done=False)
        + b"B" * 512
        + nbd.encode_hole_chunk(1, 4096, 256, done=False)
        + nbd.encode_data_chunk_header(1, 4096 + 256, 256, done=False)
        + b"A" * 256
        + nbd.encode_none_chunk(1)
    )
    replies, pos, need = parser().parse(stream)
    assert (pos, need) == (len(stream), 0)
    first, hole, second, last = replies
    assert isinstance(first, nbd.DataChunk) and first.offset == 4608 and not first.done
    assert first.data.tobytes() == b"B" * 512
    assert hole == nbd.HoleChunk(1, 0, 4096, 256) and not hole.done
    assert isinstance(second, nbd.DataChunk) and second.data.tobytes() == b"A" * 256
    assert last == nbd.NoneChunk(1, 1) and last.done


def test_structured_single_chunk_read_done() -> None:
    stream = nbd.encode_read_reply_header(1, 4096, 1024, True) + bytes(1024)
    [reply], _, _ = parser().parse(stream)
    assert isinstance(reply, nbd.DataChunk) and reply.done and len(reply.data) == 1024


@pytest.mark.parametrize("cut", [1, 16, 19, 20, 27, 1051])
def test_structured_waits_for_complete_chunk(cut: int) -> None:
    stream = nbd.encode_read_reply_header(1, 4096, 1024, True) + bytes(1024)
    replies, pos, need = parser().parse(stream[:cut])
    assert replies == [] and pos == 0
    assert need == (16 if cut < 16 else 20 if cut < 20 else 20 + 1032)


def test_structured_error_chunks() -> None:
    stream = (
        nbd.encode_error_offset_chunk(1, nbd.NBD_EIO, 4096, "sector bad", done=False)
        + nbd.encode_error_chunk(2, nbd.NBD_ENOSPC, "full")
        + chunk(nbd.NBD_REPLY_TYPE_ERROR, 4, b"\x00\x00\x00\x00\x00\x00")  # error 0
        + nbd.encode_none_chunk(1)
    )
    replies, _, _ = parser().parse(stream)
    assert replies[0] == nbd.ErrorChunk(1, 0, 0x8002, 5, "sector bad", 4096)
    assert replies[1] == nbd.ErrorChunk(2, 1, 0x8001, 28, "full", None) and replies[1].done
    assert replies[2].error == nbd.NBD_EINVAL
    assert replies[3].done


def test_structured_unknown_error_type_is_an_error() -> None:
    payload = b"\x00\x00\x00\x05\x00\x02hi" + b"extra fields"
    [reply], _, _ = parser().parse(chunk(0x8042, 2, payload))
    assert reply == nbd.ErrorChunk(2, 1, 0x8042, 5, "hi", None)


def test_structured_block_status() -> None:
    stream = nbd.encode_block_status_chunk(3, 1, [(4096, 3), (1 << 20, 0)])
    [reply], _, _ = parser().parse(stream)
    assert reply == nbd.BlockStatusChunk(3, 1, 1, [(4096, 3), (1 << 20, 0)]) and reply.done


def test_structured_simple_reply_allowed_for_non_read() -> None:
    replies, _, _ = parser().parse(nbd.encode_simple_reply(2) + nbd.encode_simple_reply(1, 22))
    assert replies == [nbd.SimpleReply(2, 0, None), nbd.SimpleReply(1, 22, None)]


def test_roundtrip_encoders_to_parser() -> None:
    stream = (
        nbd.encode_simple_reply(4)
        + nbd.encode_read_reply_header(1, 4096, 1024, True)
        + b"x" * 1024
        + nbd.encode_block_status_chunk(3, 7, [(512, 1)], done=False)
        + nbd.encode_error_reply(3, 5, True, "late")
    )
    replies, pos, _ = parser().parse(stream)
    assert pos == len(stream)
    assert [type(r).__name__ for r in replies] == [
        "SimpleReply",
        "DataChunk",
        "BlockStatusChunk",
        "ErrorChunk",
    ]


@pytest.mark.parametrize(
    ("stream", "structured", "match"),
    [
        (b"\x00" * 16, True, "magic"),
        (REQ_MAGIC + bytes(12), True, "magic"),
        (nbd.encode_simple_reply(99), True, "unknown cookie"),
        (chunk(0, 99), True, "unknown cookie"),
        (nbd.encode_simple_reply(1) + bytes(1024), True, "structured"),
        (nbd.encode_none_chunk(2), False, "without negotiation"),
        (chunk(0, 2, flags=0), True, "NONE"),
        (chunk(0, 2, b"x"), True, "NONE"),
        (nbd.encode_data_chunk_header(2, 0, 512) + bytes(512), True, "non-READ"),
        (chunk(1, 1, struct.pack(">Q", 4096)), True, "invalid length"),
        (nbd.encode_data_chunk_header(1, 0, 512) + bytes(512), True, "outside"),
        (nbd.encode_data_chunk_header(1, 4096, 1025) + bytes(1025), True, "outside"),
        (nbd.encode_hole_chunk(2, 0, 512), True, "non-READ"),
        (nbd.encode_hole_chunk(1, 4096, 0), True, "outside"),
        (nbd.encode_hole_chunk(1, 5000, 1024), True, "outside"),
        (chunk(2, 1, bytes(11)), True, "invalid length"),
        (nbd.encode_block_status_chunk(1, 1, [(512, 0)]), True, "another request"),
        (chunk(5, 3, bytes(8)), True, "invalid length"),
        (chunk(5, 3, bytes(13)), True, "invalid length"),
        (chunk(nbd.NBD_REPLY_TYPE_ERROR, 2, bytes(5)), True, "invalid length"),
        (chunk(nbd.NBD_REPLY_TYPE_ERROR, 2, b"\x00\x00\x00\x05\x00\x09abc"), True, "message"),
        (chunk(nbd.NBD_REPLY_TYPE_ERROR_OFFSET, 2, b"\x00\x00\x00\x05\x00\x00"), True, "invalid"),
        (chunk(3, 2), True, "unknown structured reply type"),
        (chunk(6, 3, bytes(16)), True, "unknown structured reply type"),
        (STRUCT_MAGIC + struct.pack(">HHQI", 0, 1, 1, 1 << 30), True, "too long"),
    ],
)
def test_reply_parser_protocol_errors(stream: bytes, structured: bool, match: str) -> None:
    good = nbd.encode_simple_reply(2)
    with pytest.raises(nbd.ProtocolError, match=match) as info:
        parser(structured).parse(good + stream)
    assert info.value.parsed == [nbd.SimpleReply(2, 0, None)] and info.value.offset == 16


def test_reply_parser_window() -> None:
    stream = nbd.encode_simple_reply(2) + nbd.encode_simple_reply(4)
    replies, pos, need = parser().parse(b"xx" + stream, 2, 18)
    assert [r.cookie for r in replies] == [2] and (pos, need) == (18, 0)
