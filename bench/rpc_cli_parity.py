"""Compare every command of scripts/rpc.py with SPDK's rpc.py (PyPI ``spdk``): options, drift.

Usage: ``.venv/bin/python bench/rpc_cli_parity.py`` prints, for every command both have,
how its arguments differ (option strings, destination, type, choices, nargs, required,
action), then a summary. ``tests/cli/test_parity.py`` fails on any difference.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# Differences that are pybdev's documented choice, not drift: (command, argument) -> why.
ACCEPTED: dict[tuple[str, str], str] = {
    ("bdev_get_iostat", "--name/-b"):
        "SPDK's rpc.py had -b until v26.05; pybdev keeps it for older scripts",
    ("bdev_rbd_create", "--user"): "pybdev also accepts --user-id (docs/ceph.md)",
    ("bdev_rbd_create", "--user/--user-id"): "pybdev also accepts --user-id (docs/ceph.md)",
    ("bdev_rbd_register_cluster", "--user"): "pybdev also accepts --user-id (docs/ceph.md)",
    ("bdev_rbd_register_cluster", "--user/--user-id"):
        "pybdev also accepts --user-id (docs/ceph.md)",
    ("nbd_start_disk", "--num-connections/-c"):
        "pybdev: several sockets for a /dev/nbdN device (docs/nbd-kernel.md)",
}
PROBES = ("1", "a,b", "0x10")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _type(action: argparse.Action) -> Any:
    """The type by what it makes of a few probes (two spellings of one conversion agree)."""
    t = action.type
    if t is None or t is str:
        return "str"
    if t in (int, float):
        return t.__name__
    results = []
    for probe in PROBES:
        try:
            results.append(repr(t(probe)))
        except Exception as e:
            results.append(type(e).__name__)
    return results


def describe(action: argparse.Action) -> dict[str, Any]:
    """What a user can type and what it becomes: the parts two CLIs must agree on."""
    kind = type(action).__name__
    takes_value = kind in ("_StoreAction", "_AppendAction")
    return {
        "dest": action.dest,
        "action": kind,
        "type": _type(action) if takes_value else None,
        "choices": sorted(map(str, action.choices)) if action.choices else None,
        "nargs": action.nargs,
        "required": action.required,
        "const": action.const if kind == "_StoreConstAction" else None,
    }


def signature(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """{"-b/--name": {...}, "#0": {...positional...}} of one command."""
    out: dict[str, Any] = {}
    pos = 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            out["/".join(sorted(action.option_strings))] = describe(action)
        else:
            out[f"#{pos}"] = describe(action)
            pos += 1
    return out


def diff(ours: dict[str, Any], theirs: dict[str, Any]) -> list[tuple[str, str]]:
    """(argument, what differs) for every argument the two commands do not share alike."""
    problems = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if a is None:
            problems.append((key, f"missing {key} ({b['dest']})"))
        elif b is None:
            problems.append((key, f"extra {key} ({a['dest']})"))
        elif a != b:
            fields = [f"{k}: {a[k]!r} != SPDK {b[k]!r}" for k in a if a[k] != b.get(k)]
            problems.append((key, f"{key}: " + "; ".join(fields)))
    return problems


def spdk_parser() -> argparse.ArgumentParser:
    from spdk import spdk_rpc

    parser, _ = spdk_rpc.create_parser()
    return parser


def pybdev_parser() -> argparse.ArgumentParser:
    sys.path.insert(0, str(ROOT))
    from pybdev.cli import build_parser

    return build_parser()


def compare() -> tuple[dict[str, list[str]], list[str], list[str]]:
    """(drift per shared command, commands only pybdev has, commands only SPDK has)."""
    ours, theirs = subcommands(pybdev_parser()), subcommands(spdk_parser())
    drift = {}
    for name in sorted(set(ours) & set(theirs)):
        problems = [text for key, text in diff(signature(ours[name]), signature(theirs[name]))
                    if (name, key) not in ACCEPTED]
        if problems:
            drift[name] = problems
    return drift, sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))


def sample_argv(parser: argparse.ArgumentParser, with_options: bool) -> list[str]:
    """A command line that sets every positional and, ``with_options``, every option."""
    argv: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        kind = type(action).__name__
        if action.choices:
            value = str(sorted(map(str, action.choices))[0])
        elif action.type in (int, float):
            value = "2"
        else:
            value = "x2"
        if not action.option_strings:
            argv += [value] * (2 if action.nargs in ("+", "*") else 1)
        elif with_options or action.required:
            flag = max(action.option_strings, key=len)
            if kind in ("_StoreAction", "_AppendAction"):
                argv += [flag, value]
            elif kind in ("_StoreTrueAction", "_StoreFalseAction", "_StoreConstAction",
                          "BooleanOptionalAction"):
                argv.append(flag)
    return argv


def _capture(run: Any) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            run()
        except BaseException as e:  # argparse exits; a command may refuse its arguments
            return f"<{type(e).__name__}>"
    return out.getvalue()


def requests_of(text: str) -> Any:
    """The requests a dry run printed ("Request:" then JSON), without their ids."""
    reqs = []
    for chunk in text.split("Request:\n")[1:]:
        value, _ = json.JSONDecoder().raw_decode(chunk)
        for r in value if isinstance(value, list) else [value]:
            r.pop("id", None)
            reqs.append(r)
    return reqs


def payload_drift() -> tuple[dict[str, str], int]:
    """Commands whose dry-run request differs from SPDK's for the same command line, and
    how many commands sent at least one request that was compared."""
    from spdk import spdk_rpc
    from spdk.rpc.client import JSONRPCDryRunClient

    from pybdev import cli
    from pybdev.cli import output

    ours, theirs = subcommands(pybdev_parser()), subcommands(spdk_parser())
    spdk_parser_full = spdk_parser()
    drift = {}
    compared = 0
    for name in sorted(set(ours) & set(theirs)):
        for with_options in (True, False):
            argv = [name, *sample_argv(theirs[name], with_options)]

            def run_spdk(argv: list[str] = argv) -> None:
                args = spdk_parser_full.parse_args(argv)
                args.client = JSONRPCDryRunClient()
                spdk_rpc.suppress_cli_prints()
                args.func(args)

            def run_ours(argv: list[str] = argv) -> None:
                try:
                    cli.main(["--dry-run", *argv])
                finally:
                    output.suppressed = False

            a, b = _capture(run_ours), _capture(run_spdk)
            if b.startswith("<") and with_options:
                continue  # SPDK refuses every option at once; try positionals only
            if requests_of(a) != requests_of(b) or (a.startswith("<") != b.startswith("<")):
                drift[name] = f"{' '.join(argv)}\n      pybdev: {a.strip()[:300]}\n" \
                              f"      SPDK:   {b.strip()[:300]}"
            elif requests_of(b):
                compared += 1
            break
    return drift, compared


def missing_commands() -> list[str]:
    """Methods the target serves that SPDK's rpc.py has a command for and pybdev's lacks."""
    from pybdev.reference import builtin_registry

    served = {m.name for m in builtin_registry().methods()}
    ours, theirs = subcommands(pybdev_parser()), subcommands(spdk_parser())
    return sorted((served & set(theirs)) - set(ours))


def main() -> int:
    drift, only_ours, only_theirs = compare()
    missing = missing_commands()
    if missing:
        print("served, in SPDK's rpc.py, missing from pybdev's:", " ".join(missing))
    for name, problems in drift.items():
        print(name)
        for p in problems:
            print("   ", p)
    payloads, compared = payload_drift()
    for name, text in payloads.items():
        print(f"{name} (request differs): {text}")
    shared = len(subcommands(pybdev_parser())) - len(only_ours)
    print(f"\ncommands in both: {shared}; with differing options: {len(drift)}; "
          f"requests compared: {compared}, differing: {len(payloads)}; "
          f"only in pybdev: {len(only_ours)}; only in SPDK: {len(only_theirs)}")
    print("only in pybdev:", " ".join(only_ours))
    return 1 if drift or payloads or missing else 0


if __name__ == "__main__":
    sys.exit(main())
