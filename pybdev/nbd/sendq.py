"""Gathered socket writes for asyncio's own selector transports, without joining buffers.

Python 3.11's ``_SelectorSocketTransport.writelines`` is ``write(b"".join(chunks))``, and
what the socket does not take at once goes into a ``bytearray`` that every later send
trims from the front (``del buffer[:n]``, a ``memmove`` of the rest). For a batch of
128 KiB READ replies that is a join of the whole batch plus a memmove per send: measured
at 0.26x of a blocking ``sendmsg`` server in the same run (docs/performance.md). uvloop
and Python 3.12's selector transport gather with ``sendmsg`` already.

:class:`SendQueue` writes a connection's replies with ``socket.sendmsg`` on the buffers
as they are (a header and a view of the bdev's memory), keeps what the socket did not
take as views in a deque (no copy) and sends the rest when the socket is writable,
through the loop's own writer callback for that file descriptor. The transport is
left with nothing to send, so its writer is never registered at the same time; flow
control calls the protocol's ``pause_writing``/``resume_writing`` at the transport's
default water marks.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
from collections.abc import Callable
from typing import Any

# The kernel refuses more buffers per sendmsg (UIO_MAXIOV).
IOV_MAX = 1024
HIGH_WATER = 1024 * 1024  # queued bytes above which the protocol pauses
LOW_WATER = 256 * 1024


def usable(transport: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``transport`` joins in ``writelines`` and the queue can replace it."""
    return (type(transport).writelines is asyncio.WriteTransport.writelines
            and hasattr(loop, "_add_writer") and hasattr(loop, "_remove_writer")
            and transport.get_extra_info("socket") is not None)


class SendQueue:
    """Replies of one connection, sent with ``sendmsg``; what remains waits as views."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 pause: Callable[[], None], resume: Callable[[], None],
                 fatal: Callable[[OSError], None]) -> None:
        self.transport = transport
        fd = transport.get_extra_info("socket").fileno()
        # asyncio hands out a TransportSocket, whose sendmsg warns that it will be refused:
        # send through a socket object of our own on a duplicate of the descriptor (same
        # open file, so the same non-blocking stream), closed in detach().
        self._sock = socket.socket(fileno=os.dup(fd))
        self._sendmsg = self._sock.sendmsg
        self._fd = fd
        self._loop: Any = loop
        self._pause = pause
        self._resume = resume
        self._fatal = fatal
        self._queue: collections.deque[Any] = collections.deque()
        self.queued = 0  # bytes waiting in the queue
        self._paused = False
        self._close_when_empty = False
        self._dead = False

    def writelines(self, chunks: list[Any]) -> None:
        if self._dead:
            return
        if self._queue:
            self._enqueue(chunks, 0)
            return
        if self.transport.get_write_buffer_size():
            # The transport still sends something written before this queue took over
            # (the handshake's last reply): stay behind it.
            self.transport.writelines(chunks)
            return
        sent = self._send(chunks)
        if sent < 0:
            return
        if sent < len(chunks) or self._queue:
            self._loop._add_writer(self._fd, self._on_writable)

    def _send(self, chunks: list[Any]) -> int:
        """Send from ``chunks``; queue the rest. The index reached, or -1 on an error."""
        i = 0
        total = len(chunks)
        sendmsg = self._sendmsg
        while i < total:
            part = chunks[i:i + IOV_MAX] if total - i > IOV_MAX else (
                chunks if i == 0 else chunks[i:])
            try:
                n = sendmsg(part)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self._die(e)
                return -1
            # Skip what went out whole; queue the rest from the first partial buffer.
            for chunk in part:
                size = len(chunk)
                if n >= size:
                    n -= size
                    i += 1
                    continue
                self._enqueue(chunks, i, n)
                return i
        return i

    def _enqueue(self, chunks: list[Any], i: int, skip: int = 0) -> None:
        queue = self._queue
        queued = self.queued
        if skip:
            first = memoryview(chunks[i])[skip:]
            queue.append(first)
            queued += len(first)
            i += 1
        for chunk in chunks[i:] if i else chunks:
            queue.append(chunk)
            queued += len(chunk)
        self.queued = queued
        if queued > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()

    def _on_writable(self) -> None:
        queue = self._queue
        while queue:
            part = list(queue) if len(queue) <= IOV_MAX else [
                queue[k] for k in range(IOV_MAX)]
            try:
                n = self._sendmsg(part)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._die(e)
                return
            self.queued -= n
            whole = True
            for _ in range(len(part)):
                size = len(queue[0])
                if n >= size:
                    queue.popleft()
                    n -= size
                    continue
                if n:
                    queue[0] = memoryview(queue[0])[n:]
                whole = False
                break
            if not whole:
                break  # the socket is full: wait until it is writable again
        if self._paused and self.queued <= LOW_WATER:
            self._paused = False
            self._resume()  # may write more
        if not self._queue:
            self._loop._remove_writer(self._fd)
            if self._close_when_empty:
                self.transport.close()

    def close(self) -> None:
        """Close the transport once everything queued was sent."""
        if self._queue and not self._dead:
            self._close_when_empty = True
        else:
            self.transport.close()

    def detach(self) -> None:
        """The connection is gone: drop what is queued, unregister the writer."""
        if not self._dead:
            self._dead = True
            if self._queue:
                self._loop._remove_writer(self._fd)
            self._sock.close()
        self._queue.clear()
        self.queued = 0

    def _die(self, exc: OSError) -> None:
        self.detach()
        self._fatal(exc)
