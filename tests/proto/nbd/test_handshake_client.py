"""Byte-level tests of the client role of the NBD handshake (pybdev.proto.nbd.handshake_client)."""

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


def server(**kwargs: object) -> nbd.ServerHandshake:
    kwargs.setdefault("exports", lambda: [DISK, SECTOR])
    hs = nbd.ServerHandshake(EXPORTS.get, **kwargs)  # type: ignore[arg-type]
    hs.data_to_send()
    return hs


GREETING = b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x03"
INFO_EXPORT = struct.pack(">HQH", 0, 1 << 30, 0b1101)


def test_client_sends_nothing_before_greeting() -> None:
    hs = nbd.ClientHandshake("disk0")
    assert hs.data_to_send() == b""
    assert hs.receive_data(GREETING[:17]) is None
    assert hs.data_to_send() == b""
    assert hs.receive_data(GREETING[17:]) is None
    assert hs.data_to_send() == b"\x00\x00\x00\x03" + opt(nbd.NBD_OPT_STRUCTURED_REPLY)


def test_client_full_negotiation_bytes() -> None:
    hs = nbd.ClientHandshake("disk0", meta_contexts=["base:allocation"])
    hs.receive_data(GREETING)
    assert hs.data_to_send() == b"\x00\x00\x00\x03" + opt(8)
    assert hs.receive_data(rep(8, 1)) is None
    assert hs.data_to_send() == opt(10, meta_data(b"disk0", b"base:allocation"))
    assert hs.receive_data(rep(10, 4, b"\x00\x00\x00\x07base:allocation")) is None
    assert hs.receive_data(rep(10, 1)) is None
    assert hs.data_to_send() == opt(7, info_data(b"disk0", 1, 2, 3))
    event = hs.receive_data(
        rep(7, 3, INFO_EXPORT)
        + rep(7, 3, b"\x00\x01canonical")
        + rep(7, 3, b"\x00\x02a disk")
        + rep(7, 3, struct.pack(">HIII", 3, 512, 4096, 1 << 20))
        + rep(7, 3, b"\x00\x63unknown info is ignored")
        + rep(7, 1)
    )
    assert event == nbd.ClientReady(
        name="disk0",
        size=1 << 30,
        flags=0b1101,
        min_block_size=512,
        preferred_block_size=4096,
        max_block_size=1 << 20,
        structured_replies=True,
        meta_contexts={"base:allocation": 7},
        block_size_negotiated=True,
        via_go=True,
        description="a disk",
        canonical_name="canonical",
    )
    assert hs.data_to_send() == b""
    assert hs.done


def meta_reply(context_id: int, name: bytes = b"base:allocation") -> bytes:
    return rep(10, 4, struct.pack(">I", context_id) + name)


def at_meta_context(**kwargs: int) -> nbd.ClientHandshake:
    hs = nbd.ClientHandshake("disk0", meta_contexts=["base:allocation"], **kwargs)
    hs.receive_data(GREETING)
    hs.receive_data(rep(8, 1))
    hs.data_to_send()
    return hs


def test_client_reply_count_bound() -> None:
    hs = at_meta_context(max_replies=5)
    # The structured reply ACK was one reply; four more fit, the fifth is one too many.
    assert hs.receive_data(b"".join(meta_reply(i) for i in range(4))) is None
    assert (hs.replies, hs.reply_bytes) == (5, 20 + 4 * 39)
    event = hs.receive_data(meta_reply(4) + rep(10, 1))
    assert event == nbd.ClientFailed(
        "server sent more than 5 option replies (to NBD_OPT_SET_META_CONTEXT)"
    )
    assert hs.replies == 5 and hs.done
    assert hs.data_to_send() == b""  # a hard disconnect: the server broke the bargain


def test_client_reply_bytes_bound_counts_headers_and_is_checked_before_buffering() -> None:
    hs = at_meta_context(max_reply_bytes=20 + 39 * 2)
    assert hs.receive_data(meta_reply(1) * 2) is None
    # Only the header of the next reply has arrived: refused without waiting for its data.
    event = hs.receive_data(meta_reply(3)[:20])
    assert event == nbd.ClientFailed(
        "server sent more than 98 bytes of option replies (to NBD_OPT_SET_META_CONTEXT)"
    )
    assert hs.reply_bytes == 98


def test_client_default_bounds_accept_a_long_listing() -> None:
    assert nbd.DEFAULT_MAX_HANDSHAKE_REPLIES >= 10_000
    assert nbd.DEFAULT_MAX_HANDSHAKE_BYTES >= 16 * nbd.MAX_STRING * 256
    hs = nbd.ClientHandshake(list_exports=True)
    hs.receive_data(GREETING)
    entries = [rep(3, 2, struct.pack(">I", 6) + b"disk%02d" % (i % 100)) for i in range(10_000)]
    event = hs.receive_data(b"".join(entries) + rep(3, 1))
    assert isinstance(event, nbd.ExportList) and len(event.exports) == 10_000


def test_client_waiting_for_names_what_the_handshake_waits_for() -> None:
    hs = nbd.ClientHandshake("disk0", meta_contexts=["base:allocation"])
    assert hs.waiting_for == "the server's greeting"
    hs.receive_data(GREETING)
    assert hs.waiting_for == "the server's reply to NBD_OPT_STRUCTURED_REPLY"
    hs.receive_data(rep(8, 1))
    assert hs.waiting_for == "the server's reply to NBD_OPT_SET_META_CONTEXT"
    hs.receive_data(rep(10, 1))
    assert hs.waiting_for == "the server's reply to NBD_OPT_GO"
    hs.receive_data(rep(7, 3, INFO_EXPORT) + rep(7, 1))
    assert hs.waiting_for == "nothing (the handshake is over)"


def test_client_defaults_without_block_size_info() -> None:
    hs = nbd.ClientHandshake("", structured_replies=False, request_block_size=False)
    hs.receive_data(GREETING)
    assert hs.data_to_send() == b"\x00\x00\x00\x03" + opt(7, info_data(b"", 1, 2))
    event = hs.receive_data(rep(7, 3, INFO_EXPORT) + rep(7, 1) + b"extra")
    assert isinstance(event, nbd.ClientReady)
    assert (event.min_block_size, event.preferred_block_size, event.max_block_size) == (
        1,
        4096,
        1 << 25,
    )
    assert not event.structured_replies and not event.block_size_negotiated
    assert event.trailing == b"extra"


def test_client_structured_reply_refused() -> None:
    hs = nbd.ClientHandshake("d", meta_contexts=["base:allocation"])
    hs.receive_data(GREETING)
    hs.data_to_send()
    hs.receive_data(rep(8, nbd.NBD_REP_ERR_UNSUP))
    # No meta context without structured replies: straight to GO.
    assert hs.data_to_send() == opt(7, info_data(b"d", 1, 2, 3))
    event = hs.receive_data(rep(7, 3, INFO_EXPORT) + rep(7, 1))
    assert isinstance(event, nbd.ClientReady) and not event.structured_replies
    assert event.meta_contexts == {}


def test_client_meta_context_refused_continues_without() -> None:
    hs = nbd.ClientHandshake("d", meta_contexts=["base:allocation"])
    hs.receive_data(GREETING + rep(8, 1))
    hs.data_to_send()
    hs.receive_data(
        rep(10, 4, b"\x00\x00\x00\x01base:allocation") + rep(10, nbd.NBD_REP_ERR_INVALID)
    )
    assert hs.data_to_send() == opt(7, info_data(b"d", 1, 2, 3))
    event = hs.receive_data(rep(7, 3, INFO_EXPORT) + rep(7, 1))
    assert isinstance(event, nbd.ClientReady) and event.meta_contexts == {}


@pytest.mark.parametrize("no_zeroes", [True, False])
def test_client_falls_back_to_export_name_when_go_unsupported(no_zeroes: bool) -> None:
    hs = nbd.ClientHandshake("disk0", structured_replies=False, no_zeroes=no_zeroes)
    hs.receive_data(GREETING)
    flags = 3 if no_zeroes else 1
    assert hs.data_to_send() == struct.pack(">I", flags) + opt(7, info_data(b"disk0", 1, 2, 3))
    assert hs.receive_data(rep(7, nbd.NBD_REP_ERR_UNSUP)) is None
    assert hs.data_to_send() == opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0")
    reply = struct.pack(">QH", 12345, 3) + (b"" if no_zeroes else bytes(124))
    assert hs.receive_data(reply[:-1]) is None
    event = hs.receive_data(reply[-1:])
    assert isinstance(event, nbd.ClientReady)
    assert (event.size, event.flags, event.via_go) == (12345, 3, False)


def test_client_old_newstyle_server_uses_export_name() -> None:
    hs = nbd.ClientHandshake("disk0")
    hs.receive_data(b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x00")
    assert hs.data_to_send() == b"\x00\x00\x00\x00" + opt(nbd.NBD_OPT_EXPORT_NAME, b"disk0")
    event = hs.receive_data(struct.pack(">QH", 512, 1) + bytes(124))
    assert isinstance(event, nbd.ClientReady) and event.size == 512


@pytest.mark.parametrize(
    "greeting",
    [
        b"NBDMAGIX" + b"IHAVEOPT" + b"\x00\x03",
        b"NBDMAGIC" + b"IHAVEOPX" + b"\x00\x03",
        b"NBDMAGIC" + struct.pack(">Q", 0x00420281861253) + b"\x00\x00",
    ],
    ids=["magic", "newstyle-magic", "oldstyle"],
)
def test_client_rejects_bad_greeting(greeting: bytes) -> None:
    hs = nbd.ClientHandshake("d")
    event = hs.receive_data(greeting)
    assert isinstance(event, nbd.ClientFailed) and not event.soft
    assert hs.data_to_send() == b""


def test_client_unknown_export_aborts_softly() -> None:
    hs = nbd.ClientHandshake("nope", structured_replies=False)
    hs.receive_data(GREETING)
    hs.data_to_send()
    event = hs.receive_data(rep(7, nbd.NBD_REP_ERR_UNKNOWN, b"no such export"))
    assert isinstance(event, nbd.ClientFailed)
    assert (
        event.soft and event.reply == nbd.NBD_REP_ERR_UNKNOWN and "no such export" in event.reason
    )
    assert hs.data_to_send() == opt(nbd.NBD_OPT_ABORT)


@pytest.mark.parametrize("option_state", ["structured", "go"])
def test_client_shutdown_aborts(option_state: str) -> None:
    hs = nbd.ClientHandshake("d", structured_replies=option_state == "structured")
    hs.receive_data(GREETING)
    hs.data_to_send()
    option = 8 if option_state == "structured" else 7
    event = hs.receive_data(rep(option, nbd.NBD_REP_ERR_SHUTDOWN))
    assert isinstance(event, nbd.ClientFailed) and event.soft
    assert hs.data_to_send() == opt(nbd.NBD_OPT_ABORT)


def test_client_retries_go_when_block_size_required() -> None:
    hs = nbd.ClientHandshake("d", structured_replies=False, request_block_size=False)
    hs.receive_data(GREETING)
    hs.data_to_send()
    block_size = rep(7, 3, struct.pack(">HIII", 3, 4096, 4096, 1 << 20))
    assert hs.receive_data(block_size + rep(7, nbd.NBD_REP_ERR_BLOCK_SIZE_REQD)) is None
    assert hs.data_to_send() == opt(7, info_data(b"d", 1, 2, 3))
    event = hs.receive_data(rep(7, 3, INFO_EXPORT) + block_size + rep(7, 1))
    assert isinstance(event, nbd.ClientReady)
    assert event.block_size_negotiated and event.min_block_size == 4096


def test_client_other_go_error_aborts() -> None:
    hs = nbd.ClientHandshake("d", structured_replies=False)
    hs.receive_data(GREETING)
    hs.data_to_send()
    event = hs.receive_data(rep(7, nbd.NBD_REP_ERR_TLS_REQD))
    assert isinstance(event, nbd.ClientFailed) and event.soft
    assert event.reply == nbd.NBD_REP_ERR_TLS_REQD


@pytest.mark.parametrize(
    "replies",
    [
        rep(7, 1),  # ACK without NBD_INFO_EXPORT
        rep(7, 3, b"\x00"),  # short info
        rep(7, 3, INFO_EXPORT + b"\x00"),  # export info of wrong length
        rep(7, 3, struct.pack(">HIII", 3, 4096, 4096, 1 << 20)[:-1]),  # block size wrong length
        rep(7, 3, struct.pack(">HIII", 3, 3, 4096, 1 << 20)),  # min not a power of 2
        rep(7, 3, struct.pack(">HIII", 3, 1 << 17, 1 << 17, 1 << 20)),  # min too large
        rep(7, 3, struct.pack(">HIII", 3, 4096, 512, 1 << 20)),  # preferred < min
        rep(7, 3, struct.pack(">HIII", 3, 4096, 4096, 512)),  # max < min
        rep(7, nbd.NBD_REP_SERVER, b"\x00\x00\x00\x00"),  # reply type not valid for GO
        rep(8, 1),  # reply to another option
        b"X" * 8 + struct.pack(">III", 7, 1, 0),  # bad magic
        REPLY_MAGIC + struct.pack(">III", 7, 3, 1 << 30),  # reply too long
    ],
)
def test_client_hard_fails_on_broken_server(replies: bytes) -> None:
    hs = nbd.ClientHandshake("d", structured_replies=False)
    hs.receive_data(GREETING)
    hs.data_to_send()
    event = hs.receive_data(replies)
    assert isinstance(event, nbd.ClientFailed) and not event.soft
    assert hs.data_to_send() == b""


@pytest.mark.parametrize(
    "replies",
    [
        rep(8, nbd.NBD_REP_META_CONTEXT, b""),  # not a valid reply to STRUCTURED_REPLY
    ],
)
def test_client_hard_fails_on_unexpected_structured_reply_answer(replies: bytes) -> None:
    hs = nbd.ClientHandshake("d")
    hs.receive_data(GREETING)
    event = hs.receive_data(replies)
    assert isinstance(event, nbd.ClientFailed) and not event.soft


@pytest.mark.parametrize(
    "reply", [rep(10, 4, b"\x00\x00"), rep(10, 4, b"\x00\x00\x00\x01\xff"), rep(10, 2)]
)
def test_client_hard_fails_on_bad_meta_context_reply(reply: bytes) -> None:
    hs = nbd.ClientHandshake("d", meta_contexts=["base:allocation"])
    hs.receive_data(GREETING + rep(8, 1))
    event = hs.receive_data(reply)
    assert isinstance(event, nbd.ClientFailed) and not event.soft


def test_client_list_exports() -> None:
    hs = nbd.ClientHandshake(list_exports=True)
    hs.receive_data(GREETING)
    assert hs.data_to_send() == b"\x00\x00\x00\x03" + opt(nbd.NBD_OPT_LIST)
    assert hs.receive_data(rep(3, 2, b"\x00\x00\x00\x05disk0first")) is None
    event = hs.receive_data(rep(3, 2, b"\x00\x00\x00\x00") + rep(3, 1))
    assert event == nbd.ExportList([("disk0", "first"), ("", "")])
    assert hs.data_to_send() == opt(nbd.NBD_OPT_ABORT)


@pytest.mark.parametrize(
    "reply", [rep(3, 2, b"\x00\x00"), rep(3, 2, b"\x00\x00\x00\x09abc"), rep(3, 3)]
)
def test_client_list_hard_fails_on_malformed_reply(reply: bytes) -> None:
    hs = nbd.ClientHandshake(list_exports=True)
    hs.receive_data(GREETING)
    event = hs.receive_data(reply)
    assert isinstance(event, nbd.ClientFailed) and not event.soft


def test_client_list_refused_aborts() -> None:
    hs = nbd.ClientHandshake(list_exports=True)
    hs.receive_data(GREETING)
    hs.data_to_send()
    event = hs.receive_data(rep(3, nbd.NBD_REP_ERR_POLICY, b"no"))
    assert isinstance(event, nbd.ClientFailed) and event.soft
    assert hs.data_to_send() == opt(nbd.NBD_OPT_ABORT)


def test_client_list_needs_fixed_newstyle() -> None:
    hs = nbd.ClientHandshake(list_exports=True)
    event = hs.receive_data(b"NBDMAGIC" + b"IHAVEOPT" + b"\x00\x00")
    assert isinstance(event, nbd.ClientFailed)


def test_client_data_after_terminal_event_is_ignored() -> None:
    hs = nbd.ClientHandshake("d", structured_replies=False)
    hs.receive_data(GREETING)
    assert isinstance(hs.receive_data(rep(7, 3, INFO_EXPORT) + rep(7, 1)), nbd.ClientReady)
    hs.data_to_send()
    assert hs.receive_data(b"whatever") is None
    assert hs.data_to_send() == b""


# ---------------------------------------------------------------------------------------------
# Client against server
# ---------------------------------------------------------------------------------------------


def pump(
    client: nbd.ClientHandshake, srv: nbd.ServerHandshake
) -> tuple[nbd.ClientEvent | None, nbd.ServerEvent | None]:
    client_event = server_event = None
    to_client = srv.data_to_send()
    for _ in range(50):
        if to_client and client_event is None:
            client_event = client.receive_data(to_client)
        to_server = client.data_to_send()
        if to_server and server_event is None:
            server_event = srv.receive_data(to_server)
        to_client = srv.data_to_send()
        if not to_client and not to_server:
            break
    return client_event, server_event


@pytest.mark.parametrize("structured", [True, False])
@pytest.mark.parametrize("export", ["disk0", "sector", "strict", ""])
def test_client_server_go(structured: bool, export: str) -> None:
    client = nbd.ClientHandshake(
        export, structured_replies=structured, meta_contexts=[nbd.BASE_ALLOCATION]
    )
    srv = nbd.ServerHandshake(EXPORTS.get)
    client_event, server_event = pump(client, srv)
    assert isinstance(client_event, nbd.ClientReady)
    assert isinstance(server_event, nbd.TransmissionReady)
    info = EXPORTS[export]
    assert client_event.size == info.size and client_event.flags == server_event.flags
    assert client_event.min_block_size == info.min_block_size
    assert client_event.max_block_size == info.max_block_size
    assert client_event.structured_replies is server_event.structured_replies is structured
    expected = {nbd.BASE_ALLOCATION: nbd.BASE_ALLOCATION_ID} if structured else {}
    assert client_event.meta_contexts == expected
    assert {v: k for k, v in server_event.meta_contexts.items()} == expected
    assert client_event.block_size_negotiated and server_event.block_size_negotiated


def test_client_server_unknown_export() -> None:
    client = nbd.ClientHandshake("missing")
    srv = nbd.ServerHandshake(EXPORTS.get)
    client_event, server_event = pump(client, srv)
    assert isinstance(client_event, nbd.ClientFailed) and client_event.soft
    assert server_event == nbd.Closed("client sent NBD_OPT_ABORT", soft=True)


def test_client_server_list() -> None:
    client = nbd.ClientHandshake(list_exports=True)
    srv = nbd.ServerHandshake(EXPORTS.get, exports=lambda: [DISK, SECTOR])
    client_event, server_event = pump(client, srv)
    assert client_event == nbd.ExportList([("disk0", "the first disk"), ("sector", "")])
    assert isinstance(server_event, nbd.Closed) and server_event.soft


def test_client_server_without_structured_support() -> None:
    client = nbd.ClientHandshake("disk0", meta_contexts=[nbd.BASE_ALLOCATION])
    srv = nbd.ServerHandshake(EXPORTS.get, structured_replies=False)
    client_event, server_event = pump(client, srv)
    assert isinstance(client_event, nbd.ClientReady) and not client_event.structured_replies
    assert isinstance(server_event, nbd.TransmissionReady) and not server_event.structured_replies
