"""nvmf RPCs: SPDK's params, results, errors and save_config order, through pybdev's
client, scripts/rpc.py and SPDK's own spdk-rpc."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pybdev.proto import nvme
from tests.conftest import Target
from tests.nvmf.conftest import NQN, Nvmf, free_port
from tests.nvmf.initiator import Host

DISC = nvme.DISCOVERY_NQN


def is_invalid(error: dict[str, object]) -> bool:
    """-32602 "Invalid parameters" (pybdev may add ": detail")."""
    return error["code"] == -32602 and str(error["message"]).split(":")[0] == "Invalid parameters"


def test_transport_defaults_and_errors(target: Target) -> None:
    assert target.rpc("nvmf_get_transports") == []
    assert target.rpc("nvmf_create_transport", {"trtype": "tcp", "no_srq": False,
                                                "num_cqe": 4}) is True
    assert target.rpc("nvmf_get_transports") == [{
        "trtype": "TCP", "max_queue_depth": 128, "max_io_qpairs_per_ctrlr": 127,
        "in_capsule_data_size": 4096, "max_io_size": 131072, "max_aq_depth": 128,
        "iobuf_small_cache_size": 4294967295, "iobuf_large_cache_size": 4294967295,
        "dif_insert_or_strip": False, "zcopy": False, "c2h_success": True,
        "sock_priority": 0, "abort_timeout_sec": 1, "ack_timeout": 0, "data_wr_pool_size": 0,
        "disable_command_passthru": False, "kas": 100, "min_kato": 10000}]
    assert target.rpc_error("nvmf_create_transport", {"trtype": "TCP"}) == {
        "code": -32603, "message": "Transport type 'TCP' already exists"}
    assert target.rpc_error("nvmf_create_transport", {"trtype": "RDMA2"}) == {
        "code": -32602, "message": "Invalid transport type 'RDMA2'"}
    assert target.rpc_error("nvmf_get_transports", {"trtype": "RDMA"}) == {
        "code": -19, "message": "No such device"}
    assert is_invalid(target.rpc_error("nvmf_create_transport", {"trtype": 5}))


def test_subsystem_lifecycle_and_shape(target: Target) -> None:
    assert target.rpc("nvmf_get_subsystems") == [{
        "nqn": DISC, "subtype": "Discovery", "listen_addresses": [], "allow_any_host": True,
        "hosts": []}]
    target.rpc("nvmf_create_transport", {"trtype": "TCP"})
    target.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 64, "block_size": 512,
                                      "uuid": "6a1c2f53-3d41-4c5e-9f5a-5b1c9a7e0d11"})
    assert target.rpc("nvmf_create_subsystem", {"nqn": NQN, "serial_number": "SN1"}) is True
    port = str(free_port())
    address = {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": port}
    target.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port}})
    target.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": "nqn.2016-06.io.spdk:host1"})
    target.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": "nqn.2016-06.io.spdk:host2"})
    assert target.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {
        "bdev_name": "M0", "nsid": 3, "eui64": "0011223344556677"}}) == 3
    (sub,) = target.rpc("nvmf_get_subsystems", {"nqn": NQN})
    assert sub == {
        "nqn": NQN, "subtype": "NVMe", "listen_addresses": [address], "allow_any_host": False,
        "hosts": [{"nqn": "nqn.2016-06.io.spdk:host2"}, {"nqn": "nqn.2016-06.io.spdk:host1"}],
        "serial_number": "SN1", "model_number": "SPDK bdev Controller", "passthrough": False,
        "min_cntlid": 1, "max_cntlid": 65519, "dmrsl": 2097152, "wzsl": 12,
        "namespaces": [{"nsid": 3, "bdev_name": "M0", "name": "M0",
                        "nguid": "6A1C2F533D414C5E9F5A5B1C9A7E0D11",
                        "eui64": "0011223344556677",
                        "uuid": "6a1c2f53-3d41-4c5e-9f5a-5b1c9a7e0d11"}]}
    assert [s["nqn"] for s in target.rpc("nvmf_get_subsystems")] == [DISC, NQN]
    assert target.rpc("nvmf_subsystem_get_listeners", {"nqn": NQN}) == [{"address": address}]
    assert target.rpc("bdev_get_bdevs", {"name": "M0"})[0]["claimed"] is True
    assert target.rpc("nvmf_delete_subsystem", {"nqn": NQN}) is True
    assert target.rpc("bdev_get_bdevs", {"name": "M0"})[0]["claimed"] is False
    assert len(target.rpc("nvmf_get_subsystems")) == 1


def test_errors(nvmf: Nvmf) -> None:
    t = nvmf.target
    unknown = {"code": -32602, "message": "Subsystem with NQN 'nqn.2016-06.io.spdk:x' not found"}
    for method, extra in (("nvmf_subsystem_get_listeners", {}),
                          ("nvmf_subsystem_remove_ns", {"nsid": 1}),
                          ("nvmf_subsystem_add_host", {"host": "nqn.2016-06.io.spdk:h"}),
                          ("nvmf_delete_subsystem", {})):
        assert t.rpc_error(method, {"nqn": "nqn.2016-06.io.spdk:x", **extra}) == unknown
    for bad in ("nqn.2016-06.io.spdk", "nqn.16-06.io.spdk:x", NQN):
        assert t.rpc_error("nvmf_create_subsystem", {"nqn": bad}) == {
            "code": -32603, "message": f"Unable to create subsystem {bad}"}
    other = "nqn.2016-06.io.spdk:cnode2"
    assert is_invalid(t.rpc_error("nvmf_create_subsystem",
                                  {"nqn": other, "serial_number": "x" * 21}))
    assert t.rpc_error("nvmf_create_subsystem", {"nqn": other, "min_cntlid": 5,
                                                 "max_cntlid": 4}) == {
        "code": -32602, "message": "Invalid cntlid range [5-4]"}
    assert is_invalid(t.rpc_error("nvmf_create_subsystem", {"nqn": other, "bogus": 1}))
    assert t.rpc_error("nvmf_get_subsystems", {"tgt_name": "t2"}) == {
        "code": -32602, "message": "NVMf target 't2' not found"}
    t.rpc("bdev_malloc_create", {"name": "M9", "num_blocks": 64, "block_size": 512})
    for ns in ({"bdev_name": "nope"}, {"bdev_name": "M9", "nsid": 1},
               {"bdev_name": "M9", "nsid": 33}, {"bdev_name": "Malloc0"}):
        assert is_invalid(t.rpc_error("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": ns}))
    assert t.rpc_error("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {
        "bdev_name": "M9", "nguid": "12"}}) == {"code": -32602, "message": "Invalid nguid"}
    assert is_invalid(t.rpc_error("nvmf_subsystem_remove_ns", {"nqn": NQN, "nsid": 9}))
    assert is_invalid(t.rpc_error("nvmf_subsystem_add_listener", {
        "nqn": NQN, "listen_address": nvmf.listen_address()}))
    assert is_invalid(t.rpc_error("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "TCP", "traddr": "0.0.0.0", "trsvcid": str(free_port())}}))
    assert is_invalid(t.rpc_error("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "TCP", "traddr": "127.0.0.1"}}))
    assert is_invalid(t.rpc_error("nvmf_subsystem_remove_listener", {"nqn": NQN, "listen_address": {
        "trtype": "TCP", "traddr": "127.0.0.1", "trsvcid": "1"}}))
    t.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": "nqn.2016-06.io.spdk:h"})
    internal = {"code": -32603, "message": "Internal error"}
    assert t.rpc_error("nvmf_subsystem_add_host", {"nqn": NQN,
                                                   "host": "nqn.2016-06.io.spdk:h"}) == internal
    assert t.rpc_error("nvmf_subsystem_remove_host", {"nqn": NQN,
                                                      "host": "nqn.2016-06.io.spdk:z"}) == internal
    assert is_invalid(t.rpc_error("nvmf_subsystem_allow_any_host", {"nqn": NQN}))
    assert t.rpc_error("nvmf_set_max_subsystems", {"max_subsystems": 4})["code"] == -1


def test_save_config_order_and_replay(nvmf: Nvmf, start_target: Callable[..., Target],
                                      tmp_path: Path) -> None:
    t = nvmf.target
    t.rpc("nvmf_subsystem_add_host", {"nqn": NQN, "host": "nqn.2016-06.io.spdk:h1"})
    t.rpc("nvmf_subsystem_add_listener", {"nqn": "nqn.2014-08.org.nvmexpress.discovery",
                                          "listen_address": nvmf.listen_address()})
    config = json.loads(t.cli("save_config").stdout)
    (nvmf_cfg,) = [s for s in config["subsystems"] if s["subsystem"] == "nvmf"]
    methods = [e["method"] for e in nvmf_cfg["config"]]
    assert methods == ["nvmf_set_config", "nvmf_set_max_subsystems", "nvmf_set_crdt",
                       "nvmf_create_transport", "nvmf_create_subsystem",
                       "nvmf_subsystem_add_host", "nvmf_subsystem_add_ns",
                       "nvmf_subsystem_add_listener", "nvmf_subsystem_add_listener"]
    assert nvmf_cfg["config"][4]["params"] == {
        "nqn": NQN, "allow_any_host": True, "serial_number": "SPDK00000000000001",
        "model_number": "pybdev test", "min_cntlid": 1, "max_cntlid": 65519,
        "ana_reporting": False, "dmrsl": 2097152, "wzsl": 12, "passthrough": False,
        "enable_nssr": False}
    assert [s["subsystem"] for s in config["subsystems"]][-1] == "nvmf"
    t.stop()
    path = tmp_path / "nvmf.json"
    path.write_text(json.dumps(config))
    second = start_target("--json", str(path))
    assert json.loads(second.cli("save_config").stdout) == config
    host = Host(nvmf.port, NQN)  # the replayed listener serves
    assert host.identify_ns(1).nsze == 4096
    host.close()


def test_cli_and_spdk_rpc(start_target: Callable[..., Target]) -> None:
    # transports cannot be deleted (as in SPDK): one fresh target per client
    for client in ("spdk", "cli"):
        target = start_target()
        run = getattr(target, client)
        port = str(free_port())
        target.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 256,
                                          "block_size": 512})
        run("nvmf_create_transport", "-t", "tcp", "-o", "-c", "8192")
        run("nvmf_create_subsystem", NQN, "-a", "-s", "SPDK001", "-d", "model", "-m", "8")
        assert run("nvmf_subsystem_add_ns", NQN, "Malloc0", "-n", "2").stdout == ""
        run("nvmf_subsystem_add_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", port)
        run("nvmf_subsystem_add_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1",
            "-s", port)
        run("nvmf_subsystem_allow_any_host", NQN, "--no-allow-any-host")
        run("nvmf_subsystem_add_host", NQN, "nqn.2016-06.io.spdk:host1")
        (sub,) = json.loads(run("nvmf_get_subsystems", NQN).stdout)
        assert (sub["serial_number"], sub["max_namespaces"], sub["allow_any_host"]) == (
            "SPDK001", 8, False)
        assert sub["namespaces"][0]["nsid"] == 2
        (tr,) = json.loads(run("nvmf_get_transports", "--trtype", "tcp").stdout)
        assert (tr["c2h_success"], tr["in_capsule_data_size"]) == (False, 8192)
        assert json.loads(run("nvmf_subsystem_get_listeners", NQN).stdout)[0]["address"][
            "trsvcid"] == port
        assert json.loads(run("nvmf_subsystem_get_controllers", NQN).stdout) == []
        assert json.loads(run("nvmf_subsystem_get_qpairs", NQN).stdout) == []
        assert json.loads(run("nvmf_get_stats").stdout)["poll_groups"][0]["io_qpairs"] == 0
        run("nvmf_subsystem_remove_host", NQN, "nqn.2016-06.io.spdk:host1")
        run("nvmf_subsystem_remove_ns", NQN, "2")
        run("nvmf_subsystem_remove_listener", NQN, "-t", "tcp", "-a", "127.0.0.1", "-s", port)
        run("nvmf_subsystem_remove_listener", "discovery", "-t", "tcp", "-a", "127.0.0.1",
            "-s", port)
        run("nvmf_delete_subsystem", NQN)
        assert len(target.rpc("nvmf_get_subsystems")) == 1
        target.stop()


def test_startup_methods(start_target: Callable[..., Target]) -> None:
    t = start_target("--wait-for-rpc")
    assert t.rpc("nvmf_set_max_subsystems", {"max_subsystems": 2}) is True
    assert t.rpc_error("nvmf_set_max_subsystems", {"max_subsystems": 3}) == {
        "code": -32603, "message": "Must not call more than once"}
    assert t.rpc("nvmf_set_config", {"discovery_filters": ["match_any"],
                                      "dup_host_policy": "allow"}) is True
    assert t.rpc("nvmf_set_crdt", {"crdt1": 5}) is True
    t.rpc("framework_start_init")
    t.rpc("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:a"})
    assert t.rpc_error("nvmf_create_subsystem", {"nqn": "nqn.2016-06.io.spdk:b"}) == {
        "code": -32603, "message": "Unable to create subsystem nqn.2016-06.io.spdk:b"}
    cfg = t.rpc("framework_get_config", {"name": "nvmf"})
    assert cfg[1] == {"method": "nvmf_set_max_subsystems", "params": {"max_subsystems": 2}}
    assert cfg[2]["params"] == {"crdt1": 5, "crdt2": 0, "crdt3": 0}


def test_namespaces_refuse_bdevs_with_metadata(target: Target) -> None:
    # SPDK refuses separate metadata ("Can't attach bdev with separate metadata."); its
    # extended-LBA namespaces for interleaved metadata pybdev lacks, so it refuses those too.
    target.rpc("nvmf_create_transport", {"trtype": "TCP"})
    target.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    target.spdk("bdev_malloc_create", "-b", "Sep", "1", "512", "-m", "8", "-t", "1")
    target.spdk("bdev_null_create", "Inter", "1", "512", "-m", "16", "-t", "3", "-d")
    for name in ("Sep", "Inter"):
        assert is_invalid(target.rpc_error("nvmf_subsystem_add_ns", {
            "nqn": NQN, "namespace": {"bdev_name": name}}))
        assert target.rpc("bdev_get_bdevs", {"name": name})[0]["claimed"] is False
    assert "with separate metadata" in target.log() and "with interleaved metadata" in target.log()
    (sub,) = target.rpc("nvmf_get_subsystems", {"nqn": NQN})
    assert sub["namespaces"] == []
