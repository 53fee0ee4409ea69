"""Host side of the NVMe/TCP target's kernel test: one VM boot runs
``tests/kernel/guest/test_nvmf_kernel.py`` (the Linux initiator and nvme-cli against
pybdev's target); the result is the guest pytest exit code and counts."""

from __future__ import annotations

import pytest

from .conftest import KernelVM

GUEST_TIMEOUT = 800.0


@pytest.mark.timeout(860)
def test_nvmf_in_vm(kernel_vm: KernelVM) -> None:
    result = kernel_vm.pytest("-v", "-p", "no:cacheprovider", "--timeout", "400",
                              "tests/kernel/guest/test_nvmf_kernel.py", timeout=GUEST_TIMEOUT)
    result.assert_ok()
