"""Host side of the ublk kernel tests: two VM boots run the guest groups of
``tests/kernel/guest/test_ublk.py`` (one boot for everything took ~450 s under emulation on a
loaded 2-core machine, too close to the harness budget); the result is the guest pytest
exit code and counts."""

from __future__ import annotations

import pytest

from .conftest import KernelVM

GUEST_TIMEOUT = 680.0
GUEST_FILE = "tests/kernel/guest/test_ublk.py"
GROUPS = {
    "devices-and-data": "create_ublk or create_multi_ublk or data_ or mkfs or hot_remove",
    "recovery-config-errors": "kill_and_recover or config_round_trip or bad_input "
                              "or event_loop_path",
}


@pytest.mark.timeout(740)
@pytest.mark.parametrize("group", list(GROUPS))
def test_ublk_in_vm(kernel_vm: KernelVM, group: str) -> None:
    result = kernel_vm.pytest("-v", "-p", "no:cacheprovider", "--timeout", "240",
                              "-k", GROUPS[group], GUEST_FILE, timeout=GUEST_TIMEOUT)
    result.assert_ok()
