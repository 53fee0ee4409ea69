"""Host half of the kernel NBD export tests: two VM boots run
``tests/kernel/guest/test_nbd_kernel.py`` (the first: start/stop, data, ext4, busy devices,
spdk-rpc, several sockets per device, ext4 on an lvol with a snapshot and its clone; the
second: hot-remove, SIGKILL, config round trip, SPDK's nbd_with_lvol_verify), and each
guest console is checked for hung tasks, which a broken teardown leaves behind."""

from __future__ import annotations

import pytest

from .conftest import KernelVM

GUEST_FILE = "tests/kernel/guest/test_nbd_kernel.py"
GROUPS = {
    "basics": "start_data_stop_busy or auto_pick or several_connections or ext4 or lvol_fs",
    "failures": "hot_remove or sigkill or config_round_trip or nbd_with_lvol",
}


@pytest.mark.timeout(700)  # above the VM timeout, so the harness reports first
@pytest.mark.parametrize("group", sorted(GROUPS))
def test_nbd_kernel_export(kernel_vm: KernelVM, group: str) -> None:
    result = kernel_vm.pytest("-v", "-x", GUEST_FILE, "-k", GROUPS[group], timeout=640)
    result.assert_ok()
    for bad in ("blocked for more than", "hung_task", "BUG:", "WARNING: CPU", "Oops"):
        assert bad not in result.console, f"{bad!r} in the guest console\n{result.describe()}"
