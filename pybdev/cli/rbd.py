"""rbd commands with the arguments and payloads of SPDK's ``rpc.py`` (spdk/cli/bdev.py).

``--user`` is SPDK's spelling of the Ceph user option; ``--user-id`` is accepted too.
``key=value`` options may be repeated; a value may itself contain ``=``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pybdev.cli.output import print_dict, print_json


def _key_values(entries: list[str] | None, option: str) -> dict[str, str] | None:
    if not entries:
        return None
    out: dict[str, str] = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep:
            raise SystemExit(f"{option} {entry} not in key=value form")
        out[key] = value
    return out


def bdev_rbd_register_cluster(a: argparse.Namespace) -> None:
    print_json(a.client.call("bdev_rbd_register_cluster", {
        "name": a.name, "user_id": a.user_id,
        "config_param": _key_values(a.config_param, "--config-param"),
        "config_file": a.config_file, "key_file": a.key_file, "core_mask": a.core_mask}))


def bdev_rbd_unregister_cluster(a: argparse.Namespace) -> None:
    a.client.call("bdev_rbd_unregister_cluster", {"name": a.name})


def bdev_rbd_get_clusters_info(a: argparse.Namespace) -> None:
    print_dict(a.client.call("bdev_rbd_get_clusters_info", {"name": a.name}))


def bdev_rbd_create(a: argparse.Namespace) -> None:
    print_json(a.client.call("bdev_rbd_create", {
        "name": a.name, "user_id": a.user_id, "config": _key_values(a.config, "--config"),
        "pool_name": a.pool_name, "rbd_name": a.rbd_name, "block_size": a.block_size,
        "cluster_name": a.cluster_name, "uuid": a.uuid, "read_only": a.read_only}))


def bdev_rbd_delete(a: argparse.Namespace) -> None:
    a.client.call("bdev_rbd_delete", {"name": a.name})


def bdev_rbd_resize(a: argparse.Namespace) -> None:
    print_json(a.client.call("bdev_rbd_resize", {"name": a.name, "new_size": a.new_size}))


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    def user(p: argparse.ArgumentParser) -> None:
        p.add_argument("--user", "--user-id", dest="user_id",
                       help="Ceph user name (i.e. admin, not client.admin)")

    p = cmd("bdev_rbd_register_cluster", bdev_rbd_register_cluster,
            "Add a Rados cluster with ceph rbd backend")
    p.add_argument("name", help="Name of the Rados cluster only known to rbd bdev")
    user(p)
    p.add_argument("--config-param", action="append", metavar="key=value",
                   help="adds a key=value configuration option for rados_conf_set "
                        "(default: rely on config file)")
    p.add_argument("--config-file", help="The file path of the Rados configuration file")
    p.add_argument("--key-file", help="The file path of the Rados keyring file")
    p.add_argument("--core-mask", help="Set core mask for librbd IO context threads")

    p = cmd("bdev_rbd_unregister_cluster", bdev_rbd_unregister_cluster,
            "Unregister a Rados cluster object")
    p.add_argument("name", help="Name of the Rados Cluster only known to rbd bdev")

    p = cmd("bdev_rbd_get_clusters_info", bdev_rbd_get_clusters_info,
            "Display registered Rados Cluster names and related info")
    p.add_argument("-b", "--name", help="Name of the registered Rados Cluster Name. "
                                        "Example: Cluster1")

    p = cmd("bdev_rbd_create", bdev_rbd_create, "Add a bdev with ceph rbd backend")
    p.add_argument("-b", "--name", help="Name of the bdev")
    user(p)
    p.add_argument("--config", action="append", metavar="key=value",
                   help="adds a key=value configuration option for rados_conf_set "
                        "(default: rely on config file)")
    p.add_argument("pool_name", help="rbd pool name")
    p.add_argument("rbd_name", help="rbd image name")
    p.add_argument("block_size", help="rbd block size", type=int)
    p.add_argument("-c", "--cluster-name", help="cluster name to identify the Rados cluster")
    p.add_argument("-u", "--uuid", help="UUID of the bdev")
    p.add_argument("-r", "--readonly", dest="read_only", action="store_true",
                   help="Set this bdev as read-only")

    p = cmd("bdev_rbd_delete", bdev_rbd_delete, "Delete a rbd bdev")
    p.add_argument("name", help="rbd bdev name")

    p = cmd("bdev_rbd_resize", bdev_rbd_resize, "Resize a rbd bdev")
    p.add_argument("name", help="rbd bdev name")
    p.add_argument("new_size", type=int,
                   help="new bdev size for resize operation. The unit is MiB")
