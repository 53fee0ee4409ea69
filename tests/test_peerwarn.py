"""Peer warnings: written at the default level, rate-limited per peer, counted, escaped."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from pybdev.peerwarn import OTHERS, PeerWarnings, quote
from tests.conftest import Target
from tests.rpc.test_http import HttpTarget, basic


class FakeClock:
    """A clock the test moves by hand (the real one would make the test slow or flaky)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_summary_per_peer(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    w = PeerWarnings(burst=3, interval=60, clock=clock)
    log = logging.getLogger("pybdev.test")
    with caplog.at_level(logging.WARNING, logger="pybdev.test"):
        written = [w.warn(log, "http_auth_failed", "10.0.0.1", "bad %d", i) for i in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert w.warn(log, "http_auth_failed", "10.0.0.2", "other peer")  # its own budget
        clock.now += 61
        assert w.warn(log, "http_auth_failed", "10.0.0.1", "later")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["bad 0", "bad 1", "bad 2", "other peer",
                        "suppressed 7 more warnings about 10.0.0.1 in the last 60 s", "later"]
    assert w.counts == {"http_auth_failed": 12}


def test_summary_comes_by_itself_at_the_end_of_the_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    async def flood() -> None:
        w = PeerWarnings(burst=1, interval=0.05)
        log = logging.getLogger("pybdev.test")
        for _ in range(5):
            w.warn(log, "nbd_unknown_export", "10.0.0.9", "unknown")
        await asyncio.sleep(0.3)

    with caplog.at_level(logging.WARNING, logger="pybdev.test"):
        asyncio.run(flood())
    assert [r.getMessage() for r in caplog.records] == [
        "unknown", "suppressed 4 more warnings about 10.0.0.9 in the last 0 s"]


def test_peer_table_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    w = PeerWarnings(burst=1, interval=60, max_peers=4, clock=FakeClock())
    log = logging.getLogger("pybdev.test")
    with caplog.at_level(logging.WARNING, logger="pybdev.test"):
        for i in range(1000):
            w.warn(log, "http_auth_failed", f"10.1.{i // 256}.{i % 256}", "x")
    assert len(w._peers) <= 5  # four peers and the shared bucket
    assert OTHERS in w._peers
    assert len(caplog.records) == 5
    assert w.counts["http_auth_failed"] == 1000


def test_quote_escapes_what_could_forge_a_line() -> None:
    assert quote('a\nb"c\\') == '"a\\x0ab\\x22c\\x5c"'
    assert quote("x" * 100, 8) == '"xxxxxxxx"...'


async def test_failed_http_authentication(tmp_path: Path) -> None:
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0", "--http-user", "alice",
                   env={"PYBDEV_HTTP_PASSWORD": "right-pw"})
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(12):
                async with s.post(t.url + "/x%22y", data=b"{}",
                                  headers={"Content-Type": "application/json",
                                           **basic("alice", "WRONG-pw")}) as r:
                    assert r.status == 401
            async with s.get(t.url + "/metrics", headers=basic("alice", "right-pw")) as r:
                metrics = await r.text()
    finally:
        t.stop()
    log = t.log()
    failed = re.findall(r"WARNING: HTTP: authentication failed \(wrong credentials\) from "
                        r"127\.0\.0\.1:\d+: POST \"/x\\x22y\"", log)
    assert len(failed) == 5  # the burst; the rest is summed up
    assert "suppressed 7 more warnings about 127.0.0.1" in log
    assert "WRONG-pw" not in log and "right-pw" not in log
    assert 'pybdev_warnings_total{event="http_auth_failed"} 12.0' in metrics


def test_unknown_nbd_export_name(start_target: Callable[..., Target]) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "M0", "nbd_device": "nbd://127.0.0.1:0/m0"})
    port = re.search(r":(\d+)/", uri)
    assert port
    res = subprocess.run(["nbdinfo", f"nbd://127.0.0.1:{port[1]}/no%22such%0Aname"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    warning = re.search(r"WARNING: NBD client \('127\.0\.0\.1', \d+\) on 127\.0\.0\.1:\d+ asked "
                        r"for export (.*), which is not served there", t.log())
    assert warning and warning[1] == '"no\\x22such\\x0aname"'


def test_rpc_request_over_the_limit(start_target: Callable[..., Target]) -> None:
    t = start_target()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(t.sock))
        s.sendall(b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":"' + b"x" * 300_000)
        s.settimeout(30)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert b'"code":-32700' in answer
    assert re.search(rf"WARNING: RPC client uid={os.getuid()} pid={os.getpid()}: request "
                     r"exceeds 262144 bytes; closing the connection", t.log())
