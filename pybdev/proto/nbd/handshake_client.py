"""NBD fixed-newstyle handshake, client role, sans-IO (part of :mod:`pybdev.proto.nbd`).

:class:`ClientHandshake` is an explicit state machine fed with bytes (:meth:`receive_data`)
that queues bytes to send (:meth:`data_to_send`) and returns a terminal event once the
handshake is over.  It never raises on peer input: a server that breaks the protocol, or
that costs more than the handshake's budget, produces a :class:`ClientFailed` event.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Final, TypeAlias

from .const import (
    DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_MIN_BLOCK_SIZE,
    DEFAULT_PREFERRED_BLOCK_SIZE,
    EXPORT_NAME_REPLY,
    GREETING,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    MAX_MIN_BLOCK_SIZE,
    NBD_CLISERV_MAGIC,
    NBD_FLAG_C_FIXED_NEWSTYLE,
    NBD_FLAG_C_NO_ZEROES,
    NBD_FLAG_FIXED_NEWSTYLE,
    NBD_FLAG_NO_ZEROES,
    NBD_IHAVEOPT,
    NBD_INFO_BLOCK_SIZE,
    NBD_INFO_DESCRIPTION,
    NBD_INFO_EXPORT,
    NBD_INFO_NAME,
    NBD_MAGIC,
    NBD_OPT_ABORT,
    NBD_OPT_EXPORT_NAME,
    NBD_OPT_GO,
    NBD_OPT_LIST,
    NBD_OPT_REPLY_MAGIC,
    NBD_OPT_SET_META_CONTEXT,
    NBD_OPT_STRUCTURED_REPLY,
    NBD_REP_ACK,
    NBD_REP_ERR_BLOCK_SIZE_REQD,
    NBD_REP_ERR_SHUTDOWN,
    NBD_REP_ERR_UNKNOWN,
    NBD_REP_ERR_UNSUP,
    NBD_REP_FLAG_ERROR,
    NBD_REP_INFO,
    NBD_REP_META_CONTEXT,
    NBD_REP_SERVER,
    OPTION_HEADER,
    OPTION_REPLY_HEADER,
    Opt,
    Rep,
    describe,
)
from .handshake_common import U16, U32, decode_string, is_pow2

#: Default cap on one option reply the client accepts.
DEFAULT_MAX_OPTION_REPLY_LENGTH: Final = 1 << 20
#: Default cap on the number of option replies one handshake accepts.  The client asks for
#: a handful of options; only a listing (one reply per export) needs many.  A server
#: flooding replies (NBD_REP_META_CONTEXT, NBD_REP_INFO, NBD_REP_SERVER) would otherwise
#: grow the client without bound until its timeout.
DEFAULT_MAX_HANDSHAKE_REPLIES: Final = 1 << 14
#: Default cap on the bytes of all option replies of one handshake (headers included).
DEFAULT_MAX_HANDSHAKE_BYTES: Final = 1 << 24


def encode_option(option: int, data: bytes = b"") -> bytes:
    """A client option: IHAVEOPT, option, length, data."""
    return OPTION_HEADER.pack(NBD_IHAVEOPT, option, len(data)) + data


def encode_info_request(name: str, info_requests: Sequence[int] = ()) -> bytes:
    """Option data of ``NBD_OPT_INFO`` / ``NBD_OPT_GO``."""
    raw = name.encode("utf-8")
    return (
        U32.pack(len(raw))
        + raw
        + struct.pack(f">H{len(info_requests)}H", len(info_requests), *info_requests)
    )


def encode_meta_context_request(name: str, queries: Sequence[str]) -> bytes:
    """Option data of ``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT``."""
    raw = name.encode("utf-8")
    parts = [U32.pack(len(raw)), raw, U32.pack(len(queries))]
    for query in queries:
        encoded = query.encode("utf-8")
        parts += [U32.pack(len(encoded)), encoded]
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ClientReady:
    """Client handshake done: the export is open for transmission.

    Block sizes are the server's (proto.md's defaults when it sent none).
    ``meta_contexts`` maps each context name the server selected to its id.
    ``block_size_negotiated`` is true when the client promised (via ``NBD_OPT_GO``) to
    honour the constraints, which it then MUST.
    """

    name: str
    size: int
    flags: int
    min_block_size: int
    preferred_block_size: int
    max_block_size: int
    structured_replies: bool
    meta_contexts: dict[str, int]
    block_size_negotiated: bool
    via_go: bool
    description: str = ""
    canonical_name: str | None = None
    trailing: bytes = b""


@dataclass(frozen=True, slots=True)
class ExportList:
    """Result of a listing handshake: ``(name, description)`` pairs.

    ``NBD_OPT_ABORT`` is queued: send it, then close.
    """

    exports: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ClientFailed:
    """Client handshake failed.  ``reply`` is the server's NBD_REP_ERR_* code if any.

    ``soft`` means ``NBD_OPT_ABORT`` is queued (send it, then close); otherwise the
    server broke the protocol and the connection is just closed (a hard disconnect).
    """

    reason: str
    reply: int | None = None
    soft: bool = False


ClientEvent: TypeAlias = ClientReady | ExportList | ClientFailed

# States
_C_GREETING: Final = 0
_C_OPTION_REPLY: Final = 1
_C_EXPORT_NAME_REPLY: Final = 2
_C_DONE: Final = 3


@dataclass(slots=True)
class _GoState:
    size: int | None = None
    flags: int = 0
    min_block: int = DEFAULT_MIN_BLOCK_SIZE
    preferred_block: int = DEFAULT_PREFERRED_BLOCK_SIZE
    max_block: int = DEFAULT_MAX_BLOCK_SIZE
    description: str = ""
    canonical_name: str | None = None
    contexts: dict[str, int] = field(default_factory=dict)


class ClientHandshake:
    """Client side of the handshake, for the NBD client bdev.

    Sequence: greeting -> client flags -> [``NBD_OPT_STRUCTURED_REPLY``] ->
    [``NBD_OPT_SET_META_CONTEXT`` with ``meta_contexts``, if structured replies were
    accepted] -> ``NBD_OPT_GO`` (asking for ``NBD_INFO_BLOCK_SIZE`` when
    ``request_block_size``, plus NAME and DESCRIPTION).  Falls back to
    ``NBD_OPT_EXPORT_NAME`` when the server is not fixed-newstyle or answers
    ``NBD_OPT_GO`` with ``NBD_REP_ERR_UNSUP``; retries ``NBD_OPT_GO`` with the block size
    request if the server demands it.  With ``list_exports`` it lists exports with
    ``NBD_OPT_LIST`` instead and ends with :class:`ExportList`.

    What a server can make the client hold is bounded: one option reply is at most
    ``max_reply_length`` bytes, and the whole handshake accepts at most
    ``max_replies`` option replies totalling ``max_reply_bytes`` bytes (headers
    included); past either bound it ends with :class:`ClientFailed`.  ``replies`` and
    ``reply_bytes`` count what was accepted so far.

    Nothing is sent before the server's greeting arrives.  If the connection closes
    before a terminal event (a server refusing ``NBD_OPT_EXPORT_NAME`` does that), the
    export could not be opened.
    """

    def __init__(
        self,
        export_name: str = "",
        *,
        structured_replies: bool = True,
        meta_contexts: Sequence[str] = (),
        request_block_size: bool = True,
        no_zeroes: bool = True,
        list_exports: bool = False,
        max_reply_length: int = DEFAULT_MAX_OPTION_REPLY_LENGTH,
        max_replies: int = DEFAULT_MAX_HANDSHAKE_REPLIES,
        max_reply_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES,
    ) -> None:
        self.export_name = export_name
        self._want_structured = structured_replies
        self._want_meta = list(meta_contexts)
        self._request_block_size = request_block_size
        self._want_no_zeroes = no_zeroes
        self._list = list_exports
        self._max_reply_length = max_reply_length
        self._max_replies = max_replies
        self._max_reply_bytes = max_reply_bytes
        self.replies = 0
        self.reply_bytes = 0
        self._buf = bytearray()
        self._out = bytearray()
        self._state = _C_GREETING
        self._option = 0  # option awaiting its reply
        self._fixed = False
        self._no_zeroes = False
        self._structured = False
        self._go = _GoState()
        self._listed: list[tuple[str, str]] = []
        self.event: ClientEvent | None = None

    def data_to_send(self) -> bytes:
        """Bytes queued for the server (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def done(self) -> bool:
        return self._state == _C_DONE

    @property
    def waiting_for(self) -> str:
        """What the handshake waits for from the server, for messages (a timeout's)."""
        state = self._state
        if state == _C_GREETING:
            return "the server's greeting"
        if state == _C_DONE:
            return "nothing (the handshake is over)"
        return f"the server's reply to NBD_OPT_{describe(self._option, Opt)}"

    def receive_data(self, data: bytes | bytearray | memoryview) -> ClientEvent | None:
        """Feed bytes from the server; returns the terminal event when reached, else None.

        Always flush :meth:`data_to_send` afterwards.  Data received after the terminal
        event is ignored.
        """
        if self._state == _C_DONE:
            return None
        buf = self._buf
        buf += data
        pos = 0
        event: ClientEvent | None = None
        while event is None:
            avail = len(buf) - pos
            state = self._state
            if state == _C_OPTION_REPLY:
                if avail < 20:
                    break
                magic, option, rep, length = OPTION_REPLY_HEADER.unpack_from(buf, pos)
                if magic != NBD_OPT_REPLY_MAGIC:
                    event = ClientFailed(f"bad option reply magic 0x{magic:x}")
                elif option != self._option:
                    event = ClientFailed(
                        f"reply to {describe(option, Opt)} while waiting for "
                        f"{describe(self._option, Opt)}"
                    )
                elif length > self._max_reply_length:
                    event = ClientFailed(f"option reply of {length} bytes is too long")
                elif self.replies >= self._max_replies:
                    event = ClientFailed(
                        f"server sent more than {self._max_replies} option replies "
                        f"(to NBD_OPT_{describe(option, Opt)})"
                    )
                elif self.reply_bytes + 20 + length > self._max_reply_bytes:
                    event = ClientFailed(
                        f"server sent more than {self._max_reply_bytes} bytes of option "
                        f"replies (to NBD_OPT_{describe(option, Opt)})"
                    )
                elif avail < 20 + length:
                    break
                else:
                    self.replies += 1
                    self.reply_bytes += 20 + length
                    payload = bytes(buf[pos + 20 : pos + 20 + length])
                    pos += 20 + length
                    event = self._handle_reply(rep, payload)
            elif state == _C_GREETING:
                if avail < 18:
                    break
                event = self._handle_greeting(*GREETING.unpack_from(buf, pos))
                pos += 18
            elif state == _C_EXPORT_NAME_REPLY:
                need = 10 if self._no_zeroes else 134
                if avail < need:
                    break
                size, flags = EXPORT_NAME_REPLY.unpack_from(buf, pos)
                pos += need
                self._go.size = size
                self._go.flags = flags
                event = self._ready(via_go=False, block_size=False)
            else:
                break
        if event is not None:
            self._state = _C_DONE
            if isinstance(event, ClientReady) and pos < len(buf):
                event = replace(event, trailing=bytes(buf[pos:]))
            buf.clear()
            self.event = event
        else:
            del buf[:pos]
        return event

    # -- internals -----------------------------------------------------------------------

    def _send_option(self, option: int, data: bytes = b"") -> None:
        self._out += encode_option(option, data)
        self._option = option
        self._state = _C_OPTION_REPLY

    def _abort(self, reason: str, reply: int | None) -> ClientFailed:
        # proto.md: a client that gives up MUST use a soft disconnect.
        self._out += encode_option(NBD_OPT_ABORT)
        return ClientFailed(reason, reply, soft=True)

    def _handle_greeting(self, magic: int, magic2: int, flags: int) -> ClientEvent | None:
        if magic != NBD_MAGIC:
            return ClientFailed(f"not an NBD server (magic 0x{magic:016x})")
        if magic2 == NBD_CLISERV_MAGIC:
            return ClientFailed("oldstyle negotiation is not supported")
        if magic2 != NBD_IHAVEOPT:
            return ClientFailed(f"bad newstyle magic 0x{magic2:016x}")
        self._fixed = bool(flags & NBD_FLAG_FIXED_NEWSTYLE)
        self._no_zeroes = self._want_no_zeroes and bool(flags & NBD_FLAG_NO_ZEROES)
        client_flags = (NBD_FLAG_C_FIXED_NEWSTYLE if self._fixed else 0) | (
            NBD_FLAG_C_NO_ZEROES if self._no_zeroes else 0
        )
        self._out += U32.pack(client_flags)
        if self._list:
            if not self._fixed:
                return ClientFailed("server cannot list exports (not fixed newstyle)")
            self._send_option(NBD_OPT_LIST)
        elif not self._fixed:
            self._send_export_name()
        elif self._want_structured:
            self._send_option(NBD_OPT_STRUCTURED_REPLY)
        else:
            self._send_go()
        return None

    def _send_export_name(self) -> None:
        self._out += encode_option(NBD_OPT_EXPORT_NAME, self.export_name.encode("utf-8"))
        self._option = NBD_OPT_EXPORT_NAME
        self._state = _C_EXPORT_NAME_REPLY

    def _send_go(self) -> None:
        requests = [NBD_INFO_NAME, NBD_INFO_DESCRIPTION]
        if self._request_block_size:
            requests.append(NBD_INFO_BLOCK_SIZE)
        self._go = _GoState(contexts=self._go.contexts)
        self._send_option(NBD_OPT_GO, encode_info_request(self.export_name, requests))

    def _after_structured(self) -> None:
        if self._structured and self._want_meta:
            self._send_option(
                NBD_OPT_SET_META_CONTEXT,
                encode_meta_context_request(self.export_name, self._want_meta),
            )
        else:
            self._send_go()

    def _handle_reply(self, rep: int, data: bytes) -> ClientEvent | None:
        option = self._option
        if rep & NBD_REP_FLAG_ERROR:
            message = data.decode("utf-8", "replace")
            return self._handle_error(option, rep, message)
        if option == NBD_OPT_STRUCTURED_REPLY:
            if rep != NBD_REP_ACK:
                return self._unexpected(rep)
            self._structured = True
            self._after_structured()
            return None
        if option == NBD_OPT_SET_META_CONTEXT:
            if rep == NBD_REP_META_CONTEXT:
                if len(data) < 4:
                    return ClientFailed("short NBD_REP_META_CONTEXT")
                name = decode_string(data[4:])
                if name is None:
                    return ClientFailed("invalid metadata context name")
                self._go.contexts[name] = U32.unpack_from(data, 0)[0]
                return None
            if rep != NBD_REP_ACK:
                return self._unexpected(rep)
            self._send_go()
            return None
        if option == NBD_OPT_GO:
            if rep == NBD_REP_INFO:
                return self._handle_info(data)
            if rep != NBD_REP_ACK:
                return self._unexpected(rep)
            if self._go.size is None:
                return ClientFailed("server acknowledged NBD_OPT_GO without NBD_INFO_EXPORT")
            return self._ready(via_go=True, block_size=self._request_block_size)
        if option == NBD_OPT_LIST:
            if rep == NBD_REP_SERVER:
                if len(data) < 4:
                    return ClientFailed("short NBD_REP_SERVER")
                name_len = U32.unpack_from(data, 0)[0]
                if name_len > len(data) - 4:
                    return ClientFailed("NBD_REP_SERVER name longer than the reply")
                name = data[4 : 4 + name_len].decode("utf-8", "replace")
                description = data[4 + name_len :].decode("utf-8", "replace")
                self._listed.append((name, description))
                return None
            if rep != NBD_REP_ACK:
                return self._unexpected(rep)
            self._out += encode_option(NBD_OPT_ABORT)
            return ExportList(list(self._listed))
        return self._unexpected(rep)  # pragma: no cover - no other option is ever sent

    def _unexpected(self, rep: int) -> ClientFailed:
        return ClientFailed(
            f"unexpected reply {describe(rep, Rep)} to {describe(self._option, Opt)}"
        )

    def _handle_error(self, option: int, rep: int, message: str) -> ClientEvent | None:
        detail = f"{describe(option, Opt)}: {describe(rep, Rep)}" + (
            f": {message}" if message else ""
        )
        if rep == NBD_REP_ERR_SHUTDOWN:
            return self._abort(f"server is shutting down ({detail})", rep)
        if option == NBD_OPT_STRUCTURED_REPLY:
            self._structured = False
            self._after_structured()
            return None
        if option == NBD_OPT_SET_META_CONTEXT:
            # Go on without contexts: block status is an optimisation.
            self._go.contexts = {}
            self._send_go()
            return None
        if option == NBD_OPT_GO:
            if rep == NBD_REP_ERR_UNSUP:
                self._send_export_name()
                return None
            if rep == NBD_REP_ERR_BLOCK_SIZE_REQD and not self._request_block_size:
                self._request_block_size = True
                self._send_go()
                return None
            if rep == NBD_REP_ERR_UNKNOWN:
                return self._abort(f"export {self.export_name!r} not found ({detail})", rep)
        return self._abort(detail, rep)

    def _handle_info(self, data: bytes) -> ClientFailed | None:
        if len(data) < 2:
            return ClientFailed("short NBD_REP_INFO")
        info = U16.unpack_from(data, 0)[0]
        go = self._go
        if info == NBD_INFO_EXPORT:
            if len(data) != 12:
                return ClientFailed("NBD_INFO_EXPORT of wrong length")
            _, go.size, go.flags = INFO_EXPORT.unpack(data)
        elif info == NBD_INFO_BLOCK_SIZE:
            if len(data) != 14:
                return ClientFailed("NBD_INFO_BLOCK_SIZE of wrong length")
            _, minimum, preferred, maximum = INFO_BLOCK_SIZE.unpack(data)
            if not (
                is_pow2(minimum)
                and minimum <= MAX_MIN_BLOCK_SIZE
                and is_pow2(preferred)
                and preferred >= minimum
                and maximum >= minimum
            ):
                return ClientFailed(
                    f"invalid block size constraints {minimum}/{preferred}/{maximum}"
                )
            go.min_block, go.preferred_block, go.max_block = minimum, preferred, maximum
        elif info == NBD_INFO_NAME:
            go.canonical_name = data[2:].decode("utf-8", "replace")
        elif info == NBD_INFO_DESCRIPTION:
            go.description = data[2:].decode("utf-8", "replace")
        # proto.md: the client MUST ignore information types it does not understand.
        return None

    def _ready(self, *, via_go: bool, block_size: bool) -> ClientReady:
        go = self._go
        assert go.size is not None
        return ClientReady(
            name=self.export_name,
            size=go.size,
            flags=go.flags,
            min_block_size=go.min_block,
            preferred_block_size=go.preferred_block,
            max_block_size=go.max_block,
            structured_replies=self._structured,
            meta_contexts=dict(go.contexts) if self._structured else {},
            block_size_negotiated=block_size,
            via_go=via_go,
            description=go.description,
            canonical_name=go.canonical_name,
        )


__all__ = [
    "DEFAULT_MAX_HANDSHAKE_BYTES",
    "DEFAULT_MAX_HANDSHAKE_REPLIES",
    "DEFAULT_MAX_OPTION_REPLY_LENGTH",
    "ClientEvent",
    "ClientFailed",
    "ClientHandshake",
    "ClientReady",
    "ExportList",
    "encode_info_request",
    "encode_meta_context_request",
    "encode_option",
]
