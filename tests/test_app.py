"""Start-up, shutdown and config replay of the real target process (issue: foundation)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Target


def run_target(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a target that is expected to exit by itself (bad options or config)."""
    return subprocess.run([sys.executable, "-m", "pybdev", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def build_state(t: Target) -> None:
    assert t.spdk("bdev_malloc_create", "8", "512").stdout.strip() == "Malloc0"
    t.spdk("bdev_malloc_create", "-b", "Big", "16", "4096")
    t.spdk("bdev_malloc_create", "1", "512")


@pytest.mark.parametrize("batches", [False, True])
def test_config_round_trip_is_exact(start_target: Any, tmp_path: Path, batches: bool) -> None:
    flag = "--with-batches" if batches else "--no-with-batches"
    t = start_target()
    build_state(t)
    saved = t.spdk("save_config", flag).stdout
    assert t.stop() == 0
    cfg = tmp_path / "cfg.json"
    cfg.write_text(saved)
    t2 = start_target("--json", str(cfg))
    assert t2.spdk("save_config", flag).stdout == saved
    names = [b["name"] for b in t2.rpc("bdev_get_bdevs")]
    assert names == ["Malloc0", "Big", "Malloc1"]


def test_config_file_with_comments_and_extra_keys(start_target: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text("""// leading comment
    {"extrakey": [{"foo": "bar"}], /* block comment with "quotes" */
     "subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_set_options", "params": {"bdev_io_pool_size": 65536}},
        {"method": "bdev_malloc_create",
         "params": {"name": "M//x", "num_blocks": 32, "block_size": 4096}}]},
      {"subsystem": "scsi", "config": null}]}""")
    t = start_target("--json", str(cfg))
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == ["M//x"]
    opts = t.rpc("framework_get_config", {"name": "bdev"})[0]
    assert opts["params"]["bdev_io_pool_size"] == 65536


@pytest.mark.parametrize(("text", "message"), [
    ("[]", "not enclosed in {}"),
    ('{"subsystems": {}}', "'subsystems' should be an array"),
    ('{"subsystems": [', "Parsing JSON configuration failed"),
    ('{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_iscsi_set_options"}]}]}',
     "subsystem 'bdev', config[0]: method 'bdev_iscsi_set_options' was not found"),
    ('{"subsystems": [{"subsystem": "bdev", "config": [{"method": "bdev_malloc_create", '
     '"params": {"num_blocks": 8, "block_size": 512}}, {"method": "bdev_malloc_create", '
     '"params": {"num_blocks": 0, "block_size": 512}}]}]}',
     "subsystem 'bdev', config[1]: bdev_malloc_create failed: Invalid argument: "
     "num_blocks must be greater than 0 (code -22)"),
])
def test_bad_config_files_refuse_to_start(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.json"
    cfg.write_text(text)
    res = run_target("-r", str(tmp_path / "s.sock"), "--json", str(cfg))
    assert res.returncode == 1
    assert message in res.stderr
    assert not (tmp_path / "s.sock").exists()
    assert not (tmp_path / "s.sock.lock").exists()


def test_ignore_init_errors_keeps_going(start_target: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_iscsi_set_options", "params": {}},
        {"method": "bdev_malloc_create", "params": {"num_blocks": 0, "block_size": 512}},
        {"method": "bdev_malloc_create", "params": {"num_blocks": 8, "block_size": 512}},
    ]}]}))
    t = start_target("--json", str(cfg), "--json-ignore-init-errors")
    assert [b["name"] for b in t.rpc("bdev_get_bdevs")] == ["Malloc0"]
    # Each skipped entry is named in the log.
    assert ("subsystem 'bdev', config[0]: skipping bdev_iscsi_set_options: pybdev does not "
            "implement it") in t.log()
    assert "subsystem 'bdev', config[1]: bdev_malloc_create failed: " in t.log()


def test_unknown_subsystem_entries_are_skipped(start_target: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [
        {"subsystem": "iscsi", "config": [{"method": "iscsi_set_options", "params": {}}]}]}))
    assert start_target("--json", str(cfg)).rpc("framework_wait_init") is True


def test_second_target_on_same_socket_fails(target: Target) -> None:
    res = run_target("-r", str(target.sock))
    assert res.returncode == 1
    assert f"RPC Unix domain socket path {target.sock} in use. Specify another." in res.stderr
    assert target.rpc("framework_wait_init") is True


def test_stale_socket_is_taken_over(start_target: Any, tmp_path: Path) -> None:
    sock = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()  # a crashed target leaves the file behind
    (tmp_path / "stale.sock.lock").write_text("")
    t = start_target(sock=sock)
    assert t.rpc("framework_wait_init") is True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_signals_shut_down_cleanly(start_target: Any, sig: int) -> None:
    t = start_target()
    t.spdk("bdev_malloc_create", "8", "512")
    assert t.stop(sig) == 0
    assert not t.sock.exists()
    assert not Path(str(t.sock) + ".lock").exists()
    assert f"shutting down on {signal.Signals(sig).name}" in t.log()
    assert "pybdev stopped" in t.log()


def test_readiness_and_stopping_reach_systemd(start_target: Any, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in for the service manager's socket: systemd itself cannot run here.
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.settimeout(20)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        t = start_target()
        assert manager.recv(256).decode() == f"READY=1\nMAINPID={t.proc.pid}"
        t.stop()
        assert manager.recv(256) == b"STOPPING=1"


def test_spdk_kill_instance(target: Target) -> None:
    target.spdk("spdk_kill_instance", "SIGTERM")
    assert target.proc.wait(20) == 0
    assert not target.sock.exists()


def test_wait_for_rpc_then_start_init(start_target: Any, tmp_path: Path) -> None:
    """SPDK's json_config_with_delay.sh: live STARTUP calls override the file's."""
    t = start_target("--wait-for-rpc")
    assert "framework_start_init" in json.loads(t.spdk("rpc_get_methods", "-c").stdout)
    assert t.rpc_error("bdev_get_bdevs")["code"] == -1
    t.spdk("bdev_set_options", "--no-auto-examine", "-p", "8192", "-c", "128")
    t.spdk("framework_start_init")
    t.spdk("framework_wait_init")
    assert t.rpc("bdev_get_bdevs") == []
    assert t.rpc_error("framework_start_init")["code"] == -1
    cfg = tmp_path / "cfg.json"
    cfg.write_text(t.spdk("save_config").stdout)
    assert t.stop(signal.SIGINT) == 0

    t2 = start_target("--wait-for-rpc", "--json", str(cfg))
    t2.spdk("bdev_set_options", "--auto-examine", "-p", "16384", "-c", "256")
    t2.spdk("framework_start_init")
    opts = t2.rpc("framework_get_config", {"name": "bdev"})[0]["params"]
    assert (opts["bdev_auto_examine"], opts["bdev_io_pool_size"],
            opts["bdev_io_cache_size"]) == (True, 16384, 256)


def test_no_rpc_server_with_wait_for_rpc_is_refused(tmp_path: Path) -> None:
    res = run_target("--no-rpc-server", "--wait-for-rpc", "-r", str(tmp_path / "x.sock"))
    assert res.returncode != 0
    assert "--wait-for-rpc" in res.stderr


def test_no_rpc_server_still_applies_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create", "params": {"num_blocks": 8, "block_size": 512}}]}]}))
    proc = subprocess.Popen([sys.executable, "-m", "pybdev", "--no-rpc-server", "-r",
                             str(tmp_path / "x.sock"), "--json", str(cfg), "-L", "bdev"],
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    out = ""
    try:
        while "initialised" not in out:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            assert line, "target exited early"
            out += line
        assert not (tmp_path / "x.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out += proc.communicate(timeout=20)[1]
    assert proc.returncode == 0
    assert "registered bdev Malloc0" in out


def test_rpcs_allowed(start_target: Any) -> None:
    t = start_target("--rpcs-allowed", "rpc_get_methods,spdk_get_version")
    assert sorted(t.rpc("rpc_get_methods")) == ["rpc_get_methods", "spdk_get_version"]
    assert t.rpc_error("bdev_get_bdevs")["code"] == -32601


def test_rpc_get_methods_lists_everything_save_config_emits(target: Target) -> None:
    methods = set(target.rpc("rpc_get_methods"))
    target.rpc("bdev_malloc_create", {"num_blocks": 8, "block_size": 512})
    for sub in target.rpc("framework_get_subsystems"):
        for entry in target.rpc("framework_get_config", {"name": sub["subsystem"]}) or []:
            assert entry["method"] in methods


def test_framework_methods_errors(target: Target) -> None:
    resp = target.raw({"jsonrpc": "2.0", "method": "spdk_get_version", "id": 1, "params": {}})
    assert resp["error"] == {
        "code": -32602, "message": "spdk_get_version method requires no parameters"}
    assert target.rpc_error("framework_get_config", {"name": "iscsi"}) == {
        "code": -32602, "message": "Subsystem 'iscsi' not found"}
    assert target.rpc_error("spdk_kill_instance", {"sig_name": "SIGSTOP"})["code"] == -32602
    assert target.rpc("framework_get_subsystems") == [
        {"subsystem": "iobuf", "depends_on": []},
        {"subsystem": "accel", "depends_on": ["iobuf"]},
        {"subsystem": "bdev", "depends_on": ["accel", "iobuf"]},
        {"subsystem": "scheduler", "depends_on": []},
        {"subsystem": "nbd", "depends_on": ["bdev"]},
        {"subsystem": "ublk", "depends_on": ["bdev", "iobuf"]},
        {"subsystem": "nvmf", "depends_on": ["bdev"]},
    ]


def test_spdk_tgt_command_lines_start_the_target(start_target: Callable[..., Target],
                                                 tmp_path: Path) -> None:
    # As SPDK's scripts start spdk_tgt: blockdev.sh passes an unset "$env_ctx" as "".
    pidfile = tmp_path / "tgt.pid"
    t = start_target("-s", "1024", "-e", "bdev", "-i", "0", "-g", "-u", "", "-m", "0x3",
                     "-B", "0000:00:01.0", "-B", "0000:00:02.0", "--huge-dir", "/dev/hugepages",
                     "--no-huge", "--iova-mode", "va", "-f", str(pidfile))
    assert t.rpc("spdk_get_version")["version"].startswith("pybdev")
    assert pidfile.read_text() == f"{t.proc.pid}\n"
    log = t.log()
    for name in ("--mem-size", "--tpoint-group", "--shm-id", "--single-file-segments",
                 "--no-pci", "--pci-blocked", "--huge-dir", "--no-huge", "--iova-mode"):
        assert log.count(f"option {name} does not apply to pybdev; ignored") == 1, name
    assert t.stop() == 0
    assert not pidfile.exists()


def test_silence_noticelog_prints_warnings_only(start_target: Callable[..., Target]) -> None:
    t = start_target("--silence-noticelog")
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    t.stop()
    assert "INFO" not in t.log()
