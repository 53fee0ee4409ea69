"""nvmf commands with the arguments and output of SPDK's ``spdk/cli/nvmf.py``.

Sub-objects are packed as SPDK's ``group_as`` does (``listen_address``, ``namespace``),
dropping members that are None; ``discovery`` stands for the discovery NQN in the
listener commands, as in SPDK's CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

from pybdev.cli.output import print_dict

DISCOVERY_NQN = "nqn.2014-08.org.nvmexpress.discovery"


def _params(a: argparse.Namespace) -> dict[str, Any]:
    """The command's own arguments that were given (rpc.py's global options excluded)."""
    return {k: getattr(a, k) for k in a._own if getattr(a, k, None) is not None}


def _group(params: dict[str, Any], name: str, keys: list[str]) -> dict[str, Any]:
    group = {k: params.pop(k) for k in keys if k in params}
    params[name] = group
    return params


def _discovery(nqn: str) -> str:
    return DISCOVERY_NQN if nqn == "discovery" else nqn


def nvmf_create_transport(a: argparse.Namespace) -> None:
    params = _params(a)
    params.setdefault("no_srq", False)
    params.setdefault("c2h_success", True)
    a.client.call("nvmf_create_transport", params)


def nvmf_get_transports(a: argparse.Namespace) -> None:
    print_dict(a.client.call("nvmf_get_transports", {"trtype": a.trtype,
                                                      "tgt_name": a.tgt_name}))


def nvmf_get_subsystems(a: argparse.Namespace) -> None:
    print_dict(a.client.call("nvmf_get_subsystems", {"nqn": a.nqn, "tgt_name": a.tgt_name}))


def nvmf_create_subsystem(a: argparse.Namespace) -> None:
    a.client.call("nvmf_create_subsystem", _params(a))


def nvmf_delete_subsystem(a: argparse.Namespace) -> None:
    a.client.call("nvmf_delete_subsystem", {"nqn": a.nqn, "tgt_name": a.tgt_name})


def _listener(method: str, a: argparse.Namespace) -> None:
    params = _params(a)
    params["nqn"] = _discovery(params["nqn"])
    a.client.call(method, _group(params, "listen_address",
                                 ["trtype", "traddr", "trsvcid", "adrfam"]))


def nvmf_subsystem_add_ns(a: argparse.Namespace) -> None:
    params = _params(a)
    params = {"tgt_name": params.pop("tgt_name", None), **params}  # SPDK's apply_defaults
    params = _group(params, "namespace", [
        "bdev_name", "ptpl_file", "nsid", "nguid", "eui64", "uuid", "anagrpid",
        "no_auto_visible"])
    a.client.call("nvmf_subsystem_add_ns", params)  # SPDK's CLI prints nothing here


def _simple(method: str, a: argparse.Namespace) -> None:
    a.client.call(method, _params(a))


def _show(method: str, a: argparse.Namespace) -> None:
    print_dict(a.client.call(method, _params(a)))


PASSTHRU = ("identify_ctrlr", "identify_uuid_list", "get_log_page", "get_set_features",
            "sanitize", "security_send_recv", "fw_update", "nvme_mi", "vendor_specific")


def nvmf_set_config(a: argparse.Namespace) -> None:
    invalid = set(a.admin_cmd_passthru) - set(PASSTHRU) - {"all"}
    if invalid:
        raise SystemExit(f"Invalid passthru-admin-cmds: '{', '.join(invalid)}'. "
                         "See help for valid options.")
    passthru: dict[str, bool] | None = None
    if "all" in a.admin_cmd_passthru:
        passthru = dict.fromkeys(PASSTHRU, True)
    elif a.admin_cmd_passthru:
        passthru = dict.fromkeys(a.admin_cmd_passthru, True)
    a.client.call("nvmf_set_config", {
        "admin_cmd_passthru": passthru, "poll_groups_mask": a.poll_groups_mask,
        "discovery_filter": a.discovery_filter, "discovery_filters": a.discovery_filters,
        "dhchap_digests": a.dhchap_digests, "dhchap_dhgroups": a.dhchap_dhgroups,
        "dup_host_policy": a.dup_host_policy})


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    made: list[argparse.ArgumentParser] = []

    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        made.append(p)
        return p

    def tgt(p: argparse.ArgumentParser, flag: str = "-t") -> None:
        p.add_argument(flag, "--tgt-name", help="Parent NVMe-oF target name", type=str)

    p = cmd("nvmf_set_max_subsystems", partial(_simple, "nvmf_set_max_subsystems"),
            "Set the maximum number of NVMf target subsystems")
    p.add_argument("-x", "--max-subsystems", help="Maximum number of NVMe-oF subsystems",
                   type=int, required=True)

    p = cmd("nvmf_set_config", nvmf_set_config, "Set NVMf target config")
    p.add_argument("-p", "--passthru-admin-cmds", dest="admin_cmd_passthru",
                   help="Comma-separated list of admin commands to pass through when the "
                        "subsystem has a single NVMe-backed namespace. Options: all, "
                        + ", ".join(PASSTHRU) + " (pybdev refuses them: nothing to pass to)",
                   type=partial(str.split, sep=","), default=[])
    p.add_argument("-m", "--poll-groups-mask", help="CPU mask for NVMe-oF poll groups", type=str)
    group = p.add_mutually_exclusive_group()
    group.add_argument("-d", "--discovery-filter",
                       help="Deprecated, use --discovery-filters instead", type=str)
    group.add_argument("--discovery-filters", help="Comma-separated list of discovery filters",
                       type=partial(str.split, sep=","))
    p.add_argument("--dhchap-digests", help="Comma-separated list of allowed DH-HMAC-CHAP "
                   "digests", type=partial(str.split, sep=","))
    p.add_argument("--dhchap-dhgroups", help="Comma-separated list of allowed DH-HMAC-CHAP "
                   "DH groups", type=partial(str.split, sep=","))
    p.add_argument("--dup-host-policy", choices=["allow", "restrict_per_listener"],
                   help="Policy for hosts connecting twice")

    p = cmd("nvmf_create_transport", nvmf_create_transport, "Create NVMf transport")
    p.add_argument("-t", "--trtype", help="Transport type (ex. RDMA)", type=str, required=True)
    tgt(p, "-g")
    p.add_argument("-q", "--max-queue-depth", help="Max number of outstanding I/O per queue",
                   type=int)
    p.add_argument("-m", "--max-io-qpairs-per-ctrlr",
                   help="Max number of IO qpairs per controller", type=int)
    p.add_argument("-c", "--in-capsule-data-size", help="Max number of in-capsule data size",
                   type=int)
    p.add_argument("-i", "--max-io-size", help="Max I/O size (bytes)", type=int)
    p.add_argument("-a", "--max-aq-depth", help="Max number of admin cmds per AQ", type=int)
    p.add_argument("--iobuf-small-cache-size", help="Small iobuf cache size", type=int)
    p.add_argument("--iobuf-large-cache-size", help="Large iobuf cache size", type=int)
    p.add_argument("-z", "--zcopy", action="store_true", help="Use zero-copy operations if the "
                   "underlying bdev supports them")
    p.add_argument("-d", "--num-cqe", help="The number of CQ entries (RDMA only)", type=int)
    p.add_argument("-s", "--max-srq-depth", help="Max number of outstanding I/O per SRQ "
                   "(RDMA only)", type=int)
    p.add_argument("-r", "--no-srq", action="store_true", help="Disable per-thread shared "
                   "receive queue (RDMA only)")
    p.add_argument("-o", "--c2h-success", action="store_false",
                   help="Disable C2H success optimization (TCP only)")
    p.add_argument("-f", "--dif-insert-or-strip", action="store_true",
                   help="Enable DIF insert/strip")
    p.add_argument("-y", "--sock-priority", help="The sock priority of the tcp connection "
                   "(TCP only)", type=int)
    p.add_argument("-l", "--acceptor-backlog", help="Pending connections allowed at one time "
                   "(RDMA only)", type=int)
    p.add_argument("-x", "--abort-timeout-sec", help="Abort execution timeout value, "
                   "in seconds", type=int)
    p.add_argument("-w", "--no-wr-batching", action="store_true",
                   help="Disable work requests batching (RDMA only)")
    p.add_argument("-e", "--control-msg-num", help="The number of control messages per poll "
                   "group (TCP only)", type=int)
    p.add_argument("-M", "--disable-mappable-bar0", action="store_true",
                   help="Disable mmap() of BAR0 (VFIO-USER only)")
    p.add_argument("-I", "--disable-adaptive-irq", action="store_true",
                   help="Disable adaptive interrupt feature (VFIO-USER only)")
    p.add_argument("-S", "--disable-shadow-doorbells", action="store_true",
                   help="Disable shadow doorbell support (VFIO-USER only)")
    p.add_argument("--acceptor-poll-rate", help="Polling interval of the acceptor for pending "
                   "connections (microseconds)", type=int)
    p.add_argument("--ack-timeout", help="ACK timeout in milliseconds", type=int)
    p.add_argument("--data-wr-pool-size", help="RDMA data WR pool size (RDMA only)", type=int)
    p.add_argument("--disable-command-passthru", action="store_true",
                   help="Disallow command passthru")
    p.add_argument("--kas", help="KATO (Keep Alive Timeout) granularity in units of 100 "
                   "milliseconds", type=int)
    p.add_argument("--min-kato", help="Minimum Keep Alive Timeout value in milliseconds",
                   type=int)
    p.add_argument("--masked-oncs", help="Comma-separated list of ONCS features to mask "
                   "(disable): all, nvmcmps, nvmdsmsv, nvmwzsv, reservs, nvmcpys",
                   type=partial(str.split, sep=","))
    p.add_argument("--masked-fuses", help="Comma-separated list of FUSES features to mask "
                   "(disable): all, fcws", type=partial(str.split, sep=","))

    p = cmd("nvmf_get_transports", nvmf_get_transports,
            "Display nvmf transports or required transport")
    p.add_argument("--trtype", help="Transport type")
    tgt(p)

    p = cmd("nvmf_get_subsystems", nvmf_get_subsystems,
            "Display nvmf subsystems or required subsystem")
    p.add_argument("nqn", help="Subsystem NQN", nargs="?")
    tgt(p)

    p = cmd("nvmf_create_subsystem", nvmf_create_subsystem, "Create an NVMe-oF subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    tgt(p)
    p.add_argument("-s", "--serial-number", help="Serial number of the virtual NVMe controller")
    p.add_argument("-d", "--model-number", help="Model number of the virtual NVMe controller")
    p.add_argument("-a", "--allow-any-host", action="store_true",
                   help="Allow any host to connect (don't enforce allowed host NQN list)")
    p.add_argument("-m", "--max-namespaces", help="Maximum number of namespaces allowed",
                   type=int)
    p.add_argument("-r", "--ana-reporting", action="store_true",
                   help="Enable ANA reporting feature")
    p.add_argument("-i", "--min-cntlid", help="Minimum controller ID", type=int)
    p.add_argument("-I", "--max-cntlid", help="Maximum controller ID", type=int)
    p.add_argument("--dmrsl", help="Dataset Management Range Size Limit in logical block "
                   "units", type=int)
    p.add_argument("--wzsl", help="Write Zeroes Size Limit as a power of two of the "
                   "minimum memory page size", type=int)
    p.add_argument("-p", "--passthrough", action="store_true",
                   help="Use NVMe passthrough for all I/O commands and namespace-directed "
                        "admin commands")
    p.add_argument("-n", "--enable-nssr", action="store_true",
                   help="Enable NSSR (NVMe subsystem reset)")
    p.add_argument("--admin-label", help="Admin label for extended discovery log page entry "
                   "(4-256 ASCII characters)", type=str)

    p = cmd("nvmf_delete_subsystem", nvmf_delete_subsystem, "Delete a nvmf subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    tgt(p)

    for name, help_text in (("nvmf_subsystem_add_listener",
                             "Add a listener to an NVMe-oF subsystem"),
                            ("nvmf_subsystem_remove_listener",
                             "Remove a listener from an NVMe-oF subsystem")):
        p = cmd(name, partial(_listener, name), help_text)
        p.add_argument("nqn", help="Subsystem NQN ('discovery' can be used as shortcut for "
                       "discovery NQN)")
        p.add_argument("-t", "--trtype", help="NVMe-oF transport type: e.g., rdma",
                       required=True)
        p.add_argument("-a", "--traddr", help="NVMe-oF transport address: e.g., an ip "
                       "address", required=True)
        tgt(p, "-p")
        p.add_argument("-f", "--adrfam", help="NVMe-oF transport adrfam: e.g., ipv4, ipv6, "
                       "ib, fc, intra_host")
        p.add_argument("-s", "--trsvcid", help="NVMe-oF transport service id: e.g., a port "
                       "number (required for TCP and RDMA transport types)")
        if name.endswith("add_listener"):
            p.add_argument("-k", "--secure-channel", action="store_true",
                           help="Immediately establish a secure channel")
            p.add_argument("-n", "--ana-state", help="ANA state to set: optimized, "
                           "non_optimized, or inaccessible",
                           choices=["optimized", "non_optimized", "inaccessible"])
            p.add_argument("-S", "--sock-impl", help="Socket implementation to use for the "
                           "listener", type=str)
            p.add_argument("--numa-id", type=int, help="NUMA ID to associate with the "
                           "listener")

    p = cmd("nvmf_subsystem_add_ns", nvmf_subsystem_add_ns,
            "Add a namespace to an NVMe-oF subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    p.add_argument("bdev_name", help="Name of the bdev to expose as a namespace")
    tgt(p)
    p.add_argument("-p", "--ptpl-file", help="File path to save/restore persistent "
                   "reservation information", type=str)
    p.add_argument("-n", "--nsid", help="Namespace ID between 1 and 4294967294", type=int)
    p.add_argument("-g", "--nguid", help="16-byte namespace globally unique identifier in "
                   "hexadecimal")
    p.add_argument("-e", "--eui64", help="8-byte namespace EUI-64 in hexadecimal")
    p.add_argument("-u", "--uuid", help='RFC 4122 UUID (e.g. '
                   '"ceccf520-691e-4b46-9546-34af789907c5")')
    p.add_argument("-a", "--anagrpid", help="ANA group ID", type=int)
    p.add_argument("-i", "--no-auto-visible", action="store_true",
                   help="Don't auto attach this namespace to any controller")

    p = cmd("nvmf_subsystem_remove_ns", partial(_simple, "nvmf_subsystem_remove_ns"),
            "Remove a namespace to an NVMe-oF subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    p.add_argument("nsid", help="Namespace ID", type=int)
    tgt(p)

    p = cmd("nvmf_subsystem_add_host", partial(_simple, "nvmf_subsystem_add_host"),
            "Add a host to an NVMe-oF subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    p.add_argument("host", help="Host NQN to add to the allowed host list")
    tgt(p)
    p.add_argument("--psk", help="Pre-shared key name for TLS authentication (TCP only)",
                   type=str)
    p.add_argument("--dhchap-key", help="DH-HMAC-CHAP key name, required if a controller "
                   "key is specified")
    p.add_argument("--dhchap-ctrlr-key", help="DH-HMAC-CHAP controller key name")

    p = cmd("nvmf_subsystem_remove_host", partial(_simple, "nvmf_subsystem_remove_host"),
            "Remove a host from an NVMe-oF subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    p.add_argument("host", help="Host NQN to remove from the allowed host list")
    tgt(p)
    p.add_argument("-T", "--timeout-ms", help="Timeout in ms to wait for I/Os to complete "
                   "(optional)", type=int)

    p = cmd("nvmf_subsystem_allow_any_host", partial(_simple, "nvmf_subsystem_allow_any_host"),
            "Allow any host to connect to the subsystem")
    p.add_argument("nqn", help="Subsystem NQN")
    p.add_argument("--allow-any-host", action=argparse.BooleanOptionalAction, required=True,
                   help="Allow any host to connect (`true`) or enforce allowed host NQN "
                        "list (`false`)")
    tgt(p)

    for name, help_text in (
            ("nvmf_subsystem_get_controllers", "Display controllers of an NVMe-oF subsystem."),
            ("nvmf_subsystem_get_qpairs", "Display queue pairs of an NVMe-oF subsystem."),
            ("nvmf_subsystem_get_listeners", "Display listeners of an NVMe-oF subsystem.")):
        p = cmd(name, partial(_show, name), help_text)
        p.add_argument("nqn", help="Subsystem NQN")
        tgt(p)

    p = cmd("nvmf_get_stats", partial(_show, "nvmf_get_stats"),
            "Display current statistics for NVMf subsystem")
    tgt(p)

    p = cmd("nvmf_set_crdt", partial(_show, "nvmf_set_crdt"),
            "Set the 3 crdt (Command Retry Delay Time) values for NVMf subsystem")
    p.add_argument("-t1", "--crdt1", help="Command Retry Delay Time 1 in units of 100 "
                   "milliseconds", type=int)
    p.add_argument("-t2", "--crdt2", help="Command Retry Delay Time 2 in units of 100 "
                   "milliseconds", type=int)
    p.add_argument("-t3", "--crdt3", help="Command Retry Delay Time 3 in units of 100 "
                   "milliseconds", type=int)

    # Which keys of the parsed namespace are the command's own: rpc.py adds global options
    # (and may add more), none of which belong in the request.
    for p in made:
        p.set_defaults(_own=tuple(act.dest for act in p._actions
                                  if act.dest not in ("help", argparse.SUPPRESS)))
