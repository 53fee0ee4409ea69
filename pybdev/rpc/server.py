"""The Unix-socket JSON-RPC listener (SPDK's transport: ``lib/rpc/rpc.c``, ``lib/jsonrpc``).

Thin I/O glue: bytes go through :class:`~pybdev.rpc.framing.JsonStream`, values through
the :class:`~pybdev.rpc.dispatcher.Dispatcher`. A request whose handler returns at once (most
of them) is answered in the read callback, and the replies of one read go out in one write;
one whose handler awaits runs as its own task, so a slow handler never blocks another client
or a later request on the same connection. Responses go out in completion order, as SPDK
sends them (docs/decisions/rpc-inline-answers.md).

Backpressure (docs/guide.md, "Limits"): a connection is not read while its unsent replies
exceed :data:`MAX_UNSENT_REPLY_BYTES` or :data:`MAX_PENDING_REQUESTS` of its requests are
being answered, so a client that sends without reading costs the target a bounded amount
of memory; reading resumes when the replies drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from pybdev.listener import (
    Identity,
    ListenError,
    listen_unix,
    process_name,
    unix_identity,
    unlink_unix,
)
from pybdev.peerwarn import WARNINGS
from pybdev.rpc import audit
from pybdev.rpc.dispatcher import Dispatcher, ParseError, encode, encode_response
from pybdev.rpc.errors import INTERNAL_ERROR, PARSE_ERROR, RpcError
from pybdev.rpc.framing import FramingError, JsonStream

log = logging.getLogger("pybdev.rpc")

LISTEN_BACKLOG = 512
# Unsent reply bytes above which a connection is no longer read (resumed below a quarter).
# One reply may be larger (bdev_get_bdevs of many bdevs): it is sent whole, then reading
# waits for it to drain.
MAX_UNSENT_REPLY_BYTES = 1024 * 1024
# Requests of one connection being answered at once before reading pauses.
MAX_PENDING_REQUESTS = 64
# Replies answered inline are gathered into one write, up to this many bytes.
FLUSH_REPLY_BYTES = 64 * 1024
INTERNAL_ERROR_LINE = (encode_response(
    {"jsonrpc": "2.0", "id": None, "error": RpcError(INTERNAL_ERROR).to_json()}) + "\n").encode()


class SocketInUse(Exception):
    """The RPC socket path cannot be used: another live target holds its lock file (or the
    lock file is unusable), something listens on the socket, or it is not a socket."""


def lock_holder(st: os.stat_result) -> str:
    """Who holds the flock on the file ``st`` describes: its owner and, from /proc/locks,
    the pid, so a user can tell a running target from a squatted file."""
    pids: list[str] = []
    with contextlib.suppress(OSError):
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == ident:
                    pids.append(fields[4])
    who = f"a process of uid {st.st_uid} (the file's owner)"
    if pids:
        who = (", ".join(process_name(int(p)) for p in pids)
               + f", of uid {st.st_uid}")
    return who


class RpcConnection(asyncio.Protocol):
    def __init__(self, dispatcher: Dispatcher, server: UnixRpcServer) -> None:
        self.dispatcher = dispatcher
        self.server = server
        self.stream = JsonStream()
        self.transport: asyncio.Transport | None = None
        self.pending: set[asyncio.Task[None]] = set()
        self.caller = "unix peer"  # uid and pid of the peer, for audit lines
        self.eof = False
        self._write_paused = False
        self._read_paused = False
        # No complete request is left in the stream (all taken or the rest incomplete).
        self._drained = True
        # Replies answered inline during this pass, written together when it ends.
        self._replies: list[bytes] = []
        self._reply_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(  # type: ignore[union-attr]
            high=MAX_UNSENT_REPLY_BYTES, low=MAX_UNSENT_REPLY_BYTES // 4
        )
        self.server.connections.add(self)
        self.caller = audit.unix_peer(transport.get_extra_info("socket"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.stream = JsonStream()  # drop whatever was buffered now, not at the next GC

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._take_requests()

    def data_received(self, data: bytes) -> None:
        self.stream.feed(data)
        self._drained = False
        self._take_requests()

    def _blocked(self) -> bool:
        return self._write_paused or len(self.pending) >= MAX_PENDING_REQUESTS

    def _pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None and not self.eof:
            self.transport.pause_reading()
            self._read_paused = True

    def _take_requests(self) -> None:
        """Answer each complete request while the connection is not blocked.

        A request whose handler returns at once is answered here, and the replies of one
        pass go out in one write (SPDK's handlers run inline on its reactor too). One that
        must wait (a handler that awaits; any request before the target is ready) runs as
        its own task and is answered when it completes.
        """
        try:
            while self.transport is not None and not self._drained:
                if self._blocked():
                    self._pause_reading()
                    return
                try:
                    raw = self.stream.next_value()
                except FramingError as e:
                    if "exceeds" in str(e):
                        WARNINGS.warn(log, "rpc_request_too_large", "unix",
                                      "RPC client %s: %s; closing the connection",
                                      self.caller, e)
                    else:
                        log.debug("closing RPC connection: %s", e)
                    self._parse_error()
                    return
                if raw is None:
                    self._drained = True
                    break
                self._answer(raw)
        finally:
            self._flush()
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        self._close_if_finished()

    def _answer(self, raw: bytes) -> None:
        if self.server.ready is not None and not self.server.ready.is_set():
            self._start(self._handle(raw))
            return
        token = audit.CALLER.set(self.caller)  # tasks started for the request inherit it
        try:
            try:
                response = self.dispatcher.answer_now(raw)
            except ParseError as e:
                log.debug("closing RPC connection: parse error: %s", e)
                self._parse_error()
                return
            except Exception:
                log.exception("RPC request failed")  # every request is answered
                response = INTERNAL_ERROR_LINE
            if isinstance(response, bytes):
                self._replies.append(response)
                self._reply_bytes += len(response)
                if self._reply_bytes >= FLUSH_REPLY_BYTES:
                    self._flush()  # may pause writing, which stops the loop above
            elif response is not None:
                self._start(self._send_later(response))
        finally:
            audit.CALLER.reset(token)

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.pending.add(task)
        task.add_done_callback(self._done)

    def _flush(self) -> None:
        replies = self._replies
        if not replies:
            return
        if self.transport is not None:
            self.transport.write(replies[0] if len(replies) == 1 else b"".join(replies))
        replies.clear()
        self._reply_bytes = 0

    def eof_received(self) -> bool:
        # Half-close: keep the write side open until queued requests are answered.
        self.eof = True
        self._close_if_finished()
        return True

    def _close_if_finished(self) -> None:
        if self.eof and self._drained and not self.pending and self.transport is not None:
            if self.stream.buffered:
                # The peer stopped sending in the middle of a value. SPDK just closes;
                # the -32700 it sends for unparsable input tells the client why.
                self._parse_error()
            else:
                self.transport.close()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        if self.transport is None:
            return
        if not self._drained and not self._blocked():
            self._take_requests()
        else:
            self._close_if_finished()

    async def _handle(self, raw: bytes) -> None:
        """A request that came before the target was ready: answered once it is."""
        audit.CALLER.set(self.caller)  # this request's task has its own context
        assert self.server.ready is not None
        await self.server.ready.wait()
        try:
            response = await self.dispatcher.handle_raw(raw)
        except ParseError as e:
            log.debug("closing RPC connection: parse error: %s", e)
            self._parse_error()
            return
        except Exception:
            log.exception("RPC request failed")
            response = INTERNAL_ERROR_LINE
        self._send(response)

    async def _send_later(self, pending: Coroutine[Any, Any, bytes | None]) -> None:
        """The answer of a request whose handler awaits."""
        try:
            response = await pending
        except Exception:
            log.exception("RPC request failed")
            response = INTERNAL_ERROR_LINE
        self._send(response)

    def _send(self, response: bytes | None) -> None:
        if response is not None and self.transport is not None:
            self.transport.write(response)

    def _parse_error(self) -> None:
        if self.transport is None:
            return
        self._flush()  # the answers to the requests before it go first
        err = RpcError(PARSE_ERROR).to_json()
        self.transport.write((encode({"jsonrpc": "2.0", "id": None, "error": err}) + "\n").encode())
        # close() sends what is queued first, so the client reads the -32700 before EOF.
        self.transport.close()
        self.transport = None


class UnixRpcServer:
    """Listens on a Unix socket guarded by ``PATH.lock`` (SPDK's rules, ``lib/rpc/rpc.c``)."""

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
                                      f"Specify another. ({e}; start this target with "
                                      "-r OTHER_PATH)") from None
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
        try:
            # O_NOFOLLOW: a symlink planted at PATH.lock (the default lives in the shared
            # /var/tmp) must not make us create or truncate its target.
            fd = os.open(self.lock_path,
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise SocketInUse(self._lock_refusal(e)) from None
        st = os.fstat(fd)
        try:
            if not stat.S_ISREG(st.st_mode):
                raise SocketInUse(f"{self.lock_path} is not a regular file; remove it or "
                                  "choose another socket path with -r")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = lock_holder(st)
            os.close(fd)
            raise SocketInUse(
                f"RPC Unix domain socket path {self.path} in use. Specify another. "
                f"(held by {holder}: stop that target, or start this one with -r OTHER_PATH)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def _lock_refusal(self, e: OSError) -> str:
        """Why PATH.lock cannot be opened, who owns it and what to do, for the user."""
        try:
            st = os.lstat(self.lock_path)
        except OSError:
            return f"cannot create {self.lock_path}: {e.strerror}; choose another path with -r"
        if stat.S_ISLNK(st.st_mode):
            return (f"{self.lock_path} is a symbolic link (owned by uid {st.st_uid}); refusing "
                    "to follow it. Remove it if it is not yours, or choose another path "
                    "with -r")
        return (f"RPC Unix domain socket path {self.path} in use. Specify another. "
                f"({self.lock_path} belongs to uid {st.st_uid} and cannot be opened: "
                f"{e.strerror}. If no target of that user runs, it may remove the file; "
                "otherwise choose another path with -r)")

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
