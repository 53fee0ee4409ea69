"""Host side of the NVMe/TCP target's kernel test: one VM boot runs
``tests/kernel/guest/test_nvmf_kernel.py`` (the Linux initiator and nvme-cli against
pybdev's target, then pybdev's initiator bdev against the kernel's nvmet-tcp target); the
result is the guest pytest exit code and counts."""

from __future__ import annotations

import pytest

from .conftest import KernelVM

GUEST_TIMEOUT = 1100.0


@pytest.mark.timeout(1160)
def test_nvmf_in_vm(kernel_vm: KernelVM) -> None:
    result = kernel_vm.pytest("-v", "-p", "no:cacheprovider", "--timeout", "400",
                              "tests/kernel/guest/test_nvmf_kernel.py", timeout=GUEST_TIMEOUT)
    result.assert_ok()
