"""The transmission phase of NBD, shared by both NBD exports: requests in, replies out.

:class:`Transmission` serves one socket in NBD's transmission phase on a bdev descriptor.
The network export's connections (:class:`pybdev.nbd.server.NbdConnection`) reach it
after their handshake; the kernel export's socket (:class:`pybdev.nbd.kernel.KernelConnection`)
starts in it, the ioctls having replaced the handshake. Both get the same hot path, limits
and large-write handling.

Hot path (see docs/decisions/nbd-server-design.md for the measurements)
    An ``asyncio.BufferedProtocol``: the event loop receives straight into one
    preallocated buffer; every complete request in it is parsed in one go
    (``proto.parse_requests``), submitted to the bdev through the descriptor's callback
    API, and every reply produced while the batch runs goes out in one ``writelines``.
    No task, future or coroutine per request: a bdev that completes inside the call
    (malloc) costs a function call per request.  READ replies are ``[header, data]``,
    where ``data`` is the module's own buffer when the bdev declares
    ``read_buffer = ReadBuffer.HELD`` (it stays valid while queued for sending), a copy
    otherwise (``ReadBuffer.CALLBACK``: valid during the callback only).  WRITE payloads
    are views of the receive buffer; when a write does not complete inside the call, the
    buffer is left to it and the connection continues in a fresh one.  Writes larger than
    the buffer are received into the bdev's own memory where it lends it (zero copy), or
    in pieces from a server-wide budget.

Allocation hint
    ``NBD_CMD_BLOCK_STATUS`` for ``base:allocation`` asks the descriptor's
    ``block_status(offset, length, cb)`` when the bdev ``reports_holes``;
    ``cb(status, extents)`` with ``extents`` a list of ``(length, flags)``
    (``NBD_STATE_HOLE`` = 1, ``NBD_STATE_ZERO`` = 2) starting at ``offset``.  Otherwise
    everything is data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from pybdev.bdev.core import Descriptor, ReadBuffer
from pybdev.export import io
from pybdev.export.status import NBD_STATUS
from pybdev.nbd import sendq
from pybdev.nbd.export import NBD_OPS
from pybdev.peerwarn import WARNINGS
from pybdev.proto import nbd as proto

if TYPE_CHECKING:
    from pybdev.nbd.export import NbdExport

log = logging.getLogger("pybdev.nbd")

MIB = 1024 * 1024
# What one connection may hold (docs/guide.md, "Limits"): a receive buffer, plus at most
# MAX_INFLIGHT_BYTES of payload in flight (read data, and receive buffers that in-flight
# writes still use), plus the replies of one batch waiting in the transport. Writes larger
# than the receive buffer go to the bdev's own memory where it lends it, or arrive in
# BIG_CHUNK pieces that count against one cap for the whole server (--nbd-max-buffered-mb).
BUFFER_SIZE = 256 * 1024  # receive buffer of a connection in transmission
BIG_CHUNK = MIB  # a write larger than BUFFER_SIZE is received and written in pieces this size
MAX_PAYLOAD = 32 * MIB  # advertised maximum payload (proto.md's default)
# Writes up to this are read and answered EINVAL; larger ones drop the connection.
MAX_WRITE = 2 * MAX_PAYLOAD
MAX_INFLIGHT = 1024  # requests in flight per connection (async bdevs only)
MAX_INFLIGHT_BYTES = 2 * MAX_PAYLOAD  # payload in flight per connection
DEFAULT_MAX_BUFFERED = 256 * MIB  # big-write pieces buffered across all connections
MAX_SPARE_PIECES = 8  # BIG_CHUNK buffers kept for reuse, per server

_FUA = proto.NBD_CMD_FLAG_FUA
_REQ_ONE = proto.NBD_CMD_FLAG_REQ_ONE
_SIMPLE = proto.SIMPLE_REPLY.pack
_DATA_CHUNK = proto.OFFSET_DATA.pack  # header of a final NBD_REPLY_TYPE_OFFSET_DATA chunk
assert (proto.NBD_STRUCTURED_REPLY_MAGIC, proto.NBD_SIMPLE_REPLY_MAGIC) == (0x668E33EF,
                                                                           0x67446698)
assert (proto.NBD_REPLY_FLAG_DONE, proto.NBD_REPLY_TYPE_OFFSET_DATA) == (1, 1)


class PayloadBudget:
    """Write payload buffered across every connection of a server, up to ``cap`` bytes.

    A connection that cannot take what it needs waits (its reading paused) and is woken,
    oldest first, when others give bytes back.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._waiting: deque[Callable[[], None]] = deque()
        # Pieces whose write completed, kept for the next big write: a fresh 1 MiB
        # bytearray costs its zeroing and page faults, about as much as receiving into it.
        self.spares: list[bytearray] = []

    def piece(self, n: int) -> bytearray:
        """A buffer for a piece of ``n`` bytes (taken from the budget already)."""
        if n == BIG_CHUNK and self.spares:
            return self.spares.pop()
        return bytearray(n)

    def recycle(self, chunk: bytearray) -> None:
        if len(chunk) == BIG_CHUNK and len(self.spares) < MAX_SPARE_PIECES:
            self.spares.append(chunk)

    def take(self, n: int) -> bool:
        if self.used + n > self.cap and self.used:  # one piece always fits an empty budget
            return False
        self.used += n
        return True

    def give(self, n: int) -> None:
        self.used -= n
        waiting, self._waiting = self._waiting, deque()
        while waiting and self.used < self.cap:
            waiting.popleft()()  # retries its take; waits again if still short
        self._waiting.extendleft(reversed(waiting))

    def wait(self, retry: Callable[[], None]) -> None:
        self._waiting.append(retry)

    def forget(self, retry: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._waiting.remove(retry)


class BigWrite:
    """A write larger than the receive buffer, received and written in BIG_CHUNK pieces.

    Each piece goes to the bdev as soon as it is full, so what the server holds is the
    piece being received and the pieces the bdev has not completed, never the whole
    payload (a header alone costs nothing). The reply goes once every piece completed;
    the first error wins. ``err`` set (the request was invalid): the payload is read
    and dropped, and ``err`` is the answer. ``direct``: the bdev lent its own memory for
    the whole payload (``Descriptor.zcopy_buffer``), which is received there in one piece
    that costs the server's budget nothing and is committed, not copied.
    """

    __slots__ = ("chunk", "cookie", "direct", "err", "filled", "fua", "left", "next_offset",
                 "pending", "received", "status")

    def __init__(self, cookie: int, offset: int, length: int, fua: bool, err: int) -> None:
        self.cookie = cookie
        self.next_offset = offset  # where the next piece goes
        self.left = length  # payload bytes not received yet
        self.fua = fua
        self.err = err
        self.chunk: bytearray | memoryview | None = None  # the piece being received
        self.direct = False
        self.filled = 0
        self.pending = 0  # pieces submitted, not completed
        self.status = 0
        self.received = False


class Transmission(asyncio.BufferedProtocol):
    """One socket in NBD's transmission phase, serving a descriptor (see the module doc).

    A subclass calls :meth:`_begin` once the socket is in the transmission phase. One with
    a phase before it (the network handshake) sets ``_handshake`` meanwhile and implements
    ``_feed_handshake``, which gets the bytes received until then.
    """

    _handshake: Any = None

    def __init__(self, budget: PayloadBudget, poll_us: int = 0, buffer_size: int = 0) -> None:
        self.budget = budget
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.peer = ""  # for log lines: the client's address, or the device
        self.peer_host = ""  # what WARNINGS rate-limits by
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # Set by _begin.
        self.export: NbdExport | None = None
        self._desc: Descriptor | None = None
        self._validator: proto.RequestValidator | None = None
        self._structured = False
        self._zcopy = False
        self._block_status: Callable[..., None] | None = None
        self._size = 0
        self._out: list[Any] = []
        self._hot: tuple[Any, ...] = ()
        # Replies leave through the transport's writelines, or through a SendQueue where
        # the transport would join them (asyncio's own loop on Python 3.11).
        self._sendq: sendq.SendQueue | None = None
        self._writelines: Callable[[list[Any]], None] = _drop
        self._batching = False
        self._inflight = 0
        self._inflight_bytes = 0  # read data and pinned receive buffers in flight
        # Writes in flight whose payload is a view of the current buffer, and of earlier
        # buffers (by generation) that they keep alive.
        self._buf_refs = 0
        self._buf_gen = 0
        self._pinned: dict[int, int] = {}
        self._big: BigWrite | None = None
        self._big_waiting = False  # a big write waits for the server's payload budget
        self._pending_bytes = b""  # payload received before the big write got its piece
        self._backlog = False  # complete requests wait in the buffer (a limit was reached)
        self._closing = False  # DISC received or export stopping: no new requests
        self._read_paused = False
        self._write_paused = False
        # Adaptive polling (--nbd-poll-us): see _poll.
        self._poll_ns = poll_us * 1000
        self._poll_sock: socket.socket | None = None
        self._idle_at = 0  # when the connection last had nothing in flight (0: busy)
        self._gap_ns = 0  # moving average of the time from idle to the next request

    def _begin(self, export: NbdExport, desc: Descriptor, validator: proto.RequestValidator,
               structured: bool, trailing: bytes = b"") -> None:
        """Enter the transmission phase (``trailing``: requests received already)."""
        self.export = export
        bdev = desc.bdev
        self._desc = desc
        self._validator = validator
        self._size = bdev.size
        validator.size = self._size
        self._structured = structured
        # Read data the bdev declares valid after the callback is sent without a copy.
        self._zcopy = bdev.read_buffer is ReadBuffer.HELD
        self._block_status = desc.block_status if bdev.reports_holes else None
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        if sendq.usable(self.transport, loop):
            self._sendq = sendq.SendQueue(self.transport, loop, self.pause_writing,
                                          self.resume_writing, self._send_failed)
            self._writelines = self._sendq.writelines
        else:
            self._writelines = self.transport.writelines
        # What the per-batch loop needs, fetched in one tuple unpack.
        self._hot = (validator.check, desc.read, desc.write, self._read_done,
                     self._simple_done, structured, self._zcopy, self._out)
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = len(trailing)
        if trailing:
            self._buf[:self._end] = trailing
            self._process()

    def _feed_handshake(self) -> None:
        raise NotImplementedError

    def _protocol_error(self, error: str) -> None:
        """The stream broke the protocol (the connection closes after this)."""
        WARNINGS.warn(log, "nbd_protocol_error", self.peer_host,
                      "NBD client %s: %s; closing the connection", self.peer, error)

    # -- asyncio callbacks ---------------------------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        big = self._big
        if big is not None:
            if big.err:  # dropped: received into the buffer, which holds nothing now
                return self._view[: min(big.left, len(self._buf))]
            assert big.chunk is not None
            return memoryview(big.chunk)[big.filled:]
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        big = self._big
        if big is not None:
            self._big_received(big, nbytes)
            return
        self._end += nbytes
        if self._handshake is not None:
            self._feed_handshake()
        elif not self._closing:
            if self._poll_ns:
                self._poll_arrived()
            self._process()
            if self._poll_ns:
                self._poll()
        else:
            self._start = self._end = 0  # after DISC: ignore what follows

    def eof_received(self) -> bool | None:
        self._cancel_big()  # its payload will never arrive
        if self._inflight and self.transport is not None:
            # Answer what is in flight, then close (the client only half-closed).
            self._closing = True
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._closing = True
        self._cancel_big()
        if self._poll_sock is not None:
            self._poll_sock.close()
            self._poll_sock = None
        if self._sendq is not None:
            self._sendq.detach()
            self._sendq = None
        self._writelines = _drop
        # Let go of buffers and of the bound methods that point back here, so a closed
        # connection's memory is freed now, not when the cycle collector runs.
        self._big = None
        self._hot = ()
        self._out = []
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._handshake = None
        self._validator = None
        self._block_status = None
        if not self.closed.done():
            self.closed.set_result(None)

    def _cancel_big(self) -> None:
        """Give up a big write still receiving (the client went): no reply, no more pieces.

        Pieces already submitted complete on their own and give their budget back.
        """
        big = self._big
        if big is None:
            return
        self._big = None
        self._inflight -= 1
        if big.chunk is not None and not big.direct:
            self.budget.give(len(big.chunk))
            big.chunk = None
        if self._big_waiting:
            self._big_waiting = False
            self.budget.forget(self._big_resume)
        big.received = False  # its pieces must not answer

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- control -------------------------------------------------------------------------------
    def shutdown(self, drain: bool) -> None:
        """Stop taking requests; close once the ones in flight are answered (``drain``)."""
        self._closing = True
        if not drain:
            self.abort()
            return
        if self._handshake is not None:
            self._close()
            return
        self._update_reading()
        if not self._inflight:
            self._close()

    def abort(self) -> None:
        if self._sendq is not None:
            self._sendq.detach()
        if self.transport is not None:
            self.transport.abort()

    def resized(self, size: int) -> None:
        self._size = size
        if self._validator is not None:
            self._validator.size = size

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self._sendq is not None:
                self._sendq.close()  # flushes queued replies first
            else:
                self.transport.close()  # flushes queued replies first

    def _blocked(self) -> bool:
        """Whether a limit stops new requests now (they wait in the buffer)."""
        return (self._write_paused or self._big_waiting or self._inflight >= MAX_INFLIGHT
                or self._inflight_bytes >= MAX_INFLIGHT_BYTES)

    def _update_reading(self) -> None:
        blocked = self._closing or self._blocked()
        if self._backlog and not blocked:
            # Complete requests wait in the buffer: process them; no new data would.
            self._backlog = False
            asyncio.get_running_loop().call_soon(self._resume_backlog)
        want_pause = blocked or self._backlog
        if want_pause == self._read_paused:
            return  # the common case, decided without touching the transport
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._read_paused = want_pause
        if want_pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _resume_backlog(self) -> None:
        if self.transport is not None and not self._closing and self._big is None:
            self._process()

    # -- transmission --------------------------------------------------------------------------
    def _process(self) -> None:
        """Parse and submit the complete requests in the buffer; send the replies.

        A batch stops at the payload budget of the connection (MAX_INFLIGHT_BYTES less what
        is in flight); what remains waits in the buffer, with reading paused, until the
        limits that stopped it clear (``_update_reading``).
        """
        while True:
            start, end = self._start, self._end
            error = ""
            budget = MAX_INFLIGHT_BYTES - self._inflight_bytes
            try:
                requests, pos, need = proto.parse_requests(self._buf, start, end, MAX_WRITE,
                                                           budget)
            except proto.ProtocolError as e:
                requests, pos, need, error = e.parsed, e.offset, 0, str(e)
            if requests:
                self._submit(requests)
            del requests
            if self._buf_refs:
                # Writes still in flight read their payload from this buffer: leave it to
                # them and continue in a fresh one.
                self._swap_buffer(pos, end, need)
                pos, end = 0, self._end
            if error or self._closing:
                if error:
                    self._protocol_error(error)
                    self._closing = True
                self._start = self._end = 0
                self._update_reading()
                if not self._inflight:
                    self._close()
                return
            if self._big is not None:
                return
            if pos == end:
                self._start = self._end = 0
                return
            self._start = pos
            if need == 0:  # stopped at the budget: complete requests wait
                if self._blocked():
                    self._backlog = True
                    self._update_reading()
                    return
                continue
            size = len(self._buf)
            if need > size:
                self._begin_big_write(pos, end)
            elif pos + need > size or size - end < 4096:
                n = end - pos
                self._buf[:n] = self._buf[pos:end]
                self._start, self._end = 0, n
            return

    def _poll_arrived(self) -> None:
        """A request came the usual way: count the time the connection waited for it."""
        if self._idle_at:
            gap = time.perf_counter_ns() - self._idle_at
            self._gap_ns = (self._gap_ns * 7 + gap) >> 3
            self._idle_at = 0

    def _poll(self) -> None:
        """Spin on the socket for the next request instead of going back to the loop.

        A client at queue depth 1 sends its next request a few microseconds after our
        reply; waiting for it in the event loop costs an epoll wake-up and a loop turn per
        request. When the recent gaps (a moving average of idle-to-next-request) fit in the
        poll window, read the socket directly, without blocking, until a request comes or
        the window ends. Nothing else on the loop runs meanwhile, which is why the window
        is short and the option off by default. The socket is a dup of the transport's, so
        the transport sees whatever the spin did not take (and EOF, and errors).
        """
        clock = time.perf_counter_ns
        window = self._poll_ns
        while (self._inflight == 0 and self._big is None and not self._closing
               and not self._read_paused and self.transport is not None):
            start = clock()
            if self._gap_ns > window:
                self._idle_at = start
                return
            sock = self._poll_sock
            if sock is None:
                fd = self.transport.get_extra_info("socket").fileno()
                sock = self._poll_sock = socket.socket(fileno=os.dup(fd))
                sock.setblocking(False)
            view = self._view[self._end:]
            deadline = start + window
            while True:
                try:
                    n = sock.recv_into(view)
                except BlockingIOError:
                    if clock() < deadline:
                        continue
                    self._idle_at = start
                    return
                except OSError:
                    return  # the transport will see it too
                break
            if n == 0:
                return  # EOF: the transport sees it too
            self._gap_ns = (self._gap_ns * 7 + clock() - start) >> 3
            self._end += n
            self._process()

    def _swap_buffer(self, pos: int, end: int, need: int) -> None:
        old = self._buf
        # The old buffer lives until the writes that use it complete: it counts as payload
        # in flight until then.
        self._pinned[self._buf_gen] = self._buf_refs
        self._inflight_bytes += len(old)
        self._buf = bytearray(BUFFER_SIZE)
        self._view = memoryview(self._buf)
        n = end - pos
        if n:
            self._buf[:n] = old[pos:end]
        self._start, self._end = 0, n
        self._buf_refs = 0
        self._buf_gen += 1
        if need > BUFFER_SIZE:
            self._begin_big_write(0, n)

    def _begin_big_write(self, pos: int, end: int) -> None:
        typ, flags, cookie, offset, length = proto.peek_request(self._buf, pos)
        assert self._validator is not None
        err = self._validator.check(typ, flags, offset, length)
        big = BigWrite(cookie, offset, length, bool(flags & _FUA), err)
        if self.export is not None:
            self.export.bytes_written += length
        self._big = big
        self._inflight += 1
        # The part of the payload already received moves to the big write's pieces.
        have = self._buf[pos + 28:end]
        self._start = self._end = 0
        if not err and self._desc is not None:
            big.chunk = self._desc.zcopy_buffer(offset, length)
            big.direct = big.chunk is not None
        if not err and not big.direct and not self._big_chunk(big):
            big.chunk = None
            self._pending_bytes = bytes(have)
            return
        self._big_feed(big, have)

    def _big_chunk(self, big: BigWrite) -> bool:
        """Give ``big`` a piece to receive into, from the server's budget (False: wait)."""
        n = min(big.left, BIG_CHUNK)
        if not self.budget.take(n):
            WARNINGS.warn(log, "nbd_buffer_cap", self.peer_host,
                          "NBD client %s: a large write waits: the server buffers %d MiB of "
                          "write payload, its limit (--nbd-max-buffered-mb)", self.peer,
                          self.budget.used // MIB)
            self._big_waiting = True
            self.budget.wait(self._big_resume)
            self._update_reading()
            return False
        big.chunk = self.budget.piece(n)
        big.filled = 0
        return True

    def _big_resume(self) -> None:
        """The budget has room again: take the piece and go on receiving."""
        big = self._big
        self._big_waiting = False
        if big is None or self.transport is None:
            return
        if not self._big_chunk(big):
            return
        pending, self._pending_bytes = self._pending_bytes, b""
        self._update_reading()
        if pending:
            self._big_feed(big, pending)

    def _big_feed(self, big: BigWrite, data: Any) -> None:
        """Payload that arrived in the receive buffer before the big write began.

        It is shorter than the payload (that is what makes the write big), so nothing of
        the next request is in it.
        """
        view = memoryview(data)
        while view and self._big is big:
            if big.err:
                n = min(len(view), big.left)
            else:
                chunk = big.chunk
                if chunk is None:  # waiting for the budget: keep the rest for then
                    self._pending_bytes = bytes(view)
                    return
                n = min(len(view), len(chunk) - big.filled)
                chunk[big.filled:big.filled + n] = view[:n]
            view = view[n:]
            self._big_received(big, n)

    def _big_received(self, big: BigWrite, nbytes: int) -> None:
        if big.err:
            big.left -= nbytes
        else:
            big.filled += nbytes
            assert big.chunk is not None
            if big.filled < len(big.chunk):
                return
            self._big_piece(big)
        if big.left == 0:
            self._big = None
            big.received = True
            if big.pending == 0:
                self._big_done(big)
        elif not big.err and not self._big_chunk(big):
            return

    def _big_piece(self, big: BigWrite) -> None:
        chunk = big.chunk
        assert chunk is not None and self._desc is not None
        big.chunk = None
        big.left -= len(chunk)
        big.pending += 1
        offset = big.next_offset
        big.next_offset += len(chunk)
        size = len(chunk)

        def piece_done(status: int, _data: Any) -> None:
            big.pending -= 1
            if not big.direct:
                self.budget.recycle(cast(bytearray, chunk))  # the bdev is done with it
                self.budget.give(size)
            if status and not big.status:
                big.status = status
            if big.received and big.pending == 0:
                self._big_done(big)

        if big.direct:
            self._desc.zcopy_commit(offset, size, piece_done, big.fua)
        else:
            self._desc.write(offset, chunk, piece_done, big.fua)

    def _big_done(self, big: BigWrite) -> None:
        """Every piece of a big write completed (or the dropped payload was read): answer."""
        if big.err:
            self._inflight -= 1
            self._send(proto.encode_error_reply(big.cookie, big.err, self._structured))
        else:
            self._simple_done(big.cookie, -1, big.status, None)
            return
        if not self._batching:
            self._after_completion()


    def _submit(self, requests: list[proto.Request]) -> None:
        check, read, write, read_done, simple_done, structured, zcopy, out = self._hot
        gen = self._buf_gen
        conn = self
        pack_data = _DATA_CHUNK
        pack_simple = _SIMPLE
        # Counted locally and added once: completions inside the calls below decrement
        # the attributes, so they are only right again after the loop.
        inflight = refs = nbytes = wbytes = 0
        self._batching = True
        try:
            for typ, flags, cookie, offset, length, payload in requests:
                err = check(typ, flags, offset, length)
                if err:
                    if typ == proto.NBD_CMD_DISC:
                        self._closing = True
                        break
                    out.append(proto.encode_error_reply(cookie, err, structured))
                    continue
                if typ == 0:  # NBD_CMD_READ
                    inflight += 1
                    nbytes += length

                    # A closure per READ, with the reply written inline for the common
                    # case (success inside this batch): measured ~25 % cheaper than a
                    # partial of a method, and this runs for every READ.
                    def done(status: int, data: Any, cookie: int = cookie,
                             offset: int = offset, length: int = length) -> None:
                        if status or not conn._batching:
                            read_done(cookie, offset, length, status, data)
                            return
                        conn._inflight -= 1
                        conn._inflight_bytes -= length
                        if structured:
                            out.append(pack_data(0x668E33EF, 1, 1, cookie, len(data) + 8,
                                                 offset))
                        else:
                            out.append(pack_simple(0x67446698, 0, cookie))
                        out.append(data if zcopy else bytes(data))

                    read(offset, length, done)
                elif typ == 1:  # NBD_CMD_WRITE
                    inflight += 1
                    refs += 1
                    wbytes += length

                    # As for READ; a completion of an earlier batch (another buffer
                    # generation) arriving now takes the general path.
                    def wdone(status: int, _data: Any, cookie: int = cookie,
                              gen: int = gen) -> None:
                        if status or not conn._batching or gen != conn._buf_gen:
                            simple_done(cookie, gen, status, _data)
                            return
                        conn._inflight -= 1
                        conn._buf_refs -= 1
                        out.append(pack_simple(0x67446698, 0, cookie))

                    write(offset, payload, wdone, flags & _FUA)
                else:
                    if typ == proto.NBD_CMD_DISC:
                        self._closing = True
                        break
                    self._submit_other(typ, flags, cookie, offset, length)
        finally:
            self._inflight += inflight
            self._inflight_bytes += nbytes
            export = self.export
            if export is not None:
                export.bytes_read += nbytes
                export.bytes_written += wbytes
            self._buf_refs += refs
            self._batching = False
            self._flush_out()
        self._update_reading()

    def _submit_other(self, typ: int, flags: int, cookie: int, offset: int, length: int) -> None:
        desc = self._desc
        assert desc is not None
        if typ == proto.NBD_CMD_CACHE:
            # Everything a bdev holds is as close as it gets: nothing to prefetch.
            self._out.append(proto.encode_simple_reply(cookie))
        elif typ == proto.NBD_CMD_BLOCK_STATUS:
            self._inflight += 1
            done = partial(self._block_status_done, cookie, length, bool(flags & _REQ_ONE))
            if self._block_status is not None:
                self._block_status(offset, length, done)
            else:
                done(0, [(length, 0)])
        else:
            # FLUSH, TRIM, WRITE_ZEROES (NO_HOLE needs nothing: write_zeroes never punches
            # holes here); READ and WRITE never get here (_submit has them inline).
            self._inflight += 1
            io.submit(desc, NBD_OPS[typ], offset, length, None, bool(flags & _FUA),
                      partial(self._simple_done, cookie, -1))

    # -- completions -----------------------------------------------------------------------------
    def _read_done(self, cookie: int, offset: int, length: int, status: int, data: Any) -> None:
        self._inflight -= 1
        self._inflight_bytes -= length
        if status:
            reply = [self._error_reply(cookie, status)]
        else:
            # proto.encode_read_reply_header, inlined: this runs for every READ.
            if self._structured:
                hdr = _DATA_CHUNK(0x668E33EF, 1, 1, cookie, len(data) + 8, offset)
            else:
                hdr = _SIMPLE(0x67446698, 0, cookie)
            if not self._zcopy:
                data = bytes(data)
            if self._batching:
                out = self._out
                out.append(hdr)
                out.append(data)
                return
            reply = [hdr, data]
        if self._batching:
            self._out += reply
        else:
            self._send_now(reply)
            self._after_completion()

    def _simple_done(self, cookie: int, gen: int, status: int, _data: Any) -> None:
        self._inflight -= 1
        if gen == self._buf_gen:
            self._buf_refs -= 1
        elif gen in self._pinned:
            self._unpin(gen)
        reply = self._error_reply(cookie, status) if status else _SIMPLE(0x67446698, 0, cookie)
        if self._batching:
            self._out.append(reply)
        else:
            self._send_now([reply])
            self._after_completion()

    def _block_status_done(self, cookie: int, length: int, req_one: bool, status: int,
                           extents: Any) -> None:
        self._inflight -= 1
        if status:
            reply = self._error_reply(cookie, status)
        else:
            reply = proto.encode_block_status_chunk(
                cookie, proto.BASE_ALLOCATION_ID, _clip_extents(extents, length, req_one))
        if self._batching:
            self._out.append(reply)
        else:
            self._send_now([reply])
            self._after_completion()

    def _error_reply(self, cookie: int, status: int) -> bytes:
        err = NBD_STATUS(status)
        message = os.strerror(-status) if self._structured else ""
        return proto.encode_error_reply(cookie, err, self._structured, message)

    def _send(self, chunk: bytes) -> None:
        if self._batching:
            self._out.append(chunk)
        else:
            self._send_now([chunk])

    def _send_now(self, chunks: list[Any]) -> None:
        self._writelines(chunks)

    def _flush_out(self) -> None:
        out = self._out
        if out:
            self._writelines(out)
            out.clear()

    def _send_failed(self, exc: OSError) -> None:
        log.debug("NBD client %s: send failed: %s", self.peer, exc)
        if self.transport is not None:
            self.transport.abort()

    def _unpin(self, gen: int) -> None:
        """A write that used an earlier buffer completed; the last one releases it."""
        left = self._pinned[gen] - 1
        if left:
            self._pinned[gen] = left
        else:
            del self._pinned[gen]
            self._inflight_bytes -= BUFFER_SIZE

    def _after_completion(self) -> None:
        """An asynchronous completion: resume reading, or finish a drain."""
        if self._closing:
            if not self._inflight:
                self._close()
        elif self._read_paused:
            self._update_reading()


def _drop(_chunks: list[Any]) -> None:
    """Replies of a connection that is gone (or not in transmission yet) go nowhere."""


def _clip_extents(extents: Any, length: int, req_one: bool) -> list[tuple[int, int]]:
    """Extents as proto.md wants them: nonzero, within the request, one with REQ_ONE."""
    out: list[tuple[int, int]] = []
    left = length
    for ext_len, flags in extents:
        if left <= 0:
            break
        n = min(int(ext_len), left)
        if n <= 0:
            continue
        out.append((n, int(flags) & 0xFFFFFFFF))
        left -= n
        if req_one:
            break
    return out or [(length, 0)]
