"""What NBD clients can make the server hold: bounded, documented, and freed at close.

Each test measures the target's resident memory (not time) around hostile clients written
here: idle connections, clients that never finish the handshake, WRITE headers whose
payload never comes, and reads whose replies are never read (docs/guide.md, "Limits").
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Target, wait_until
from tests.nbd.rawclient import RawClient

MIB = 1 << 20
REQUEST = struct.Struct(">IHHQQI")
REQUEST_MAGIC = 0x25609513


def rss(t: Target) -> int:
    return int(Path(f"/proc/{t.proc.pid}/statm").read_text().split()[1]) * 4096


def connect(sock: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock))
    return s


def handshake(sock: Path, name: str) -> socket.socket:
    """A connection in the transmission phase (fixed newstyle, NBD_OPT_EXPORT_NAME)."""
    s = connect(sock)
    assert s.recv(18, socket.MSG_WAITALL)[:16] == b"NBDMAGICIHAVEOPT"
    s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 1, len(name))
              + name.encode())
    assert len(s.recv(10, socket.MSG_WAITALL)) == 10
    return s


def closed_by_peer(s: socket.socket, timeout: float = 20) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def export(start_target: Callable[..., Target], sockdir: Path, *args: str,
           bdev: tuple[str, dict[str, object]] | None = None) -> tuple[Target, Path]:
    t = start_target(*args)
    method, params = bdev or ("bdev_malloc_create",
                              {"name": "M", "num_blocks": 65536, "block_size": 4096})
    t.rpc(method, params)
    sock = sockdir / "nbd.sock"
    t.rpc("nbd_start_disk", {"bdev_name": "M", "nbd_device": f"nbd+unix:///M?socket={sock}"})
    return t, sock


def test_idle_connections_cost_little_and_are_freed(start_target: Callable[..., Target],
                                                    sockdir: Path) -> None:
    t, sock = export(start_target, sockdir)
    before = rss(t)
    conns = [connect(sock) for _ in range(200)]
    for c in conns:  # each got its greeting: the server made the connection
        assert c.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
    per_connection = (rss(t) - before) / len(conns)
    assert per_connection < 48 * 1024, f"{per_connection:.0f} bytes per idle connection"
    for c in conns:
        c.close()
    wait_until(lambda: rss(t) < before + 8 * MIB, what="memory back after close")


def test_handshake_timeout_closes_silent_clients(start_target: Callable[..., Target],
                                                 sockdir: Path) -> None:
    t, sock = export(start_target, sockdir, "--nbd-handshake-timeout", "1")
    c = connect(sock)
    assert c.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
    assert closed_by_peer(c)
    assert "no handshake within 1 s (--nbd-handshake-timeout); closing" in t.log()
    # A client that does its handshake in time is served as before.
    RawClient(str(sock), "M").write(0, b"\xab" * 4096)


def test_connection_limit_per_listener(start_target: Callable[..., Target],
                                       sockdir: Path) -> None:
    t, sock = export(start_target, sockdir, "--nbd-max-connections", "3")
    held = [connect(sock) for _ in range(3)]
    for c in held:
        assert c.recv(18, socket.MSG_WAITALL)[:8] == b"NBDMAGIC"
    refused = connect(sock)
    assert closed_by_peer(refused)
    assert "connections, the limit (--nbd-max-connections)" in t.log()
    held.pop().close()

    def served() -> bool:
        try:
            return len(RawClient(str(sock), "M").read(0, 4096)) == 4096
        except (OSError, AssertionError):
            return False

    wait_until(served, what="a free slot once a client left")


def test_write_headers_without_payload_hold_a_bounded_amount(
        start_target: Callable[..., Target], sockdir: Path) -> None:
    # null has no zero-copy buffers (malloc's would take these payloads in place, with no
    # server memory at all): the pieces come from the server's budget.
    t, sock = export(start_target, sockdir, "--nbd-max-buffered-mb", "16", bdev=(
        "bdev_null_create", {"name": "M", "num_blocks": 65536, "block_size": 4096}))
    before = rss(t)
    stalled = []
    for i in range(40):
        s = handshake(sock, "M")
        s.sendall(REQUEST.pack(REQUEST_MAGIC, 0, 1, i, 0, 32 * MIB) + bytes(4096))
        stalled.append(s)
    time.sleep(0.5)  # let the server take in what was sent (memory, not time, is asserted)
    grown = rss(t) - before
    # Before the cap: a whole 32 MiB buffer per header, 1.25 GiB for these 40.
    assert grown < 64 * MIB, f"+{grown / MIB:.0f} MiB for 40 stalled writers"
    # Small writes need no budget: another client is served while the cap is reached.
    c = RawClient(str(sock), "M")
    c.write(4096, b"\x5a" * 65536)
    assert c.read(4096, 65536) == bytes(65536)  # null: written, then read as zeros
    for s in stalled:
        s.close()
    wait_until(lambda: rss(t) < before + 16 * MIB, what="memory back after close")


def test_reads_never_read_back_hold_a_bounded_amount(start_target: Callable[..., Target],
                                                     sockdir: Path, tmp_path: Path) -> None:
    # aio reads allocate their data: 64 reads of 32 MiB were +2 GiB before the budget.
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as f:
        f.truncate(64 * MIB)
    t, sock = export(start_target, sockdir, bdev=(
        "bdev_aio_create", {"name": "M", "filename": str(backing), "block_size": 4096}))
    before = rss(t)
    s = handshake(sock, "M")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.sendall(b"".join(REQUEST.pack(REQUEST_MAGIC, 0, 0, i, 0, 32 * MIB) for i in range(64)))
    time.sleep(3)  # let the server do what it will (memory, not time, is asserted)
    grown = rss(t) - before
    assert grown < 400 * MIB, f"+{grown / MIB:.0f} MiB for 64 unread 32 MiB reads"
    s.close()
    wait_until(lambda: rss(t) < before + 32 * MIB, what="memory back after close")


def test_poll_window_out_of_range_is_refused_at_start(
        start_target: Callable[..., Target]) -> None:
    t = start_target("--nbd-poll-us", "5000", wait=False)
    assert t.proc.wait(30) == 2  # argparse's usage error
    assert "--nbd-poll-us: 5000 is not between 0 and 1000" in t.log()
