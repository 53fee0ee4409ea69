"""``scripts/rpc.py``: a command line argument-compatible with SPDK's ``rpc.py``.

Standard library only, so the script runs with any Python 3.11 even outside the venv.
Each subsystem adds its commands in its own module here (``framework``, ``bdev``, ``lvol``, ``nbd``,
``ublk``, ``rbd``) through ``add_parsers(subparsers)``; a command's ``func(args)`` calls
``args.client.call(...)`` and prints with :mod:`pybdev.cli.output`. Installed plugins add
theirs through the entry-point group ``pybdev.cli`` (docs/plugins.md).
"""

from __future__ import annotations

import argparse
import difflib
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn, TextIO

from pybdev.cli import accel, bdev, bdev_nvme, framework, log, lvol, nbd, nvmf, output, rbd, ublk
from pybdev.rpc.client import DEFAULT_ADDR, DEFAULT_PORT, JsonRpcException, RpcClient

AddParsers = Callable[[Any], None]
BUILTIN_COMMANDS: tuple[AddParsers, ...] = (
    framework.add_parsers, log.add_parsers, accel.add_parsers, bdev.add_parsers,
    lvol.add_parsers, nbd.add_parsers, ublk.add_parsers, rbd.add_parsers, nvmf.add_parsers,
    bdev_nvme.add_parsers,
)
CLI_ENTRY_POINT_GROUP = "pybdev.cli"


def plugin_commands() -> list[AddParsers]:
    """``add_parsers`` of installed plugins; one that fails to load is named and skipped."""
    found = []
    for ep in sorted(metadata.entry_points(group=CLI_ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            found.append(ep.load())
        except Exception as e:
            print(f"rpc.py: plugin commands {ep.name!r} ({ep.value}) failed to load: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
    return found


class DryRunClient:
    """Prints each request instead of sending it (``--dry-run``); with ``-b`` as one batch."""

    def __init__(self) -> None:
        self._next_id = 0
        self.batch: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if params:
            req["params"] = params
        print("Request:")
        print(json.dumps(req, indent=2))
        return None

    def call_batch(self, calls: list[tuple[str, dict[str, Any] | None]]) -> list[Any]:
        """Print the batch as SPDK's dry-run client does; nothing was sent, nothing answers."""
        reqs = []
        for method, params in calls:
            self._next_id += 1
            req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
            params = {k: v for k, v in (params or {}).items() if v is not None}
            if params:
                req["params"] = params
            reqs.append(req)
        print("Request:")
        print(json.dumps(reqs, indent=2))
        return []


class BatchClient:
    """Queues calls and sends them as one JSON-RPC batch (``-b/--batch-mode``)."""

    def __init__(self, client: RpcClient) -> None:
        self.client = client
        self.calls: list[tuple[str, dict[str, Any] | None]] = []

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.calls.append((method, params))
        return None

    def flush(self) -> int:
        if not self.calls:
            return 0
        failed = 0
        for element in self.client.call_batch(self.calls):
            if "error" in element:
                failed += 1
                print(json.dumps(element["error"], indent=2), file=sys.stderr)
            elif element.get("result") is not None:
                print(json.dumps(element["result"], indent=2))
        return 1 if failed else 0


class Parser(argparse.ArgumentParser):
    """argparse, plus "did you mean" for a misspelt command (3.11 has no suggest_on_error)."""

    def error(self, message: str) -> NoReturn:
        choices = command_names(self)
        typed = message.split("invalid choice: '", 1)[1].split("'", 1)[0] \
            if "invalid choice: '" in message else None
        if choices and typed is not None:
            close = difflib.get_close_matches(typed, list(choices), n=3, cutoff=0.75)
            if close:
                message = f"unknown command '{typed}'; did you mean {' or '.join(close)}?"
            else:
                message = f"unknown command '{typed}' (rpc.py -h lists the commands)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rpc.py", description="pybdev RPC command line (compatible with SPDK's rpc.py)"
    )
    parser.add_argument("-s", dest="server_addr", default=DEFAULT_ADDR,
                        help="RPC socket path, IP address, or http(s):// URL")
    parser.add_argument("-p", dest="port", type=int, default=DEFAULT_PORT,
                        help="RPC port number (if server_addr is an IP address)")
    parser.add_argument("-t", dest="timeout", type=float, default=None,
                        help="seconds to wait for a response (default 60.0)")
    parser.add_argument("-r", dest="conn_retries", type=int, default=0,
                        help="retry connecting N times, 0.2 s apart")
    parser.add_argument("-v", dest="verbose", action="store_const", const="INFO", default="ERROR",
                        help="verbose mode (INFO)")
    parser.add_argument("--verbose", dest="verbose", choices=["DEBUG", "INFO", "ERROR"])
    parser.add_argument("--dry-run", action="store_true", help="print the request and exit")
    parser.add_argument("--server", dest="is_server", action="store_true",
                        help="read commands from stdin, one connection each, and print "
                             "**STATUS=0 or **STATUS=1 after each")
    parser.add_argument("-b", "--batch-mode", action=argparse.BooleanOptionalAction,
                        help="read commands from stdin and send them as one JSON-RPC batch")
    parser.add_argument("-u", "--user", dest="http_user",
                        help="HTTP user (password from --password-file or PYBDEV_RPC_PASSWORD)")
    parser.add_argument("--password-file", dest="http_password_file",
                        help="file holding the HTTP password")
    parser.add_argument("--token-file", dest="http_token_file",
                        help="file holding an HTTP bearer token (or PYBDEV_RPC_TOKEN)")
    parser.add_argument("--cacert", dest="http_cacert", help="CA certificate for https://")
    parser.add_argument("--list-commands", action="store_true",
                        help="print every command name, one a line (for shell completion)")
    subparsers = parser.add_subparsers(dest="called_rpc_name", metavar="")
    for add_parsers in (*BUILTIN_COMMANDS, *plugin_commands()):
        add_parsers(subparsers)
    return parser


def command_names(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def http_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = {k[len("http_"):]: v for k, v in vars(args).items()
            if k.startswith("http_") and v is not None}
    return opts if args.server_addr.startswith(("http://", "https://")) else {}


def connect(args: argparse.Namespace) -> RpcClient:
    return RpcClient(args.server_addr, args.port, args.timeout, args.conn_retries,
                     **http_options(args))


def run_script(parser: argparse.ArgumentParser, client: Any, lines: TextIO) -> int:
    for line in lines:
        words = shlex.split(line, comments=True)
        if not words:
            continue
        args = parser.parse_args(words)
        args.client = client
        try:
            args.func(args)
        except JsonRpcException as e:
            print(f"Exception:\n{line.strip()} <<<\n{e.message}")
            return 1
    return 0


def run_server(parser: argparse.ArgumentParser) -> int:
    for line in sys.stdin:
        try:
            args = parser.parse_args(shlex.split(line))
        except SystemExit:
            print("**STATUS=1", flush=True)
            continue
        try:
            with connect(args) as client:
                args.client = client
                args.func(args)
            print("**STATUS=0", flush=True)
        except JsonRpcException as e:
            print(e.message)
            print("**STATUS=1", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_commands:
        print("\n".join(sorted(command_names(parser))))
        return 0
    if args.is_server:
        return run_server(parser)
    has_command = hasattr(args, "func")
    if not has_command and sys.stdin.isatty():
        parser.print_help()
        return 1
    try:
        if args.dry_run:
            output.suppressed = True
            client: Any = DryRunClient()
        else:
            client = connect(args)
        if args.batch_mode:
            client = BatchClient(client)
        if has_command:
            args.client = client
            args.func(args)
            status = 0
        else:
            status = run_script(parser, client, sys.stdin)
        if isinstance(client, BatchClient):
            status = status or client.flush()
        return status
    except JsonRpcException as e:
        print(e.message, file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    except KeyboardInterrupt:
        return 130


def script_main() -> None:  # entry point of scripts/rpc.py
    sys.exit(main())


__all__ = ["main"]
