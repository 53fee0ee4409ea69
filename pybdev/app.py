"""The target process: options, start-up, STARTUP -> RUNTIME, signals, shutdown.

Start-up order (docs/architecture.md): parse options -> STARTUP part of ``--json`` -> RPC socket ->
(``--wait-for-rpc``: wait for ``framework_start_init``) -> subsystem init -> RUNTIME ->
RUNTIME part of ``--json`` -> serve. Requests that arrive before RUNTIME wait, as they do
on SPDK's paused socket. Shutdown (SIGINT, SIGTERM, ``spdk_kill_instance``) closes the RPC
listeners, finishes subsystems in reverse init order and removes socket and lock file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pybdev import __version__, framework, logs, metrics, notify, spdk_tgt_options
from pybdev.assembly import Assembly, PluginError, assemble
from pybdev.config import ConfigError, SubsystemConfig, read_config_file, replay
from pybdev.cpus import CoreLocks, app_cores
from pybdev.errors import OperationError
from pybdev.peerwarn import WARNINGS
from pybdev.rpc import audit
from pybdev.rpc.dispatcher import Dispatcher
from pybdev.rpc.http import (
    HttpConfigError,
    HttpRpcServer,
    add_http_options,
    configure_http,
    configure_metrics,
)
from pybdev.rpc.registry import Registry, State
from pybdev.rpc.server import SocketInUse, UnixRpcServer
from pybdev.subsystem import Subsystem

DEFAULT_RPC_SOCKET = "/var/tmp/spdk.sock"
#: Signals that stop the target cleanly (SIGHUP and SIGQUIT too: a service manager or a
#: closed terminal must not leave the socket, the lock file and half-drained exports).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)

S = TypeVar("S", bound=Subsystem)


def build_parser(assembly: Assembly | None = None) -> argparse.ArgumentParser:
    if assembly is None:
        assembly = assemble()
    p = argparse.ArgumentParser(
        prog="pybdev",
        description="pybdev: a storage target that speaks SPDK's JSON-RPC.",
        epilog="spdk_tgt's DPDK, hugepage, PCI and trace options (-s, -e, -i, -g, -u, -n, -p, "
               "-A, -B, -R, --no-huge, ...) are accepted, logged once and ignored.",
    )
    p.add_argument("-r", "--rpc-socket", default=DEFAULT_RPC_SOCKET, metavar="PATH",
                   help=f"RPC listen address (Unix socket path, default {DEFAULT_RPC_SOCKET})")
    p.add_argument("-c", "--config", "--json", dest="json", metavar="FILE",
                   help="JSON configuration to load at start-up (comments allowed)")
    p.add_argument("--json-ignore-init-errors", action="store_true",
                   help="keep going when a --json entry fails or names an unknown method")
    p.add_argument("--wait-for-rpc", action="store_true",
                   help="wait for framework_start_init before initialising subsystems")
    p.add_argument("--rpcs-allowed", metavar="LIST",
                   help="comma-separated list of the only RPC methods served")
    p.add_argument("--no-rpc-server", action="store_true", help="do not listen for RPCs")
    p.add_argument("-m", "--cpumask", default="0x1", metavar="MASK",
                   help="core mask (hex); the default cpumask of the ublk target")
    p.add_argument("-L", "--logflag", action="append", default=[], metavar="COMPONENT",
                   help=f"enable debug logs of one component ({', '.join(logs.FLAGS)}); "
                        "'all' for every one")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=list(logs.LEVELS),
                   help="lowest level printed to stderr and written to --log-file "
                        "(default INFO)")
    p.add_argument("--log-file", metavar="FILE", help="also write the log to FILE")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text lines (default) or one JSON object a line")
    p.add_argument("--silence-noticelog", action="store_true",
                   help="print warnings and errors only (as --log-level WARNING)")
    p.add_argument("-f", "--pidfile", dest="pidfile", metavar="FILE",
                   help="write the target's pid to FILE once it serves RPC (spdk_tgt's -f); "
                        "removed at exit")
    p.add_argument("--plugins-strict", action="store_true",
                   help="refuse to start when an installed plugin fails to load "
                        "(default: log the error and start without it)")
    add_http_options(p)
    metrics.add_metrics_options(p)
    for sub in assembly.subsystems:
        sub.add_options(p)
    spdk_tgt_options.add_options(p)
    p.add_argument("-v", "--version", action="version", version=f"pybdev {__version__}")
    return p


def log_control(options: argparse.Namespace) -> logs.LogControl:
    level = "WARNING" if options.silence_noticelog else options.log_level
    control = logs.LogControl(print_level=level, log_file=options.log_file,
                              fmt=options.log_format, level=level)
    for flag in options.logflag:
        control.set_flag(flag)
    return control


class App:
    """One target: its state, subsystems, dispatcher and listeners.

    Built from an :class:`~pybdev.assembly.Assembly`: one instance of each subsystem (the
    bdev subsystem makes one of each bdev module), then one registry of the RPC methods
    they declare, each handler bound to the object that owns it.
    """

    rpc = framework.RPC

    def __init__(self, options: argparse.Namespace, assembly: Assembly | None = None,
                 log_control: logs.LogControl | None = None) -> None:
        self.options = options
        self.assembly = assembly if assembly is not None else assemble()
        self.logs = log_control if log_control is not None else logs.LogControl()
        self.log = logging.getLogger("pybdev.app")
        self.state = State.STARTUP
        self.initialized = asyncio.Event()
        self.serving = asyncio.Event()
        self.shutdown_requested = asyncio.Event()
        self.notifier = notify.Notifier()
        self.core_locks = CoreLocks(app_cores(options.cpumask))
        self.subsystems: list[Subsystem] = []
        for cls in self.assembly.subsystems:
            sub = cls(self)
            sub.configure(options)
            self.subsystems.append(sub)
        self.registry = Registry()
        self.registry.add_table(self.rpc, self, "framework")
        self.registry.add_table(logs.RPC, self.logs, "framework")
        self.registry.add_table(notify.RPC, self.notifier, "notify")
        for sub in self.subsystems:
            for table, owner in sub.rpc_tables():
                self.registry.add_table(table, owner, sub.name)
        allowed = (
            frozenset(n.strip() for n in options.rpcs_allowed.split(",") if n.strip())
            if options.rpcs_allowed else None
        )
        self.dispatcher = Dispatcher(self, self.registry, allowed)
        self.rpc_server: UnixRpcServer | None = None
        self.http_server: HttpRpcServer | None = None
        self.metrics_server: HttpRpcServer | None = None
        self._metrics_registry: Any = None
        self._config: list[SubsystemConfig] = []
        self._init_lock = asyncio.Lock()
        self._started: list[Subsystem] = []

    def subsystem(self, cls: type[S]) -> S:
        for sub in self.subsystems:
            if isinstance(sub, cls):
                return sub
        raise LookupError(cls.__name__)

    async def start(self) -> None:
        """Everything up to serving RPC; raises ConfigError, SocketInUse or HttpConfigError."""
        # Checked first: a refused --http configuration must not even load the config.
        self.http_server = await configure_http(self.options, self.dispatcher, self.serving,
                                                metrics=self.render_metrics,
                                                events=self.notifier.hub)
        self.metrics_server = await configure_metrics(self.options, self.dispatcher,
                                                      self.render_metrics)
        if self.options.json:
            self._config = read_config_file(self.options.json)
        await self._replay(State.STARTUP)
        if not self.options.no_rpc_server:
            self.rpc_server = UnixRpcServer(
                self.dispatcher, self.options.rpc_socket, self.serving
            )
            await self.rpc_server.start()
        if self.http_server is not None:
            await self.http_server.start()
        if self.metrics_server is not None:
            await self.metrics_server.start()
        if self.options.wait_for_rpc:
            self.serving.set()
        else:
            await self.start_init()

    async def start_init(self) -> None:
        async with self._init_lock:
            if self.state == State.RUNTIME:
                return
            for sub in self.subsystems:
                await sub.init()
                self._started.append(sub)
            self.state = State.RUNTIME
            await self._replay(State.RUNTIME)
            self.initialized.set()
            self.serving.set()
            self.log.log(logs.NOTICE, "pybdev %s initialised; serving RPC", __version__)

    async def _replay(self, phase: State) -> None:
        if self._config:
            token = audit.CALLER.set(f"config {self.options.json}")
            try:
                await replay(self.dispatcher, self._config, phase,
                             {s.name for s in self.subsystems},
                             self.options.json_ignore_init_errors)
            finally:
                audit.CALLER.reset(token)

    async def stop(self) -> None:
        """Close listeners, then finish subsystems in reverse init order."""
        self.notifier.hub.close()  # /events streams end, so the HTTP server stops promptly
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if self.http_server is not None:
            await self.http_server.stop()
            self.http_server = None
        if self.rpc_server is not None:
            await self.rpc_server.stop()
            self.rpc_server = None
        while self._started:
            sub = self._started.pop()
            try:
                await sub.fini()
            except Exception:
                self.log.exception("subsystem %s failed to finish", sub.name)
        self.core_locks.release()
        WARNINGS.flush()  # the summaries of warnings still held back

    def render_metrics(self) -> bytes:
        """``GET /metrics``: the target's counters in Prometheus' text format."""
        if self._metrics_registry is None:
            self._metrics_registry = metrics.build_registry(self)
        return metrics.render(self._metrics_registry)

    def request_shutdown(self, signame: str = "") -> None:
        if not self.shutdown_requested.is_set():
            self.log.log(logs.NOTICE, "shutting down%s", f" on {signame}" if signame else "")
        self.shutdown_requested.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.request_shutdown, sig.name)
        try:
            try:
                await self.start()
            except (ConfigError, SocketInUse, HttpConfigError) as e:
                self.log.error("%s", e)
                return 1
            except OperationError as e:  # a subsystem refused to initialise (accel's check)
                self.log.error("framework initialization failed: %s", e)
                return 1
            if self.options.pidfile:
                write_pidfile(self.options.pidfile)
            notify_systemd(f"READY=1\nMAINPID={os.getpid()}")
            await self.shutdown_requested.wait()
            return 0
        finally:
            notify_systemd("STOPPING=1")
            await self.stop()
            if self.options.pidfile:
                remove_pidfile(self.options.pidfile)
            self.log.log(logs.NOTICE, "pybdev stopped")


def notify_systemd(state: str) -> None:
    """Tell the service manager (``Type=notify`` units) about readiness and stopping."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError as e:
        logging.getLogger("pybdev.app").warning("cannot notify systemd at %s: %s",
                                                os.environ["NOTIFY_SOCKET"], e)


def write_pidfile(path: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")


def remove_pidfile(path: str) -> None:
    # Only our own: a second target may have written its pid there since.
    with contextlib.suppress(OSError, ValueError), open(path, encoding="ascii") as f:
        if int(f.read().strip()) != os.getpid():
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def run_loop(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run on uvloop when it is installed (measurably faster sockets), else asyncio's loop.

    ``PYBDEV_EVENT_LOOP=asyncio`` forces asyncio's own loop (benchmarks and tests of the
    paths a plain ``pip install`` takes).
    """
    if os.environ.get("PYBDEV_EVENT_LOOP") == "asyncio":
        return asyncio.run(coro_factory())
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro_factory())
    return uvloop.run(coro_factory())


def main(argv: Sequence[str] | None = None) -> int:
    try:
        assembly = assemble()
    except PluginError as e:
        print(f"pybdev: {e}", file=sys.stderr)
        return 1
    parser = build_parser(assembly)
    options = parser.parse_args(spdk_tgt_options.drop_empty(
        sys.argv[1:] if argv is None else argv))
    if options.no_rpc_server and options.wait_for_rpc:
        parser.error("--wait-for-rpc needs the RPC server; it cannot go with --no-rpc-server")
    if not options.no_rpc_server and re.fullmatch(r"[^/]*:\d+", options.rpc_socket):
        parser.error(f"-r {options.rpc_socket}: -r takes a Unix socket path; serve HTTP "
                     "JSON-RPC with --http HOST:PORT")
    unknown = logs.check_flags(options.logflag)
    if unknown:
        parser.error(f"unknown log flag {', '.join(unknown)} (known: all, {', '.join(logs.FLAGS)})")
    try:
        control = log_control(options)
    except OSError as e:
        parser.error(f"--log-file: {e}")
    control.install()
    for name in spdk_tgt_options.given(options):
        logging.getLogger("pybdev.app").info("option %s does not apply to pybdev; ignored", name)
    for error in assembly.errors:
        logging.getLogger("pybdev.app").error("%s", error)
    if assembly.errors and options.plugins_strict:
        logging.getLogger("pybdev.app").error("not starting: --plugins-strict and %d plugin(s) "
                                              "failed to load", len(assembly.errors))
        return 1

    async def serve() -> int:
        app = App(options, assembly, control)
        # What is loaded by now (modules, classes, RPC schemas: about 40,000 objects)
        # lives as long as the process. Out of the collector's way, a full collection no
        # longer walks it: one took ~40 ms of the event loop here, and creating bdevs
        # runs one every few thousand (docs/decisions/rpc-inline-answers.md).
        gc.collect()
        gc.freeze()
        return await app.run()

    with contextlib.suppress(KeyboardInterrupt):
        return run_loop(serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
