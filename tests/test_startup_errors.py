"""Start-up failures a user meets first, each told in one plain line that names the holder
and the fix: the NBD port of README's first command taken (nbdkit's and qemu-nbd's default
port), the RPC socket held by another live target, the HTTP port taken."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybdev.listener import process_name, tcp_port_holder
from tests.conftest import ROOT, Target

NBD_PORT = 10809  # etc/default.json, which scripts/start.sh starts with


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR: " in line]


def one_plain_line(output: str) -> str:
    lines = errors(output)
    assert len(lines) == 1, output
    assert "Traceback" not in output and '"jsonrpc"' not in output, output
    return lines[0]


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    """A TCP listener of this process on a free port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s
    s.close()


def test_the_holder_of_a_port_is_named(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    assert tcp_port_holder(port) == process_name(os.getpid())
    assert str(os.getpid()) in tcp_port_holder(port)


def test_start_sh_with_the_nbd_port_taken(tmp_path: Path) -> None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", NBD_PORT))
    except OSError as e:
        s.close()
        if e.errno != errno.EADDRINUSE:
            raise
        pytest.skip(f"port {NBD_PORT} is taken by another process here: "
                    f"{tcp_port_holder(NBD_PORT)}")
    s.listen()
    sock = tmp_path / "t.sock"
    try:
        res = subprocess.run([str(ROOT / "scripts/start.sh"), "-r", str(sock)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    finally:
        s.close()
    assert res.returncode == 1, res.stderr
    line = one_plain_line(res.stderr)
    assert f"127.0.0.1:{NBD_PORT} is in use by pid {os.getpid()}" in line
    assert "stop it or export on another port" in line
    assert not sock.exists() and not Path(f"{sock}.lock").exists()


def test_rpc_socket_of_a_live_target(target: Target) -> None:
    res = subprocess.run([sys.executable, "-m", "pybdev", "-r", str(target.sock)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 1
    line = one_plain_line(res.stderr)
    assert f"RPC Unix domain socket path {target.sock} in use." in line
    assert f"held by pid {target.proc.pid} (" in line and "-r OTHER_PATH" in line
    assert target.rpc("framework_wait_init") is True  # the holder is untouched


def test_http_port_taken(listening: socket.socket, tmp_path: Path) -> None:
    port = listening.getsockname()[1]
    res = subprocess.run([sys.executable, "-m", "pybdev", "-r", str(tmp_path / "h.sock"),
                          "--http", f"127.0.0.1:{port}"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 1
    line = one_plain_line(res.stderr)
    assert f"cannot serve HTTP on 127.0.0.1:{port}: 127.0.0.1:{port} is in use by pid " \
           f"{os.getpid()}" in line
    assert "choose another address with --http" in line
