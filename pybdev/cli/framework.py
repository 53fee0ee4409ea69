"""Framework commands: methods, version, init, config save/load, kill."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from pybdev.cli.output import print_dict, print_json
from pybdev.rpc.client import JsonRpcException

KILL_SIGNALS = ["SIGINT", "SIGTERM", "SIGQUIT", "SIGHUP", "SIGKILL", "SIGUSR1"]


def dump(value: Any, fd: TextIO, indent: int) -> None:
    if indent < 0:
        json.dump(value, fd, separators=(",", ":"))
    else:
        json.dump(value, fd, indent=indent)
    fd.write("\n")


def load(source: Any) -> Any:
    """``-j`` is a file path or a JSON text; without it, stdin."""
    if not isinstance(source, str):
        return json.load(source)
    try:
        with open(source, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return json.loads(source)


def save_config(client: Any, fd: TextIO, indent: int = 2, subsystems: str | None = None,
                with_batches: bool = False) -> None:
    listing = client.call("framework_get_subsystems")
    closure: dict[str, set[str]] = {}
    for elem in listing:
        deps = {elem["subsystem"]}
        for d in elem["depends_on"]:
            deps |= closure[d]
        closure[elem["subsystem"]] = deps
    wanted: set[str] = set(closure)
    if subsystems is not None:
        wanted = set()
        for name in subsystems.split(","):
            if name not in closure:
                raise JsonRpcException(f"Unknown subsystem: {name}")
            wanted |= closure[name]
    config = {"subsystems": [
        {"subsystem": e["subsystem"],
         "config": client.call("framework_get_config",
                               {"name": e["subsystem"], "with_batches": with_batches})}
        for e in listing if e["subsystem"] in wanted
    ]}
    dump(config, fd, indent)


def _methods(elem: Any) -> list[str | None]:
    items = elem if isinstance(elem, list) else [elem]
    return [item.get("method") if isinstance(item, dict) else None for item in items]


def _call_entry(client: Any, elem: Any) -> None:
    if isinstance(elem, list):
        for item in elem:
            client.call(item["method"], item.get("params"))
    else:
        client.call(elem["method"], elem.get("params"))


def load_config(client: Any, source: Any, include_aliases: bool = False) -> None:
    """Replay a saved config as SPDK's rpc.py does (spdk/rpc/config.py), pass after pass."""
    subsystems = [s for s in load(source)["subsystems"] if s.get("config")]
    allowed = client.call("rpc_get_methods", {"include_aliases": include_aliases})
    if not subsystems and "framework_start_init" in allowed:
        client.call("framework_start_init")
        return
    for sub in subsystems:
        for elem in sub["config"]:
            if not all(m in allowed for m in _methods(elem)):
                raise JsonRpcException("Unknown method was included in the config file")
    while subsystems:
        allowed = client.call("rpc_get_methods", {"current": True,
                                                  "include_aliases": include_aliases})
        called = False
        for sub in list(subsystems):
            for elem in list(sub["config"]):
                if all(m in allowed for m in _methods(elem)):
                    _call_entry(client, elem)
                    sub["config"].remove(elem)
                    called = True
            if not sub["config"]:
                subsystems.remove(sub)
        if "framework_start_init" in allowed:
            client.call("framework_start_init")
            called = True
        if not called:
            break
    if subsystems:
        print("Some configs were skipped because the RPC state that can call them passed over.")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = cmd("rpc_get_methods", lambda a: print_dict(a.client.call(
        "rpc_get_methods", {"current": a.current, "include_aliases": a.include_aliases})),
        "List the RPC methods the target serves")
    p.add_argument("-c", "--current", action="store_true",
                   help="only methods callable in the current state")
    p.add_argument("-i", "--include-aliases", action="store_true", help="include aliases")

    cmd("spdk_get_version", lambda a: print_json(a.client.call("spdk_get_version")),
        "Get the target's version")

    p = cmd("spdk_kill_instance", lambda a: a.client.call(
        "spdk_kill_instance", {"sig_name": a.sig_name}), "Send a signal to the target")
    # Refused before sending (exit 2), as SPDK's rpc.py does.
    p.add_argument("sig_name", choices=KILL_SIGNALS, help="signal name, e.g. SIGTERM")

    cmd("framework_start_init", lambda a: a.client.call("framework_start_init"),
        "Start initialisation of subsystems (after --wait-for-rpc)")
    cmd("framework_wait_init", lambda a: a.client.call("framework_wait_init"),
        "Wait until subsystems are initialised")
    cmd("framework_get_subsystems", lambda a: print_dict(
        a.client.call("framework_get_subsystems")), "Subsystems in init order")

    p = cmd("framework_get_config", lambda a: print_dict(a.client.call(
        "framework_get_config", {"name": a.name, "with_batches": a.with_batches})),
        "Print one subsystem's configuration")
    p.add_argument("name", help="subsystem name")
    p.add_argument("--with-batches", action=argparse.BooleanOptionalAction, default=False)

    p = cmd("save_config", lambda a: save_config(
        a.client, sys.stdout, int(a.indent), a.subsystems, a.with_batches),
        "Write the live configuration to stdout")
    p.add_argument("-i", "--indent", type=int, default=2,
                   help="indent level; negative means compact (default 2)")
    p.add_argument("-s", "--subsystems", help="comma-separated subsystems (with dependencies)")
    p.add_argument("--with-batches", action=argparse.BooleanOptionalAction, default=False)

    p = cmd("load_config", lambda a: load_config(a.client, a.json_conf, a.include_aliases),
            "Configure the target from a saved configuration")
    p.add_argument("-i", "--include-aliases", action="store_true")
    p.add_argument("-j", "--json-conf", default=sys.stdin, help="file or JSON text (default stdin)")

    def save_subsystem(a: argparse.Namespace) -> None:
        cfg = {"subsystem": a.name, "config": a.client.call(
            "framework_get_config", {"name": a.name, "with_batches": a.with_batches})}
        dump(cfg, sys.stdout, int(a.indent))

    p = cmd("save_subsystem_config", save_subsystem, "Write one subsystem's configuration")
    p.add_argument("-i", "--indent", type=int, default=2)
    p.add_argument("-n", "--name", required=True, help="subsystem name")
    p.add_argument("--with-batches", action=argparse.BooleanOptionalAction, default=False)

    def load_subsystem(a: argparse.Namespace) -> None:
        cfg = load(a.json_conf)
        allowed = a.client.call("rpc_get_methods", {"current": True})
        for elem in cfg.get("config") or []:
            if all(m in allowed for m in _methods(elem)):
                _call_entry(a.client, elem)
            else:
                print(f"Skipping {_methods(elem)}: not callable in the current state",
                      file=sys.stderr)

    p = cmd("load_subsystem_config", load_subsystem, "Configure one subsystem")
    p.add_argument("-j", "--json-conf", default=sys.stdin)

    cmd("framework_get_reactors", lambda a: print_dict(a.client.call("framework_get_reactors")),
        "The target's threads, as SPDK's reactors")

    p = cmd("framework_set_scheduler", lambda a: a.client.call("framework_set_scheduler", {
        "name": a.name, "period": a.period, "load_limit": a.load_limit,
        "core_limit": a.core_limit, "core_busy": a.core_busy, "mappings": a.mappings}),
        "Select the thread scheduler and its period")
    p.add_argument("name", help="scheduler name (pybdev has `static`)")
    p.add_argument("-p", "--period", type=int, help="scheduler period in microseconds")
    p.add_argument("--load-limit", type=int, help="thread load percentage (dynamic only)")
    p.add_argument("--core-limit", type=int, help="core busy percentage (dynamic only)")
    p.add_argument("--core-busy", type=int, help="core busy percentage (dynamic only)")
    p.add_argument("--mappings", help="comma-separated thread:core mappings (static only)")

    cmd("framework_get_scheduler", lambda a: print_dict(a.client.call(
        "framework_get_scheduler")), "The scheduler, its period and scheduling core")
    cmd("framework_disable_cpumask_locks", lambda a: a.client.call(
        "framework_disable_cpumask_locks"), "Release the CPU core lock files")
    cmd("framework_enable_cpumask_locks", lambda a: a.client.call(
        "framework_enable_cpumask_locks"), "Take the CPU core lock files")
