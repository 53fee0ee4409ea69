"""nbd_start_disk / nbd_stop_disk / nbd_get_disks: SPDK's params, shapes and codes, and the
network export additions (URIs, shared listeners, --nbd-allow-remote, save_config)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Target, wait_until

from .conftest import need, run, unix_uri
from .rawclient import RawClient

DECODE = {"code": -32603, "message": "spdk_json_decode_object failed"}


@pytest.fixture
def t(target: Target) -> Target:
    target.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    target.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 8192, "block_size": 512})
    return target


def test_start_list_stop(t: Target, sockdir: Path) -> None:
    uri0 = unix_uri("Malloc0", sockdir / "a.sock")
    uri1 = unix_uri("disk1", sockdir / "a.sock")
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": uri0}) == uri0
    assert t.rpc("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": uri1}) == uri1
    disks = t.rpc("nbd_get_disks")
    assert disks == [{"nbd_device": uri0, "bdev_name": "Malloc0"},
                     {"nbd_device": uri1, "bdev_name": "Malloc1"}]
    assert list(disks[0]) == ["nbd_device", "bdev_name"]
    assert t.rpc("nbd_get_disks", {"nbd_device": uri1}) == [disks[1]]
    assert t.rpc("nbd_stop_disk", {"nbd_device": uri0}) is True
    assert t.rpc("nbd_get_disks") == [disks[1]]
    # The shared listener stays for the other export.
    RawClient(str(sockdir / "a.sock"), "disk1").disconnect()
    assert t.rpc("nbd_stop_disk", {"nbd_device": uri1}) is True
    assert t.rpc("nbd_get_disks") == []


def test_decode_failures_are_32603(t: Target) -> None:
    assert t.rpc_error("nbd_start_disk", {"nbd_device": "nbd://127.0.0.1/x"}) \
        | {"message": DECODE["message"]} == DECODE
    for method, params in [
        ("nbd_start_disk", {"bdev_name": 1}),
        ("nbd_start_disk", {"bdev_name": "Malloc0", "bogus": 1}),
        ("nbd_stop_disk", {}),
        ("nbd_stop_disk", {"nbd_device": 5}),
        ("nbd_get_disks", {"nbd_device": None, "x": 1}),
    ]:
        err = t.rpc_error(method, params)
        assert err["code"] == -32603, (method, params, err)
        assert err["message"].startswith(DECODE["message"])


def test_error_codes(t: Target, sockdir: Path) -> None:
    uri = unix_uri("Malloc0", sockdir / "a.sock")
    assert t.rpc_error("nbd_start_disk", {"bdev_name": "nope", "nbd_device": uri})["code"] == -19
    assert t.rpc_error("nbd_stop_disk", {"nbd_device": uri}) == {"code": -19,
                                                                 "message": "No such device: "
                                                                 f"{uri} is not exported"}
    assert t.rpc_error("nbd_get_disks", {"nbd_device": uri})["code"] == -19
    t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": uri})
    # Same device string, or the same export name on the same socket: busy.
    assert t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": uri})["code"] \
        == -16
    same = f"nbd+unix:///Malloc0?socket={sockdir}/./a.sock"
    assert t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": same})["code"] \
        == -16
    # Malformed URIs: SPDK's "illegal nbd device".
    for bad in ("nbd://127.0.0.1:99999/x", "nbds://127.0.0.1/x", "nbd+unix:///x",
                "nbd+unix:///x?socket=/a&tls=on", "http://x/y", "nbd://127.0.0.1/x?y=1"):
        err = t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc1", "nbd_device": bad})
        assert err["code"] == -19, bad
        assert err["message"].startswith(f"illegal nbd device {bad}"), err
    # The bdev is claimed by a vbdev: -EPERM, as SPDK.
    t.rpc("bdev_passthru_create", {"base_bdev_name": "Malloc1", "name": "PT0"})
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc1",
                                         "nbd_device": unix_uri("m1", sockdir / "a.sock")})
    assert err["code"] == -1


def test_remote_bind_needs_the_option(start_target: Callable[..., Target]) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc0",
                                         "nbd_device": "nbd://0.0.0.0:0/Malloc0"})
    assert err["code"] == -13
    assert "--nbd-allow-remote" in err["message"]
    open_target = start_target("--nbd-allow-remote")
    open_target.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192,
                                           "block_size": 512})
    uri = open_target.rpc("nbd_start_disk", {"bdev_name": "Malloc0",
                                             "nbd_device": "nbd://0.0.0.0:0/Malloc0"})
    port = int(uri.rsplit(":", 1)[1].split("/")[0])
    # Served on every address, reached here through loopback only.
    RawClient(("127.0.0.1", port), "Malloc0").disconnect()


def test_ipv4_mapped_loopback_needs_no_option(t: Target) -> None:
    # The same loopback rule as HTTP (pybdev.netaddr): ::ffff:127.0.0.1 is 127.0.0.1.
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0",
                                   "nbd_device": "nbd://[::ffff:127.0.0.1]:0/m"})
    port = int(uri.rsplit(":", 1)[1].split("/")[0])
    RawClient(("127.0.0.1", port), "m").disconnect()
    err = t.rpc_error("nbd_start_disk", {"bdev_name": "Malloc0",
                                         "nbd_device": "nbd://[::ffff:192.0.2.1]:0/m"})
    assert err["code"] == -13


def test_port_zero_reports_the_chosen_port(t: Target) -> None:
    uri = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "nbd://127.0.0.1:0/d"})
    host_port = uri[len("nbd://"):].split("/")[0]
    port = int(host_port.split(":")[1])
    assert port > 0 and uri == f"nbd://127.0.0.1:{port}/d"
    assert t.rpc("nbd_get_disks") == [{"nbd_device": uri, "bdev_name": "Malloc0"}]
    RawClient(("127.0.0.1", port), "d").disconnect()
    # A second port-0 export gets its own listener.
    uri2 = t.rpc("nbd_start_disk", {"bdev_name": "Malloc0", "nbd_device": "nbd://127.0.0.1:0/d"})
    assert uri2 != uri


def test_alias_lists_primary_name(t: Target, sockdir: Path) -> None:
    uuid = t.rpc("bdev_get_bdevs", {"name": "Malloc0"})[0]["uuid"]
    uri = unix_uri("u", sockdir / "a.sock")
    t.rpc("nbd_start_disk", {"bdev_name": uuid, "nbd_device": uri})
    assert t.rpc("nbd_get_disks") == [{"nbd_device": uri, "bdev_name": "Malloc0"}]


def test_save_config_round_trip(start_target: Callable[..., Target], sockdir: Path,
                                tmp_path: Path) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 8192, "block_size": 512})
    t.rpc("bdev_malloc_create", {"name": "Malloc1", "num_blocks": 8192, "block_size": 4096})
    uris = [unix_uri("Malloc1", sockdir / "a.sock"), unix_uri("Malloc0", sockdir / "a.sock"),
            unix_uri("x", sockdir / "b.sock")]
    for uri, bdev in zip(uris, ["Malloc1", "Malloc0", "Malloc0"], strict=True):
        t.rpc("nbd_start_disk", {"bdev_name": bdev, "nbd_device": uri})
    nbd_config = t.rpc("framework_get_config", {"name": "nbd"})
    assert nbd_config == [
        {"method": "nbd_start_disk", "params": {"nbd_device": uris[0], "bdev_name": "Malloc1"}},
        {"method": "nbd_start_disk", "params": {"nbd_device": uris[1], "bdev_name": "Malloc0"}},
        {"method": "nbd_start_disk", "params": {"nbd_device": uris[2], "bdev_name": "Malloc0"}},
    ]
    saved = tmp_path / "saved.json"
    saved.write_text(t.cli("save_config").stdout)
    t.stop()
    wait_until(lambda: not (sockdir / "a.sock").exists(), what="socket removed at shutdown")
    again = start_target("--json", str(saved))
    assert json.loads(again.cli("save_config").stdout) == json.loads(saved.read_text())
    c = RawClient(str(sockdir / "b.sock"), "x")
    assert c.ready.size == 8192 * 512
    c.disconnect()


def test_clis(t: Target, sockdir: Path) -> None:
    uri = unix_uri("Malloc0", sockdir / "a.sock")
    # SPDK's own CLI, unchanged.
    assert t.spdk("nbd_start_disk", "Malloc0", uri).stdout.strip() == uri
    assert json.loads(t.spdk("nbd_get_disks").stdout) == [{"nbd_device": uri,
                                                           "bdev_name": "Malloc0"}]
    assert json.loads(t.spdk("nbd_get_disks", "-n", uri).stdout)[0]["bdev_name"] == "Malloc0"
    assert t.spdk("nbd_stop_disk", uri).stdout == ""
    # pybdev's scripts/rpc.py, including the client bdev commands.
    assert t.cli("nbd_start_disk", "Malloc0", uri).stdout.strip() == uri
    assert t.cli("bdev_nbd_create", "-b", "Nbd0", uri).stdout.strip() == "Nbd0"
    info = t.rpc("bdev_get_bdevs", {"name": "Nbd0"})[0]
    assert info["product_name"] == "NBD disk"
    assert info["driver_specific"] == {"nbd": {"uri": uri}}
    assert t.cli("bdev_nbd_delete", "Nbd0").stdout == ""
    res = t.cli("--dry-run", "nbd_get_disks")
    assert '"method": "nbd_get_disks"' in res.stdout and "params" not in res.stdout


@need("nbdinfo")
def test_default_config(start_target: Callable[..., Target]) -> None:
    probe = socket.socket()
    try:
        busy = probe.connect_ex(("127.0.0.1", 10809)) == 0
    finally:
        probe.close()
    if busy:
        pytest.skip("something already listens on 127.0.0.1:10809")
    root = Path(__file__).resolve().parents[2]
    t = start_target("--json", str(root / "etc" / "default.json"))
    assert t.rpc("nbd_get_disks") == [{"nbd_device": "nbd://127.0.0.1:10809/Malloc0",
                                       "bdev_name": "Malloc0"}]
    out = run(["nbdinfo", "--json", "nbd://127.0.0.1/Malloc0"]).stdout
    assert json.loads(out)["exports"][0]["export-size"] == 64 * 1024 * 1024


def test_unknown_bdev_is_enodev_before_the_device_is_looked_at(t: Target) -> None:
    # SPDK opens the bdev first: -19 whether or not /dev/nbd0 or the nbd module exists.
    for device in ("/dev/nbd0", "/dev/nbd4095", None):
        params = {"bdev_name": "nope"} | ({"nbd_device": device} if device else {})
        err = t.rpc_error("nbd_start_disk", params)
        assert err == {"code": -19, "message": "No such device: bdev nope not found"}
