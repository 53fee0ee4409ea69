"""pybdev.uring imports and explains itself everywhere, including where it cannot work.

These tests run whether or not io_uring works on this machine: they simulate the missing
pieces in a child interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pybdev import uring

ROOT = Path(__file__).resolve().parents[2]

# Prints what pybdev.uring reports, after an optional line of sabotage.
CHILD = """
import json, sys
{prelude}
import pybdev.uring as u
report = {{"available": u.available(), "reason": u.unavailable_reason()}}
try:
    u.Ring(4)
    report["ring"] = "created"
except u.UringUnavailableError as exc:
    report["ring"] = "UringUnavailableError: " + str(exc)
print(json.dumps(report))
"""


def run_child(prelude: str = "", **env: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(prelude=prelude)],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_reason_is_consistent_with_available() -> None:
    reason = uring.unavailable_reason()
    assert uring.available() is (reason is None)
    assert reason is None or (isinstance(reason, str) and reason)


def test_import_does_not_load_cffi() -> None:
    code = "import sys, pybdev.uring; print('cffi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_without_cffi() -> None:
    report = run_child("sys.modules['cffi'] = None  # as if cffi were not installed")
    assert report["available"] is False
    assert "cffi" in str(report["reason"])
    assert str(report["ring"]).startswith("UringUnavailableError: cffi")


def test_disabled_by_environment() -> None:
    report = run_child(PYBDEV_URING_DISABLE="1")
    assert report["available"] is False
    assert "PYBDEV_URING_DISABLE" in str(report["reason"])
    assert str(report["ring"]).startswith("UringUnavailableError")


def test_syscall_refused_is_explained() -> None:
    # Make io_uring_setup fail as a seccomp filter would (ENOSYS), without a filter:
    # swap the loaded syscall() for one that refuses syscall 425.
    prelude = """
import errno
from pybdev.uring import _native
real = _native.load()
class Lib:
    def __init__(self, lib): self._lib = lib
    def __getattr__(self, name): return getattr(self._lib, name)
    def syscall(self, nr, *args):
        if nr == 425:
            real.ffi.errno = errno.ENOSYS
            return -1
        return self._lib.syscall(nr, *args)
patched = _native.Native(ffi=real.ffi, lib=Lib(real.lib))
_native.load = lambda: patched
"""
    report = run_child(prelude)
    assert report["available"] is False
    assert "ENOSYS" in str(report["reason"])
    assert "seccomp" in str(report["reason"])
