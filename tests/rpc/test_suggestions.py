""""Did you mean": a misspelt method gets suggestions, in the error's data and in rpc.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from tests.conftest import RPC_PY, Target


def test_unknown_method_suggests_close_names(target: Target) -> None:
    err = target.rpc_error("bdev_get_bdev")
    assert err == {"code": -32601, "message": "Method not found",
                   "data": {"did_you_mean": ["bdev_get_bdevs"]}}
    # Nothing close: SPDK's exact answer, no data member.
    assert target.rpc_error("frobnicate") == {"code": -32601, "message": "Method not found"}


def test_suggestions_respect_rpcs_allowed(start_target: Callable[..., Target]) -> None:
    t = start_target("--rpcs-allowed", "rpc_get_methods,spdk_get_version")
    assert t.rpc_error("bdev_get_bdev") == {"code": -32601, "message": "Method not found"}
    assert t.rpc_error("spdk_get_versions")["data"] == {"did_you_mean": ["spdk_get_version"]}


def test_rpc_py_suggests_a_command() -> None:
    res = subprocess.run([sys.executable, str(RPC_PY), "bdev_malloc_creat", "8", "512"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "unknown command 'bdev_malloc_creat'; did you mean bdev_malloc_create or" in res.stderr
