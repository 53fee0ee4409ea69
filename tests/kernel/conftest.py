"""pytest glue for kernel tests: every test under tests/kernel gets the ``kernel`` marker
(so ``-m "not kernel"`` leaves them out), and host-side ones skip, with the reason, where no
VM can run (no qemu, no busybox-static, no kernel package). ``PYBDEV_VM_REQUIRED=1`` (CI)
turns that skip into a failure. The ``kernel_vm`` fixture runs commands in the VM."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from . import vm

# Guest-side files run only inside the VM, through the host-side tests that boot it; a host
# run does not collect them at all (a file named on the command line is still skipped by
# tests/kernel/guest/conftest.py).
collect_ignore_glob = [] if vm.IN_VM else ["guest/*"]

KERNEL_DIR = Path(__file__).parent
GUEST_DIR = KERNEL_DIR / "guest"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items, not only this folder's.
    for item in items:
        if item.path.is_relative_to(KERNEL_DIR):
            item.add_marker(pytest.mark.kernel)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("PYBDEV_VM_REQUIRED") == "1":
        pytest.fail(f"PYBDEV_VM_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _kernel_vm_gate(request: pytest.FixtureRequest) -> None:
    """Skip host-side kernel tests where no VM can run, and inside the VM itself."""
    node = request.node
    if node.get_closest_marker("kernel") is None or node.path.is_relative_to(GUEST_DIR):
        return
    if vm.IN_VM:
        pytest.skip("host-side kernel test: already inside the kernel VM")
    reason = vm.unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)


@dataclasses.dataclass(frozen=True)
class KernelVM:
    """The prepared guest; each call is one boot (~20 s: group checks per call)."""

    image: vm.GuestImage

    def run(
        self,
        command: str,
        *,
        timeout: float = vm.DEFAULT_TIMEOUT,
        env: Mapping[str, str] | None = None,
        cwd: str | Path = vm.REPO_ROOT,
        share_dir: Path | None = None,
        kernel_args: Sequence[str] = (),
    ) -> vm.VMResult:
        """:func:`vm.run_in_vm` on this image."""
        return vm.run_in_vm(
            command,
            timeout=timeout,
            env=env,
            cwd=cwd,
            share_dir=share_dir,
            kernel_args=kernel_args,
            image=self.image,
        )

    def pytest(
        self,
        *pytest_args: str,
        timeout: float = vm.PYTEST_TIMEOUT,
        env: Mapping[str, str] | None = None,
        share_dir: Path | None = None,
        kernel_args: Sequence[str] = (),
    ) -> vm.VMResult:
        """:func:`vm.run_guest_pytest` on this image."""
        return vm.run_guest_pytest(
            *pytest_args,
            timeout=timeout,
            env=env,
            share_dir=share_dir,
            kernel_args=kernel_args,
            image=self.image,
        )


@pytest.fixture(scope="session")
def kernel_vm() -> KernelVM:
    """The kernel VM, prepared once per session; skips (or fails, see above) without one."""
    reason = vm.unavailable_reason()
    if reason is not None:
        _skip_or_fail(reason)
    return KernelVM(vm.default_image())
