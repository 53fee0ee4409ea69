"""Self-test of the kernel-VM harness (tests/kernel/vm.py). Three boots, each ~10-20 s under
software emulation: one runs a guest pytest file with all the environment checks, one a
failing command, one a command that hangs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from . import vm
from .conftest import KernelVM

# Written into the share by the host test and run there by the guest's pytest: exercises
# run_guest_pytest end to end without a file in tests/kernel/guest.
GUEST_CHECKS = """
import os
import stat
import subprocess
import sys
from pathlib import Path

def mounts():
    return {line.split()[1]: line.split()[2] for line in open("/proc/mounts")}

def test_nbd_with_module_parameter():
    for i in range(8):
        assert stat.S_ISBLK(os.stat(f"/dev/nbd{i}").st_mode), i
    assert not os.path.exists("/dev/nbd8")  # nbd.nbds_max=8 reached the module
    assert Path("/sys/module/nbd/parameters/nbds_max").read_text().strip() == "8"

def test_ublk():
    assert stat.S_ISCHR(os.stat("/dev/ublk-control").st_mode)
    assert Path("/sys/module/ublk_drv/parameters/ublks_max").read_text().strip() == "64"

def test_kernel_and_process():
    assert os.uname().release == os.environ["SELFTEST_KVER"]
    assert os.geteuid() == 0
    assert os.environ["PYBDEV_IN_VM"] == "1"
    assert os.getcwd() == os.environ["SELFTEST_REPO"]
    assert sys.prefix == os.path.join(os.environ["SELFTEST_REPO"], ".venv")
    assert sys.dont_write_bytecode

def test_filesystems():
    m = mounts()
    assert m["/"] == "overlay"
    assert m["/tmp"] == "tmpfs" and m["/dev/shm"] == "tmpfs"
    assert m[os.environ["PYBDEV_VM_SHARE"]] == "9p"
    # Lands in the overlay's tmpfs; the host test checks it never reaches the host.
    Path(os.environ["SELFTEST_MARKER"]).write_text("guest\\n")
    Path(os.environ["PYBDEV_VM_SHARE"], "from-guest.txt").write_text("hello from the guest\\n")

def test_other_modules():
    subprocess.run(["modprobe", "loop"], check=True)
    assert Path("/sys/module/loop").is_dir()
    # The kernel's own auto-load: mount fails (no block device) after loading ext4.
    os.mkdir("/tmp/mnt")
    subprocess.run(["mount", "-t", "ext4", "/dev/null", "/tmp/mnt"], check=False)
    assert "\\text4\\n" in Path("/proc/filesystems").read_text()
"""
GUEST_TESTS = 5


def test_guest_environment(kernel_vm: KernelVM, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / "test_guest_env.py").write_text(GUEST_CHECKS)
    marker = vm.REPO_ROOT / f".vm-selftest-{uuid.uuid4().hex}"
    result = kernel_vm.pytest(
        "-v",
        f"{vm.GUEST_SHARE}/test_guest_env.py",
        share_dir=share,
        kernel_args=["nbd.nbds_max=8"],
        env={
            "SELFTEST_KVER": kernel_vm.image.kernel_version,
            "SELFTEST_REPO": str(vm.REPO_ROOT),
            "SELFTEST_MARKER": str(marker),
        },
    )
    result.assert_ok()
    assert result.pytest is not None and result.pytest.passed == GUEST_TESTS, result.describe()
    assert (share / "from-guest.txt").read_text() == "hello from the guest\n"
    assert not marker.exists(), "a write in the guest reached the host's repository"
    assert not (share / "__pycache__").exists(), "the guest wrote bytecode"
    assert "pybdev-vm: running the command" in result.console


def test_failing_command_is_reported(kernel_vm: KernelVM) -> None:
    result = kernel_vm.run("echo to-stdout; echo to-stderr >&2; exit 3", timeout=120)
    assert result.returncode == 3, result.describe()
    assert not result.ok and not result.timed_out
    assert "to-stdout" in result.output and "to-stderr" in result.output
    with pytest.raises(AssertionError, match="exit code 3") as info:
        result.assert_ok()
    assert "to-stderr" in str(info.value) and "guest console" in str(info.value)


# Generous: on a busy machine the boot alone can take half a minute.
HANG_TIMEOUT = 60.0


def test_hanging_guest_is_killed_at_timeout(kernel_vm: KernelVM) -> None:
    result = kernel_vm.run("echo started; sleep 1000", timeout=HANG_TIMEOUT)
    assert result.timed_out and result.returncode is None and not result.ok, result.describe()
    assert HANG_TIMEOUT <= result.duration < HANG_TIMEOUT + 15
    assert "started" in result.output  # written before the hang, kept after the kill
    # The guest's own dump shortly before the kill: the clue for a real hang.
    assert "timeout is near" in result.console, result.describe()
    assert "sysrq: Show Blocked State" in result.console, result.describe()
    with pytest.raises(AssertionError, match="killed at the 60 s timeout"):
        result.assert_ok()


def test_guest_pytest_that_skipped_everything_does_not_pass() -> None:
    # No boot: assert_ok's rules on a made-up result.
    def result(passed: int, skipped: int) -> vm.VMResult:
        counts = vm.PytestCounts(tests=passed + skipped, failures=0, errors=0, skipped=skipped)
        return vm.VMResult("pytest", 0, "", "", False, 1.0, 10.0, pytest=counts)

    result(1, 0).assert_ok()
    result(1, 1).assert_ok(allow_skipped=True)
    with pytest.raises(AssertionError, match="passed no test"):
        result(0, 2).assert_ok(allow_skipped=True)
    with pytest.raises(AssertionError, match="skipped 1 test"):
        result(1, 1).assert_ok()
