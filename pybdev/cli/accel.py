"""accel and iobuf commands, with the arguments of SPDK's ``rpc.py`` (spdk/cli/accel.py,
spdk/cli/iobuf.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pybdev.cli.output import print_dict


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    cmd("accel_get_opc_assignments",
        lambda a: print_dict(a.client.call("accel_get_opc_assignments")),
        "Each accel operation and the module that runs it")
    cmd("accel_get_module_info", lambda a: print_dict(a.client.call("accel_get_module_info")),
        "The accel modules and the operations each implements")

    p = cmd("accel_assign_opc", lambda a: a.client.call(
        "accel_assign_opc", {"opname": a.opname, "module": a.module}),
        "Run an accel operation on the named module (before init)")
    p.add_argument("-o", "--opname", required=True,
                   help="name of the operation; see accel_get_opc_assignments")
    p.add_argument("-m", "--module", required=True, help="name of the accel module")

    p = cmd("accel_set_options", lambda a: a.client.call("accel_set_options", {
        "small_cache_size": a.small_cache_size, "large_cache_size": a.large_cache_size,
        "task_count": a.task_count, "sequence_count": a.sequence_count,
        "buf_count": a.buf_count}), "Set the accel framework's options (before init)")
    p.add_argument("--small-cache-size", type=int, help="size of the small iobuf cache")
    p.add_argument("--large-cache-size", type=int, help="size of the large iobuf cache")
    p.add_argument("--task-count", type=int, help="maximum number of tasks per IO channel")
    p.add_argument("--sequence-count", type=int,
                   help="maximum number of sequences per IO channel")
    p.add_argument("--buf-count", type=int,
                   help="maximum number of accel buffers per IO channel")

    p = cmd("iobuf_set_options", lambda a: a.client.call("iobuf_set_options", {
        "small_pool_count": a.small_pool_count, "large_pool_count": a.large_pool_count,
        "small_bufsize": a.small_bufsize, "large_bufsize": a.large_bufsize,
        "enable_numa": a.enable_numa}), "Set iobuf pool options (before init)")
    p.add_argument("--small-pool-count", type=int,
                   help="number of small buffers in the global pool (default 8192)")
    p.add_argument("--large-pool-count", type=int,
                   help="number of large buffers in the global pool (default 1024)")
    p.add_argument("--small-bufsize", type=int,
                   help="size of a small buffer in bytes (default 8192)")
    p.add_argument("--large-bufsize", type=int,
                   help="size of a large buffer in bytes (default 135168)")
    p.add_argument("--enable-numa", action="store_true",
                   help="per-NUMA node buffer pools (default false)")

    cmd("iobuf_get_stats", lambda a: print_dict(a.client.call("iobuf_get_stats")),
        "Display iobuf statistics")

    cmd("notify_get_types", lambda a: print_dict(a.client.call("notify_get_types")),
        "List the notification types")
    p = cmd("notify_get_notifications", lambda a: print_dict(a.client.call(
        "notify_get_notifications", {"id": a.id, "max": a.max})), "Get notifications")
    p.add_argument("-i", "--id", type=int,
                   help="index of the first event to return (default 0: oldest available)")
    p.add_argument("-n", "--max", type=int,
                   help="maximum number of events to return (default: no limit)")
