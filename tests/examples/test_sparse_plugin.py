"""The example plugin (examples/pybdev-sparse), installed into the venv as a user would.

Installed for this module and uninstalled after it, so the rest of the suite sees the
built-ins only. Driven with scripts/rpc.py (its commands come from the plugin's
``pybdev.cli`` entry point), through an NBD export with qemu-io and nbdinfo, and through a
save_config -> --json round trip.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Target
from tests.nbd.conftest import need, run, unix_uri

EXAMPLE = ROOT / "examples" / "pybdev-sparse"


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True, timeout=300,
                   capture_output=True)


@pytest.fixture(scope="module", autouse=True)
def installed() -> Iterator[None]:
    # Built from a copy, so the source tree gets no build/ or egg-info; no build isolation,
    # so nothing is downloaded (setuptools and wheel come with the test extra).
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pybdev-sparse"
        shutil.copytree(EXAMPLE, src)
        pip("install", "--no-deps", "--no-build-isolation", str(src))
    try:
        yield
    finally:
        pip("uninstall", "-y", "pybdev-sparse")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pbsparse", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_rpc_py_drives_the_plugin(target: Target) -> None:
    assert target.cli("bdev_sparse_create", "Sparse0", "2048", "4096").stdout.strip() == "Sparse0"
    [info] = target.rpc("bdev_get_bdevs", {"name": "Sparse0"})
    assert (info["product_name"], info["num_blocks"], info["block_size"]) == (
        "Sparse RAM disk", 2048, 4096)
    assert info["driver_specific"] == {"sparse": {"blocks_stored": 0}}
    stats = json.loads(target.cli("bdev_sparse_get_stats", "Sparse0").stdout)
    assert stats == {"blocks_stored": 0, "bytes_stored": 0}
    bad = target.cli("bdev_sparse_create", "Odd", "8", "1000", check=False)
    assert bad.returncode == 1 and "block_size a multiple of 512" in bad.stderr
    assert "bdev_sparse_create" in target.rpc("rpc_get_methods")
    target.cli("bdev_sparse_delete", "Sparse0")
    assert target.rpc("bdev_get_bdevs") == []


@need("qemu-io", "nbdinfo")
def test_io_through_an_nbd_export(target: Target, sockdir: Path) -> None:
    target.rpc("bdev_sparse_create", {"name": "Sparse0", "num_blocks": 8192, "block_size": 512})
    uri = target.rpc("nbd_start_disk", {"bdev_name": "Sparse0",
                                        "nbd_device": unix_uri("Sparse0", sockdir / "n.sock")})
    run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 1M 64k", uri])
    run(["qemu-io", "-f", "raw", "-c", "read -P 0xab 1M 64k", "-c", "read -P 0 0 1M", uri])
    stats = target.rpc("bdev_sparse_get_stats", {"name": "Sparse0"})
    assert stats["blocks_stored"] == 64 * 1024 // 512
    extents = json.loads(run(["nbdinfo", "--map", "--json", uri]).stdout)
    data = [(e["offset"], e["length"]) for e in extents if not e["type"] & 1]
    assert data == [(1 << 20, 64 * 1024)]


def test_save_config_round_trip(start_target: Callable[..., Target], tmp_path: Path) -> None:
    t = start_target()
    t.rpc("bdev_sparse_create", {"name": "Sparse0", "num_blocks": 64, "block_size": 4096})
    t.rpc("bdev_passthru_create", {"base_bdev_name": "Sparse0", "name": "SparsePT"})
    saved = t.cli("save_config").stdout
    assert '"method": "bdev_sparse_create"' in saved
    config = tmp_path / "config.json"
    config.write_text(saved)
    t.stop()
    again = start_target("--json", str(config))
    assert again.cli("save_config").stdout == saved
    names = {b["name"] for b in again.rpc("bdev_get_bdevs")}
    assert names == {"Sparse0", "SparsePT"}
