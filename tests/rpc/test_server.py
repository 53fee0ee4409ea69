"""The Unix-socket listener (pybdev.rpc.server) under hostile clients: every request
answered or the connection closed after -32700, memory bounded for a client that never
reads, and a lock file that cannot be abused."""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from tests.conftest import Target
from tests.rpc.hostile import PARSE_ERROR, Case, requests


def exchange(t: Target, body: bytes, half_close: bool = True, timeout: float = 30) -> bytes:
    """Send ``body``, optionally end the write side, and read until the server closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(t.sock))
    try:
        try:
            s.sendall(body)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused the request mid-way; its answer is still readable
        out = b""
        try:
            while data := s.recv(65536):
                out += data
        except ConnectionResetError:
            # A Unix socket closed by a server that left some of our bytes unread (a refused
            # oversize request) ends with ECONNRESET instead of EOF, after the data it sent.
            pass
        return out
    finally:
        s.close()


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.too_slow])
@given(case=requests())
def test_fuzzed_requests_are_all_answered(target: Target, case: Case) -> None:
    case.check_response(exchange(target, case.body))


def test_parse_error_without_closing_brace_is_answered_at_once(target: Target) -> None:
    # The client neither closes nor sends more: SPDK answers -32700 and closes at once.
    for body in (b"{bad json", b'{"id":NaN', b'{"method":"x","id":1,"params":{"a":-Infinity'):
        assert exchange(target, body, half_close=False) == PARSE_ERROR, body


def test_complete_oversize_request_is_refused(target: Target) -> None:
    pad = "x" * 378_000
    body = json.dumps({"method": "bdev_get_bdevs", "id": 1, "params": {"name": pad}}).encode()
    assert exchange(target, body) == PARSE_ERROR
    # The target is fine and the next connection is served.
    assert target.rpc("spdk_get_version")["fields"]["major"] == 0


def test_pipelined_requests_after_a_huge_id_are_answered(target: Target) -> None:
    big = b"9" * 5000
    body = (b'{"method":"spdk_get_version","id":' + big + b"}"
            b'{"method":"spdk_get_version","id":1e400}{"method":"spdk_get_version","id":2}')
    out = exchange(target, body).splitlines()
    ids = sorted(line.split(b',"result"')[0].split(b'"id":')[1] for line in out)
    assert ids == sorted([big, b"1e400", b"2"])


def test_pipelined_requests_that_wait_and_that_do_not_are_all_answered(target: Target) -> None:
    """Handlers that return at once are answered in the read callback, one write for the
    batch; those that await run as tasks. Each request gets exactly one answer."""
    body = b"".join(
        b'{"jsonrpc":"2.0","method":"%s","id":%d}' % (
            b"bdev_wait_for_examine" if i % 7 == 0 else b"spdk_get_version", i)
        for i in range(500))
    answers = [json.loads(line) for line in exchange(target, body).splitlines()]
    assert sorted(a["id"] for a in answers) == list(range(500))
    assert all(a["result"] is True for a in answers if a["id"] % 7 == 0)
    assert all(a["result"]["fields"]["major"] == 0 for a in answers if a["id"] % 7)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_client_that_never_reads_costs_bounded_memory(target: Target) -> None:
    """Requests are read only while unsent replies stay under the bound; everything sent is
    answered once the client reads."""
    for i in range(8):
        target.rpc("bdev_null_create", {"name": f"N{i}", "num_blocks": 1024, "block_size": 512})
    request = b'{"method":"bdev_get_bdevs","id":1}'
    reply_size = len(exchange(target, request))
    assert reply_size > 4000  # big replies, so unsent ones would pile up quickly
    before = _rss(target.proc.pid)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(target.sock))
    s.setblocking(False)
    sent = 0
    pending = b""
    # Without backpressure the target would read all 2 MB of requests and hold ~300 MB
    # of replies; with it, the client's sends block after a few thousand requests. A
    # target that is merely busy blocks the client for a moment, not for 8 s.
    idle_rounds = 0
    while sent < 2 * 1024 * 1024 and idle_rounds < 2:
        if not pending:
            pending = request * 64
        _, writable, _ = select.select([], [s], [], 4)
        if not writable:
            idle_rounds += 1  # blocked: the target stopped reading this connection
            continue
        idle_rounds = 0
        try:
            n = s.send(pending)
        except BlockingIOError:
            continue
        sent += n
        pending = pending[n:]
    # Others are still served while this connection is paused.
    assert target.rpc("spdk_get_version")["fields"]["major"] == 0
    grown = _rss(target.proc.pid) - before
    assert grown < 64 * 1024 * 1024, f"target grew by {grown >> 20} MiB"
    # Reading resumes the connection: every request sent gets its reply.
    s.setblocking(True)
    s.settimeout(60)
    received: list[int] = []

    def read_all() -> None:
        total = 0
        while data := s.recv(1 << 20):
            total += len(data)
        received.append(total)

    reader = threading.Thread(target=read_all)
    reader.start()
    rest = -sent % len(request)  # finish the request cut by the last send
    s.sendall(request[len(request) - rest:] if rest else b"")
    s.shutdown(socket.SHUT_WR)
    reader.join(120)
    s.close()
    assert received == [(sent + rest) // len(request) * reply_size]


def test_lock_file_symlink_is_not_followed(start_target: Callable[..., Target],
                                           tmp_path: Path) -> None:
    sock = tmp_path / "t.sock"
    victim = tmp_path / "victim"
    Path(str(sock) + ".lock").symlink_to(victim)
    t = start_target(sock=sock, wait=False)
    assert t.proc.wait(30) != 0
    assert "symbolic link" in t.log()
    assert not victim.exists()


def test_held_lock_names_its_holder(start_target: Callable[..., Target],
                                    tmp_path: Path) -> None:
    sock = tmp_path / "t.sock"
    fd = os.open(str(sock) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        t = start_target(sock=sock, wait=False)
        assert t.proc.wait(30) != 0
        log = t.log()
        assert f"RPC Unix domain socket path {sock} in use. Specify another." in log
        assert f"pid {os.getpid()}" in log and f"uid {os.getuid()}" in log
    finally:
        os.close(fd)


def test_lock_file_that_is_not_a_regular_file(start_target: Callable[..., Target],
                                              tmp_path: Path) -> None:
    sock = tmp_path / "t.sock"
    os.mkfifo(str(sock) + ".lock")
    t = start_target(sock=sock, wait=False)
    started = time.monotonic()
    assert t.proc.wait(30) != 0
    assert "not a regular file" in t.log(), time.monotonic() - started


def test_unopenable_lock_file_names_its_owner(tmp_path: Path) -> None:
    # In a sticky shared directory (the default /var/tmp) another user's PATH.lock cannot
    # be opened (mode 0600, or fs.protected_regular): the message says whose it is and what
    # to do. The refusal is built from the file as found.
    from pybdev.rpc.server import UnixRpcServer

    sock = tmp_path / "t.sock"
    lock = Path(str(sock) + ".lock")
    lock.write_bytes(b"")
    if os.geteuid() == 0:
        os.chown(lock, 65534, 65534)
    server = UnixRpcServer(None, str(sock))  # type: ignore[arg-type]
    message = server._lock_refusal(PermissionError(13, "Permission denied"))
    assert f"RPC Unix domain socket path {sock} in use. Specify another." in message
    assert f"uid {lock.stat().st_uid}" in message and "Permission denied" in message
    assert "-r" in message
