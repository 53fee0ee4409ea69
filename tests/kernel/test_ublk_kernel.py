"""Host side of the ublk kernel tests: one VM boot runs the whole guest group
(``tests/kernel/guest/test_ublk.py``) and the result is its pytest exit code and counts."""

from __future__ import annotations

import pytest

from .conftest import KernelVM

GUEST_TIMEOUT = 560.0


@pytest.mark.timeout(620)
def test_ublk_in_vm(kernel_vm: KernelVM) -> None:
    result = kernel_vm.pytest("-v", "-p", "no:cacheprovider", "--timeout", "240",
                              "tests/kernel/guest/test_ublk.py", timeout=GUEST_TIMEOUT)
    result.assert_ok()
