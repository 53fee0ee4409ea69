"""The bdev RPCs on a real target, through SPDK's own client (spdk-rpc) and scripts/rpc.py.

Covers SPDK's rpc_integrity sequence (test/rpc/rpc.sh), deferred passthru, deleting a claimed
base, duplicate names and UUIDs, the documented error codes of every method, and
``bdev_get_bdevs`` field by field (lib/bdev/bdev_rpc.c). Tests on ``shared_target`` leave it empty.
"""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pybdev.bdev.passthru import NAMESPACE, sha1_uuid
from tests.conftest import Target, wait_until

from .conftest import names, rpc_error

DECODE = "spdk_json_decode_object failed"
RATE_LIMITS = {"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0, "r_mbytes_per_sec": 0,
               "w_mbytes_per_sec": 0}
IO_TYPES = ["read", "write", "unmap", "flush", "reset", "nvme_admin", "nvme_io", "nvme_io_md",
            "write_zeroes", "zcopy", "get_zone_info", "zone_management", "zone_append",
            "compare", "compare_and_write", "abort", "seek_hole", "seek_data", "copy",
            "nvme_iov_md", "nvme_nssr", "write_uncorrectable"]


@pytest.fixture
def t(shared_target: Target) -> Iterator[Target]:
    yield shared_target
    left = names(shared_target)
    assert left == [], f"test left bdevs behind: {left}"


def server(t: Target, via: str, *lines: str) -> list[tuple[int, str]]:
    """Run command lines through one ``--server`` client: (status, output) of each."""
    run = t.spdk if via == "spdk" else t.cli
    out = run("--server", stdin="".join(f"-s {t.sock} {line}\n" for line in lines)).stdout
    results = []
    for chunk in out.split("**STATUS=")[:-1]:
        text = chunk.split("\n", 1)[1] if results else chunk
        results.append(text)
    statuses = [int(part[0]) for part in out.split("**STATUS=")[1:]]
    assert len(statuses) == len(lines), out
    return list(zip(statuses, results, strict=True))


def count(t: Target, via: str = "spdk") -> int:
    run = t.spdk if via == "spdk" else t.cli
    return len(json.loads(run("bdev_get_bdevs").stdout))


@pytest.mark.parametrize("via", ["spdk", "cli"])
def test_rpc_integrity(t: Target, via: str) -> None:
    run = t.spdk if via == "spdk" else t.cli
    assert count(t, via) == 0
    malloc = run("bdev_malloc_create", "8", "512").stdout.strip()
    assert malloc == "Malloc0" or malloc.startswith("Malloc")
    assert count(t, via) == 1
    assert run("bdev_passthru_create", "-b", malloc, "-p", "Passthru0").stdout.strip() \
        == "Passthru0"
    bdevs = json.loads(run("bdev_get_bdevs").stdout)
    assert len(bdevs) == 2
    assert run("bdev_passthru_delete", "Passthru0").stdout == ""
    assert run("bdev_malloc_delete", malloc).stdout == ""
    assert count(t, via) == 0


def test_rpc_integrity_through_server_mode(t: Target) -> None:
    """SPDK's rpc_cmd: rpc.py --server, one command a line, a status after each."""
    lines = ["bdev_malloc_create -b M0 8 512", "bdev_passthru_create -b M0 -p Passthru0",
             "bdev_get_bdevs", "bdev_passthru_delete Passthru0", "bdev_malloc_delete M0",
             "bdev_malloc_delete M0"]
    # Each line is a whole command line: the socket goes on every one.
    script = "".join(f"-s {t.sock} {line}\n" for line in lines)
    for run in (t.spdk, t.cli):
        out = run("--server", stdin=script).stdout
        assert out.count("**STATUS=0") == 5 and out.count("**STATUS=1") == 1, out
        assert '"name": "Passthru0"' in out


def test_plugin_style_create_and_dry_run(t: Target) -> None:
    # test/rpc/rpc_plugin.py's payload: only num_blocks and block_size.
    name = t.rpc("bdev_malloc_create", {"num_blocks": 256, "block_size": 4096})
    assert t.rpc("bdev_get_bdevs", {"name": name})[0]["num_blocks"] == 256
    assert t.rpc("bdev_malloc_delete", {"name": name}) is True
    for run in (t.spdk, t.cli):
        out = run("--dry-run", "bdev_get_bdevs", "-b", "bdev_name").stdout
        assert out.startswith("Request:")
        req = json.loads(out.split("\n", 1)[1])
        assert req["method"] == "bdev_get_bdevs" and req["params"]["name"] == "bdev_name"


def test_deferred_passthru(t: Target) -> None:
    assert t.spdk("bdev_passthru_create", "-b", "Later", "-p", "PT").stdout.strip() == "PT"
    assert names(t) == []
    assert rpc_error(t, "bdev_get_bdevs", {"name": "PT"}) == {"code": -19,
                                                             "message": "No such device"}
    assert rpc_error(t, "bdev_passthru_delete", {"name": "PT"})["code"] == -19
    t.cli("bdev_malloc_create", "-b", "Later", "4", "4096")
    pt = json.loads(t.cli("bdev_get_bdevs", "-b", "PT", "-t", "1000").stdout)[0]
    base = t.rpc("bdev_get_bdevs", {"name": "Later"})[0]
    assert pt["uuid"] == sha1_uuid(NAMESPACE, uuidlib.UUID(base["uuid"]).bytes)
    assert base["claimed"] is True and base["claim_type"] == "exclusive_write"
    # The association survives the base going away and brings the passthru back with it.
    t.cli("bdev_malloc_delete", "Later")
    assert names(t) == []
    t.cli("bdev_malloc_create", "-b", "Later", "4", "4096")
    assert names(t) == ["Later", "PT"]
    t.cli("bdev_passthru_delete", "PT")
    t.cli("bdev_malloc_delete", "Later")


def test_delete_of_a_claimed_base_tears_down_the_stack(t: Target) -> None:
    t.rpc("bdev_malloc_create", {"name": "Base", "num_blocks": 64, "block_size": 512})
    t.rpc("bdev_passthru_create", {"base_bdev_name": "Base", "name": "PT"})
    assert t.rpc("bdev_error_create", {"base_name": "PT"}) is True
    t.rpc("bdev_passthru_create", {"base_bdev_name": "EE_PT", "name": "Top"})
    assert names(t) == ["Base", "PT", "EE_PT", "Top"]
    assert t.spdk("bdev_malloc_delete", "Base").returncode == 0
    assert names(t) == []
    # The passthru associations stay (Top on EE_PT, PT on Base); the error config went.
    t.rpc("bdev_malloc_create", {"name": "Base", "num_blocks": 64, "block_size": 512})
    assert names(t) == ["Base", "PT"]
    t.rpc("bdev_passthru_delete", {"name": "PT"})
    t.rpc("bdev_malloc_delete", {"name": "Base"})
    t.rpc("bdev_malloc_create", {"name": "EE_PT", "num_blocks": 64, "block_size": 512})
    assert names(t) == ["EE_PT", "Top"]
    t.rpc("bdev_passthru_delete", {"name": "Top"})
    t.rpc("bdev_malloc_delete", {"name": "EE_PT"})


def test_duplicate_names_and_uuids(start_target: Any, short_dir: Path) -> None:
    t = start_target(sock=short_dir / "s.sock")
    u = t.rpc("bdev_get_bdevs", {"name": t.rpc(
        "bdev_malloc_create", {"name": "M", "num_blocks": 64, "block_size": 512})})[0]["uuid"]

    def fails(method: str, params: dict[str, Any]) -> None:
        err = rpc_error(t, method, params)
        assert err["code"] == -17 and err["message"].startswith("File exists"), (method, err)

    fails("bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    fails("bdev_malloc_create", {"name": "M2", "num_blocks": 8, "block_size": 512, "uuid": u})
    fails("bdev_malloc_create", {"name": u, "num_blocks": 8, "block_size": 512})
    fails("bdev_null_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    fails("bdev_null_create", {"name": "N", "num_blocks": 8, "block_size": 512,
                               "uuid": u.upper()})
    img = short_dir / "d.img"
    img.write_bytes(bytes(65536))
    fails("bdev_aio_create", {"name": "M", "filename": str(img), "block_size": 512})
    fails("bdev_aio_create", {"name": "A", "filename": str(img), "block_size": 512, "uuid": u})
    t.rpc("bdev_passthru_create", {"base_bdev_name": "nothing", "name": "P"})
    fails("bdev_passthru_create", {"base_bdev_name": "M", "name": "P"})
    fails("bdev_passthru_create", {"base_bdev_name": "M", "name": "M"})
    fails("bdev_passthru_create", {"base_bdev_name": "M", "name": "P2", "uuid": u})
    t.rpc("bdev_error_create", {"base_name": "nothing"})
    fails("bdev_error_create", {"base_name": "nothing"})
    t.rpc("bdev_malloc_create", {"name": "EE_M", "num_blocks": 8, "block_size": 512})
    fails("bdev_error_create", {"base_name": "M"})
    assert names(t) == ["M", "EE_M"]
    base = t.rpc("bdev_get_bdevs", {"name": "M"})[0]
    assert base["claimed"] is False  # every failed build released its claim
    assert t.stop() == 0


def test_decode_failures_use_each_methods_code(t: Target) -> None:
    internal = ["bdev_malloc_create", "bdev_malloc_delete", "bdev_null_create",
                "bdev_null_delete", "bdev_null_resize", "bdev_aio_create", "bdev_aio_delete",
                "bdev_aio_rescan", "bdev_passthru_create", "bdev_passthru_delete",
                "bdev_get_bdevs", "bdev_get_iostat", "bdev_reset_iostat"]
    invalid = ["bdev_error_create", "bdev_error_delete", "bdev_error_inject_error",
               "bdev_error_resume_pending", "bdev_examine"]
    for method in internal + invalid:
        err = rpc_error(t, method, {"no_such_param": 1})
        code = -32603 if method in internal else -32602
        assert err["code"] == code, (method, err)
        assert err["message"].startswith(DECODE), (method, err)
        assert err["message"] != DECODE  # pybdev says which field and why


@pytest.mark.parametrize(("method", "params", "code"), [
    ("bdev_malloc_delete", {"name": "nope"}, -19),
    ("bdev_null_delete", {"name": "nope"}, -19),
    ("bdev_aio_delete", {"name": "nope"}, -19),
    ("bdev_aio_rescan", {"name": "nope"}, -19),
    ("bdev_passthru_delete", {"name": "nope"}, -19),
    ("bdev_error_delete", {"name": "nope"}, -19),
    ("bdev_error_resume_pending", {"name": "nope"}, -19),
    ("bdev_error_inject_error", {"name": "nope", "io_type": "all", "error_type": "failure"},
     -19),
    ("bdev_null_resize", {"name": "nope", "new_size": 8}, -19),
    ("bdev_get_bdevs", {"name": "nope"}, -19),
    ("bdev_get_bdevs", {"name": "nope", "timeout": 150}, -110),
    ("bdev_get_iostat", {"names": ["nope"]}, -19),
    ("bdev_get_iostat", {"per_channel": True}, -22),
    ("bdev_reset_iostat", {"name": "nope"}, -19),
    ("bdev_examine", {"name": "x"}, -22),
    ("bdev_malloc_create", {"num_blocks": 0, "block_size": 512}, -22),
    ("bdev_malloc_create", {"num_blocks": 8, "block_size": 520}, -22),
    ("bdev_null_create", {"name": "N", "num_blocks": 8, "block_size": 512, "md_size": 3}, -22),
    ("bdev_null_create", {"name": "N", "num_blocks": 0, "block_size": 512}, -22),
    ("bdev_aio_create", {"name": "A", "filename": "/nonexistent/file"}, -2),
])
def test_error_codes(t: Target, method: str, params: dict[str, Any], code: int) -> None:
    err = rpc_error(t, method, params)
    assert err["code"] == code, err
    assert err["message"].startswith(os.strerror(-code)), err


def test_error_codes_needing_state(t: Target, tmp_path: Path) -> None:
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 64, "block_size": 512})
    t.rpc("bdev_null_create", {"name": "N", "num_blocks": 4096, "block_size": 512})
    t.rpc("bdev_passthru_create", {"base_bdev_name": "M", "name": "PT"})
    assert rpc_error(t, "bdev_passthru_create", {"base_bdev_name": "M", "name": "PT2"}) == {
        "code": -1, "message": "Operation not permitted: bdev M is claimed by module passthru"}
    assert rpc_error(t, "bdev_error_create", {"base_name": "M"})["code"] == -1
    # Deletes through the wrong module: -19.
    assert rpc_error(t, "bdev_null_delete", {"name": "M"})["code"] == -19
    assert rpc_error(t, "bdev_malloc_delete", {"name": "PT"})["code"] == -19
    assert rpc_error(t, "bdev_error_inject_error", {
        "name": "M", "io_type": "read", "error_type": "failure"})["code"] == -19
    assert rpc_error(t, "bdev_null_resize", {"name": "N", "new_size": 1})["code"] == -22
    assert rpc_error(t, "bdev_null_resize", {"name": "M", "new_size": 100})["code"] == -22
    assert t.spdk("bdev_null_resize", "N", "4").stdout.strip() == "true"
    assert t.rpc("bdev_get_bdevs", {"name": "N"})[0]["num_blocks"] == 8192
    t.rpc("bdev_error_create", {"base_name": "N"})
    assert rpc_error(t, "bdev_error_inject_error", {
        "name": "EE_N", "io_type": "all", "error_type": "nvme_failure"}) == {
        "code": -22, "message": "nvme_sct or nvme_sc should be specified for NVMe error injection"}
    assert rpc_error(t, "bdev_error_inject_error", {
        "name": "EE_N", "io_type": "read", "error_type": "failure", "nvme_sct": 1})["code"] == -22
    assert rpc_error(t, "bdev_error_inject_error", {
        "name": "EE_N", "io_type": "read", "error_type": "corrupt_data"})["code"] == -22
    t.spdk("bdev_error_inject_error", "EE_N", "all", "failure", "-n", "5")
    t.cli("bdev_error_inject_error", "EE_N", "read", "nvme_failure", "--nvme-sct", "1",
          "--nvme-sc", "2")
    t.cli("bdev_error_inject_error", "EE_N", "clear", "failure")
    t.spdk("bdev_error_resume_pending", "EE_N")
    img = tmp_path / "d.img"
    img.write_bytes(bytes(65536))
    assert rpc_error(t, "bdev_aio_create", {"name": "A", "filename": str(img)})["code"] == -22
    assert rpc_error(t, "bdev_aio_create", {"name": "A", "filename": str(img),
                                            "block_size": 512, "nowait": True})["code"] == -95
    state = rpc_error(t, "bdev_set_options", {"bdev_auto_examine": False})
    assert state["code"] == -1 and state["message"].startswith("Method may only be called before")
    t.rpc("bdev_error_delete", {"name": "EE_N"})
    t.rpc("bdev_passthru_delete", {"name": "PT"})
    t.rpc("bdev_null_delete", {"name": "N"})
    t.rpc("bdev_malloc_delete", {"name": "M"})
    # PT2's association outlived its failed build (SPDK keeps it): it comes up with the
    # next bdev named M. Build it that way to delete it.
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 64, "block_size": 512})
    assert names(t) == ["M", "PT2"]
    t.rpc("bdev_passthru_delete", {"name": "PT2"})
    t.rpc("bdev_malloc_delete", {"name": "M"})


def expected_keys(*, numa: bool, claimed: bool, md: bool = False) -> list[str]:
    keys = ["name", "aliases", "product_name", "block_size", "num_blocks",
            "preferred_write_alignment", "preferred_write_granularity", "optimal_write_size",
            "preferred_unmap_alignment", "preferred_unmap_granularity", "uuid"]
    keys += ["numa_id"] if numa else []
    keys += ["md_size", "md_interleave", "dif_type"] if md else []
    keys += ["assigned_rate_limits", "claimed"] + (["claim_type"] if claimed else [])
    return [*keys, "zoned", "supported_io_types", "driver_specific"]


def supported(bdev: dict[str, Any]) -> list[str]:
    assert list(bdev["supported_io_types"]) == IO_TYPES
    return [k for k, v in bdev["supported_io_types"].items() if v]


def test_get_bdevs_field_by_field(t: Target, tmp_path: Path) -> None:
    img = tmp_path / "aio.img"
    img.write_bytes(bytes(1 << 20))
    u = "0d3b3c4a-1111-4222-8333-444455556666"
    assert [r[0] for r in server(
        t, "spdk", f"bdev_malloc_create -b Malloc7 -u {u.upper()} -o 8 1 4096",
        "bdev_null_create Null0 2 512 -m 8 -a 1 -g 2 -s 3 -c 4 -r 5",
        f"bdev_aio_create {img} AIO0 4096 --fallocate", "bdev_passthru_create -b Malloc7 -p PT0",
        "bdev_error_create Null0")] == [0] * 5
    by_name = {b["name"]: b for b in t.rpc("bdev_get_bdevs")}
    assert list(by_name) == ["Malloc7", "Null0", "AIO0", "PT0", "EE_Null0"]

    m = by_name["Malloc7"]
    assert list(m) == expected_keys(numa=True, claimed=True)
    assert (m["aliases"], m["uuid"], m["product_name"]) == ([u], u, "Malloc disk")
    assert (m["block_size"], m["num_blocks"], m["numa_id"]) == (4096, 256, -1)
    assert [m[k] for k in expected_keys(numa=False, claimed=False)[5:10]] == [0] * 5
    assert m["assigned_rate_limits"] == RATE_LIMITS
    assert (m["claimed"], m["claim_type"], m["zoned"], m["driver_specific"]) == (
        True, "exclusive_write", False, {})
    assert supported(m) == ["read", "write", "unmap", "flush", "reset", "write_zeroes", "zcopy",
                            "compare", "abort", "copy"]

    n = by_name["Null0"]
    assert list(n) == expected_keys(numa=False, claimed=True, md=True)
    assert (n["product_name"], n["block_size"], n["num_blocks"]) == ("Null disk", 520, 4096)
    assert [n[k] for k in expected_keys(numa=False, claimed=False)[5:10]] == [1, 2, 3, 4, 5]
    assert (n["md_size"], n["md_interleave"], n["dif_type"]) == (8, True, 0)
    assert supported(n) == ["read", "write", "reset", "write_zeroes", "abort"]
    assert n["driver_specific"] == {}

    a = by_name["AIO0"]
    assert list(a) == expected_keys(numa=False, claimed=False)
    assert (a["product_name"], a["block_size"], a["num_blocks"]) == ("AIO disk", 4096, 256)
    assert supported(a) == ["read", "write", "unmap", "flush", "reset", "write_zeroes"]
    assert a["driver_specific"] == {"aio": {"filename": str(img), "block_size_override": True,
                                            "readonly": False, "fallocate": True,
                                            "nowait": False}}

    p = by_name["PT0"]
    assert list(p) == expected_keys(numa=True, claimed=False)
    assert p["uuid"] == sha1_uuid(NAMESPACE, uuidlib.UUID(u).bytes) and p["aliases"] == [p["uuid"]]
    assert (p["product_name"], p["block_size"], p["num_blocks"], p["numa_id"]) == (
        "passthru", 4096, 256, -1)
    assert supported(p) == supported(m)
    assert p["driver_specific"] == {"passthru": {"name": "PT0", "base_bdev_name": "Malloc7"}}

    e = by_name["EE_Null0"]
    assert list(e) == expected_keys(numa=False, claimed=False, md=True)  # the base's format
    assert (e["product_name"], e["block_size"], e["num_blocks"]) == (
        "Error Injection Disk", 520, 4096)
    assert supported(e) == supported(n)
    assert e["driver_specific"] == {"error_disk": {"base_bdev": "Null0"}}

    # By alias, and the CLI prints the same list.
    assert t.rpc("bdev_get_bdevs", {"name": u}) == [m]
    assert json.loads(t.cli("bdev_get_bdevs", "-b", "PT0").stdout) == [p]
    iostat = t.rpc("bdev_get_iostat", {"names": ["PT0", "AIO0"], "per_channel": False})
    assert [b["name"] for b in iostat["bdevs"]] == ["PT0", "AIO0"]
    # rpc.py's older -b form (SPDK before v26.05) still works against pybdev.
    assert json.loads(t.cli("bdev_get_iostat", "-b", "PT0", "-c").stdout)["name"] == "PT0"
    assert server(t, "spdk", "bdev_passthru_delete PT0", "bdev_error_delete EE_Null0",
                  "bdev_aio_delete AIO0", "bdev_null_delete Null0",
                  "bdev_malloc_delete Malloc7") == [(0, "")] * 5


def test_cli_output_shapes(t: Target, tmp_path: Path) -> None:
    img = tmp_path / "aio.img"
    img.write_bytes(bytes(1 << 20))
    lines = [
        "bdev_malloc_create -b M 1 512", "bdev_null_create N 1 512",
        f"bdev_aio_create {img} A 512 -r", "bdev_aio_rescan A", "bdev_error_create M",
        "bdev_error_inject_error EE_M write pending", "bdev_reset_iostat -b N -m maxmin",
        "bdev_get_iostat --names N,A --reset-mode all", "bdev_get_iostat -c --names N",
        "bdev_wait_for_examine", "bdev_error_delete EE_M", "bdev_aio_delete A",
        "bdev_null_delete N", "bdev_malloc_delete M", "bdev_malloc_delete nope",
    ]
    for via in ("spdk", "cli"):
        res = server(t, via, *lines)
        assert [r[0] for r in res] == [0] * 14 + [1]
        out = [r[1] for r in res]
        assert out[:5] == ["M\n", "N\n", "A\n", "true\n", "true\n"]
        assert out[5:7] == ["", ""]
        assert [b["name"] for b in json.loads(out[7])["bdevs"]] == ["N", "A"]
        one = json.loads(out[8])
        assert one["name"] == "N" and len(one["channels"]) == 1
        assert out[9:14] == [""] * 5
        assert '"code": -19' in out[14]
    for run in (t.spdk, t.cli):
        failed = run("bdev_null_create", "N", "1", "512", "-t", "1", check=False)
        assert failed.returncode == 1 and "--md-size must be > 0" in failed.stdout


GOOD: dict[str, dict[str, Any]] = {
    "bdev_malloc_create": {"name": "X", "num_blocks": 8, "block_size": 512},
    "bdev_null_create": {"name": "X", "num_blocks": 8, "block_size": 512},
    "bdev_aio_create": {"name": "X", "filename": "/dev/null", "block_size": 512},
    "bdev_passthru_create": {"name": "X", "base_bdev_name": "Y"},
    "bdev_error_create": {"base_name": "Y"},
}
REQUIRED = {"bdev_malloc_create": ["num_blocks", "block_size"],
            "bdev_null_create": ["name", "num_blocks", "block_size"],
            "bdev_aio_create": ["name", "filename"],
            "bdev_passthru_create": ["name", "base_bdev_name"],
            "bdev_error_create": ["base_name"]}
WRONG: list[tuple[str, str, Any]] = [
    # method, field, value: wrong type or out of range
    ("bdev_malloc_create", "num_blocks", "8"),
    ("bdev_malloc_create", "num_blocks", -1),
    ("bdev_malloc_create", "num_blocks", 2**64),
    ("bdev_malloc_create", "num_blocks", 1.5),
    ("bdev_malloc_create", "block_size", 2**32),
    ("bdev_malloc_create", "block_size", True),
    ("bdev_malloc_create", "md_interleave", 0),
    ("bdev_malloc_create", "dif_type", 2**31),
    ("bdev_malloc_create", "numa_id", "0"),
    ("bdev_malloc_create", "uuid", "not-a-uuid"),
    ("bdev_malloc_create", "name", 5),
    ("bdev_null_create", "block_size", "512"),
    ("bdev_null_create", "num_blocks", -8),
    ("bdev_null_create", "dif_is_head_of_md", 1),
    ("bdev_null_create", "preferred_write_alignment", -1),
    ("bdev_null_create", "uuid", 7),
    ("bdev_aio_create", "filename", ["/dev/null"]),
    ("bdev_aio_create", "block_size", -512),
    ("bdev_aio_create", "readonly", "true"),
    ("bdev_aio_create", "fallocate", 1),
    ("bdev_aio_create", "nowait", "false"),
    ("bdev_passthru_create", "base_bdev_name", 1),
    ("bdev_passthru_create", "uuid", "1234"),
    ("bdev_error_create", "base_name", {}),
    ("bdev_error_create", "uuid", "zz"),
]
CASES = ([(m, {k: v for k, v in GOOD[m].items() if k != f}, f"missing {f}")
          for m, fields in REQUIRED.items() for f in fields]
         + [(m, {**GOOD[m], "bogus": 1}, "extra key") for m in GOOD]
         + [(m, {**GOOD[m], f: v}, f"{f}={v!r}") for m, f, v in WRONG]
         + [(m, None, "no params") for m in GOOD]
         + [(m, [GOOD[m]], "params as an array") for m in GOOD])


@pytest.mark.parametrize(("method", "params", "what"), CASES, ids=[
    f"{m}-{w}" for m, _p, w in CASES])
def test_bad_input_is_refused_and_changes_nothing(t: Target, method: str, params: Any,
                                                   what: str) -> None:
    before = t.rpc("framework_get_config", {"name": "bdev"})
    with t.client() as c:
        req = c.request(method)
        if params is not None:
            req["params"] = params
        c.send_raw(req)
        err = c.recv_value()["error"]
    code = -32602 if method == "bdev_error_create" else -32603
    assert err["code"] == code, err
    assert err["message"].startswith(f"{DECODE}: "), err
    assert t.rpc("framework_get_config", {"name": "bdev"}) == before
    assert names(t) == []


def test_manual_examine(start_target: Any, short_dir: Path) -> None:
    """With auto examine off, a deferred passthru waits for bdev_examine of its base."""
    t = start_target("--wait-for-rpc", sock=short_dir / "s.sock")
    assert rpc_error(t, "bdev_set_options", {"bdev_io_pool_size": 10,
                                             "bdev_io_cache_size": 256})["code"] == -32602
    t.spdk("bdev_set_options", "--no-auto-examine")
    t.spdk("framework_start_init")
    t.spdk("bdev_passthru_create", "-b", "M", "-p", "PT")
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 8, "block_size": 512})
    assert names(t) == ["M"]  # not examined: the passthru is not built
    assert t.rpc("bdev_examine", {"name": "M"}) is True
    assert names(t) == ["M", "PT"]
    assert rpc_error(t, "bdev_examine", {"name": "M"})["code"] == -17
    bdev = json.loads(t.spdk("save_config").stdout)["subsystems"]
    config = next(s["config"] for s in bdev if s["subsystem"] == "bdev")
    assert config[0]["params"]["bdev_auto_examine"] is False
    assert config[1] == {"method": "bdev_examine", "params": {"name": "M"}}
    assert t.stop() == 0


def test_qd_sampling_period_kept_per_bdev(t: Target) -> None:
    """bdev_set_qd_sampling_period: per bdev, and bdev_get_iostat shows what SPDK shows."""
    t.spdk("bdev_malloc_create", "-b", "Q0", "1", "512")
    t.spdk("bdev_malloc_create", "-b", "Q1", "1", "512")
    try:
        t.spdk("bdev_set_qd_sampling_period", "Q0", "1000")
        stats = {s["name"]: s for s in t.rpc("bdev_get_iostat")["bdevs"]}
        assert stats["Q0"]["queue_depth_polling_period"] == 1000
        assert {"queue_depth", "io_time", "weighted_io_time"} <= set(stats["Q0"])
        assert "queue_depth_polling_period" not in stats["Q1"]
        # Sampled on a timer: nothing in flight, so the depth is 0 and no time is busy.
        wait_until(lambda: t.rpc("bdev_get_iostat", {"name": "Q0"})["bdevs"][0][
            "queue_depth"] == 0, what="a queue depth sample")
        assert t.rpc("bdev_get_iostat", {"name": "Q0"})["bdevs"][0]["io_time"] == 0
        t.cli("bdev_set_qd_sampling_period", "Q0", "0")
        assert "queue_depth_polling_period" not in t.rpc("bdev_get_iostat")["bdevs"][0]
        assert t.rpc_error("bdev_set_qd_sampling_period", {"name": "nope", "period": 1}) == {
            "code": -19, "message": "No such device"}
        err = t.rpc_error("bdev_set_qd_sampling_period", {"name": "Q0"})
        assert err["code"] == -32603
        assert err["message"].startswith("spdk_json_decode_object failed")
    finally:
        t.rpc("bdev_malloc_delete", {"name": "Q0"})
        t.rpc("bdev_malloc_delete", {"name": "Q1"})
