"""pybdev's ``rpc.py`` lvol commands send exactly what SPDK's ``spdk-rpc`` sends (dry run)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import RPC_PY, SPDK_RPC

COMMANDS = [
    ["bdev_lvol_create_lvstore", "Malloc0", "lvs"],
    ["bdev_lvol_create_lvstore", "Malloc0", "lvs", "-c", "8192", "--clear-method", "none",
     "-m", "300", "-s", "8192"],
    ["bdev_lvol_rename_lvstore", "lvs", "lvs2"],
    ["bdev_lvol_grow_lvstore", "-l", "lvs"],
    ["bdev_lvol_grow_lvstore", "-u", "1b4c6bcb-7c9d-4f6e-9a8a-1c2b3d4e5f60"],
    ["bdev_lvol_create", "vol", "10"],
    ["bdev_lvol_create", "-l", "lvs", "-t", "-c", "write_zeroes", "vol", "10"],
    ["bdev_lvol_create", "-u", "1b4c6bcb-7c9d-4f6e-9a8a-1c2b3d4e5f60", "vol", "0"],
    ["bdev_lvol_snapshot", "lvs/vol", "snap"],
    ["bdev_lvol_clone", "lvs/snap", "clone"],
    ["bdev_lvol_rename", "lvs/vol", "vol2"],
    ["bdev_lvol_inflate", "lvs/vol"],
    ["bdev_lvol_decouple_parent", "lvs/vol"],
    ["bdev_lvol_resize", "lvs/vol", "20"],
    ["bdev_lvol_set_read_only", "lvs/vol"],
    ["bdev_lvol_delete", "lvs/vol"],
    ["bdev_lvol_set_parent", "lvs/vol", "lvs/snap"],
    ["bdev_lvol_set_parent_bdev", "lvs/vol", "Malloc1"],
    ["bdev_lvol_clone_bdev", "Malloc1", "lvs", "eclone"],
    ["bdev_lvol_start_shallow_copy", "lvs/snap", "Malloc1"],
    ["bdev_lvol_check_shallow_copy", "3"],
    ["bdev_lvol_delete_lvstore", "-l", "lvs"],
    ["bdev_lvol_delete_lvstore", "-u", "1b4c6bcb-7c9d-4f6e-9a8a-1c2b3d4e5f60"],
    ["bdev_lvol_get_lvstores"],
    ["bdev_lvol_get_lvstores", "-l", "lvs"],
    ["bdev_lvol_get_lvols"],
    ["bdev_lvol_get_lvols", "-l", "lvs"],
    ["bdev_lvol_get_lvols", "-u", "1b4c6bcb-7c9d-4f6e-9a8a-1c2b3d4e5f60"],
]


def dry_run(client: list[str], args: list[str]) -> object:
    res = subprocess.run([*client, "--dry-run", *args], capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(res.stdout.split("Request:", 1)[1])


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_same_request_as_spdk(args: list[str]) -> None:
    assert dry_run([sys.executable, str(RPC_PY)], args) == dry_run([str(SPDK_RPC)], args)
