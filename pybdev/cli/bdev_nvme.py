"""bdev_nvme commands with the arguments and output of SPDK's ``spdk/cli/bdev_nvme.py``.

As SPDK's CLI: every argument the command has is sent when it is not None (so
``store_true`` flags go as ``false``), and ``--policy/--selector/--min-io`` are packed
into ``multipath_opts`` (SPDK's ``group_as``: left out when all are None).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

from pybdev.cli.output import print_array, print_dict

MULTIPATH = ["policy", "selector", "min_io"]


def _params(a: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(a, k) for k in a._own if getattr(a, k, None) is not None}


def _grouped(a: argparse.Namespace) -> dict[str, Any]:
    params = _params(a)
    group = {k: params.pop(k) for k in MULTIPATH if k in params}
    if group:
        params["multipath_opts"] = group
    return params


def bdev_nvme_set_options(a: argparse.Namespace) -> None:
    a.client.call("bdev_nvme_set_options", _grouped(a))


def bdev_nvme_set_hotplug(a: argparse.Namespace) -> None:
    a.client.call("bdev_nvme_set_hotplug", {"enable": a.enable, "period_us": a.period_us})


def bdev_nvme_attach_controller(a: argparse.Namespace) -> None:
    print_array(a.client.call("bdev_nvme_attach_controller", _grouped(a)))


def bdev_nvme_get_controllers(a: argparse.Namespace) -> None:
    print_dict(a.client.call("bdev_nvme_get_controllers", {"name": a.name}))


def _simple(method: str, a: argparse.Namespace) -> None:
    a.client.call(method, _params(a))


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    made: list[argparse.ArgumentParser] = []

    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        made.append(p)
        return p

    def multipath(p: argparse.ArgumentParser) -> None:
        p.add_argument("--policy", choices=["active_passive", "active_active"],
                       help="Multipath policy")
        p.add_argument("--selector", choices=["round_robin", "queue_depth"],
                       help="Multipath selector")
        p.add_argument("--min-io", type=int, help="Number of IO to route to a path before "
                       "switching (round_robin selector only)")

    p = cmd("bdev_nvme_set_options", bdev_nvme_set_options,
            "Set options for the bdev nvme type. This is startup command.")
    p.add_argument("-a", "--action-on-timeout", choices=["none", "reset", "abort"],
                   help="Action to take on command time out")
    p.add_argument("-t", "--timeout-us", type=int,
                   help="Timeout for each command, in microseconds. If 0, don't track timeouts.")
    p.add_argument("--timeout-admin-us", type=int,
                   help="Timeout for each admin command, in microseconds.")
    p.add_argument("-k", "--keep-alive-timeout-ms", type=int,
                   help="Keep alive timeout period in millisecond. If 0, disable keep-alive.")
    for opt in ("--arbitration-burst", "--low-priority-weight", "--medium-priority-weight",
                "--high-priority-weight"):
        p.add_argument(opt, type=int, help="NVMe arbitration setting (accepted, not used)")
    p.add_argument("-p", "--nvme-adminq-poll-period-us", type=int,
                   help="How often the admin queue is polled for asynchronous events")
    p.add_argument("-i", "--nvme-ioq-poll-period-us", type=int,
                   help="How often to poll I/O queues for completions")
    p.add_argument("-s", "--io-queue-requests", type=int,
                   help="The number of requests allocated for each NVMe I/O queue")
    p.add_argument("-d", "--disable-delay-cmd-submit", action="store_false",
                   dest="delay_cmd_submit", help="Disable delaying NVMe command submission")
    p.add_argument("-c", "--transport-retry-count", type=int,
                   help="the number of attempts per I/O in the transport layer")
    p.add_argument("-r", "--bdev-retry-count", type=int,
                   help="the number of attempts per I/O in the bdev layer; -1 is infinite")
    p.add_argument("-e", "--transport-ack-timeout", type=int,
                   help="Time to wait ack until packet retransmission (RDMA) or closing (TCP)")
    p.add_argument("-l", "--ctrlr-loss-timeout-sec", type=int,
                   help="Time to wait until ctrlr is reconnected before deleting ctrlr; "
                        "-1 means infinite reconnect retries, 0 no reconnect retry.")
    p.add_argument("-o", "--reconnect-delay-sec", type=int,
                   help="Time to delay a reconnect retry.")
    p.add_argument("-u", "--fast-io-fail-timeout-sec", type=int,
                   help="Time to wait until ctrlr is reconnected before failing I/O to ctrlr.")
    p.add_argument("-f", "--disable-auto-failback", action="store_true",
                   help="Disable automatic failback.")
    p.add_argument("--generate-uuids", action="store_true",
                   help="Enable generation of unique identifiers for NVMe bdevs.")
    p.add_argument("--transport-tos", type=int, help="IPv4 Type of Service value (RDMA).")
    p.add_argument("-m", "--nvme-error-stat", action="store_true",
                   help="Enable collecting NVMe error counts.")
    p.add_argument("-q", "--rdma-srq-size", type=int,
                   help="Set the size of a shared rdma receive queue.")
    p.add_argument("--io-path-stat", action="store_true",
                   help="Enable collecting I/O path stat of each io path.")
    p.add_argument("--allow-accel-sequence", action="store_true",
                   help="Allow NVMe bdevs to advertise support for accel sequences.")
    p.add_argument("--rdma-max-cq-size", type=int,
                   help="The maximum size of a rdma completion queue.")
    p.add_argument("--rdma-cm-event-timeout-ms", type=int,
                   help="Time to wait for RDMA CM event.")
    p.add_argument("--dhchap-digests", type=partial(str.split, sep=","),
                   help="Comma-separated list of allowed DH-HMAC-CHAP digests")
    p.add_argument("--dhchap-dhgroups", type=partial(str.split, sep=","),
                   help="Comma-separated list of allowed DH-HMAC-CHAP DH groups")
    p.add_argument("--rdma-umr-per-io", action=argparse.BooleanOptionalAction,
                   help="Enable or disable scatter-gather RDMA Memory Region per IO.")
    p.add_argument("--tcp-connect-timeout-ms", type=int,
                   help="Time to wait until TCP connection is done. Default: 0 (no timeout).")
    p.add_argument("--enable-flush", action="store_true",
                   help="Pass flush to NVMe when volatile write cache is present")
    multipath(p)

    p = cmd("bdev_nvme_set_hotplug", bdev_nvme_set_hotplug,
            "Set hotplug options for bdev nvme type.")
    p.add_argument("--hotplug", dest="enable", action=argparse.BooleanOptionalAction,
                   required=True, help="Enable or disable hotplug")
    p.add_argument("-r", "--period-us", type=int,
                   help="How often the hotplug is processed for insert and remove events")

    p = cmd("bdev_nvme_attach_controller", bdev_nvme_attach_controller,
            "Add bdevs with nvme backend")
    p.add_argument("-b", "--name", required=True,
                   help="Name of the NVMe controller, prefix for each bdev name")
    p.add_argument("-t", "--trtype", required=True, help="NVMe-oF target trtype: e.g., tcp")
    p.add_argument("-a", "--traddr", required=True,
                   help="NVMe-oF target address: e.g., an ip address")
    p.add_argument("-f", "--adrfam", help="NVMe-oF target adrfam: e.g., ipv4, ipv6")
    p.add_argument("-s", "--trsvcid", help="NVMe-oF target trsvcid: e.g., a port number")
    p.add_argument("-p", "--priority", help="NVMe-oF connection priority")
    p.add_argument("-n", "--subnqn", help="NVMe-oF target subnqn")
    p.add_argument("-q", "--hostnqn", help="NVMe-oF host subnqn")
    p.add_argument("-i", "--hostaddr", help="NVMe-oF host address: e.g., an ip address")
    p.add_argument("-c", "--hostsvcid", help="NVMe-oF host svcid: e.g., a port number")
    p.add_argument("-r", "--prchk-reftag", action="store_true",
                   help="Enable checking of PI reference tag for I/O processing.")
    p.add_argument("-g", "--prchk-guard", action="store_true",
                   help="Enable checking of PI guard for I/O processing.")
    p.add_argument("-e", "--hdgst", action="store_true", help="Enable TCP header digest.")
    p.add_argument("-d", "--ddgst", action="store_true", help="Enable TCP data digest.")
    p.add_argument("--fabrics-timeout", type=int, dest="fabrics_connect_timeout_us",
                   help="Fabrics connect timeout in microseconds")
    p.add_argument("-x", "--multipath", choices=["disable", "failover", "multipath"],
                   help="Set multipath behavior")
    p.add_argument("--num-io-queues", type=int,
                   help="Set the number of IO queues to request during initialization.")
    p.add_argument("-l", "--ctrlr-loss-timeout-sec", type=int,
                   help="Time to wait until ctrlr is reconnected before deleting ctrlr; "
                        "-1 means infinite reconnect retries, 0 no reconnect retry.")
    p.add_argument("-o", "--reconnect-delay-sec", type=int,
                   help="Time to delay a reconnect retry.")
    p.add_argument("-u", "--fast-io-fail-timeout-sec", type=int,
                   help="Time to wait until ctrlr is reconnected before failing I/O to ctrlr.")
    p.add_argument("-k", "--psk", help="Name of the pre-shared key to be used for TLS")
    p.add_argument("-m", "--max-bdevs", type=int,
                   help="The size of the name array for newly created bdevs. Default is 128")
    p.add_argument("--dhchap-key", help="DH-HMAC-CHAP key name")
    p.add_argument("--dhchap-ctrlr-key", help="DH-HMAC-CHAP controller key name")
    p.add_argument("-U", "--allow-unrecognized-csi", action="store_true",
                   help="Allow attaching namespaces with unrecognized command set identifiers.")
    multipath(p)
    p.add_argument("--disable-sq-flow-control", action="store_true",
                   help="Disable SQ flow control (set bit 2 of cattr in Fabrics Connect).")

    p = cmd("bdev_nvme_get_controllers", bdev_nvme_get_controllers,
            "Display current NVMe controllers list or required NVMe controller")
    p.add_argument("-n", "--name", help="Name of the NVMe controller. Example: Nvme0")

    p = cmd("bdev_nvme_detach_controller", partial(_simple, "bdev_nvme_detach_controller"),
            "Detach an NVMe controller and delete any associated bdevs")
    p.add_argument("name", help="Name of the controller")
    p.add_argument("-t", "--trtype", help="NVMe-oF target trtype: e.g., tcp")
    p.add_argument("-a", "--traddr", help="NVMe-oF target address: e.g., an ip address")
    p.add_argument("-f", "--adrfam", help="NVMe-oF target adrfam: e.g., ipv4, ipv6")
    p.add_argument("-s", "--trsvcid", help="NVMe-oF target trsvcid: e.g., a port number")
    p.add_argument("-n", "--subnqn", help="NVMe-oF target subnqn")
    p.add_argument("-i", "--hostaddr", help="NVMe-oF host address: e.g., an ip address")
    p.add_argument("-c", "--hostsvcid", help="NVMe-oF host svcid: e.g., a port number")

    p = cmd("bdev_nvme_reset_controller", partial(_simple, "bdev_nvme_reset_controller"),
            "Reset an NVMe controller or all NVMe controllers in an NVMe bdev controller")
    p.add_argument("name", help="Name of the NVMe controller")
    p.add_argument("-c", "--cntlid", type=int, help="NVMe controller ID")

    for p in made:
        p.set_defaults(_own=tuple(act.dest for act in p._actions
                                  if act.dest not in ("help", argparse.SUPPRESS)))
