"""lvol commands, with the arguments and payloads of SPDK's ``rpc.py`` (spdk/cli/lvol.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pybdev.cli.output import print_dict, print_json


def _call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    return args.client.call(method, params)


def bdev_lvol_create_lvstore(a: argparse.Namespace) -> None:
    # The default unmap clear method may take long on big bases: SPDK's CLI waits 90 s.
    if a.timeout is None and hasattr(a.client, "timeout"):
        a.client.timeout = 90.0
    print_json(_call(a, "bdev_lvol_create_lvstore", bdev_name=a.bdev_name, lvs_name=a.lvs_name,
                     cluster_sz=a.cluster_sz, clear_method=a.clear_method,
                     num_md_pages_per_cluster_ratio=a.num_md_pages_per_cluster_ratio,
                     md_page_size=a.md_page_size))


def bdev_lvol_rename_lvstore(a: argparse.Namespace) -> None:
    _call(a, "bdev_lvol_rename_lvstore", old_name=a.old_name, new_name=a.new_name)


def bdev_lvol_grow_lvstore(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_lvol_grow_lvstore", uuid=a.uuid, lvs_name=a.lvs_name))


def bdev_lvol_create(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_lvol_create", lvol_name=a.lvol_name, size_in_mib=a.size_in_mib,
                     thin_provision=a.thin_provision, clear_method=a.clear_method,
                     uuid=a.uuid, lvs_name=a.lvs_name))


def bdev_lvol_snapshot(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_lvol_snapshot", lvol_name=a.lvol_name,
                     snapshot_name=a.snapshot_name))


def bdev_lvol_clone(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_lvol_clone", snapshot_name=a.snapshot_name,
                     clone_name=a.clone_name))


def bdev_lvol_clone_bdev(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_lvol_clone_bdev", bdev=a.bdev, lvs_name=a.lvs_name,
                     clone_name=a.clone_name))


def bdev_lvol_set_parent_bdev(a: argparse.Namespace) -> None:
    _call(a, "bdev_lvol_set_parent_bdev", lvol_name=a.lvol_name, parent_name=a.parent_name)


def bdev_lvol_rename(a: argparse.Namespace) -> None:
    _call(a, "bdev_lvol_rename", old_name=a.old_name, new_name=a.new_name)


def bdev_lvol_resize(a: argparse.Namespace) -> None:
    _call(a, "bdev_lvol_resize", name=a.name, size_in_mib=a.size_in_mib)


def bdev_lvol_set_parent(a: argparse.Namespace) -> None:
    _call(a, "bdev_lvol_set_parent", lvol_name=a.lvol_name, parent_name=a.parent_name)


def bdev_lvol_start_shallow_copy(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_lvol_start_shallow_copy", src_lvol_name=a.src_lvol_name,
                     dst_bdev_name=a.dst_bdev_name))


def bdev_lvol_check_shallow_copy(a: argparse.Namespace) -> None:
    print_json(_call(a, "bdev_lvol_check_shallow_copy", operation_id=a.operation_id))


def _by_name(method: str) -> Callable[[argparse.Namespace], None]:
    def run(a: argparse.Namespace) -> None:
        _call(a, method, name=a.name)
    return run


def bdev_lvol_delete_lvstore(a: argparse.Namespace) -> None:
    _call(a, "bdev_lvol_delete_lvstore", uuid=a.uuid, lvs_name=a.lvs_name)


def bdev_lvol_get_lvstores(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_lvol_get_lvstores", uuid=a.uuid, lvs_name=a.lvs_name))


def bdev_lvol_get_lvols(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_lvol_get_lvols", lvs_uuid=a.lvs_uuid, lvs_name=a.lvs_name))


def bdev_lvol_check_lvstore(a: argparse.Namespace) -> None:
    print_dict(_call(a, "bdev_lvol_check_lvstore", uuid=a.uuid, lvs_name=a.lvs_name))


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = cmd("bdev_lvol_create_lvstore", bdev_lvol_create_lvstore,
            "Add logical volume store on base bdev")
    p.add_argument("bdev_name", help="Bdev on which to construct the logical volume store")
    p.add_argument("lvs_name", help="Name of the logical volume store to create")
    p.add_argument("-c", "--cluster-sz", type=int,
                   help="Cluster size of the logical volume store in bytes")
    p.add_argument("--clear-method", choices=["none", "unmap", "write_zeroes"],
                   help="Clear method for the data region")
    p.add_argument("-m", "--md-pages-per-cluster-ratio", dest="num_md_pages_per_cluster_ratio",
                   type=int, help="Reserved metadata pages per cluster, as a percentage")
    p.add_argument("-s", "--md-page-size", type=int, help="Metadata page size in bytes")

    p = cmd("bdev_lvol_rename_lvstore", bdev_lvol_rename_lvstore,
            "Change logical volume store name")
    p.add_argument("old_name", help="Existing logical volume store name")
    p.add_argument("new_name", help="New logical volume store name")

    p = cmd("bdev_lvol_grow_lvstore", bdev_lvol_grow_lvstore,
            "Grow the lvstore size to the underlying bdev size")
    p.add_argument("-u", "--uuid", help="UUID of the logical volume store to grow")
    p.add_argument("-l", "--lvs-name", help="Name of the logical volume store to grow")

    p = cmd("bdev_lvol_create", bdev_lvol_create, "Add a bdev with an logical volume backend")
    p.add_argument("-u", "--uuid", help="UUID of the logical volume store")
    p.add_argument("-l", "--lvs-name", help="Name of the logical volume store")
    p.add_argument("-t", "--thin-provision", action="store_true",
                   help="Enable thin provisioning")
    p.add_argument("-c", "--clear-method", choices=["default", "none", "unmap", "write_zeroes"],
                   help="Per-cluster clear method")
    p.add_argument("lvol_name", help="Name of the logical volume to create")
    p.add_argument("size_in_mib", type=int, help="Desired size of the logical volume in MiB")

    p = cmd("bdev_lvol_snapshot", bdev_lvol_snapshot, "Create a snapshot of an lvol bdev")
    p.add_argument("lvol_name", help="UUID or alias of the logical volume to snapshot")
    p.add_argument("snapshot_name", help="Name for the newly created snapshot")

    p = cmd("bdev_lvol_clone", bdev_lvol_clone, "Create a clone of an lvol snapshot")
    p.add_argument("snapshot_name", help="UUID or alias of the snapshot to clone")
    p.add_argument("clone_name", help="Name for the logical volume to create")

    p = cmd("bdev_lvol_rename", bdev_lvol_rename, "Change lvol bdev name")
    p.add_argument("old_name", help="UUID or alias of the existing logical volume")
    p.add_argument("new_name", help="New logical volume name")

    for name, help_text, arg_help in (
        ("bdev_lvol_inflate", "Make thin provisioned lvol a thick provisioned lvol",
         "UUID or alias of the logical volume to inflate"),
        ("bdev_lvol_decouple_parent", "Decouple parent of lvol",
         "UUID or alias of the logical volume to decouple from its parent"),
        ("bdev_lvol_set_read_only", "Mark lvol bdev as read only",
         "UUID or alias of the logical volume to set as read only"),
        ("bdev_lvol_delete", "Destroy a logical volume",
         "UUID or alias of the logical volume to destroy"),
    ):
        p = cmd(name, _by_name(name), help_text)
        p.add_argument("name", help=arg_help)

    p = cmd("bdev_lvol_resize", bdev_lvol_resize, "Resize existing lvol bdev")
    p.add_argument("name", help="UUID or alias of the logical volume to resize")
    p.add_argument("size_in_mib", type=int, help="Desired size of the logical volume in MiB")

    p = cmd("bdev_lvol_set_parent", bdev_lvol_set_parent, "Set the parent snapshot of a lvol")
    p.add_argument("lvol_name", help="UUID or alias of the lvol to set parent of")
    p.add_argument("parent_name", help="UUID or alias of the snapshot to become parent of lvol")

    p = cmd("bdev_lvol_set_parent_bdev", bdev_lvol_set_parent_bdev,
            "Set the parent external snapshot of a lvol")
    p.add_argument("lvol_name", help="UUID or alias of the lvol to set external parent of")
    p.add_argument("parent_name",
                   help="UUID or name of the external snapshot to become parent of lvol")

    p = cmd("bdev_lvol_clone_bdev", bdev_lvol_clone_bdev, "Create a clone of a non-lvol bdev")
    p.add_argument("bdev", help="Name or UUID for bdev that acts as the external snapshot")
    p.add_argument("lvs_name", help="Name of the logical volume store")
    p.add_argument("clone_name", help="Name for the logical volume to create")

    p = cmd("bdev_lvol_start_shallow_copy", bdev_lvol_start_shallow_copy,
            "Start a shallow copy of an lvol over a given bdev")
    p.add_argument("src_lvol_name", help="UUID or alias of lvol to create a copy from")
    p.add_argument("dst_bdev_name", help="Name of the bdev that acts as destination for the copy")

    p = cmd("bdev_lvol_check_shallow_copy", bdev_lvol_check_shallow_copy,
            "Get shallow copy status")
    p.add_argument("operation_id", type=int, help="operation identifier")

    p = cmd("bdev_lvol_delete_lvstore", bdev_lvol_delete_lvstore,
            "Destroy an logical volume store")
    p.add_argument("-u", "--uuid", help="UUID of the logical volume store to destroy")
    p.add_argument("-l", "--lvs-name", help="Name of the logical volume store to destroy")

    p = cmd("bdev_lvol_get_lvstores", bdev_lvol_get_lvstores,
            "Display current logical volume store list")
    p.add_argument("-u", "--uuid", help="UUID of the logical volume store")
    p.add_argument("-l", "--lvs-name", help="Name of the logical volume store")

    p = cmd("bdev_lvol_get_lvols", bdev_lvol_get_lvols, "Display current logical volume list")
    p.add_argument("-u", "--lvs-uuid", help="Only show volumes in the lvstore with this UUID")
    p.add_argument("-l", "--lvs-name", help="Only show volumes in the lvstore with this name")

    p = cmd("bdev_lvol_check_lvstore", bdev_lvol_check_lvstore,
            "pybdev: check an lvstore's consistency and print the report")
    p.add_argument("-u", "--uuid", help="UUID of the logical volume store")
    p.add_argument("-l", "--lvs-name", help="Name of the logical volume store")
