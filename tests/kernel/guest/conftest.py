"""Guest-side kernel tests live in this folder and run only inside the kernel VM, started
by a host-side test through ``tests/kernel/vm.py`` (``run_guest_pytest``). On the host they
are collected but skipped, so a plain ``pytest`` run never counts them as passed. The VM's
init sets ``PYBDEV_IN_VM=1``. Modules here must still import on the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Target

from ..vm import GUEST_SKIP_REASON, IN_VM

GUEST_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    skip = pytest.mark.skip(reason=GUEST_SKIP_REASON)
    # This hook sees the whole session's items, not only this folder's.
    for item in items:
        if item.path.is_relative_to(GUEST_DIR):
            item.add_marker(skip)


@pytest.fixture
def targets() -> Iterator[list[Target]]:
    """Targets a test started (``blockdev.start``); stopped, and their logs shown, after."""
    started: list[Target] = []
    yield started
    for t in started:
        if t.proc.poll() is None:
            t.stop(timeout=60)
        # Shown by pytest only when the test failed.
        print(f"---- log of target {t.sock.name} ----\n{t.log()}")
