"""The Unix-socket JSON-RPC listener (SPDK's transport: ``lib/rpc/rpc.c``).

Thin I/O glue: bytes go through :class:`~pybdev.rpc.framing.JsonStream`, values through
the :class:`~pybdev.rpc.dispatcher.Dispatcher`. Each request runs as its own task so a slow
handler never blocks another client or a later request on the same connection; responses
go out in completion order, as SPDK sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

from pybdev.listener import Identity, ListenError, listen_unix, unix_identity, unlink_unix
from pybdev.rpc.dispatcher import Dispatcher, ParseError, encode
from pybdev.rpc.errors import PARSE_ERROR, RpcError
from pybdev.rpc.framing import FramingError, JsonStream

log = logging.getLogger("pybdev.rpc")

LISTEN_BACKLOG = 512


class SocketInUse(Exception):
    """The RPC socket path cannot be used: another live target holds its lock file,
    something listens on it, or it is not a socket."""


class RpcConnection(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher, server: UnixRpcServer) -> None:
        self.dispatcher = dispatcher
        self.server = server
        self.stream = JsonStream()
        self.transport: asyncio.Transport | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.stream.feed(data)
        loop = asyncio.get_running_loop()
        while self.transport is not None:
            try:
                raw = self.stream.next_value()
            except FramingError as e:
                log.debug("closing RPC connection: %s", e)
                self._parse_error()
                return
            if raw is None:
                return
            task = loop.create_task(self._handle(raw))
            self.pending.add(task)
            task.add_done_callback(self._done)

    def eof_received(self) -> bool:
        # Half-close: keep the write side open until queued requests are answered.
        self.eof = True
        if not self.pending and self.transport is not None:
            self.transport.close()
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if self.eof and not self.pending and self.transport is not None:
            self.transport.close()

    async def _handle(self, raw: bytes) -> None:
        if self.server.ready is not None and not self.server.ready.is_set():
            await self.server.ready.wait()
        try:
            response = await self.dispatcher.handle_raw(raw)
        except ParseError as e:
            log.debug("closing RPC connection: parse error: %s", e)
            self._parse_error()
            return
        if response is not None and self.transport is not None:
            self.transport.write(response)

    def _parse_error(self) -> None:
        if self.transport is None:
            return
        err = RpcError(PARSE_ERROR).to_json()
        self.transport.write((encode({"jsonrpc": "2.0", "id": None, "error": err}) + "\n").encode())
        self.transport.close()
        self.transport = None


class UnixRpcServer:
    """Listens on a Unix socket guarded by ``PATH.lock`` (SPDK's ``spdk_rpc_listen``)."""

    def __init__(
        self, dispatcher: Dispatcher, path: str, ready: asyncio.Event | None = None
    ) -> None:
        self.dispatcher = dispatcher
        # Requests wait for this, as on SPDK's paused socket while subsystems initialise.
        self.ready = ready
        self.path = path
        self.lock_path = path + ".lock"
        self.connections: set[RpcConnection] = set()
        self._lock_fd: int | None = None
        self._identity: Identity | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._take_lock()
        try:
            try:
                # The lock is ours, so a socket file left here is a dead target's, unless
                # something that does not take the lock answers on it (pybdev.listener).
                sock = listen_unix(self.path, mode=0o600, backlog=LISTEN_BACKLOG)
            except ListenError as e:
                if e.errno == errno.EADDRINUSE:
                    raise SocketInUse(f"RPC Unix domain socket path {self.path} in use. "
                                      f"Specify another. ({e})") from None
                raise SocketInUse(f"RPC Unix domain socket path {self.path}: {e}") from None
            self._identity = unix_identity(self.path)
            loop = asyncio.get_running_loop()
            try:
                self._server = await loop.create_unix_server(
                    lambda: RpcConnection(self.dispatcher, self), sock=sock
                )
            except BaseException:
                sock.close()
                raise
        except BaseException:
            unlink_unix(self.path, self._identity)
            self._release_lock()
            raise
        log.info("RPC server listening on %s", self.path)

    def _take_lock(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SocketInUse(
                f"RPC Unix domain socket path {self.path} in use. Specify another."
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None

    async def stop(self) -> None:
        """Stop listening, close every connection, remove the socket and lock file."""
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        unlink_unix(self.path, self._identity)
        self._identity = None
        self._release_lock()
