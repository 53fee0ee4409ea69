"""The NBD client bdev against hostile servers (its tests against real servers, nbdkit,
qemu-nbd and pybdev's export, are in tests/nbd/test_client_bdev.py).

Each server is a script in :mod:`tests.bdev.hostile_nbd`: reads whose chunks leave gaps,
handshakes that stall, handshakes that flood option replies.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pybdev.bdev.nbd as nbd_bdev
from pybdev.bdev.core import BdevLayer
from pybdev.bdev.nbd import NbdBdev, NbdModule
from pybdev.errors import OperationError
from pybdev.proto import nbd
from tests.conftest import Target

from .conftest import module
from .hostile_nbd import (
    CMD_DISC,
    CMD_READ,
    DONE,
    OPT_SET_META_CONTEXT,
    OPT_STRUCTURED_REPLY,
    REP_ACK,
    REP_META_CONTEXT,
    Conn,
    HostileServer,
    Script,
)

pytestmark = pytest.mark.timeout(120)

READ_AT = 64 * 1024
READ_LEN = 8192
PATTERN = bytes(range(256)) * (READ_LEN // 256)


@pytest.fixture
def layer(layer: BdevLayer) -> BdevLayer:
    # Examine (the lvol module looks for a store) would read the first blocks of the new
    # bdev; these servers answer exactly the requests their script expects.
    layer.options["bdev_auto_examine"] = False
    return layer


@pytest.fixture
def hostile(short_dir: Path) -> Iterator[Callable[[Script], HostileServer]]:
    servers: list[HostileServer] = []

    def start(script: Script) -> HostileServer:
        server = HostileServer(short_dir / f"hostile{len(servers)}.sock", script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
    assert [s.failures for s in servers] == [[] for _ in servers]


async def create(layer: BdevLayer, uri: str) -> NbdBdev:
    return await module(layer, NbdModule).create("Nbd0", uri)


# --------------------------------------------------------------------------------------------
# A structured read must be covered by its chunks
# --------------------------------------------------------------------------------------------

# Each answer sends the chunks for a READ of READ_LEN bytes at READ_AT: (kind, start, end,
# flags) with start/end relative to the request; a trailing NONE chunk ends it when the
# last piece does not carry DONE.
Piece = tuple[str, int, int, int]
GAPS: dict[str, list[Piece]] = {
    "tail missing": [("data", 0, 4096, 0)],
    "head missing": [("data", 4096, 8192, DONE)],
    "middle missing": [("data", 0, 2048, 0), ("data", 6144, 8192, DONE)],
    "hole leaves a gap": [("hole", 0, 4096, 0), ("data", 6144, 8192, 0)],
    "overlap hides a gap": [("data", 0, 4096, 0), ("data", 0, 4096, 0)],
    "nothing but NONE": [],
}
COVERED: dict[str, list[Piece]] = {
    "one chunk": [("data", 0, 8192, DONE)],
    "data then NONE": [("data", 0, 8192, 0)],
    "hole and data": [("hole", 0, 4096, 0), ("data", 4096, 8192, DONE)],
    "out of order": [("data", 4096, 8192, 0), ("data", 0, 4096, 0)],
    "all hole": [("hole", 0, 8192, 0)],
}


def read_server(pieces: list[Piece]) -> Script:
    def script(conn: Conn) -> None:
        conn.handshake()
        while True:
            typ, cookie, offset, length = conn.request()
            if typ == CMD_DISC:
                return
            assert (typ, offset, length) == (CMD_READ, READ_AT, READ_LEN)
            for kind, start, end, flags in pieces:
                if kind == "data":
                    conn.data_chunk(cookie, offset + start, PATTERN[start:end], flags)
                else:
                    conn.hole_chunk(cookie, offset + start, end - start, flags)
            if not pieces or not pieces[-1][3] & DONE:
                conn.none_chunk(cookie)

    return script


def expected(pieces: list[Piece]) -> bytes:
    out = bytearray(READ_LEN)
    for kind, start, end, _ in pieces:
        if kind == "data":
            out[start:end] = PATTERN[start:end]
    return bytes(out)


@pytest.mark.parametrize("case", sorted(GAPS))
async def test_read_with_uncovered_bytes_fails_eio(
    layer: BdevLayer, hostile: Callable[[Script], HostileServer], case: str
) -> None:
    server = hostile(read_server(GAPS[case]))
    await create(layer, server.uri())
    desc = layer.open("Nbd0", write=False)
    try:
        with pytest.raises(OperationError) as info:
            await desc.read_async(READ_AT, READ_LEN)
        assert info.value.errno == errno.EIO
        # One bad reply fails that read, not the connection: the next read is answered too.
        with pytest.raises(OperationError) as again:
            await desc.read_async(READ_AT, READ_LEN)
        assert again.value.errno == errno.EIO
    finally:
        desc.close()


@pytest.mark.parametrize("case", sorted(COVERED))
async def test_read_covered_by_data_and_holes_succeeds(
    layer: BdevLayer, hostile: Callable[[Script], HostileServer], case: str
) -> None:
    server = hostile(read_server(COVERED[case]))
    await create(layer, server.uri())
    desc = layer.open("Nbd0", write=False)
    try:
        assert await desc.read_async(READ_AT, READ_LEN) == expected(COVERED[case])
    finally:
        desc.close()


# --------------------------------------------------------------------------------------------
# Handshake timeout: -110 saying what it waited for
# --------------------------------------------------------------------------------------------


def silent(conn: Conn) -> None:
    conn.wait_for_hangup()


def stalls_at_meta_context(conn: Conn) -> None:
    conn.greet()
    option, _ = conn.option()
    assert option == OPT_STRUCTURED_REPLY
    conn.reply(option, REP_ACK)
    option, _ = conn.option()
    assert option == OPT_SET_META_CONTEXT
    conn.wait_for_hangup()


@pytest.mark.parametrize(
    ("script", "waited_for"),
    [
        (silent, "the server's greeting"),
        (stalls_at_meta_context, "the server's reply to NBD_OPT_SET_META_CONTEXT"),
    ],
)
async def test_handshake_timeout_is_etimedout_with_reason(
    layer: BdevLayer,
    hostile: Callable[[Script], HostileServer],
    monkeypatch: pytest.MonkeyPatch,
    script: Script,
    waited_for: str,
) -> None:
    monkeypatch.setattr(nbd_bdev, "CONNECT_TIMEOUT", 0.5)
    server = hostile(script)
    with pytest.raises(OperationError) as info:
        await create(layer, server.uri())
    assert info.value.errno == errno.ETIMEDOUT
    assert info.value.detail == (
        f"NBD handshake with {server.uri()} (waiting for {waited_for}) timed out after 0.5 s"
    )
    assert layer.get("Nbd0") is None


# --------------------------------------------------------------------------------------------
# A handshake costs a bounded amount: replies and bytes
# --------------------------------------------------------------------------------------------


def flood_meta_contexts(name_size: int) -> Script:
    """Answer NBD_OPT_SET_META_CONTEXT with distinct contexts for as long as it is read."""

    def script(conn: Conn) -> None:
        conn.greet()
        option, _ = conn.option()
        conn.reply(option, REP_ACK)
        option, _ = conn.option()
        assert option == OPT_SET_META_CONTEXT
        context_id = 0
        while True:
            context_id += 1
            name = f"base:allocation{context_id}".encode().ljust(name_size, b"x")
            conn.reply(option, REP_META_CONTEXT, struct.pack(">I", context_id) + name)

    return script


# Slack for what the kernel's socket buffers hold when the client stops reading.
SOCKET_SLACK = 8 * 1024 * 1024


async def test_flood_of_large_replies_stops_at_the_byte_bound(
    layer: BdevLayer, hostile: Callable[[Script], HostileServer]
) -> None:
    server = hostile(flood_meta_contexts(4000))
    with pytest.raises(OperationError) as info:
        await create(layer, server.uri())
    bound = nbd.DEFAULT_MAX_HANDSHAKE_BYTES
    assert info.value.errno == errno.EIO
    assert info.value.detail == (
        f"NBD handshake failed: server sent more than {bound} bytes of option replies "
        "(to NBD_OPT_SET_META_CONTEXT)"
    )
    server.close()  # the script ends when the client has hung up
    assert bound <= server.sent <= bound + SOCKET_SLACK


async def test_flood_of_small_replies_stops_at_the_count_bound(
    layer: BdevLayer, hostile: Callable[[Script], HostileServer]
) -> None:
    server = hostile(flood_meta_contexts(1))
    with pytest.raises(OperationError) as info:
        await create(layer, server.uri())
    bound = nbd.DEFAULT_MAX_HANDSHAKE_REPLIES
    assert info.value.errno == errno.EIO
    assert info.value.detail == (
        f"NBD handshake failed: server sent more than {bound} option replies "
        "(to NBD_OPT_SET_META_CONTEXT)"
    )
    server.close()
    reply_size = 20 + 4 + len("base:allocation1")  # the smallest of the flood
    assert server.sent <= (bound + 1) * (reply_size + 5) + SOCKET_SLACK


def peak_rss(pid: int) -> int:
    """VmHWM of ``pid`` in bytes: the most it was ever resident."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_flooding_server_leaves_the_target_small(
    start_target: Callable[..., Target], hostile: Callable[[Script], HostileServer]
) -> None:
    """The 535 MiB of issue 13 item 4: a target meets a flood, its peak RSS barely moves."""
    target = start_target()
    assert target.rpc("bdev_get_bdevs") == []
    before = peak_rss(target.proc.pid)
    for _ in range(3):
        server = hostile(flood_meta_contexts(4000))
        error = target.rpc_error("bdev_nbd_create", {"name": "Nbd0", "uri": server.uri()})
        assert error["code"] == -errno.EIO
        assert "bytes of option replies" in error["message"], error
        server.close()
    growth = peak_rss(target.proc.pid) - before
    assert growth < 64 * 1024 * 1024, f"peak RSS grew by {growth >> 20} MiB"
    assert target.rpc("bdev_get_bdevs") == []
    assert os.path.exists(target.sock)


def test_client_bdev_imports_no_export_package() -> None:
    """bdevs know nothing of exports: the protocol comes from pybdev.proto."""
    code = (
        "import sys, pybdev.bdev.nbd; "
        "print(sorted(m for m in sys.modules if m == 'pybdev.nbd' or m.startswith('pybdev.nbd.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
