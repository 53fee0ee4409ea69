"""The NBD wire protocol, sans-IO: bytes in, events and bytes out; no sockets, no asyncio.

Reference: ``doc/proto.md`` of the NetworkBlockDevice/nbd project (fixed newstyle
handshake, structured replies, ``base:allocation`` block status; no TLS, no extended
headers).  Import everything from here (``from pybdev.proto import nbd``); the modules
split it by role:

``const``
    constants, enums, errno conversion and the ``struct.Struct`` wire layouts.
``transmission``
    request parsing and validation, reply encoding (server); request encoding and
    reply parsing (client).
``handshake_server`` / ``handshake_client``
    the two roles of the fixed-newstyle handshake, over ``handshake_common`` (protocol
    strings) which both use.
``uri``
    NBD addresses (``nbd://``, ``nbd+unix://``, QEMU's ``nbd:``), not re-exported here:
    ``from pybdev.proto.nbd import uri``.

Constants
    Plain ints named as in proto.md (``NBD_CMD_READ``, ``NBD_FLAG_SEND_FUA``,
    ``NBD_REP_ERR_UNSUP``, ``NBD_EINVAL`` ...) for hot paths, and the same values as
    enums for printing (``Cmd``, ``CmdFlag``, ``TxFlag``, ``HandshakeFlag``,
    ``ClientFlag``, ``Opt``, ``Rep``, ``Info``, ``ReplyType``, ``ReplyFlag``, ``Err``,
    ``StateFlag``).  ``errno_to_nbd()`` / ``nbd_to_errno()`` convert error values.

Handshake (state machines; never raise on peer input)
    ``ServerHandshake(lookup, *, exports=None, no_zeroes=True, structured_replies=True,
    meta_contexts=True, max_option_length=65536)``: ``lookup(name) -> ExportInfo | None``.
    ``receive_data(data) -> TransmissionReady | Closed | None``, ``data_to_send() ->
    bytes``, ``shutdown()``.  ``ExportInfo(name, size, flags=0, min_block_size=1,
    preferred_block_size=4096, max_block_size=32 MiB, description="",
    require_block_size=False)``.

    ``ClientHandshake(export_name="", *, structured_replies=True, meta_contexts=(),
    request_block_size=True, no_zeroes=True, list_exports=False, max_reply_length=1 MiB,
    max_replies=16384, max_reply_bytes=16 MiB)``: same ``receive_data`` /
    ``data_to_send``; ends with ``ClientReady``, ``ExportList`` or ``ClientFailed`` (also
    when the server sends more replies than the bounds allow).  ``waiting_for`` says
    what it waits for (for a timeout's message).

Transmission, server side
    ``parse_requests(buf, pos=0, end=None, max_write=32 MiB) -> (requests, pos, need)``
    with requests ``(type, flags, cookie, offset, length, payload_view_or_None)``;
    ``peek_request(buf, pos)`` for the zero-copy path; ``RequestValidator(size, flags,
    *, min_block_size, max_payload, structured_replies, block_status).check(type, flags,
    offset, length) -> nbd_error_or_0``; encoders ``encode_simple_reply``,
    ``encode_read_reply_header``, ``encode_error_reply``, ``encode_data_chunk_header``,
    ``encode_hole_chunk``, ``encode_none_chunk``, ``encode_error_chunk``,
    ``encode_error_offset_chunk``, ``encode_block_status_chunk``, and the raw
    ``struct.Struct`` objects ``REQUEST``, ``SIMPLE_REPLY``, ``STRUCTURED_HEADER``,
    ``OFFSET_DATA``, ``OFFSET_HOLE``, ``ERROR_CHUNK_HEADER``.
    Corrupt streams raise ``ProtocolError`` (hard disconnect).

Transmission, client side
    ``encode_request(type, cookie, offset=0, length=0, flags=0)`` (28-byte header; a
    write's payload follows), ``ReplyParser(lookup, *, structured).parse(buf, pos=0,
    end=None) -> (replies, pos, need)`` with replies ``SimpleReply``, ``DataChunk``,
    ``HoleChunk``, ``BlockStatusChunk``, ``ErrorChunk``, ``NoneChunk`` (all have
    ``.cookie`` and ``.done``).

Buffers and zero copy
    Parsers take a ``bytearray``/``bytes``/``memoryview`` and a window ``[pos, end)``,
    return what is complete, where they stopped and how many bytes the next message
    needs in total (0 if none is pending).  Payloads are memoryview slices of the
    buffer: use or copy them before resizing it (a ``bytearray`` with live views raises
    ``BufferError`` on resize rather than corrupting them).  Large writes need not be
    buffered at all: when ``need`` is large, ``peek_request`` the header and
    ``recv_into`` the destination.

Notes
    One handshake/parser object per connection; nothing here is thread-safe or blocks.
    ``TransmissionReady.validator()`` builds the ``RequestValidator`` for what was
    negotiated.  Under structured replies a READ must be answered with chunks, errors
    included: ``encode_read_reply_header`` / ``encode_error_reply`` pick the right form.
    ``NBD_CMD_DISC`` is never answered.  ``ProtocolError.parsed`` / ``.offset`` keep
    what was decoded before the fault.  ``tests/proto/nbd/test_interop.py`` has a
    complete blocking server and client on this API, run against libnbd, QEMU and
    nbdkit.

Server (network export, asyncio Protocol)::

    from pybdev.proto import nbd

    hs = nbd.ServerHandshake(lambda name: exports.get(name), exports=exports.values)
    transport.write(hs.data_to_send())                  # greeting
    # on data_received during the handshake:
    event = hs.receive_data(data)
    transport.write(hs.data_to_send())
    if isinstance(event, nbd.Closed):
        transport.close()
    elif isinstance(event, nbd.TransmissionReady):
        validator = event.validator()
        structured = event.structured_replies
        buf = bytearray(event.trailing)
    # on data_received during transmission:
    buf += data
    try:
        requests, pos, need = nbd.parse_requests(buf)
    except nbd.ProtocolError:
        transport.close(); return
    out = []
    for typ, flags, cookie, offset, length, payload in requests:
        err = validator.check(typ, flags, offset, length)
        if typ == nbd.NBD_CMD_DISC:
            ...                                     # finish in-flight requests, close
        elif err:
            out.append(nbd.encode_error_reply(cookie, err, structured))
        elif typ == nbd.NBD_CMD_READ:
            out += [nbd.encode_read_reply_header(cookie, offset, length, structured),
                    disk[offset:offset + length]]
        elif typ == nbd.NBD_CMD_WRITE:
            disk[offset:offset + length] = payload
            out.append(nbd.encode_simple_reply(cookie))
    requests = payload = None                       # release the views into buf
    del buf[:pos]
    transport.writelines(out)

Kernel export (``/dev/nbdX`` over a socketpair): no handshake; build
``RequestValidator(size, flags, min_block_size=block_size)`` directly and answer with
``encode_simple_reply`` (the kernel never negotiates structured replies).

Client (NBD client bdev)::

    hs = nbd.ClientHandshake("disk0", meta_contexts=[nbd.BASE_ALLOCATION])
    # on data_received:
    event = hs.receive_data(data)
    transport.write(hs.data_to_send())
    if isinstance(event, nbd.ClientFailed):
        transport.close()                           # after sending any queued ABORT
    elif isinstance(event, nbd.ClientReady):
        inflight = {}                               # cookie -> (type, offset, length)
        parser = nbd.ReplyParser(inflight.get, structured=event.structured_replies)
    # submitting a read:
    inflight[cookie] = (nbd.NBD_CMD_READ, offset, length)
    transport.write(nbd.encode_request(nbd.NBD_CMD_READ, cookie, offset, length))
    # on data_received during transmission:
    buf += data
    replies, pos, need = parser.parse(buf)          # ProtocolError -> hard disconnect
    for reply in replies:
        ...                                         # copy reply.data, note errors
        if reply.done:
            del inflight[reply.cookie]
    del buf[:pos]                                   # after dropping the replies
"""

from __future__ import annotations

from . import const, handshake_client, handshake_server, transmission
from .const import *  # noqa: F403
from .handshake_client import *  # noqa: F403
from .handshake_server import *  # noqa: F403
from .transmission import *  # noqa: F403

__all__ = [
    *const.__all__,
    *handshake_server.__all__,
    *handshake_client.__all__,
    *transmission.__all__,
]
