"""A network NBD connection served on a thread of its own, for bdevs that complete there.

Why (docs/decisions/nbd-fast-paths.md, "A thread per connection"): at queue depth 1 a
connection on the event loop pays, per request, the loop's ``epoll_wait`` and a turn of the
loop on top of the ``read`` and ``writev`` that move the bytes. A thread that blocks in
``recv`` makes only the two system calls, as nbdkit's connection threads do. That is only
correct for a bdev whose ``submit_read``/``submit_write`` may run on any thread holding
the GIL and complete inside the call (``Bdev.thread_safe_submit``: malloc, null), the same
contract as ublk's queue-thread serving.

What the thread serves, and what it leaves to the loop
    In batches: one ``recv_into`` of whatever arrived, every complete request of it
    served, every reply sent in one ``sendmsg``. READ and WRITE run on the thread; an
    invalid request is answered there with its error; FLUSH, TRIM, WRITE_ZEROES, CACHE
    and BLOCK_STATUS are served by the loop (``Transmission.serve_other``) while the
    thread waits for the reply, which keeps their order with the requests around them.
    The connection goes back to the event-loop path
    (:class:`pybdev.nbd.transmission.Transmission`) for good, with the request and the
    bytes after it, at a DISC, a write larger than the receive buffer, a bad magic, and
    once the bdev has QoS, a histogram or queue-depth sampling (``_hooked``: their state
    lives on the loop).

The socket
    The thread owns a ``dup`` of the transport's socket, in blocking mode, while the
    transport's reading is paused and nothing is written through it. ``O_NONBLOCK`` is
    shared by both descriptors, so it is set back before the loop gets the socket again.
    Only the loop thread closes the dup (after the thread ended), so a descriptor number
    is never closed under the other thread.

Stopping
    ``stop()`` (loop thread) shuts the socket down: reading only to drain (a ``recv``
    blocked in the thread returns 0; a reply being sent still goes out), both ways to
    abort (a blocked ``sendmsg`` fails at once). The thread then ends and the loop closes
    the connection. Nothing is in flight between batches, so a drained connection has
    answered everything it took.

Memory: one receive buffer (``BUFFER_SIZE``) and the replies of one batch, whose read
data is the bdev's own memory (``ReadBuffer.HELD``) or a copy bounded by the batch's
payload budget (``MAX_INFLIGHT_BYTES``), as on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from pybdev.proto import nbd as proto

if TYPE_CHECKING:
    from pybdev.nbd.server import NbdConnection

log = logging.getLogger("pybdev.nbd")

# Relies on the GIL, as ublk's queue threads do: the bdev layer's statistics are updated
# without a lock. Off on a free-threaded Python, and with PYBDEV_NBD_CONNECTION_THREADS=0
# (for measurements: every connection on the event loop).
ENABLED: Final = (getattr(sys, "_is_gil_enabled", lambda: True)()
                  and os.environ.get("PYBDEV_NBD_CONNECTION_THREADS", "1") != "0")
IOV_MAX: Final = 1024  # buffers one sendmsg takes (Linux's UIO_MAXIOV)
_FUA: Final = proto.NBD_CMD_FLAG_FUA
_DISC: Final = proto.NBD_CMD_DISC
_SIMPLE = proto.SIMPLE_REPLY.pack
_DATA_CHUNK = proto.OFFSET_DATA.pack


class ConnectionThread:
    """Serves one connection's READs and WRITEs on a thread (see the module doc).

    Built and stopped on the loop thread; ``conn._thread_ended(self)`` is called on the
    loop once the thread has ended, with what it did not serve in :attr:`rest`.
    """

    def __init__(self, conn: NbdConnection, sock: socket.socket, pending: bytes,
                 buffer_size: int, max_write: int, max_batch_bytes: int) -> None:
        self.conn = conn
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.rest = pending  # bytes received and not served (all of them until it ran)
        self.error: OSError | None = None
        self.served = 0  # requests served here, for the log line at the end
        self.stopping = False
        self.waiting = False  # for the loop to serve a request (_on_loop)
        self._buffer_size = buffer_size
        self._max_write = max_write
        self._max_batch_bytes = max_batch_bytes
        self._thread = threading.Thread(target=self._run, name=f"nbd {conn.peer}", daemon=True)

    def start(self) -> None:
        self.sock.setblocking(True)
        self._thread.start()

    def stop(self, abort: bool) -> None:
        """Wake the thread and make it end: ``abort`` also cuts a reply being sent."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR if abort else socket.SHUT_RD)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except OSError as e:
            self.error = e
        except Exception:
            log.exception("NBD client %s: connection thread failed", self.conn.peer)
            self.error = OSError("connection thread failed")
        finally:
            with contextlib.suppress(OSError):
                self.sock.setblocking(False)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self.loop.call_soon_threadsafe(self.conn._thread_ended, self)

    def _serve(self) -> None:
        size = self._buffer_size
        buf = bytearray(size)
        view = memoryview(buf)
        pending, self.rest = self.rest, b""
        start, end = 0, len(pending)
        buf[:end] = pending
        recv_into = self.sock.recv_into
        parse = proto.parse_requests
        serve_batch = self._batch_server()
        need = 28 if end < 28 else 0
        while not self.stopping:
            if need:
                n = recv_into(view[end:])
                if not n:  # EOF, or stop(): the loop sees the former too
                    self.rest = bytes(buf[start:end])
                    return
                end += n
            try:
                requests, pos, need = parse(buf, start, end, self._max_write,
                                            self._max_batch_bytes)
            except proto.ProtocolError:
                self.rest = bytes(buf[start:end])  # the loop parses it again and says why
                return
            if requests:
                served_to = serve_batch(requests, start)
                del requests  # the write payloads are views of buf
                if served_to != pos:
                    self.rest = bytes(buf[served_to:end])
                    return
            if need > size:  # a write larger than the buffer: the loop's BigWrite
                self.rest = bytes(buf[pos:end])
                return
            start = pos
            if start == end:
                start = end = 0
                need = 28
            elif need and (start + need > size or size - end < 4096):
                buf[:end - start] = buf[start:end]
                start, end = 0, end - start

    def _batch_server(self) -> Callable[[list[proto.Request], int], int]:
        """``serve_batch(requests, at)``: serve the requests, send their replies, and
        return where the first one not served begins (the loop takes it from there).

        Built once per connection: what a batch needs is bound here, and the completions
        read the request's cookie and offset from this frame's cells, since they run
        inside the submit call (thread_safe_submit) instead of later.
        """
        conn = self.conn
        desc = conn._desc
        assert desc is not None and conn._validator is not None
        bdev = desc.bdev
        check = conn._validator.check
        structured = conn._structured
        zcopy = conn._zcopy
        read, write = desc.read, desc.write
        sock = self.sock
        out: list[Any] = []
        append = out.append
        cookie = offset = 0

        def read_done(status: int, data: Any) -> None:
            if status:
                append(conn._error_reply(cookie, status))
            else:
                append(_DATA_CHUNK(0x668E33EF, 1, 1, cookie, len(data) + 8, offset)
                       if structured else _SIMPLE(0x67446698, 0, cookie))
                append(data if zcopy else bytes(data))

        def write_done(status: int, _data: Any) -> None:
            append(conn._error_reply(cookie, status) if status
                   else _SIMPLE(0x67446698, 0, cookie))

        def serve_batch(requests: list[proto.Request], at: int) -> int:
            nonlocal cookie, offset
            served = nbytes = wbytes = 0
            for typ, flags, cookie, offset, length, payload in requests:
                if bdev._hooked or typ == _DISC:
                    break
                err = check(typ, flags, offset, length)
                if err:
                    append(proto.encode_error_reply(cookie, err, structured))
                elif typ == 0:  # NBD_CMD_READ
                    read(offset, length, read_done)
                    nbytes += length
                elif typ == 1:  # NBD_CMD_WRITE
                    write(offset, payload, write_done, flags & _FUA != 0)
                    wbytes += length
                else:
                    if out:  # their replies need not wait for this one
                        _send_all(sock, out)
                        out.clear()
                    append(self._on_loop(typ, flags, cookie, offset, length))
                    if self.stopping:
                        break
                at += 28 + length if typ == 1 else 28
                served += 1
            self.served += served
            export = conn.export
            if export is not None:
                export.bytes_read += nbytes
                export.bytes_written += wbytes
            if out:
                _send_all(sock, out)
                out.clear()
            return at

        return serve_batch

    def _on_loop(self, typ: int, flags: int, cookie: int, offset: int, length: int) -> bytes:
        """Have the loop serve a request (FLUSH, TRIM, ...) and wait for its reply.

        Every request before it has completed, so waiting keeps the order a FLUSH needs.
        """
        reply: concurrent.futures.Future[bytes] = concurrent.futures.Future()
        self.waiting = True
        try:
            self.loop.call_soon_threadsafe(self.conn.serve_other, typ, flags, cookie, offset,
                                           length, reply.set_result)
            return reply.result()
        finally:
            self.waiting = False


def _send_all(sock: socket.socket, bufs: list[Any]) -> None:
    """Send every buffer, in order, with as few ``sendmsg`` calls as the socket allows."""
    i = 0
    count = len(bufs)
    while i < count:
        n = sock.sendmsg(bufs[i:i + IOV_MAX])
        while n:
            left = len(bufs[i])
            if n >= left:
                n -= left
                i += 1
            else:
                bufs[i] = memoryview(bufs[i])[n:]
                n = 0
