"""Shared fixtures: a real pybdev target started as a subprocess, and its clients.

``target`` starts ``python -m pybdev`` on a private socket; ``start_target`` starts more
(with extra options, or several at once). Each offers ``rpc()`` (pybdev's client),
``cli()`` (scripts/rpc.py as a user runs it) and ``spdk()`` (SPDK's own ``spdk-rpc``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev.rpc.client import JsonRpcException, RpcClient

ROOT = Path(__file__).resolve().parents[1]
RPC_PY = ROOT / "scripts" / "rpc.py"
SPDK_RPC = Path(sys.executable).parent / "spdk-rpc"


class Target:
    """A running target process and handy ways to talk to it."""

    def __init__(self, sock: Path, args: list[str], log: Path) -> None:
        self.sock = sock
        self.log_path = log
        self.args = args
        self._log = open(log, "ab")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pybdev", "-r", str(sock), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT,
        )

    def wait_ready(self, timeout: float = 60) -> Target:
        """Wait until the target answers (or died, which fails with its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"target exited {self.proc.returncode}:\n{self.log()}")
            if self.sock.exists():
                with contextlib.suppress(OSError, JsonRpcException):
                    self.rpc("rpc_get_methods")
                    return self
            time.sleep(0.05)
        raise AssertionError(f"target did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 30) -> RpcClient:
        return RpcClient(str(self.sock), timeout=timeout)

    def rpc(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        with self.client(timeout) as c:
            return c.call(method, params)

    def rpc_error(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The error object of a call that must fail."""
        with self.client() as c, pytest.raises(JsonRpcException) as info:
            c.call(method, params)
        assert info.value.error is not None, info.value.message
        return info.value.error

    def raw(self, request: Any) -> Any:
        """Send ``request`` verbatim (any JSON value); the decoded response."""
        with self.client() as c:
            c.send_raw(request)
            return c.recv_value()

    def _run(self, argv: list[str], stdin: str | None,
             check: bool) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60,
                             cwd=ROOT)
        if check and res.returncode != 0:
            raise AssertionError(f"{argv} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def cli(self, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([sys.executable, str(RPC_PY), "-s", str(self.sock), *args], stdin, check)

    def spdk(self, *args: str, stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(SPDK_RPC), "-s", str(self.sock), *args], stdin, check)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"target did not stop on {sig}:\n{self.log()}") from None
        self._log.close()
        return self.proc.returncode


def wait_until(predicate: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.05)


def unix_listening(path: Path | str) -> bool:
    """Whether a socket bound at ``path`` is listening (``listen()`` done), without
    connecting: a probe connection would use up a one-client server such as qemu-nbd.

    The socket file appears at ``bind()``, before ``listen()``: a file that exists is no
    proof that a connection will be accepted. /proc/net/unix flags a listening socket
    with __SO_ACCEPTCON (0x10000).
    """
    wanted = os.fsdecode(os.path.abspath(path))
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split(None, 7)
            if len(fields) == 8 and fields[7].rstrip("\n") == wanted \
                    and int(fields[3], 16) & 0x10000:
                return True
    return False


@pytest.fixture
def start_target(tmp_path: Path) -> Iterator[Callable[..., Target]]:
    """``start_target(*args, sock=None, wait=True)`` -> a started Target, stopped at teardown."""
    started: list[Target] = []

    def start(*args: str, sock: Path | None = None, wait: bool = True) -> Target:
        n = len(started)
        t = Target(sock or tmp_path / f"spdk{n}.sock", list(args), tmp_path / f"target{n}.log")
        started.append(t)
        return t.wait_ready() if wait else t

    yield start
    for t in started:
        if t.proc.poll() is None:
            t.stop()
        else:
            t._log.close()


@pytest.fixture
def target(start_target: Callable[..., Target]) -> Target:
    return start_target()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep HTTP clients on loopback whatever the environment says.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
