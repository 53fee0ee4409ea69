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
import time
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
                  bdev: str = "Malloc0", create: bool = True,
                  transport: dict[str, Any] | None = None) -> None:
    if create:
        t.rpc("nvmf_create_transport", {"trtype": "TCP", **(transport or {})})
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
    out = subprocess.run([*argv, uri], capture_output=True, text=True, timeout=60)
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


def names(t: Target) -> list[str]:
    return [b["name"] for b in t.rpc("bdev_get_bdevs")]


def err(t: Target, method: str, params: dict[str, Any]) -> tuple[int, str]:
    """Code and SPDK's text (pybdev may add ": detail" after it)."""
    e = t.rpc_error(method, params)
    return e["code"], e["message"].split(": ")[0] if e["code"] in (-32602, -32603) \
        else e["message"]


@need("qemu-io")
def test_unmap_write_zeroes_and_namespace_events(pair: tuple[Target, Target, int]) -> None:
    remote, local, port = pair
    assert local.rpc("bdev_nvme_attach_controller", attach_params(port)) == ["Nvme0n1"]
    (bdev,) = local.rpc("bdev_get_bdevs", {"name": "Nvme0n1"})
    io = bdev["supported_io_types"]
    assert io["unmap"] and io["write_zeroes"] and io["flush"]
    nbd = free_port()
    uri = f"nbd://127.0.0.1:{nbd}/Nvme0n1"
    local.rpc("nbd_start_disk", {"bdev_name": "Nvme0n1", "nbd_device": uri})
    qemu_io(uri, "write -P 0x11 0 256k", "write -z 64k 64k", "discard 128k 64k", "flush")
    qemu_io(uri, "read -P 0x11 0 64k", "read -P 0 64k 64k", "read -P 0x11 192k 64k")
    assert remote_read(port, 65536, 4096) == bytes(4096)
    # A namespace added on the target: the AEN makes the initiator scan and register it.
    export_remote(remote, port, blocks=2048, bdev="Malloc1", create=False)
    wait_until(lambda: names(local) == ["Nvme0n1", "Nvme0n2"], what="Nvme0n2")
    (b2,) = local.rpc("bdev_get_bdevs", {"name": "Nvme0n2"})
    assert b2["num_blocks"] == 2048
    remote.rpc("nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 2})
    wait_until(lambda: names(local) == ["Nvme0n1"],
               what="Nvme0n2 removed")
    local.rpc("nbd_stop_disk", {"nbd_device": uri})


def test_spdk_client_for_every_method(pair: tuple[Target, Target, int]) -> None:
    _remote, local, port = pair
    local.spdk("bdev_nvme_set_options", "-k", "5000", "-r", "2", "-l", "30", "-o", "2",
               "-u", "10")
    local.spdk("bdev_nvme_set_hotplug", "--no-hotplug", "-r", "200000")
    out = local.spdk("bdev_nvme_attach_controller", "-b", "Nvme0", "-t", "tcp", "-a",
                     "127.0.0.1", "-f", "ipv4", "-s", str(port), "-n", NQN, "-q", HOSTNQN,
                     "--num-io-queues", "2").stdout
    assert out.split() == ["Nvme0n1"]
    (info,) = json.loads(local.spdk("bdev_nvme_get_controllers", "-n", "Nvme0").stdout)
    assert info["ctrlrs"][0]["trid"]["subnqn"] == NQN
    cntlid = info["ctrlrs"][0]["cntlid"]
    local.spdk("bdev_nvme_reset_controller", "Nvme0")
    (info,) = json.loads(local.spdk("bdev_nvme_get_controllers").stdout)
    assert info["ctrlrs"][0]["state"] == "enabled"
    assert info["ctrlrs"][0]["cntlid"] != cntlid  # a new association
    cfg = next(s for s in json.loads(local.spdk("save_config").stdout)["subsystems"]
           if s["subsystem"] == "bdev")["config"]
    opts = next(e["params"] for e in cfg if e["method"] == "bdev_nvme_set_options")
    assert (opts["keep_alive_timeout_ms"], opts["bdev_retry_count"],
            opts["ctrlr_loss_timeout_sec"], opts["reconnect_delay_sec"],
            opts["fast_io_fail_timeout_sec"]) == (5000, 2, 30, 2, 10)
    attach = next(e["params"] for e in cfg if e["method"] == "bdev_nvme_attach_controller")
    assert list(attach) == [
        "name", "trtype", "adrfam", "traddr", "trsvcid", "subnqn", "prchk_reftag",
        "prchk_guard", "ctrlr_loss_timeout_sec", "reconnect_delay_sec",
        "fast_io_fail_timeout_sec", "hostnqn", "hdgst", "ddgst", "multipath",
        "fabrics_connect_timeout_us", "num_io_queues", "disable_sq_flow_control",
        "multipath_opts"]
    assert (attach["ctrlr_loss_timeout_sec"], attach["num_io_queues"]) == (30, 2)
    hotplug = next(e["params"] for e in cfg if e["method"] == "bdev_nvme_set_hotplug")
    assert hotplug == {"period_us": 200000, "enable": False}
    assert [e["method"] for e in cfg][-2:] == ["bdev_nvme_set_hotplug",
                                               "bdev_wait_for_examine"]
    # set_options with a controller attached: SPDK's -1
    r = local.spdk("bdev_nvme_set_options", "-k", "1000", check=False)
    assert r.returncode != 0 and "RPC not permitted with nvme controllers already attached" \
        in r.stdout + r.stderr
    local.spdk("bdev_nvme_detach_controller", "Nvme0")
    assert json.loads(local.spdk("bdev_nvme_get_controllers").stdout) == []
    # and pybdev's own scripts/rpc.py
    assert local.cli("bdev_nvme_attach_controller", "-b", "N1", "-t", "TCP", "-a",
                     "127.0.0.1", "-s", str(port), "-n", NQN, "-e", "-d", "-i",
                     "127.0.0.1").stdout.split() == ["N1n1"]
    (c,) = local.rpc("bdev_nvme_get_controllers")
    assert c["ctrlrs"][0]["host"]["addr"] == "127.0.0.1"
    (b,) = local.rpc("bdev_get_bdevs", {"name": "N1n1"})
    assert b["driver_specific"]["nvme"][0]["trid"]["trtype"] == "TCP"
    local.cli("bdev_nvme_detach_controller", "N1")
    local.cli("bdev_nvme_set_hotplug", "--no-hotplug")


def test_errors_are_spdks(pair: tuple[Target, Target, int]) -> None:
    _remote, local, port = pair
    assert local.rpc("bdev_nvme_attach_controller", attach_params(port)) == ["Nvme0n1"]
    assert err(local, "bdev_nvme_attach_controller", attach_params(port)) == (
        -114, "A controller named Nvme0 already exists with the specified network path")
    assert err(local, "bdev_nvme_attach_controller",
               attach_params(port, multipath="disable")) == (
        -114, "A controller named Nvme0 already exists and multipath is disabled")
    assert err(local, "bdev_nvme_attach_controller",
               attach_params(port + 1, subnqn="nqn.2016-06.io.spdk:other")) == (
        -22, f"A controller named Nvme0 already exists, but uses a different subnqn ({NQN})")
    code, _ = err(local, "bdev_nvme_attach_controller", attach_params(port, name="Other"))
    assert code == -17  # same target and host under another name
    code, msg = err(local, "bdev_nvme_attach_controller",
                    attach_params(port, name="P", trtype="pcie", traddr="0000:00:04.0"))
    assert code == -19 and msg.startswith("No such device")
    code, msg = err(local, "bdev_nvme_attach_controller", attach_params(free_port(), name="R"))
    assert code == -5 and "Connection refused" in msg, msg
    code, msg = err(local, "bdev_nvme_attach_controller",
                    attach_params(port, name="Q", subnqn="nqn.2016-06.io.spdk:nope"))
    assert code == -5 and "Connect" in msg, msg
    assert err(local, "bdev_nvme_attach_controller", attach_params(port, name="A",
                                                                    adrfam="ipx")) == (
        -22, "Failed to parse adrfam: ipx")
    assert err(local, "bdev_nvme_attach_controller", attach_params(port, name="A",
                                                                    max_bdevs=0)) == (
        -22, "max_bdevs cannot be zero")
    code, _ = err(local, "bdev_nvme_attach_controller",
                  attach_params(free_port(), name="A", ctrlr_loss_timeout_sec=5))
    assert code == -22  # reconnect_delay_sec 0 with a loss timeout
    assert err(local, "bdev_nvme_attach_controller", {"name": "A", "trtype": "tcp"}) == (
        -32603, "spdk_json_decode_object failed")
    assert err(local, "bdev_nvme_detach_controller", {"name": "Nope"})[0] == -19
    assert err(local, "bdev_nvme_get_controllers", {"name": "Nope"}) == (
        -22, "Controller Nope does not exist")
    assert err(local, "bdev_nvme_reset_controller", {"name": "Nope"})[0] == -19
    assert err(local, "bdev_nvme_reset_controller", {"nam": "x"}) == (-32602, "Invalid argument")
    assert err(local, "bdev_nvme_set_hotplug", {}) == (-32602, "Invalid argument")
    assert err(local, "bdev_nvme_set_options", {"keep_alive_timeout_ms": 1}) == (
        -1, "RPC not permitted with nvme controllers already attached")
    assert [c["name"] for c in local.rpc("bdev_nvme_get_controllers")] == ["Nvme0"]
    assert [b["name"] for b in local.rpc("bdev_get_bdevs")] == ["Nvme0n1"]


def test_set_options_validation(target: Target) -> None:
    assert err(target, "bdev_nvme_set_options", {"ctrlr_loss_timeout_sec": 5})[0] == -22
    assert err(target, "bdev_nvme_set_options", {"bdev_retry_count": -2})[0] == -22
    assert err(target, "bdev_nvme_set_options", {"timeout_admin_us": 5})[0] == -22
    assert err(target, "bdev_nvme_set_options", {"keep_alive_timeout_ms": "1"}) == (
        -32603, "spdk_json_decode_object failed")
    assert target.rpc("bdev_nvme_set_options", {"ctrlr_loss_timeout_sec": -1,
                                                "reconnect_delay_sec": 1}) is True


@need("qemu-io")
def test_save_config_reattaches(pair: tuple[Target, Target, int],
                                start_target: Callable[..., Target], short_dir: Path) -> None:
    _remote, local, port = pair
    local.rpc("bdev_nvme_set_options", {"keep_alive_timeout_ms": 4000})
    local.rpc("bdev_nvme_attach_controller", attach_params(port, ctrlr_loss_timeout_sec=-1,
                                                           reconnect_delay_sec=1))
    nbd = free_port()
    uri = f"nbd://127.0.0.1:{nbd}/Nvme0n1"
    local.rpc("nbd_start_disk", {"bdev_name": "Nvme0n1", "nbd_device": uri})
    qemu_io(uri, "write -P 0x77 0 128k")
    saved = local.spdk("save_config").stdout
    assert local.stop() == 0
    cfg = short_dir / "cfg.json"
    cfg.write_text(saved)
    again = start_target("--json", str(cfg), sock=short_dir / "again.sock")
    assert [b["name"] for b in again.rpc("bdev_get_bdevs")] == ["Nvme0n1"]
    qemu_io(uri, "read -P 0x77 0 128k")
    assert again.spdk("save_config").stdout == saved


@need("qemu-io")
def test_reconnect_after_target_restart(start_target: Callable[..., Target],
                                        short_dir: Path) -> None:
    port = free_port()
    remote = start_target(sock=short_dir / "r.sock")
    export_remote(remote, port)
    local = start_target(sock=short_dir / "l.sock")
    local.rpc("bdev_nvme_attach_controller", attach_params(
        port, ctrlr_loss_timeout_sec=-1, reconnect_delay_sec=1, num_io_queues=1))
    nbd = free_port()
    uri = f"nbd://127.0.0.1:{nbd}/Nvme0n1"
    local.rpc("nbd_start_disk", {"bdev_name": "Nvme0n1", "nbd_device": uri})
    # reads in flight while the target goes away wait for the reconnect, then succeed
    argv = ["qemu-io", "-f", "raw"]
    for i in range(2000):
        argv += ["-c", f"read {(i % 64) * 65536} 64k"]
    reader = subprocess.Popen([*argv, uri], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    assert remote.stop() == 0

    def state() -> str:
        (c,) = local.rpc("bdev_nvme_get_controllers")
        return str(c["ctrlrs"][0]["state"])

    wait_until(lambda: state() in ("resetting", "reconnect_is_delayed"), what="loss seen")
    remote = start_target(sock=short_dir / "r2.sock")
    export_remote(remote, port)
    wait_until(lambda: state() == "enabled", timeout=30, what="reconnected")
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0 and "error" not in out.lower(), out[-2000:]
    assert out.count("read 65536/65536 bytes") == 2000
    qemu_io(uri, "write -P 0x42 0 64k", "read -P 0x42 0 64k")
    assert remote_read(port, 0, 4096) == b"\x42" * 4096
    # the export survived the reconnect
    assert [d["nbd_device"] for d in local.rpc("nbd_get_disks")] == [uri]


@need("qemu-io")
def test_fast_io_fail_then_controller_loss(start_target: Callable[..., Target],
                                           short_dir: Path) -> None:
    port = free_port()
    remote = start_target(sock=short_dir / "r.sock")
    export_remote(remote, port)
    local = start_target(sock=short_dir / "l.sock")
    local.rpc("bdev_nvme_attach_controller", attach_params(
        port, ctrlr_loss_timeout_sec=6, reconnect_delay_sec=1, fast_io_fail_timeout_sec=1))
    nbd = free_port()
    uri = f"nbd://127.0.0.1:{nbd}/Nvme0n1"
    local.rpc("nbd_start_disk", {"bdev_name": "Nvme0n1", "nbd_device": uri})
    assert remote.stop() == 0
    # I/O waits for the reconnect at first, then fails once fast_io_fail_timeout_sec passed
    out = subprocess.run(["qemu-io", "-f", "raw", "-c", "read 0 4k", uri],
                         capture_output=True, text=True, timeout=60)
    assert "Input/output error" in out.stdout + out.stderr, out
    # and after ctrlr_loss_timeout_sec the controller and its bdev are gone
    wait_until(lambda: local.rpc("bdev_nvme_get_controllers") == [], timeout=30,
               what="controller deleted")
    assert local.rpc("bdev_get_bdevs") == []
    assert local.rpc("nbd_get_disks") == []


def test_clear_config_flow(pair: tuple[Target, Target, int]) -> None:
    """SPDK's test/json_config/clear_config.py on the bdev subsystem."""
    _remote, local, port = pair
    local.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 64, "block_size": 512})
    local.rpc("bdev_nvme_attach_controller", attach_params(port))
    saved = json.loads(local.spdk("save_config").stdout)
    config = next(s["config"] for s in saved["subsystems"] if s["subsystem"] == "bdev")
    for entry in config:
        if entry["method"] == "bdev_malloc_create":
            local.rpc("bdev_malloc_delete", {"name": entry["params"]["name"]})
    for ctrlr in local.rpc("bdev_nvme_get_controllers"):
        local.rpc("bdev_nvme_detach_controller", {"name": ctrlr["name"]})
    local.spdk("bdev_nvme_set_hotplug", "--no-hotplug")
    assert local.rpc("bdev_get_bdevs") == []
    config = next(s["config"] for s in json.loads(local.spdk("save_config").stdout)[
        "subsystems"] if s["subsystem"] == "bdev")
    assert [e["method"] for e in config] == ["bdev_set_options", "bdev_nvme_set_options",
                                             "bdev_nvme_set_hotplug", "bdev_wait_for_examine"]


@need("qemu-io")
def test_digests_and_keep_alive(start_target: Callable[..., Target], short_dir: Path) -> None:
    port = free_port()
    remote = start_target(sock=short_dir / "r.sock")
    # the target drops a controller that sends nothing for 1 s
    export_remote(remote, port, transport={"min_kato": 1000, "kas": 10})
    local = start_target(sock=short_dir / "l.sock")
    local.rpc("bdev_nvme_set_options", {"keep_alive_timeout_ms": 1000})
    local.rpc("bdev_nvme_attach_controller", attach_params(port, hdgst=True, ddgst=True))
    (before,) = local.rpc("bdev_nvme_get_controllers")
    nbd = free_port()
    uri = f"nbd://127.0.0.1:{nbd}/Nvme0n1"
    local.rpc("nbd_start_disk", {"bdev_name": "Nvme0n1", "nbd_device": uri})
    qemu_io(uri, "write -P 0x3c 0 1M", "write -P 0xc3 1M 4k")
    qemu_io(uri, "read -P 0x3c 0 1M", "read -P 0xc3 1M 4k")
    time.sleep(4)  # idle: only keep-alives keep the controller
    (after,) = local.rpc("bdev_nvme_get_controllers")
    assert after == before and after["ctrlrs"][0]["state"] == "enabled"
    assert "keep-alive timeout" not in remote.log()
    qemu_io(uri, "read -P 0x3c 0 64k")
