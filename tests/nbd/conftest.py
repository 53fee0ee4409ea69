"""Fixtures for the NBD export and client bdev tests.

Targets come from ``tests/conftest.py`` (``start_target``); this adds short socket
directories (Unix socket paths must stay under 108 bytes, pytest's tmp_path may not),
a module-scoped target serving two malloc bdevs for the read-mostly tests, runners for
the real NBD tools, and peers (``nbdkit``, ``qemu-nbd``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, unix_listening

SYSTEM_PYTHON = "/usr/bin/python3"
MALLOC0_SIZE = 64 * 1024 * 1024
MALLOC1_SIZE = 16 * 1024 * 1024


def need(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} "
                                                    "(see deps/apt-test.txt)")


def unix_uri(name: str, sock: str | Path) -> str:
    return f"nbd+unix:///{name}?socket={sock}"


def run(argv: list[str], *, input: bytes | None = None, timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, input=input.decode("latin-1") if input else None,
                         capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def nbdsh(uri: str, script: str, timeout: float = 60) -> str:
    """Run a Python snippet in nbdsh connected to ``uri`` (``h`` is the handle)."""
    # nbdsh runs "python3 -mnbd" from PATH, which may be a Python without Debian's module.
    argv = [SYSTEM_PYTHON, "-m", "nbd"]
    return run([*argv, "-u", uri, "-c", script], timeout=timeout).stdout


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pbnbd", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def malloc_config(exports: list[tuple[str, str]], bdevs: list[tuple[str, int, int]]) -> Any:
    return {"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create",
             "params": {"name": n, "num_blocks": size // bs, "block_size": bs}}
            for n, size, bs in bdevs]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_start_disk", "params": {"nbd_device": dev, "bdev_name": b}}
            for b, dev in exports]},
    ]}


class Served:
    """A module-wide target: Malloc0 (64 MiB, 512 B blocks) and Malloc1 (16 MiB, 4 KiB)
    on one Unix socket, Malloc0 also on TCP 127.0.0.1 (a port the kernel picked)."""

    def __init__(self, target: Target, sock: Path) -> None:
        self.target = target
        self.sock = sock
        self.uri0 = unix_uri("Malloc0", sock)
        self.uri1 = unix_uri("Malloc1", sock)
        self.tcp_uri = target.rpc("nbd_start_disk", {"bdev_name": "Malloc0",
                                                      "nbd_device": "nbd://127.0.0.1:0/Malloc0"})
        port = int(self.tcp_uri.rsplit(":", 1)[1].split("/")[0])
        self.tcp = ("127.0.0.1", port)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    d = Path(tempfile.mkdtemp(prefix="pbnbd", dir="/tmp"))
    sock = d / "nbd.sock"
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps(malloc_config(
        [("Malloc0", unix_uri("Malloc0", sock)), ("Malloc1", unix_uri("Malloc1", sock))],
        [("Malloc0", MALLOC0_SIZE, 512), ("Malloc1", MALLOC1_SIZE, 4096)])))
    t = Target(d / "rpc.sock", ["--json", str(cfg)], d / "target.log")
    try:
        t.wait_ready()
        yield Served(t, sock)
        assert "Traceback" not in t.log(), t.log()
    finally:
        if t.proc.poll() is None:
            t.stop()
        shutil.rmtree(d, ignore_errors=True)


class Peer:
    """An NBD server process of another project, on a Unix socket.

    Ready means listening (a connection would be accepted), never merely that the socket
    file exists: it exists from bind(), before listen(). nbdkit also writes its --pidfile
    only once it accepts connections.
    """

    def __init__(self, argv: list[str], sock: Path, pidfile: Path | None = None) -> None:
        self.sock = sock
        self.stderr = ""
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not ((pidfile is None or pidfile.exists()) and unix_listening(sock)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                if self.proc.poll() is None:
                    self.proc.kill()
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise AssertionError(f"{argv[0]} did not start listening on {sock}: {err}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                # nbdkit waits for its clients to leave; they may be stopped after it.
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()


@pytest.fixture
def peers(sockdir: Path) -> Iterator[Callable[..., Peer]]:
    """``peers("nbdkit", *args)`` or ``peers("qemu-nbd", *args)`` -> a started Peer."""
    started: list[Peer] = []

    def start(kind: str, *args: str, name: str = "") -> Peer:
        sock = sockdir / f"{kind}{len(started)}.sock"
        pidfile: Path | None = None
        if kind == "nbdkit":
            pidfile = sockdir / f"{kind}{len(started)}.pid"
            argv = ["nbdkit", "-f", "-U", str(sock), "-P", str(pidfile), *args]
        elif kind == "qemu-nbd":
            argv = ["qemu-nbd", "-k", str(sock), *(["-x", name] if name else []), *args]
        else:
            raise ValueError(kind)
        peer = Peer(argv, sock, pidfile)
        started.append(peer)
        return peer

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def exported(start_target: Callable[..., Target], sockdir: Path) -> tuple[Target, str]:
    """A fresh target of its own with Malloc0 (16 MiB, 512) on a Unix socket."""
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 32768, "block_size": 512})
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0",
                                   "nbd_device": unix_uri("Malloc0", sockdir / "nbd.sock")})
    return t, uri




os.environ.setdefault("LIBNBD_DEBUG", "0")
