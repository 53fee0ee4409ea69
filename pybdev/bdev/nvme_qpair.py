"""One NVMe/TCP queue pair of the initiator: the asyncio glue around
:class:`pybdev.proto.nvme.HostQueue` (docs/nvme-initiator.md).

A :class:`Qpair` is one TCP connection: it sends the ICReq, waits (bounded) for the
ICResp, then carries commands.  A command's context is a callable
``cb(status, dw0, dw1, data)``: ``status`` is the NVMe status (0 = success, else the
15-bit CQE status) or, when the command never completed, a negative errno
(``-ECONNRESET`` when the connection went away, ``-ETIMEDOUT`` for
:meth:`Qpair.command`'s deadline).  Commands submitted in one loop iteration leave in
one ``writelines``.

A controller that breaks the protocol gets an H2CTermReq and the connection is cut; a
controller that sends nothing for ``io_timeout`` seconds while commands wait is cut too
(a stopped process keeps its sockets open).  Either way ``on_lost(reason)`` runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from pybdev.errors import OperationError
from pybdev.proto import nvme

log = logging.getLogger("pybdev.bdev.nvme")

Cb = Callable[[int, int, int, Any], None]

LOST = -errno.ECONNRESET


class Qpair(asyncio.Protocol):
    def __init__(self, label: str, *, hdgst: bool, ddgst: bool, depth: int,
                 max_data: int, io_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.label = label
        self.q = nvme.HostQueue(hdgst=hdgst, ddgst=ddgst, depth=depth, max_data=max_data)
        self.transport: asyncio.Transport | None = None
        self.ic_done: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.dead = False
        self.on_lost: Callable[[str], None] | None = None
        self.io_timeout = io_timeout
        self.exempt = 0  # commands that wait by design (an AER): not watched
        self._pending: list[Any] = []
        self._flush_scheduled = False
        self._progress = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._reason = ""

    # -- asyncio ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(self.q.ic_req())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self._progress = self.loop.time()
        try:
            events = self.q.feed(data)
        except nvme.PduError as err:
            for ev in err.parsed:
                self._event(ev)
            self._fail(f"controller broke NVMe/TCP: {err}", err)
            return
        for ev in events:
            self._event(ev)
        out = self.q.data_to_send()
        if out and self.transport is not None:
            self.transport.writelines(out)

    def _event(self, ev: Any) -> None:
        if type(ev) is nvme.Completion:
            ev.ctx(ev.status, ev.dw0, ev.dw1, ev.data)
        elif type(ev) is nvme.ICResp:
            if not self.ic_done.done():
                self.ic_done.set_result(None)
        else:  # TermReq
            self._fail(f"controller ended the connection: C2HTermReq FES {ev.fes:#x} "
                       f"FEI {ev.fei}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        reason = self._reason or (f"connection lost: {exc}" if exc
                                  else "controller closed the connection")
        if not self.ic_done.done():
            self.ic_done.set_exception(OperationError(errno.ECONNRESET, reason))
        was_dead = self.dead
        self.dead = True
        self._pending.clear()
        waiting = self.q.fail_all()
        if not self.closed.done():
            self.closed.set_result(None)
        # The owner hears of the loss before the commands do, so that what they resubmit
        # waits for a reconnect instead of coming back to this queue.
        if not was_dead and self.on_lost is not None:
            self.on_lost(reason)
        for cb in waiting:
            cb(LOST, 0, 0, None)

    # -- commands -----------------------------------------------------------------------
    def submit(self, make_sqe: Callable[[int], bytes], cb: Cb, read: int = 0,
               write: Any = None) -> bool:
        """Queue a command; False when every CID is in use (the caller retries later).
        On a dead connection ``cb`` gets ``LOST`` at once."""
        if self.dead or self.transport is None:
            cb(LOST, 0, 0, None)
            return True
        try:
            bufs = self.q.submit(make_sqe, cb, read=read, write=write)
        except nvme.QueueFull:
            return False
        if self.q.outstanding == 1 + self.exempt:
            self._progress = self.loop.time()
            if self._watchdog is None and self.io_timeout:
                self._watchdog = self.loop.call_later(self.io_timeout / 4, self._watch)
        self._pending += bufs
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending and self.transport is not None:
            self.transport.writelines(self._pending)
        self._pending.clear()

    def command(self, make_sqe: Callable[[int], bytes], *, read: int = 0,
                write: Any = None, timeout: float = 10.0,
                what: str = "command") -> asyncio.Future[tuple[int, int, int, Any]]:
        """A future of ``(status, dw0, dw1, data)``; raises OperationError on a transport
        failure or when nothing came back within ``timeout`` seconds (which also cuts
        the connection: a controller that drops an admin command is not usable)."""
        fut: asyncio.Future[tuple[int, int, int, Any]] = self.loop.create_future()

        def done(st: int, dw0: int, dw1: int, data: Any) -> None:
            if fut.done():
                return
            if st < 0:
                fut.set_exception(OperationError(-st, f"{what} on {self.label}: "
                                                      f"{self._reason or 'connection lost'}"))
            else:
                fut.set_result((st, dw0, dw1, data))

        if not self.submit(make_sqe, done, read, write):
            fut.set_exception(OperationError(errno.EBUSY, f"{self.label}: queue full"))
            return fut

        def expire() -> None:
            if not fut.done():
                fut.set_exception(OperationError(
                    errno.ETIMEDOUT, f"{what} on {self.label}: no answer within "
                                     f"{timeout:g} s"))
                self._fail(f"{what} timed out after {timeout:g} s")

        handle = self.loop.call_later(timeout, expire)
        fut.add_done_callback(lambda _f: handle.cancel())
        return fut

    async def ok(self, make_sqe: Callable[[int], bytes], what: str, *, read: int = 0,
                 write: Any = None, timeout: float = 10.0) -> tuple[int, int, Any]:
        """:meth:`command` that raises OperationError(EIO) on an NVMe error status."""
        st, dw0, dw1, data = await self.command(make_sqe, read=read, write=write,
                                                timeout=timeout, what=what)
        if st:
            raise OperationError(errno.EIO, f"{what} failed on {self.label}: "
                                            f"{describe_status(st)}")
        return dw0, dw1, data

    def _watch(self) -> None:
        self._watchdog = None
        if self.dead or self.q.outstanding <= self.exempt:
            return
        if self.loop.time() - self._progress > self.io_timeout:
            self._fail(f"controller answered nothing for {self.io_timeout:g} s with "
                       f"{self.q.outstanding - self.exempt} commands waiting")
            return
        self._watchdog = self.loop.call_later(self.io_timeout / 4, self._watch)

    def _fail(self, reason: str, err: nvme.PduError | None = None) -> None:
        if self.dead:
            return
        log.error("%s: %s", self.label, reason)
        self._reason = reason
        if self.transport is not None:
            if err is not None:
                self.transport.write(nvme.Framer.term_req(
                    nvme.PDU_H2C_TERM_REQ, err.fes, err.fei, err.header))
            self.transport.abort()
        else:
            self.dead = True

    def close(self) -> None:
        """Cut the connection; what is in flight completes with ``LOST``."""
        self._reason = self._reason or "closed by the host"
        if self.transport is not None:
            self._flush()
            self.transport.close()
        elif not self.closed.done():
            self.dead = True
            self.closed.set_result(None)


async def open_qpair(label: str, host: str, port: int, family: int, *, hdgst: bool,
                     ddgst: bool, depth: int, max_data: int, io_timeout: float,
                     timeout: float, local_addr: tuple[str, int] | None = None) -> Qpair:
    """Connect and do the IC exchange; OperationError with the reason on failure."""
    loop = asyncio.get_running_loop()
    qp = Qpair(label, hdgst=hdgst, ddgst=ddgst, depth=depth, max_data=max_data,
               io_timeout=io_timeout)
    try:
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: qp, host, port, family=family,
                                         local_addr=local_addr)
            await qp.ic_done
    except TimeoutError:
        connected = qp.transport is not None
        if qp.transport is not None:
            qp.transport.abort()
        what = "ICResp" if connected else f"connecting to {host}:{port}"
        raise OperationError(errno.ETIMEDOUT,
                             f"{label}: {what} timed out after {timeout:g} s") from None
    except OSError as e:
        raise OperationError(e.errno or errno.EIO,
                             f"{label}: cannot connect to {host}:{port}: "
                             f"{e.strerror or e}") from None
    except OperationError:
        if qp.transport is not None:
            qp.transport.abort()
        raise
    return qp


_SCT_NAMES = {0: "generic", 1: "command specific", 2: "media", 3: "path"}


def describe_status(st: int) -> str:
    try:
        name = nvme.Sc(st & 0x7FF).name
    except ValueError:
        name = f"SCT {(st >> 8) & 7} ({_SCT_NAMES.get((st >> 8) & 7, '?')}) SC {st & 0xFF:#x}"
    return name + (" (DNR)" if st & 0x4000 else "")
