"""Byte-level tests of the server role of the NBD handshake (pybdev.proto.nbd.handshake_server)."""

from __future__ import annotations

import struct

import pytest

from pybdev.proto import nbd

IHAVEOPT = b"IHAVEOPT"
REPLY_MAGIC = struct.pack(">Q", 0x3E889045565A9)

DISK = nbd.ExportInfo(
    "disk0",
    1 << 20,
    nbd.NBD_FLAG_SEND_FLUSH | nbd.NBD_FLAG_SEND_FUA,
    description="the first disk",
)
SECTOR = nbd.ExportInfo("sector", 4096 * 8, min_block_size=512, max_block_size=1 << 20)
STRICT = nbd.ExportInfo("strict", 1 << 16, min_block_size=4096, require_block_size=True)
EXPORTS = {e.name: e for e in (DISK, SECTOR, STRICT)}
EXPORTS[""] = DISK  # the default export


def opt(option: int, data: bytes = b"") -> bytes:
    return IHAVEOPT + struct.pack(">II", option, len(data)) + data


def rep(option: int, reply: int, data: bytes = b"") -> bytes:
    return REPLY_MAGIC + struct.pack(">III", option, reply, len(data)) + data


def info_data(name: bytes, *requests: int) -> bytes:
    return (
        struct.pack(">I", len(name))
        + name
        + struct.pack(f">H{len(requests)}H", len(requests), *requests)
    )


def meta_data(name: bytes, *queries: bytes) -> bytes:
    out = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        out += struct.pack(">I", len(q)) + q
    return out


def split_replies(data: bytes) -> list[tuple[int, int, bytes]]:
    """Decode a run of option replies into (option, type, data)."""
    out = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 8] == REPLY_MAGIC
        option, reply, length = struct.unpack_from(">III", data, pos + 8)
        out.append((option, reply, data[pos + 20 : pos + 20 + length]))
        pos += 20 + length
    assert pos == len(data)
    return out


def server(**kwargs: object) -> nbd.ServerHandshake:
    kwargs.setdefault("exports", lambda: [DISK, SECTOR])
    hs = nbd.ServerHandshake(EXPORTS.get, **kwargs)  # type: ignore[arg-type]
    hs.data_to_send()
    return hs


def fixed_server(client_flags: int = 3, **kwargs: object) -> nbd.ServerHandshake:
    hs = server(**kwargs)
    assert hs.receive_data(struct.pack(">I", client_flags)) is None
    assert hs.data_to_send() == b""
    return hs


# ---------------------------------------------------------------------------------------------
# Server: greeting and client flags
# ---------------------------------------------------------------------------------------------


def test_server_greeting_bytes() -> None:
    hs = nbd.ServerHandshake(EXPORTS.get)
    assert hs.data_to_send() == b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"
    assert hs.data_to_send() == b""
    hs = nbd.ServerHandshake(EXPORTS.get, no_zeroes=False)
    assert hs.data_to_send() == b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x01"


def test_server_waits_for_complete_client_flags() -> None:
    hs = server()
    assert hs.receive_data(b"\x00\x00") is None
    assert hs.receive_data(b"\x00") is None
    assert hs.receive_data(b"\x01") is None
    assert not hs.done
    assert hs.receive_data(opt(nbd.NBD_OPT_ABORT)) == nbd.Closed(
        "client sent NBD_OPT_ABORT", soft=True
    )


@pytest.mark.parametrize("flags", [4, 1 << 31, 0xFFFFFFFF, 1 | 8])
def test_server_closes_on_unknown_client_flags(flags: int) -> None:
    hs = server()
    event = hs.receive_data(struct.pack(">I", flags))
    assert isinstance(event, nbd.Closed) and not event.soft
    assert hs.data_to_send() == b""
    assert hs.done


def test_server_closes_on_no_zeroes_not_advertised() -> None:
    hs = server(no_zeroes=False)
    event = hs.receive_data(
        struct.pack(">I", nbd.NBD_FLAG_C_FIXED_NEWSTYLE | nbd.NBD_FLAG_C_NO_ZEROES)
    )
    assert isinstance(event, nbd.Closed)


def test_non_fixed_newstyle_client_export_name_with_zeroes() -> None:
    hs = server()
    assert hs.receive_data(b"\x00\x00\x00\x00") is None
    event = hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0"))
    assert isinstance(event, nbd.TransmissionReady)
    assert hs.data_to_send() == struct.pack(">QH", 1 << 20, 0b1101) + bytes(124)
    assert not event.via_go and not event.structured_replies and event.meta_contexts == {}


def test_non_fixed_newstyle_client_cannot_use_other_options() -> None:
    hs = server()
    hs.receive_data(b"\x00\x00\x00\x00")
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.Closed)
    assert hs.data_to_send() == b""  # no option replies in non-fixed newstyle


def test_non_fixed_newstyle_oversized_option_closes() -> None:
    hs = server(max_option_length=64)
    hs.receive_data(b"\x00\x00\x00\x00")
    assert isinstance(hs.receive_data(IHAVEOPT + struct.pack(">II", 99, 1000)), nbd.Closed)


# ---------------------------------------------------------------------------------------------
# Server: NBD_OPT_EXPORT_NAME
# ---------------------------------------------------------------------------------------------


def test_export_name_no_zeroes() -> None:
    hs = fixed_server()
    event = hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0"))
    assert hs.data_to_send() == struct.pack(">QH", 1 << 20, 0b1101)
    assert isinstance(event, nbd.TransmissionReady)
    assert event.export is DISK and event.name == "disk0" and event.flags == 0b1101
    assert not event.block_size_negotiated


def test_export_name_with_zeroes_when_client_did_not_ask() -> None:
    hs = fixed_server(client_flags=nbd.NBD_FLAG_C_FIXED_NEWSTYLE)
    hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b""))
    assert hs.data_to_send() == struct.pack(">QH", 1 << 20, 0b1101) + bytes(124)


@pytest.mark.parametrize(
    "name",
    [b"nope", b"disk0\x00", b"\xff\xfe", b"x" * 4097],
    ids=["unknown", "nul", "utf8", "long"],
)
def test_export_name_refused_closes_without_reply(name: bytes) -> None:
    hs = fixed_server()
    event = hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, name))
    assert isinstance(event, nbd.Closed) and not event.soft
    assert hs.data_to_send() == b""


def test_export_name_oversized_closes_before_data_arrives() -> None:
    hs = fixed_server()
    event = hs.receive_data(IHAVEOPT + struct.pack(">II", nbd.NBD_OPT_EXPORT_NAME, 1 << 30))
    assert isinstance(event, nbd.Closed)


def test_export_name_refused_when_block_size_required() -> None:
    hs = fixed_server()
    assert isinstance(hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"strict")), nbd.Closed)


def test_export_name_transmission_flags_sanitised() -> None:
    export = nbd.ExportInfo(
        "x",
        4096,
        nbd.NBD_FLAG_SEND_DF | nbd.NBD_FLAG_SEND_FAST_ZERO | nbd.NBD_FLAG_BLOCK_STATUS_PAYLOAD,
    )
    hs = nbd.ServerHandshake({"x": export}.get)
    hs.data_to_send()
    hs.receive_data(struct.pack(">I", 3))
    event = hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"x"))
    assert isinstance(event, nbd.TransmissionReady)
    # DF needs structured replies, FAST_ZERO needs WRITE_ZEROES; HAS_FLAGS is always set.
    assert event.flags == nbd.NBD_FLAG_HAS_FLAGS
    assert hs.data_to_send() == struct.pack(">QH", 4096, 1)


# ---------------------------------------------------------------------------------------------
# Server: ABORT, LIST, unknown options, limits
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"junk"])
def test_abort_acks_and_closes_softly(data: bytes) -> None:
    hs = fixed_server()
    event = hs.receive_data(opt(nbd.NBD_OPT_ABORT, data))
    assert event == nbd.Closed("client sent NBD_OPT_ABORT", soft=True)
    assert hs.data_to_send() == rep(nbd.NBD_OPT_ABORT, nbd.NBD_REP_ACK)
    assert hs.receive_data(b"more data is ignored") is None
    assert hs.data_to_send() == b""


def test_list_exports() -> None:
    hs = fixed_server()
    assert hs.receive_data(opt(nbd.NBD_OPT_LIST)) is None
    assert hs.data_to_send() == (
        rep(3, 2, b"\x00\x00\x00\x05disk0the first disk")
        + rep(3, 2, b"\x00\x00\x00\x06sector")
        + rep(3, 1)
    )


def test_list_with_data_is_invalid() -> None:
    hs = fixed_server()
    hs.receive_data(opt(nbd.NBD_OPT_LIST, b"x"))
    [(option, reply, _)] = split_replies(hs.data_to_send())
    assert (option, reply) == (nbd.NBD_OPT_LIST, nbd.NBD_REP_ERR_INVALID)


def test_list_disabled_is_policy() -> None:
    hs = fixed_server(exports=None)
    hs.receive_data(opt(nbd.NBD_OPT_LIST))
    [(_, reply, message)] = split_replies(hs.data_to_send())
    assert reply == nbd.NBD_REP_ERR_POLICY and message == b"export listing is disabled"


@pytest.mark.parametrize(
    "option",
    [0, nbd.NBD_OPT_PEEK_EXPORT, nbd.NBD_OPT_EXTENDED_HEADERS, 12, 99, 0xFFFFFFFF],
)
def test_unknown_option_unsup_and_next_option_parsed(option: int) -> None:
    hs = fixed_server()
    assert hs.receive_data(opt(option, b"some data") + opt(nbd.NBD_OPT_LIST)) is None
    replies = split_replies(hs.data_to_send())
    assert replies[0][:2] == (option, nbd.NBD_REP_ERR_UNSUP)
    assert replies[-1] == (nbd.NBD_OPT_LIST, nbd.NBD_REP_ACK, b"")


def test_starttls_refused_by_policy() -> None:
    hs = fixed_server()
    hs.receive_data(opt(nbd.NBD_OPT_STARTTLS))
    [(option, reply, _)] = split_replies(hs.data_to_send())
    assert (option, reply) == (nbd.NBD_OPT_STARTTLS, nbd.NBD_REP_ERR_POLICY)


def test_bad_option_magic_closes() -> None:
    hs = fixed_server()
    event = hs.receive_data(b"IHAVEOPX" + struct.pack(">II", 3, 0))
    assert isinstance(event, nbd.Closed) and "magic" in event.reason


def test_option_header_and_data_can_arrive_in_pieces() -> None:
    hs = fixed_server()
    data = opt(nbd.NBD_OPT_GO, info_data(b"disk0"))
    for byte in data[:-1]:
        assert hs.receive_data(bytes([byte])) is None
    assert isinstance(hs.receive_data(data[-1:]), nbd.TransmissionReady)


@pytest.mark.parametrize(
    ("option", "reply"),
    [(nbd.NBD_OPT_GO, nbd.NBD_REP_ERR_TOO_BIG), (77, nbd.NBD_REP_ERR_UNSUP)],
)
def test_oversized_option_is_skipped_without_buffering(option: int, reply: int) -> None:
    hs = fixed_server(max_option_length=1024)
    length = 10 * 1024 * 1024
    assert hs.receive_data(IHAVEOPT + struct.pack(">II", option, length)) is None
    chunk = bytes(64 * 1024)
    for _ in range(length // len(chunk)):
        assert hs.receive_data(chunk) is None
        assert len(hs._buf) == 0  # nothing of the oversized data is kept
    replies = split_replies(hs.data_to_send())
    assert [(o, r) for o, r, _ in replies] == [(option, reply)]
    # The stream is still in sync.
    assert isinstance(
        hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0"))), nbd.TransmissionReady
    )


def test_oversized_option_skip_ends_inside_a_chunk() -> None:
    hs = fixed_server(max_option_length=8)
    data = IHAVEOPT + struct.pack(">II", nbd.NBD_OPT_LIST, 20) + bytes(20) + opt(nbd.NBD_OPT_ABORT)
    assert isinstance(hs.receive_data(data), nbd.Closed)
    replies = split_replies(hs.data_to_send())
    assert [(o, r) for o, r, _ in replies] == [
        (nbd.NBD_OPT_LIST, nbd.NBD_REP_ERR_TOO_BIG),
        (nbd.NBD_OPT_ABORT, nbd.NBD_REP_ACK),
    ]


def test_shutdown_errors_options_but_acks_abort() -> None:
    hs = fixed_server()
    hs.shutdown()
    hs.receive_data(opt(nbd.NBD_OPT_LIST) + opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    replies = split_replies(hs.data_to_send())
    assert [r for _, r, _ in replies] == [nbd.NBD_REP_ERR_SHUTDOWN] * 2
    assert isinstance(hs.receive_data(opt(nbd.NBD_OPT_ABORT)), nbd.Closed)
    assert split_replies(hs.data_to_send()) == [(nbd.NBD_OPT_ABORT, nbd.NBD_REP_ACK, b"")]


def test_shutdown_export_name_closes() -> None:
    hs = fixed_server()
    hs.shutdown()
    assert isinstance(hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0")), nbd.Closed)


# ---------------------------------------------------------------------------------------------
# Server: INFO and GO
# ---------------------------------------------------------------------------------------------


def test_go_minimal_reply_bytes() -> None:
    hs = fixed_server(client_flags=nbd.NBD_FLAG_C_FIXED_NEWSTYLE)  # zeroes not waived
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady)
    # NBD_INFO_EXPORT then ACK, and no zero padding whatever the client flags.
    assert hs.data_to_send() == rep(7, 3, struct.pack(">HQH", 0, 1 << 20, 0b1101)) + rep(7, 1)
    assert event.via_go and not event.block_size_negotiated and event.trailing == b""


def test_info_then_go() -> None:
    hs = fixed_server()
    assert hs.receive_data(opt(nbd.NBD_OPT_INFO, info_data(b"disk0"))) is None
    info = hs.data_to_send()
    assert info == rep(6, 3, struct.pack(">HQH", 0, 1 << 20, 0b1101)) + rep(6, 1)
    assert not hs.done
    assert isinstance(
        hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0"))), nbd.TransmissionReady
    )


def test_go_with_all_info_requests() -> None:
    hs = fixed_server()
    event = hs.receive_data(
        opt(nbd.NBD_OPT_GO, info_data(b"", nbd.NBD_INFO_NAME, nbd.NBD_INFO_DESCRIPTION, 3, 42))
    )
    assert isinstance(event, nbd.TransmissionReady)
    assert event.name == "" and event.export is DISK and event.block_size_negotiated
    assert split_replies(hs.data_to_send()) == [
        (7, 3, struct.pack(">HQH", 0, 1 << 20, 0b1101)),
        (7, 3, b"\x00\x01disk0"),
        (7, 3, b"\x00\x02the first disk"),
        (7, 3, struct.pack(">HIII", 3, 1, 4096, 1 << 25)),
        (7, 1, b""),
    ]


def test_go_sends_non_default_block_sizes_unasked() -> None:
    hs = fixed_server()
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"sector")))
    assert isinstance(event, nbd.TransmissionReady) and not event.block_size_negotiated
    assert split_replies(hs.data_to_send()) == [
        (7, 3, struct.pack(">HQH", 0, 32768, 1)),
        (7, 3, struct.pack(">HIII", 3, 512, 4096, 1 << 20)),
        (7, 1, b""),
    ]


def test_go_unknown_export_then_known() -> None:
    hs = fixed_server()
    assert hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"missing"))) is None
    [(option, reply, message)] = split_replies(hs.data_to_send())
    assert (option, reply) == (nbd.NBD_OPT_GO, nbd.NBD_REP_ERR_UNKNOWN)
    assert b"missing" in message
    assert isinstance(
        hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0"))), nbd.TransmissionReady
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x00\x00",  # shorter than the fixed 6 bytes
        struct.pack(">I", 7) + b"disk0" + b"\x00\x00",  # name length beyond the data
        info_data(b"disk0") + b"\x00",  # trailing byte
        info_data(b"disk0", 3)[:-1],  # request list truncated
        struct.pack(">I", 5) + b"disk0" + b"\x00\x02\x00\x03",  # count says 2, one present
        info_data(b"\xffbad"),  # not UTF-8
        info_data(b"a\x00b"),  # NUL
        info_data(b"n" * 4097),  # too long a string
    ],
)
@pytest.mark.parametrize("option", [nbd.NBD_OPT_GO, nbd.NBD_OPT_INFO])
def test_malformed_info_go_is_invalid(option: int, data: bytes) -> None:
    hs = fixed_server()
    assert hs.receive_data(opt(option, data)) is None
    [(got_option, reply, _)] = split_replies(hs.data_to_send())
    assert (got_option, reply) == (option, nbd.NBD_REP_ERR_INVALID)


def test_go_block_size_required() -> None:
    hs = fixed_server()
    assert hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"strict"))) is None
    assert split_replies(hs.data_to_send())[1:] == [
        (7, 3, struct.pack(">HIII", 3, 4096, 4096, 1 << 25)),
        (7, nbd.NBD_REP_ERR_BLOCK_SIZE_REQD, b"request NBD_INFO_BLOCK_SIZE"),
    ]
    # NBD_OPT_INFO is not refused: it commits to nothing.
    assert hs.receive_data(opt(nbd.NBD_OPT_INFO, info_data(b"strict"))) is None
    assert split_replies(hs.data_to_send())[-1] == (6, 1, b"")
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"strict", 3)))
    assert isinstance(event, nbd.TransmissionReady) and event.block_size_negotiated


def test_go_trailing_bytes_are_returned() -> None:
    hs = fixed_server()
    request = struct.pack(">IHHQQI", 0x25609513, 0, 0, 1, 0, 512)
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")) + request)
    assert isinstance(event, nbd.TransmissionReady) and event.trailing == request


def test_export_name_trailing_bytes_are_returned() -> None:
    hs = fixed_server()
    event = hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0") + b"xyz")
    assert isinstance(event, nbd.TransmissionReady) and event.trailing == b"xyz"


def test_data_after_ready_is_ignored() -> None:
    hs = fixed_server()
    hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    hs.data_to_send()
    assert hs.receive_data(opt(nbd.NBD_OPT_LIST)) is None
    assert hs.data_to_send() == b""
    assert isinstance(hs.event, nbd.TransmissionReady)


# ---------------------------------------------------------------------------------------------
# Server: structured replies and meta contexts
# ---------------------------------------------------------------------------------------------


def test_structured_reply_ack_then_repeat_invalid() -> None:
    hs = fixed_server()
    hs.receive_data(opt(nbd.NBD_OPT_STRUCTURED_REPLY))
    assert hs.data_to_send() == rep(8, 1)
    hs.receive_data(opt(nbd.NBD_OPT_STRUCTURED_REPLY))
    assert split_replies(hs.data_to_send())[0][1] == nbd.NBD_REP_ERR_INVALID
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady) and event.structured_replies


def test_structured_reply_with_data_is_invalid() -> None:
    hs = fixed_server()
    hs.receive_data(opt(nbd.NBD_OPT_STRUCTURED_REPLY, b"\x00"))
    assert split_replies(hs.data_to_send())[0][1] == nbd.NBD_REP_ERR_INVALID
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady) and not event.structured_replies


def test_structured_reply_disabled_is_unsup() -> None:
    hs = fixed_server(structured_replies=False)
    hs.receive_data(opt(nbd.NBD_OPT_STRUCTURED_REPLY) + opt(nbd.NBD_OPT_SET_META_CONTEXT, b""))
    assert [r for _, r, _ in split_replies(hs.data_to_send())] == [nbd.NBD_REP_ERR_UNSUP] * 2


def test_send_df_kept_only_with_structured_replies() -> None:
    export = nbd.ExportInfo("x", 4096, nbd.NBD_FLAG_SEND_DF)
    for structured, expected in ((False, 1), (True, 1 | nbd.NBD_FLAG_SEND_DF)):
        hs = nbd.ServerHandshake({"x": export}.get)
        hs.receive_data(struct.pack(">I", 3))
        if structured:
            hs.receive_data(opt(nbd.NBD_OPT_STRUCTURED_REPLY))
        event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"x")))
        assert isinstance(event, nbd.TransmissionReady) and event.flags == expected


@pytest.mark.parametrize("option", [nbd.NBD_OPT_SET_META_CONTEXT, nbd.NBD_OPT_LIST_META_CONTEXT])
def test_meta_context_before_structured_reply_is_invalid(option: int) -> None:
    hs = fixed_server()
    hs.receive_data(opt(option, meta_data(b"disk0", b"base:allocation")))
    [(got, reply, message)] = split_replies(hs.data_to_send())
    assert (got, reply) == (option, nbd.NBD_REP_ERR_INVALID)
    assert message == b"negotiate structured replies first"


def structured_server(**kwargs: object) -> nbd.ServerHandshake:
    hs = fixed_server(**kwargs)
    hs.receive_data(opt(nbd.NBD_OPT_STRUCTURED_REPLY))
    assert hs.data_to_send() == rep(8, 1)
    return hs


def test_set_meta_context_base_allocation() -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"disk0", b"x-other:thing", b"base:allocation")))
    assert hs.data_to_send() == rep(10, 4, b"\x00\x00\x00\x01base:allocation") + rep(10, 1)
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady)
    assert event.meta_contexts == {1: "base:allocation"}
    validator = event.validator()
    assert validator.check(nbd.NBD_CMD_BLOCK_STATUS, 0, 0, 4096) == 0


def test_set_meta_context_for_another_export_does_not_apply() -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"sector", b"base:allocation")))
    hs.data_to_send()
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady) and event.meta_contexts == {}
    assert event.validator().check(nbd.NBD_CMD_BLOCK_STATUS, 0, 0, 4096) == nbd.NBD_EINVAL


@pytest.mark.parametrize(
    "queries",
    [(), (b"base:",), (b"base:other",), (b"x-foo:base:allocation",), (b"qemu:dirty-bitmap:a",)],
)
def test_set_meta_context_selecting_nothing(queries: tuple[bytes, ...]) -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"disk0", *queries)))
    assert hs.data_to_send() == rep(10, 1)
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady) and event.meta_contexts == {}


def test_set_meta_context_duplicate_query_selects_once() -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"disk0", b"base:allocation", b"base:allocation")))
    assert hs.data_to_send() == rep(10, 4, b"\x00\x00\x00\x01base:allocation") + rep(10, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x00\x00\x05disk0",  # no query count
        meta_data(b"disk0", b"base:allocation") + b"\x00",  # trailing byte
        meta_data(b"disk0", b"base:allocation")[:-1],  # query truncated
        struct.pack(">I", 9) + b"disk0\x00\x00\x00\x00",  # name length beyond data
        meta_data(b"disk0")[:-4] + struct.pack(">I", 1_000_000),  # count beyond data
        meta_data(b"disk0", b"base:\xff"),  # query not UTF-8
        meta_data(b"disk0", b"allocation"),  # query without namespace
    ],
)
@pytest.mark.parametrize("option", [nbd.NBD_OPT_SET_META_CONTEXT, nbd.NBD_OPT_LIST_META_CONTEXT])
def test_malformed_meta_context_is_invalid(option: int, data: bytes) -> None:
    hs = structured_server()
    hs.receive_data(opt(option, data))
    [(got, reply, _)] = split_replies(hs.data_to_send())
    assert (got, reply) == (option, nbd.NBD_REP_ERR_INVALID)


def test_meta_context_unknown_export() -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"nope", b"base:allocation")))
    assert split_replies(hs.data_to_send())[0][1] == nbd.NBD_REP_ERR_UNKNOWN


def test_failed_set_meta_context_clears_previous_selection() -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"disk0", b"base:allocation")))
    hs.receive_data(opt(10, meta_data(b"disk0", b"no-colon")))
    replies = split_replies(hs.data_to_send())
    assert replies[-1][1] == nbd.NBD_REP_ERR_INVALID
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady) and event.meta_contexts == {}


@pytest.mark.parametrize("queries", [(), (b"base:",), (b"base:allocation",), (b"x-a:", b"base:")])
def test_list_meta_context_lists_base_allocation_with_id_zero(queries: tuple[bytes, ...]) -> None:
    hs = structured_server()
    hs.receive_data(opt(9, meta_data(b"disk0", *queries)))
    assert hs.data_to_send() == rep(9, 4, b"\x00\x00\x00\x00base:allocation") + rep(9, 1)
    # Listing selects nothing.
    event = hs.receive_data(opt(nbd.NBD_OPT_GO, info_data(b"disk0")))
    assert isinstance(event, nbd.TransmissionReady) and event.meta_contexts == {}


def test_list_meta_context_unknown_namespace_only_acks() -> None:
    hs = structured_server()
    hs.receive_data(opt(9, meta_data(b"disk0", b"x-foo:")))
    assert hs.data_to_send() == rep(9, 1)


def test_meta_contexts_disabled_is_unsup() -> None:
    hs = structured_server(meta_contexts=False)
    hs.receive_data(opt(10, meta_data(b"disk0", b"base:allocation")))
    assert split_replies(hs.data_to_send())[0][1] == nbd.NBD_REP_ERR_UNSUP


def test_export_name_keeps_negotiated_meta_context() -> None:
    hs = structured_server()
    hs.receive_data(opt(10, meta_data(b"disk0", b"base:allocation")))
    hs.data_to_send()
    event = hs.receive_data(opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0"))
    assert isinstance(event, nbd.TransmissionReady)
    assert event.structured_replies and event.meta_contexts == {1: "base:allocation"}


def test_byte_at_a_time_equals_all_at_once() -> None:
    stream = (
        struct.pack(">I", 3)
        + opt(nbd.NBD_OPT_LIST)
        + opt(99, b"zz")
        + opt(nbd.NBD_OPT_STRUCTURED_REPLY)
        + opt(10, meta_data(b"disk0", b"base:allocation"))
        + opt(nbd.NBD_OPT_INFO, info_data(b"sector", 1, 2, 3))
        + opt(nbd.NBD_OPT_GO, info_data(b"disk0", 3))
    )
    whole = server()
    whole_event = whole.receive_data(stream)
    slow = server()
    slow_out = b""
    slow_event = None
    for i in range(len(stream)):
        slow_event = slow.receive_data(stream[i : i + 1]) or slow_event
        slow_out += slow.data_to_send()
    assert whole_event == slow_event
    assert whole.data_to_send() == slow_out


# ---------------------------------------------------------------------------------------------
# ExportInfo
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": -1},
        {"size": 1 << 64},
        {"min_block_size": 3},
        {"min_block_size": 1 << 17},
        {"min_block_size": 0},
        {"preferred_block_size": 256},
        {"min_block_size": 8192, "preferred_block_size": 4096},
        {"preferred_block_size": 3000},
        {"max_block_size": 2048},
        {"max_block_size": 1 << 32},
    ],
)
def test_export_info_rejects_invalid_constraints(kwargs: dict[str, int]) -> None:
    args: dict[str, object] = {"name": "x", "size": 4096, **kwargs}
    with pytest.raises(ValueError):
        nbd.ExportInfo(**args)  # type: ignore[arg-type]
