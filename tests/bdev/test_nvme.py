"""The NVMe/TCP initiator bdev (bdev_nvme_*) against pybdev's own NVMe/TCP target.

Two target processes: ``remote`` exports a malloc bdev over NVMe/TCP (the nvmf
subsystem), ``local`` attaches it with ``bdev_nvme_attach_controller`` and re-exports the
namespace bdev over the NBD network export, where ``qemu-io`` writes and reads patterns.
The remote side is read back with the tests' own blocking initiator
(tests/nvmf/initiator.py), an implementation independent of the bdev's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Target, wait_until
from tests.nvmf import initiator
from tests.nvmf.conftest import free_port

pytestmark = pytest.mark.timeout(180)

NQN = "nqn.2016-06.io.spdk:cnode1"
HOSTNQN = "nqn.2014-08.org.nvmexpress:uuid:2c0a6e1e-1b5e-4c4b-9a33-0e1c0c0d0e0f"


def need(tool: str) -> Any:
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")


def export_remote(t: Target, port: int, *, blocks: int = 32768, nsid: int | None = None,
                  bdev: str = "Malloc0", create: bool = True) -> None:
    if create:
        t.rpc("nvmf_create_transport", {"trtype": "TCP"})
        t.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True,
                                        "serial_number": "PYBDEV0001",
                                        "model_number": "pybdev remote"})
        t.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
            "trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": str(port)}})
    t.rpc("bdev_malloc_create", {"name": bdev, "num_blocks": blocks, "block_size": 512})
    ns: dict[str, Any] = {"bdev_name": bdev}
    if nsid is not None:
        ns["nsid"] = nsid
    t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": ns})


def attach_params(port: int, name: str = "Nvme0", **kw: Any) -> dict[str, Any]:
    return {"name": name, "trtype": "tcp", "traddr": "127.0.0.1", "adrfam": "ipv4",
            "trsvcid": str(port), "subnqn": NQN, "hostnqn": HOSTNQN, **kw}


def qemu_io(uri: str, *cmds: str) -> str:
    argv = ["qemu-io", "-f", "raw"]
    for c in cmds:
        argv += ["-c", c]
    out = subprocess.run(argv + [uri], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "fail" not in out.stdout.lower() \
        and "error" not in out.stdout.lower(), out.stdout + out.stderr
    return out.stdout


def remote_read(port: int, offset: int, length: int) -> bytes:
    host = initiator.Host(port, NQN)
    try:
        (q,) = host.open_io(1)
        _, data = q.ok(lambda c: initiator.nvme.encode_read(c, 1, offset // 512, length // 512,
                                                            512))
        return data
    finally:
        host.close()


@pytest.fixture
def pair(start_target: Callable[..., Target], short_dir: Path) -> tuple[Target, Target, int]:
    remote = start_target(sock=short_dir / "r.sock")
    local = start_target(sock=short_dir / "l.sock")
    port = free_port()
    export_remote(remote, port)
    return remote, local, port


@need("qemu-io")
def test_attach_io_detach(pair: tuple[Target, Target, int]) -> None:
    remote, local, port = pair
    assert local.rpc("bdev_nvme_attach_controller", attach_params(port)) == ["Nvme0n1"]
    (bdev,) = local.rpc("bdev_get_bdevs", {"name": "Nvme0n1"})
    assert (bdev["block_size"], bdev["num_blocks"]) == (512, 32768)
    assert bdev["product_name"] == "NVMe disk"
    nvme = bdev["driver_specific"]["nvme"][0]
    assert nvme["trid"] == {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1",
                            "trsvcid": str(port), "subnqn": NQN}
    assert nvme["ctrlr_data"]["model_number"] == "pybdev remote"
    assert nvme["ctrlr_data"]["serial_number"] == "PYBDEV0001"
    assert nvme["ns_data"]["id"] == 1
    nbd = free_port()
    uri = f"nbd://127.0.0.1:{nbd}/Nvme0n1"
    local.rpc("nbd_start_disk", {"bdev_name": "Nvme0n1", "nbd_device": uri})
    # 4 KiB in the capsule, 1 MiB by R2T and split at MDTS, reads of both
    qemu_io(uri, "write -P 0x5a 4k 4k", "write -P 0xa5 64k 1M")
    qemu_io(uri, "read -P 0x5a 4k 4k", "read -P 0xa5 64k 1M")
    assert remote_read(port, 4096, 4096) == b"\x5a" * 4096
    assert remote_read(port, 65536 + 512 * 100, 8192) == b"\xa5" * 8192
    ctrl, = local.rpc("bdev_nvme_get_controllers")
    assert ctrl["name"] == "Nvme0" and ctrl["ctrlrs"][0]["state"] == "enabled"
    assert ctrl["ctrlrs"][0]["host"] == {"nqn": HOSTNQN, "addr": "", "svcid": "",
                                         "no_shn_notification": False}
    local.rpc("nbd_stop_disk", {"nbd_device": uri})
    assert local.rpc("bdev_nvme_detach_controller", {"name": "Nvme0"}) is True
    assert local.rpc("bdev_get_bdevs") == []
    assert local.rpc("bdev_nvme_get_controllers") == []
    assert json.dumps(remote.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN})) == "[]" \
        or wait_until(lambda: remote.rpc("nvmf_subsystem_get_controllers", {"nqn": NQN}) == [],
                      what="remote controller gone")
