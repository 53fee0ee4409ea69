"""ublk commands, argument-compatible with SPDK's ``rpc.py`` (``spdk/cli/ublk.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from pybdev.cli.output import print_dict, print_json


def _call(args: argparse.Namespace, method: str, **params: Any) -> Any:
    return args.client.call(method, {k: v for k, v in params.items() if v is not None})


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ublk_create_target", help="Create the ublk target")
    p.add_argument("-m", "--cpumask", help="CPU mask for the ublk target's I/O threads")
    p.add_argument("--disable-user-copy", action="store_true",
                   help="Disable the ublk user-copy feature. Default: false")
    p.set_defaults(func=lambda a: _call(a, "ublk_create_target", cpumask=a.cpumask,
                                        disable_user_copy=a.disable_user_copy))

    p = sub.add_parser("ublk_destroy_target", help="Destroy the ublk target")
    p.set_defaults(func=lambda a: _call(a, "ublk_destroy_target"))

    p = sub.add_parser("ublk_start_disk", help="Export a bdev as a ublk device")
    p.add_argument("bdev_name", help="Name of the bdev to export")
    p.add_argument("ublk_id", type=int,
                   help="ublk device ID, used as the suffix in /dev/ublkb[id]")
    p.add_argument("-q", "--num-queues", type=int,
                   help="Number of queues to create on the device. Default: 1")
    p.add_argument("-d", "--queue-depth", type=int, help="Per-queue depth. Default: 128")
    p.set_defaults(func=lambda a: print_json(_call(
        a, "ublk_start_disk", bdev_name=a.bdev_name, ublk_id=a.ublk_id,
        num_queues=a.num_queues, queue_depth=a.queue_depth)))

    p = sub.add_parser("ublk_stop_disk", help="Stop a ublk device")
    p.add_argument("ublk_id", type=int, help="ID of the ublk device to stop")
    p.set_defaults(func=lambda a: _call(a, "ublk_stop_disk", ublk_id=a.ublk_id))

    p = sub.add_parser("ublk_recover_disk", help="Recover ublk device")
    p.add_argument("bdev_name", help="Name of the bdev backing the recovering ublk device")
    p.add_argument("ublk_id", type=int, help="ID of the ublk device to recover")
    p.set_defaults(func=lambda a: print_json(_call(
        a, "ublk_recover_disk", bdev_name=a.bdev_name, ublk_id=a.ublk_id)))

    p = sub.add_parser("ublk_get_disks", help="Display full or specified ublk device list")
    p.add_argument("-n", "--ublk-id", type=int,
                   help="ID of a ublk device to query. Default: list all")
    p.set_defaults(func=lambda a: print_dict(_call(a, "ublk_get_disks", ublk_id=a.ublk_id)))
