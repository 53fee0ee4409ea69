"""scripts/rpc.py against SPDK's own rpc.py (the pinned ``spdk`` package), command by command.

Every command both have must take the same arguments (option strings, destination, type,
choices, nargs, required, action) and send the same request for the same command line
(both in ``--dry-run``). A difference fails here unless it is one of the documented
extensions in ``bench/rpc_cli_parity.py``'s ACCEPTED (docs/decisions/rpc-py.md).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parity() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rpc_cli_parity",
                                                  ROOT / "bench" / "rpc_cli_parity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shared_command_takes_spdks_arguments(parity: ModuleType) -> None:
    drift, only_ours, _ = parity.compare()
    assert drift == {}, "rpc.py commands whose arguments differ from SPDK's:\n" + "\n".join(
        f"{name}: {'; '.join(problems)}" for name, problems in drift.items())
    # pybdev's own methods only: anything else would shadow an SPDK command.
    assert only_ours == ["bdev_lvol_check_lvstore", "bdev_nbd_create", "bdev_nbd_delete"]


def test_every_served_method_with_an_spdk_command_has_one(parity: ModuleType) -> None:
    assert parity.missing_commands() == []


def test_every_shared_command_sends_spdks_request(parity: ModuleType) -> None:
    drift, compared = parity.payload_drift()
    assert drift == {}, "\n".join(f"{name}: {text}" for name, text in drift.items())
    assert compared >= 55  # the comparison really ran (57 commands when written)


def test_the_comparison_sees_a_difference(parity: ModuleType) -> None:
    ours, theirs = argparse.ArgumentParser(), argparse.ArgumentParser()
    ours.add_argument("sig_name")
    theirs.add_argument("sig_name", choices=["SIGINT", "SIGTERM"])
    problems = parity.diff(parity.signature(ours), parity.signature(theirs))
    assert problems and problems[0][0] == "#0"
