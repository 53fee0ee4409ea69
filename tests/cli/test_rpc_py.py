"""scripts/rpc.py as a user runs it, and SPDK's own client, against a real target."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from pybdev.cli import main as cli_main
from pybdev.cli import output as cli_output
from tests.conftest import ROOT, RPC_PY, SPDK_RPC, Target


def test_rpc_integrity_through_both_clients(target: Target) -> None:
    """SPDK's test/rpc/rpc.sh rpc_integrity, malloc part, through rpc.py and spdk-rpc."""
    for run in (target.cli, target.spdk):
        assert json.loads(run("bdev_get_bdevs").stdout) == []
        name = run("bdev_malloc_create", "8", "512").stdout.strip()
        assert len(json.loads(run("bdev_get_bdevs").stdout)) == 1
        assert run("bdev_malloc_delete", name).stdout == ""
        assert json.loads(run("bdev_get_bdevs").stdout) == []


def test_string_results_print_bare_and_errors_exit_1(target: Target) -> None:
    assert target.cli("bdev_malloc_create", "-b", "Mx", "1", "512").stdout == "Mx\n"
    res = target.cli("bdev_malloc_delete", "nope", check=False)
    assert res.returncode == 1
    assert '"code": -19' in res.stderr and res.stdout == ""


def test_dry_run_prints_the_request() -> None:
    res = subprocess.run([sys.executable, str(RPC_PY), "--dry-run", "bdev_get_bdevs", "-b",
                          "bdev_name"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("Request:\n")
    req = json.loads(res.stdout.split("\n", 1)[1])
    assert req["method"] == "bdev_get_bdevs" and req["params"]["name"] == "bdev_name"


def test_server_mode_status_lines(target: Target) -> None:
    lines = f"-s {target.sock} bdev_malloc_create 1 512\n-s {target.sock} bdev_malloc_delete x\n"
    res = subprocess.run([sys.executable, str(RPC_PY), "--server"], input=lines,
                         capture_output=True, text=True, timeout=60, check=True)
    out = res.stdout.splitlines()
    assert out[0] == "Malloc0" and out[1] == "**STATUS=0"
    assert out[-1] == "**STATUS=1"


def test_batch_mode_sends_one_batch(target: Target) -> None:
    script = "bdev_malloc_create -b A 1 512\nbdev_malloc_create -b B 1 512\n"
    res = target.cli("-b", stdin=script)
    assert res.stdout.split() == ['"A"', '"B"']
    assert [b["name"] for b in target.rpc("bdev_get_bdevs")] == ["A", "B"]


def test_script_mode_from_stdin(target: Target) -> None:
    res = target.cli(stdin="# comment\nbdev_malloc_create -b S 1 512\nbdev_get_bdevs -b S\n")
    assert res.stdout.startswith("S\n")


def test_save_and_load_config_with_both_clients(target: Target, tmp_path: Path,
                                                start_target: object) -> None:
    target.cli("bdev_malloc_create", "-b", "A", "1", "512")
    saved = target.cli("save_config").stdout
    other = start_target()  # type: ignore[operator]
    other.spdk("load_config", "-j", str(_write(tmp_path / "c.json", saved)))
    assert other.spdk("save_config").stdout == saved
    third = start_target()  # type: ignore[operator]
    third.cli("load_config", stdin=saved)
    assert third.cli("save_config").stdout == saved


def test_load_config_like_alias_rpc_sh(target: Target) -> None:
    """SPDK's test/json_config/alias_rpc/conf.json: null and [] configs, unnamed malloc."""
    conf = {"subsystems": [
        {"subsystem": "accel", "config": []},
        {"subsystem": "interface", "config": None},
        {"subsystem": "bdev", "config": [
            {"params": {"block_size": 4096, "num_blocks": 32}, "method": "bdev_malloc_create"},
            {"params": {"name": "Malloc1", "block_size": 4096, "num_blocks": 32},
             "method": "bdev_malloc_create"}]},
        {"subsystem": "nbd", "config": []},
    ]}
    target.spdk("load_config", "-i", stdin=json.dumps(conf))
    assert [b["name"] for b in target.rpc("bdev_get_bdevs")] == ["Malloc0", "Malloc1"]


def test_save_subsystem_config_and_framework_get_config(target: Target) -> None:
    sub = json.loads(target.spdk("save_subsystem_config", "-n", "nbd").stdout)
    assert sub == {"subsystem": "nbd", "config": []}
    cfg = json.loads(target.spdk("framework_get_config", "bdev").stdout)
    assert cfg[0]["method"] == "bdev_set_options" and cfg[-1] == {
        "method": "bdev_wait_for_examine"}


def test_rpc_py_runs_with_system_python_outside_the_venv(target: Target) -> None:
    system = Path("/usr/bin/python3")
    python = str(system) if system.exists() else sys.executable
    res = subprocess.run([python, str(RPC_PY), "-s", str(target.sock), "spdk_get_version"],
                         capture_output=True, text=True, timeout=60, cwd="/", env={})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"].startswith("pybdev")
    assert ROOT.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_signal_is_refused_before_sending(tmp_path: Path) -> None:
    """As SPDK's rpc.py: a usage error (exit 2), no connection attempted."""
    for argv in ([sys.executable, str(RPC_PY)], [str(SPDK_RPC)]):
        res = subprocess.run([*argv, "-s", str(tmp_path / "none.sock"), "spdk_kill_instance",
                              "SIGFOO"], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res
        assert "invalid choice: 'SIGFOO'" in res.stderr and res.stdout == ""


def test_dry_run_prints_requests_only_for_every_command() -> None:
    """No command prints anything but its requests under --dry-run (no stray null)."""
    parity = _load_parity()
    commands = parity.subcommands(parity.pybdev_parser())
    for name, parser in commands.items():
        if name in ("load_config", "load_subsystem_config", "save_config"):
            continue  # they need answers to go on, as SPDK's do
        out = parity._capture(lambda name=name, parser=parser: cli_main(
            ["--dry-run", name, *parity.sample_argv(parser, False)]))
        cli_output.suppressed = False
        if out.startswith("<"):
            continue  # the command refused the sample arguments
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines and lines[0] == "Request:", (name, out)
        assert "null" not in lines and "None" not in lines, (name, out)
        assert len(parity.requests_of(out)) >= 1, (name, out)


def test_dry_run_batch_prints_one_batch_as_spdk() -> None:
    script = "bdev_get_bdevs\nspdk_get_version\n"
    ours = subprocess.run([sys.executable, str(RPC_PY), "--dry-run", "-b"], input=script,
                          capture_output=True, text=True, timeout=60)
    theirs = subprocess.run([str(SPDK_RPC), "--dry-run", "-b"], input=script,
                            capture_output=True, text=True, timeout=60)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    parity = _load_parity()
    assert parity.requests_of(ours.stdout) == parity.requests_of(theirs.stdout) == [
        {"jsonrpc": "2.0", "method": "bdev_get_bdevs"},
        {"jsonrpc": "2.0", "method": "spdk_get_version"}]


def _load_parity() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rpc_cli_parity",
                                                  ROOT / "bench" / "rpc_cli_parity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bash_completion_completes_command_names() -> None:
    script = (f"source {ROOT}/etc/bash_completion.d/rpc.py; "
              f"COMP_WORDS=({ROOT}/scripts/rpc.py -s /tmp/x.sock bdev_mal); COMP_CWORD=3; "
              "_pybdev_rpc; echo \"${COMPREPLY[@]}\"")
    res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert res.stdout.split() == ["bdev_malloc_create", "bdev_malloc_delete"]


def test_r_refuses_a_host_and_port() -> None:
    res = subprocess.run([sys.executable, "-m", "pybdev", "-r", "127.0.0.1:5260"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert "-r takes a Unix socket path; serve HTTP JSON-RPC with --http HOST:PORT" in res.stderr
