"""The listener helper: one stale-socket rule for every server, TCP binding, and the RPC
socket, HTTP and NBD listeners applying it in a real target."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pybdev.listener import (
    ListenError,
    clear_stale_unix,
    listen_tcp,
    listen_unix,
    unix_identity,
    unlink_unix,
)
from tests.conftest import Target
from tests.test_app import run_target


@pytest.fixture
def short() -> Iterator[Path]:
    # Unix socket paths must fit in 108 bytes; pytest's tmp_path may not.
    d = Path(tempfile.mkdtemp(prefix="pblst", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def stale_socket(path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nothing listens: what a crashed process leaves


def test_stale_socket_is_removed_and_rebound(short: Path) -> None:
    path = short / "s.sock"
    stale_socket(path)
    sock = listen_unix(str(path))
    try:
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # the new listener answers
        client.close()
    finally:
        sock.close()


def test_live_socket_is_refused_and_kept(short: Path) -> None:
    path = short / "s.sock"
    live = listen_unix(str(path))
    try:
        with pytest.raises(ListenError) as e:
            listen_unix(str(path))
        assert e.value.errno == errno.EADDRINUSE and "another server listens" in str(e.value)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(path))  # still the first listener's
        client.close()
    finally:
        live.close()


def test_live_socket_with_a_full_backlog_is_still_live(short: Path) -> None:
    path = short / "s.sock"
    live = listen_unix(str(path), backlog=0)
    clients = []
    try:
        for _ in range(4):  # fill the backlog: a further connect would block or EAGAIN
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            if c.connect_ex(str(path)) != 0:
                c.close()
                break
            clients.append(c)
        with pytest.raises(ListenError) as e:
            clear_stale_unix(str(path))
        assert e.value.errno == errno.EADDRINUSE
    finally:
        for c in clients:
            c.close()
        live.close()


def test_regular_file_is_refused_and_never_removed(short: Path) -> None:
    path = short / "s.sock"
    path.write_text("precious")
    with pytest.raises(ListenError) as e:
        listen_unix(str(path))
    assert e.value.errno == errno.EEXIST and "not a socket" in str(e.value)
    assert path.read_text() == "precious"


def test_directory_is_refused_with_a_clear_error(short: Path) -> None:
    path = short / "d"
    path.mkdir()
    with pytest.raises(ListenError) as e:
        listen_unix(str(path))
    assert e.value.errno == errno.EISDIR and str(e.value) == f"{path} is a directory"
    assert path.is_dir()


def test_symlink_to_a_file_is_refused_not_followed(short: Path) -> None:
    target = short / "file"
    target.write_text("x")
    link = short / "s.sock"
    link.symlink_to(target)
    with pytest.raises(ListenError):
        listen_unix(str(link))
    assert link.is_symlink() and target.read_text() == "x"


def test_mode_0600_and_unlink_only_our_own_file(short: Path) -> None:
    path = short / "s.sock"
    sock = listen_unix(str(path), mode=0o600)
    ours = unix_identity(str(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.unlink(path)
    successor = listen_unix(str(path))  # another server took the path meanwhile
    sock.close()
    try:
        unlink_unix(str(path), ours)
        assert path.exists()
        unlink_unix(str(path), unix_identity(str(path)))
        assert not path.exists()
    finally:
        successor.close()


def test_a_missing_parent_directory_is_an_error_not_a_traceback(short: Path) -> None:
    with pytest.raises(ListenError) as e:
        listen_unix(str(short / "nope" / "s.sock"))
    assert e.value.errno == errno.ENOENT and "nope" in str(e.value)


async def test_tcp_port_zero_gives_every_address_the_same_port() -> None:
    socks = await listen_tcp(["127.0.0.1", "::1"], 0)
    try:
        ports = {s.getsockname()[1] for s in socks}
        assert len(socks) == 2 and len(ports) == 1 and 0 not in ports
    finally:
        for s in socks:
            s.close()


async def test_tcp_port_in_use_is_a_listen_error() -> None:
    first = await listen_tcp(["127.0.0.1"], 0)
    port = first[0].getsockname()[1]
    try:
        with pytest.raises(ListenError) as e:
            await listen_tcp(["127.0.0.1"], port)
        assert e.value.errno == errno.EADDRINUSE and f"127.0.0.1:{port}" in str(e.value)
    finally:
        first[0].close()


# -- the servers of a real target --------------------------------------------------------------


def test_rpc_socket_path_holding_a_file_stops_the_target_cleanly(short: Path) -> None:
    path = short / "spdk.sock"
    path.write_text("precious")
    res = run_target("-r", str(path))
    assert res.returncode == 1
    assert f"RPC Unix domain socket path {path}: {path} exists and is not a socket" in res.stderr
    assert "Traceback" not in res.stderr and path.read_text() == "precious"


def test_http_socket_path_that_is_a_directory_stops_the_target_cleanly(short: Path) -> None:
    (short / "h").mkdir()
    res = run_target("-r", str(short / "spdk.sock"), "--http", f"unix:{short / 'h'}")
    assert res.returncode == 1
    assert f"{short / 'h'} is a directory" in res.stderr and "Traceback" not in res.stderr


def test_nbd_export_takes_over_a_stale_socket_and_refuses_a_live_one(
        start_target: Callable[..., Target], short: Path) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512})
    stale = short / "stale.sock"
    stale_socket(stale)
    uri = f"nbd+unix:///M0?socket={stale}"
    assert t.rpc("nbd_start_disk", {"bdev_name": "M0", "nbd_device": uri}) == uri
    live = listen_unix(str(short / "live.sock"))
    try:
        err = t.rpc_error("nbd_start_disk", {
            "bdev_name": "M0", "nbd_device": f"nbd+unix:///M0?socket={short / 'live.sock'}"})
        assert err["code"] == -errno.EADDRINUSE and "another server listens" in err["message"]
    finally:
        live.close()
