"""Audit lines: one per state-changing call, with the caller, never a secret; none for reads."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import aiohttp

from pybdev.app import App, build_parser
from pybdev.rpc import audit
from pybdev.rpc.audit import is_read_only_name, shown_params
from tests.conftest import Target
from tests.rpc.test_http import HttpTarget, basic

AUDIT = re.compile(r"pybdev\.rpc\.audit: INFO: rpc (\S+)(.*) -> (ok|error -?\d+) in [\d.]+ ms "
                   r"by (.*)")


def audit_lines(log: str) -> list[tuple[str, str, str, str]]:
    return [m.groups() for m in map(AUDIT.search, log.splitlines()) if m]


def test_which_methods_are_audited() -> None:
    """The naming rule, and the read-only methods it would miss, declared mutating=False."""
    app = App(build_parser().parse_args(["--no-rpc-server"]))
    read_only = {m.name for m in app.registry.methods() if not m.spec.mutating}
    assert {n for n in read_only if not is_read_only_name(n)} == {
        "framework_wait_init", "bdev_wait_for_examine", "bdev_lvol_check_shallow_copy",
        "bdev_lvol_check_lvstore"}
    assert {"bdev_get_bdevs", "rpc_get_methods", "nvmf_subsystem_get_qpairs"} <= read_only
    mutating = {m.name for m in app.registry.methods() if m.spec.mutating}
    assert {"bdev_malloc_create", "bdev_malloc_delete", "nbd_start_disk", "log_set_flag",
            "spdk_kill_instance"} <= mutating


def test_shown_params_drop_secrets_and_structures() -> None:
    shown = shown_params({"nqn": "nqn.x", "host": "h", "psk": "SECRET", "dhchap_key": "k",
                          "key_file": "/k", "password": "p", "config_param": {"key": "v"},
                          "num_blocks": 8, "hosts": ["a"]})
    assert shown == {"nqn": "nqn.x", "host": "h", "num_blocks": 8}
    assert shown_params(["positional"]) == {}
    assert len(shown_params({f"name{i}": "x" * 500 for i in range(20)})["name0"]) == 64


def test_secret_test_is_kept_for_a_bounded_number_of_keys() -> None:
    """The answers for known keys are kept; a client inventing keys grows nothing."""
    for _ in range(2):  # the second time from what was kept
        assert shown_params({"psk": "SECRET", "Api_Token": "t", "name": "n"}) == {"name": "n"}
    for i in range(3 * audit._KEYS_KEPT):
        shown_params({f"k{i}": 1, f"field{i}": 2})
    assert len(audit._key_texts) == audit._KEYS_KEPT
    assert shown_params({"auth_secret_9999": "s", "field9999": 3}) == {"field9999": 3}


def test_create_and_delete_over_the_unix_socket(start_target: Callable[..., Target]) -> None:
    t = start_target()
    t.rpc("bdev_malloc_create", {"name": "M0", "num_blocks": 8, "block_size": 512})
    t.rpc("bdev_get_bdevs")
    t.rpc("bdev_get_iostat")
    t.rpc("bdev_malloc_delete", {"name": "M0"})
    assert t.rpc_error("bdev_malloc_delete", {"name": "M0"})["code"] == -19
    # A call that fails still names what it tried; the secret it carried is not logged.
    t.rpc_error("nvmf_subsystem_add_host", {"nqn": "nqn.2016-06.io.spdk:none",
                                            "host": "nqn.h", "psk": "NVMeTLSkey-SECRET"})
    t.cli("bdev_null_create", "N0", "1", "512")
    lines = audit_lines(t.log())
    me = f"uid={os.getuid()} pid={os.getpid()}"
    assert lines[0] == ("bdev_malloc_create", ' name="M0" num_blocks=8 block_size=512', "ok",
                        me)
    assert lines[1] == ("bdev_malloc_delete", ' name="M0"', "ok", me)
    assert lines[2] == ("bdev_malloc_delete", ' name="M0"', "error -19", me)
    assert lines[3][0] == "nvmf_subsystem_add_host" and lines[3][2].startswith("error")
    assert "psk" not in lines[3][1] and 'host="nqn.h"' in lines[3][1]
    assert "SECRET" not in t.log()
    # scripts/rpc.py is another process: its own pid.
    assert lines[4][0] == "bdev_null_create"
    assert re.fullmatch(rf"uid={os.getuid()} pid=\d+", lines[4][3])
    assert lines[4][3] != me
    assert len(lines) == 5  # the reads left no line


def test_config_replay_is_audited_as_the_config(start_target: Callable[..., Target],
                                                 tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_malloc_create",
         "params": {"name": "C0", "num_blocks": 8, "block_size": 512}}]}]}))
    t = start_target("--json", str(config))
    assert ("bdev_malloc_create", ' name="C0" num_blocks=8 block_size=512', "ok",
            f"config {config}") in audit_lines(t.log())


def test_json_log_has_the_audit_fields(start_target: Callable[..., Target],
                                       tmp_path: Path) -> None:
    log_file = tmp_path / "a.log"
    t = start_target("--log-file", str(log_file), "--log-format", "json")
    t.rpc("bdev_null_create", {"name": "J\n0", "num_blocks": 8, "block_size": 512})
    t.stop()
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    audit = [r["audit"] for r in records if "audit" in r]
    assert len(audit) == 1
    assert audit[0]["method"] == "bdev_null_create"
    assert audit[0]["params"] == {"name": "J\n0", "num_blocks": 8, "block_size": 512}
    assert audit[0]["result"] == "ok" and audit[0]["code"] == 0
    assert audit[0]["caller"] == f"uid={os.getuid()} pid={os.getpid()}"
    # In text the newline a client put in a name cannot start a forged line.
    assert next(r["message"] for r in records if "audit" in r).count("\n") == 0


async def test_http_caller_is_the_user_and_address(tmp_path: Path) -> None:
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0", "--http-user", "alice",
                   env={"PYBDEV_HTTP_PASSWORD": "pw-123"})
    try:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "bdev_null_create",
                           "params": {"name": "H0", "num_blocks": 8, "block_size": 512}})
        async with aiohttp.ClientSession() as s, s.post(
                t.url, data=body, headers={"Content-Type": "application/json",
                                           **basic("alice", "pw-123")}) as r:
            assert (await r.json())["result"] == "H0"
    finally:
        t.stop()
    lines = audit_lines(t.log())
    assert [line[:3] for line in lines] == [
        ("bdev_null_create", ' name="H0" num_blocks=8 block_size=512', "ok")]
    assert re.fullmatch(r'http user="alice" from 127\.0\.0\.1:\d+', lines[0][3])
    assert "pw-123" not in t.log()
