"""The rbd bdev in real pybdev targets against the session's throwaway cluster.

Data goes in and out through real clients: qemu-io over pybdev's NBD network export on
one side, the ``rbd`` CLI (``export``, ``import``) on the other.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev import ceph
from tests.conftest import Target, wait_until

from .cluster import CephCluster

_reason = ceph.unavailable_reason()
_why = (f"librbd not loadable: {_reason}" if _reason is not None
        else "needs qemu-io (qemu-utils)" if shutil.which("qemu-io") is None else "")
pytestmark = [pytest.mark.ceph, pytest.mark.timeout(180)]
needs_cluster = pytest.mark.skipif(bool(_why), reason=_why)

MiB = 1 << 20
SIZE = 64 * MiB


def run(argv: list[str], timeout: float = 60, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{argv} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def qemu_io(uri: str, *cmds: str, check: bool = True) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    res = run([*argv, uri], check=check)
    out = res.stdout + res.stderr
    if check:
        assert "Pattern verification failed" not in out and "error" not in out.lower(), out
    return out




@pytest.fixture
def images(ceph_cluster: CephCluster) -> Iterator[Callable[..., str]]:
    """``make(size=SIZE)`` -> a fresh image name in pool rbd; all removed afterwards."""
    made: list[str] = []

    def make(size: int = SIZE) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        ceph_cluster.rbd("create", "--size", f"{size}B", f"{ceph_cluster.pool}/{name}")
        made.append(name)
        return name

    yield make
    if made:
        # A test may have stopped the OSD: removing an image needs it back and serving.
        ceph_cluster.wait_serving()
    for name in made:
        ceph_cluster.rbd("rm", "--no-progress", f"{ceph_cluster.pool}/{name}", check=False)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Unix socket paths must be short; pytest's tmp_path may not be.
    d = Path(f"/tmp/pybdev-rbd-{uuid.uuid4().hex[:8]}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def register(t: Target, cc: CephCluster, name: str = "c1") -> None:
    assert t.rpc("bdev_rbd_register_cluster", {
        "name": name, "user_id": cc.client_id, "config_param": cc.client_conf()}) == name


def export(t: Target, bdev: str, sockdir: Path) -> str:
    uri = f"nbd+unix:///{bdev}?socket={sockdir / (bdev + '.sock')}"
    t.rpc("nbd_start_disk", {"bdev_name": bdev, "nbd_device": uri})
    return uri


def get_bdev(t: Target, name: str) -> dict[str, Any]:
    return dict(t.rpc("bdev_get_bdevs", {"name": name})[0])


def no_secret(t: Target, cc: CephCluster, *texts: str) -> None:
    for text in (t.log(), *texts):
        assert cc.client_key not in text


@needs_cluster
def test_create_io_passthru_delete(start_target: Callable[..., Target], ceph_cluster: CephCluster,
                                   images: Callable[..., str], sockdir: Path,
                                   tmp_path: Path) -> None:
    cc = ceph_cluster
    t = start_target()
    img = images()
    register(t, cc)
    assert t.rpc("bdev_rbd_create", {"name": "Rbd0", "pool_name": cc.pool, "rbd_name": img,
                                     "block_size": 512, "cluster_name": "c1"}) == "Rbd0"
    info = get_bdev(t, "Rbd0")
    assert info["product_name"] == "Ceph Rbd Disk"
    assert info["block_size"] == 512 and info["num_blocks"] == SIZE // 512
    rbd = info["driver_specific"]["rbd"]
    assert rbd["pool_name"] == cc.pool and rbd["rbd_name"] == img
    assert rbd["cluster_name"] == "c1" and rbd["user_id"] == cc.client_id
    assert rbd["config_param"] == {"mon_host": cc.mon_host, "key": "<redacted>"}
    io = info["supported_io_types"]
    assert all(io[k] for k in ("read", "write", "unmap", "flush", "reset", "write_zeroes"))
    clusters = t.rpc("bdev_rbd_get_clusters_info")
    assert clusters == [{"cluster_name": "c1", "user_id": cc.client_id,
                         "config_param": {"mon_host": cc.mon_host, "key": "<redacted>"}}]
    assert t.rpc("bdev_rbd_get_clusters_info", {"name": "c1"}) == clusters[0]
    cli_out = t.cli("bdev_rbd_get_clusters_info").stdout + t.cli("bdev_get_bdevs").stdout

    # Write/read/compare over the NBD network export, including discard and zeroes.
    uri = export(t, "Rbd0", sockdir)
    qemu_io(uri, "write -P 0xa5 1M 3M", "read -P 0xa5 1M 3M", "write -P 0x11 0 4k",
            "write -z 8M 1M", "read -P 0 8M 1M", "discard 16M 4M", "flush")
    # The rbd CLI sees what the target wrote.
    out = tmp_path / "export.raw"
    cc.rbd("export", "--no-progress", f"{cc.pool}/{img}", str(out))
    data = out.read_bytes()
    assert data[:4096] == b"\x11" * 4096 and data[1 * MiB:4 * MiB] == b"\xa5" * (3 * MiB)

    # A passthru on top sees the same data and claims the rbd bdev (once the export, which
    # holds it open for writing, is gone: a claim over another writer is refused).
    t.rpc("nbd_stop_disk", {"nbd_device": uri})
    t.rpc("bdev_passthru_create", {"base_bdev_name": "Rbd0", "name": "PT0"})
    assert get_bdev(t, "Rbd0")["claimed"] is True
    qemu_io(export(t, "PT0", sockdir), "read -P 0xa5 1M 3M", "write -P 0x77 32M 1M")

    # The other way round: an image filled by `rbd import` read through the target.
    src = tmp_path / "src.raw"
    src.write_bytes(b"\x5a" * (8 * MiB))
    img2 = f"t-{uuid.uuid4().hex[:12]}"
    cc.rbd("import", "--no-progress", str(src), f"{cc.pool}/{img2}")
    try:
        t.rpc("bdev_rbd_create", {"name": "Rbd1", "pool_name": cc.pool, "rbd_name": img2,
                                  "block_size": 4096, "cluster_name": "c1"})
        assert get_bdev(t, "Rbd1")["num_blocks"] == 8 * MiB // 4096
        qemu_io(export(t, "Rbd1", sockdir), "read -P 0x5a 0 8M")
        assert t.rpc("bdev_rbd_delete", {"name": "Rbd1"}) is True
    finally:
        cc.rbd("rm", "--no-progress", f"{cc.pool}/{img2}", check=False)

    # The cluster cannot go while a bdev uses it; deleting the base takes the stack down.
    err = t.rpc_error("bdev_rbd_unregister_cluster", {"name": "c1"})
    assert err["code"] == -1 and "Rbd0" in err["message"]
    assert t.rpc("bdev_rbd_delete", {"name": "Rbd0"}) is True
    assert t.rpc("bdev_get_bdevs") == []
    assert t.rpc_error("bdev_rbd_delete", {"name": "Rbd0"})["code"] == -19
    assert t.rpc("bdev_rbd_unregister_cluster", {"name": "c1"}) is True
    assert t.rpc_error("bdev_rbd_get_clusters_info")["code"] == -2
    out.unlink()
    cc.rbd("export", "--no-progress", f"{cc.pool}/{img}", str(out))
    assert out.read_bytes()[32 * MiB:33 * MiB] == b"\x77" * MiB
    no_secret(t, cc, cli_out)


@needs_cluster
def test_resize_by_rpc_and_by_rbd_cli(start_target: Callable[..., Target],
                                      ceph_cluster: CephCluster,
                                      images: Callable[..., str]) -> None:
    cc = ceph_cluster
    t = start_target()
    img = images()
    # A bdev with its own connection (config map) rather than a registered cluster.
    t.rpc("bdev_rbd_create", {"name": "Rbd0", "pool_name": cc.pool, "rbd_name": img,
                              "block_size": 4096, "user_id": cc.client_id,
                              "config": cc.client_conf()})
    rbd = get_bdev(t, "Rbd0")["driver_specific"]["rbd"]
    assert rbd["config"] == {"mon_host": cc.mon_host, "key": "<redacted>"}
    assert t.spdk("bdev_rbd_resize", "Rbd0", "96").stdout.strip() == "true"
    assert get_bdev(t, "Rbd0")["num_blocks"] == 96 * MiB // 4096
    assert json.loads(cc.rbd("info", "--format", "json", f"{cc.pool}/{img}"))["size"] \
        == 96 * MiB
    # Growing the image behind the target's back: the header watch resizes the bdev.
    cc.rbd("resize", "--no-progress", "--size", "128M", f"{cc.pool}/{img}")
    wait_until(lambda: get_bdev(t, "Rbd0")["num_blocks"] == 128 * MiB // 4096,
               what="bdev resized after `rbd resize`")
    err = t.rpc_error("bdev_rbd_resize", {"name": "Rbd0", "new_size": 64})
    assert err["code"] == -22 and "smaller" in err["message"]
    assert t.rpc_error("bdev_rbd_resize", {"name": "nope", "new_size": 64})["code"] == -19
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512})
    assert t.rpc_error("bdev_rbd_resize", {"name": "M0", "new_size": 64})["code"] == -22
    no_secret(t, cc)


@needs_cluster
def test_config_round_trip(start_target: Callable[..., Target], ceph_cluster: CephCluster,
                           images: Callable[..., str], tmp_path: Path) -> None:
    cc = ceph_cluster
    img_a, img_b = images(), images(32 * MiB)
    key_file = tmp_path / "client.keyring"
    key_file.write_text(f"[{cc.client_name}]\n\tkey = {cc.client_key}\n")
    t = start_target()
    # Keys through a key file: the saved config then holds no secret at all.
    t.cli("bdev_rbd_register_cluster", "c1", "--user", cc.client_id,
          "--config-param", f"mon_host={cc.mon_host}", "--key-file", str(key_file))
    t.cli("bdev_rbd_create", "-b", "RbdA", "-c", "c1", cc.pool, img_a, "512")
    t.spdk("bdev_rbd_create", "-b", "RbdB", "-c", "c1", "-u",
           "3f4c9f7e-1b7e-4d8e-9a55-7d1d7f3b2a10", cc.pool, img_b, "4096")
    t.rpc("bdev_passthru_create", {"base_bdev_name": "RbdB", "name": "PT"})
    saved = json.loads(t.cli("save_config").stdout)
    bdev_cfg = next(s["config"] for s in saved["subsystems"] if s["subsystem"] == "bdev")
    methods = [e["method"] for e in bdev_cfg]
    assert methods.index("bdev_rbd_register_cluster") < methods.index("bdev_rbd_create")
    reg = bdev_cfg[methods.index("bdev_rbd_register_cluster")]["params"]
    assert reg == {"name": "c1", "user_id": cc.client_id,
                   "config_param": {"mon_host": cc.mon_host}, "key_file": str(key_file)}
    creates = [e["params"] for e in bdev_cfg if e["method"] == "bdev_rbd_create"]
    assert creates[1] == {"name": "RbdB", "pool_name": cc.pool, "rbd_name": img_b,
                          "block_size": 4096, "cluster_name": "c1",
                          "uuid": "3f4c9f7e-1b7e-4d8e-9a55-7d1d7f3b2a10"}
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(saved))
    t.stop()
    t2 = start_target("--json", str(cfg_file))
    assert json.loads(t2.cli("save_config").stdout) == saved
    assert {b["name"] for b in t2.rpc("bdev_get_bdevs")} == {"RbdA", "RbdB", "PT"}
    assert cc.client_key not in json.dumps(saved)


@needs_cluster
def test_two_targets_one_cluster(start_target: Callable[..., Target],
                                 ceph_cluster: CephCluster, images: Callable[..., str],
                                 sockdir: Path, tmp_path: Path) -> None:
    cc = ceph_cluster
    ta, tb = start_target(), start_target()
    imgs = {"a": images(), "b": images()}
    uris = {}
    for (k, t), pattern in zip({"a": ta, "b": tb}.items(), ("0xaa", "0xbb"), strict=True):
        register(t, cc)
        t.rpc("bdev_rbd_create", {"name": f"Rbd{k}", "pool_name": cc.pool,
                                  "rbd_name": imgs[k], "block_size": 512,
                                  "cluster_name": "c1"})
        uris[k] = export(t, f"Rbd{k}", sockdir)
        qemu_io(uris[k], f"write -P {pattern} 0 2M")
    qemu_io(uris["a"], "read -P 0xaa 0 2M")
    qemu_io(uris["b"], "read -P 0xbb 0 2M")
    # `rbd bench` writes into target b's image; the target reads what it wrote.
    cc.rbd("bench", "--io-type", "write", "--io-size", "4K",
           "--io-total", "1M", "--io-pattern", "seq", f"{cc.pool}/{imgs['b']}", timeout=60)
    out = tmp_path / "b.raw"
    cc.rbd("export", "--no-progress", f"{cc.pool}/{imgs['b']}", str(out))
    expect = out.read_bytes()[:2 * MiB]
    got = tmp_path / "b-read.raw"
    run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uris["b"], str(got)])
    assert got.read_bytes()[:2 * MiB] == expect
    assert expect[MiB:2 * MiB] == b"\xbb" * MiB


@needs_cluster
def test_bad_input_leaves_no_state(start_target: Callable[..., Target],
                                   ceph_cluster: CephCluster,
                                   images: Callable[..., str]) -> None:
    cc = ceph_cluster
    t = start_target()
    img = images(SIZE + 4096)  # not a multiple of 8192
    register(t, cc)
    base = {"pool_name": cc.pool, "rbd_name": img, "block_size": 512, "cluster_name": "c1"}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**base, "pool_name": "nopool"}, -1, "nopool"),
        ({**base, "rbd_name": "noimage"}, -1, "noimage"),
        ({**base, "cluster_name": "nocluster"}, -1, "nocluster"),
        ({**base, "block_size": 8192}, -22, "does not divide"),
        ({**base, "block_size": 0}, -22, "block_size"),
        ({k: v for k, v in base.items() if k != "cluster_name"}
         | {"config": cc.client_conf(key=gen_bad_key())}, -1, "rados_connect"),
    ]
    for params, code, text in cases:
        err = t.rpc_error("bdev_rbd_create", {"name": "Bad", **params})
        assert err["code"] == code and text in err["message"], (params, err)
        assert t.rpc("bdev_get_bdevs") == []
    err = t.rpc_error("bdev_rbd_create", {**base, "block_size": "512"})
    assert err["code"] == -32603 and err["message"].startswith("spdk_json_decode_object failed")
    # Wrong credentials for a cluster registration, and a duplicate name.
    err = t.rpc_error("bdev_rbd_register_cluster", {
        "name": "c2", "user_id": cc.client_id, "config_param": cc.client_conf(
            key=gen_bad_key(), client_mount_timeout="5")})
    assert err["code"] == -1 and "c2" in err["message"]
    assert t.rpc_error("bdev_rbd_register_cluster", {"name": "c1"})["code"] == -1
    assert [c["cluster_name"] for c in t.rpc("bdev_rbd_get_clusters_info")] == ["c1"]
    assert t.rpc_error("bdev_rbd_get_clusters_info", {"name": "c2"})["code"] == -2
    assert t.rpc_error("bdev_rbd_unregister_cluster", {"name": "c2"})["code"] == -1
    # Everything still works after the failures, and the image is not held open.
    t.rpc("bdev_rbd_create", {**base, "name": "Good"})
    assert get_bdev(t, "Good")["num_blocks"] == (SIZE + 4096) // 512
    t.rpc("bdev_rbd_delete", {"name": "Good"})
    assert json.loads(cc.rbd("status", "--format", "json", f"{cc.pool}/{img}"))["watchers"] \
        == []
    no_secret(t, cc)


def _proc_state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return "?"


def gen_bad_key() -> str:
    from .cluster import gen_key
    return gen_key()


@needs_cluster
def test_stalled_osd_fails_io_and_delete_completes(start_target: Callable[..., Target],
                                                   ceph_cluster: CephCluster,
                                                   images: Callable[..., str],
                                                   sockdir: Path) -> None:
    """An OSD that stops answering turns I/O into errors after rados_osd_op_timeout; other
    bdevs keep working; deleting the bdev with a read in flight answers and fails it."""
    cc = ceph_cluster
    t = start_target()
    img = images()
    # No librbd cache: reads must reach the OSD rather than librbd's memory.
    conf = cc.client_conf(rados_osd_op_timeout="2", rbd_cache="false")
    t.rpc("bdev_rbd_create", {"name": "Rbd0", "pool_name": cc.pool, "rbd_name": img,
                              "block_size": 512, "config": conf})
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 2048, "block_size": 512})
    uri = export(t, "Rbd0", sockdir)
    muri = export(t, "M0", sockdir)
    qemu_io(uri, "write -P 0x33 8M 9M", "flush")
    osd = cc.pids()["osd.0"]
    os.kill(osd, signal.SIGSTOP)
    try:
        # The signal lands asynchronously; a read racing it would still be answered.
        wait_until(lambda: _proc_state(osd) in ("T", "t"), what="OSD stopped")
        t0 = time.monotonic()
        out = qemu_io(uri, "read 8M 64k", check=False)
        elapsed = time.monotonic() - t0
        assert "error" in out.lower() or "failed" in out.lower(), out
        assert elapsed < 20
        qemu_io(muri, "write -P 0x42 0 64k", "read -P 0x42 0 64k")  # not held up
        slow = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "read 16M 1M", uri],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.5)
        t0 = time.monotonic()
        assert t.rpc("bdev_rbd_delete", {"name": "Rbd0"}, timeout=60) is True
        assert time.monotonic() - t0 < 45
        slow_out, _ = slow.communicate(timeout=60)
        assert "read 1048576/1048576" not in slow_out or "error" in slow_out.lower()
    finally:
        os.kill(osd, signal.SIGCONT)
        # Running again is not serving again: the mon may have marked it down meanwhile,
        # and PGs may stay laggy (reassert_osd).
        wait_until(lambda: _proc_state(osd) not in ("T", "t"), what="OSD running")
        cc.reassert_osd()
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == ["M0"]
    no_secret(t, cc)


def test_rpcs_without_librbd_say_why(start_target: Callable[..., Target],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBDEV_LIBRBD", "/nonexistent/librbd.so.1")
    t = start_target()
    for method, params in [
        ("bdev_rbd_register_cluster", {"name": "c1"}),
        ("bdev_rbd_create", {"pool_name": "rbd", "rbd_name": "x", "block_size": 512}),
        ("bdev_rbd_get_clusters_info", None),
        ("bdev_rbd_resize", {"name": "x", "new_size": 1}),
    ]:
        err = t.rpc_error(method, params)
        assert err["code"] == -95, (method, err)
        assert "librbd not available" in err["message"] and "/nonexistent" in err["message"]
    # The rest of the target works.
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512})
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == ["M0"]
    assert "bdev_rbd_create" in t.rpc("rpc_get_methods")
