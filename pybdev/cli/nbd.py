"""nbd commands: SPDK's ``nbd_start_disk`` / ``nbd_stop_disk`` / ``nbd_get_disks`` (same
arguments and output as spdk/cli/nbd.py), plus pybdev's NBD client bdev commands.

``nbd_start_disk BDEV [DEV_OR_URI]`` takes a ``/dev/nbdN`` path or an NBD URI
(``nbd://HOST[:PORT]/NAME``, ``nbd+unix:///NAME?socket=PATH``) and prints what it
exported at.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pybdev.cli.output import print_dict, print_json


def nbd_start_disk(a: argparse.Namespace) -> None:
    print_json(a.client.call("nbd_start_disk",
                             {"bdev_name": a.bdev_name, "nbd_device": a.nbd_device,
                              "num_connections": a.num_connections}))


def nbd_stop_disk(a: argparse.Namespace) -> None:
    a.client.call("nbd_stop_disk", {"nbd_device": a.nbd_device})


def nbd_get_disks(a: argparse.Namespace) -> None:
    print_dict(a.client.call("nbd_get_disks", {"nbd_device": a.nbd_device}))


def bdev_nbd_create(a: argparse.Namespace) -> None:
    print_json(a.client.call("bdev_nbd_create", {"name": a.name, "uri": a.uri}))


def bdev_nbd_delete(a: argparse.Namespace) -> None:
    a.client.call("bdev_nbd_delete", {"name": a.name})


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = cmd("nbd_start_disk", nbd_start_disk,
            "Export a bdev as an nbd disk (/dev/nbdX) or over the network (an NBD URI)")
    p.add_argument("bdev_name", help="Name of the bdev to export")
    p.add_argument("nbd_device", nargs="?",
                   help='Path to the NBD device, e.g. "/dev/nbd0" (default: first available '
                        'device), or an NBD URI: nbd://HOST[:PORT]/NAME, '
                        "nbd+unix:///NAME?socket=PATH")
    p.add_argument("-c", "--num-connections", type=int,
                   help="pybdev: sockets between the kernel and the target for a /dev/nbdN "
                        "device (default 1)")

    p = cmd("nbd_stop_disk", nbd_stop_disk, "Stop an nbd disk or network export")
    p.add_argument("nbd_device", help='Path to the NBD device, e.g. "/dev/nbd0", or the URI')

    p = cmd("nbd_get_disks", nbd_get_disks, "Display full or specified nbd device list")
    p.add_argument("-n", "--nbd-device",
                   help='Path to the NBD device, e.g. "/dev/nbd0", or a URI. Default: list all')

    p = cmd("bdev_nbd_create", bdev_nbd_create,
            "Attach a remote NBD export as a bdev (NBD client)")
    p.add_argument("-b", "--name", required=True, help="Name of the new bdev")
    p.add_argument("uri", help="nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, "
                               "nbd:HOST:PORT[:exportname=EXPORT] or "
                               "nbd:unix:PATH[:exportname=EXPORT]")

    p = cmd("bdev_nbd_delete", bdev_nbd_delete, "Detach an NBD bdev (disconnects)")
    p.add_argument("name", help="Name of the NBD bdev")
