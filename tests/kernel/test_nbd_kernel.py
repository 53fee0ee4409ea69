"""Host half of the kernel NBD export tests: one VM boot runs
``tests/kernel/guest/test_nbd_kernel.py`` (start/stop, data, ext4, busy devices,
hot-remove, SIGKILL, config round trip, spdk-rpc) and the console is checked for hung
tasks, which a broken teardown leaves behind."""

from __future__ import annotations

import pytest

from .conftest import KernelVM

GUEST_FILE = "tests/kernel/guest/test_nbd_kernel.py"


@pytest.mark.timeout(480)  # above the VM timeout, so the harness reports first
def test_nbd_kernel_export(kernel_vm: KernelVM) -> None:
    result = kernel_vm.pytest("-v", "-x", GUEST_FILE, timeout=420)
    result.assert_ok()
    for bad in ("blocked for more than", "hung_task", "BUG:", "WARNING: CPU", "Oops"):
        assert bad not in result.console, f"{bad!r} in the guest console\n{result.describe()}"
