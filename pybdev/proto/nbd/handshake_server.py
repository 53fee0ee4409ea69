"""NBD fixed-newstyle handshake, server role, sans-IO (part of :mod:`pybdev.proto.nbd`).

:class:`ServerHandshake` is an explicit state machine fed with bytes (:meth:`receive_data`)
that queues bytes to send (:meth:`data_to_send`) and returns a terminal event once the
handshake is over.  It never raises on peer input: a client that breaks the protocol
produces a :class:`Closed` event, because for the caller "the peer misbehaved" and "the
peer asked to leave" end the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

from .const import (
    BASE_ALLOCATION,
    BASE_ALLOCATION_ID,
    DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_MIN_BLOCK_SIZE,
    DEFAULT_PREFERRED_BLOCK_SIZE,
    EXPORT_NAME_REPLY,
    GREETING,
    INFO_BLOCK_SIZE,
    INFO_EXPORT,
    MAX_MIN_BLOCK_SIZE,
    NBD_FLAG_BLOCK_STATUS_PAYLOAD,
    NBD_FLAG_C_FIXED_NEWSTYLE,
    NBD_FLAG_C_NO_ZEROES,
    NBD_FLAG_FIXED_NEWSTYLE,
    NBD_FLAG_HAS_FLAGS,
    NBD_FLAG_NO_ZEROES,
    NBD_FLAG_SEND_DF,
    NBD_FLAG_SEND_FAST_ZERO,
    NBD_FLAG_SEND_WRITE_ZEROES,
    NBD_IHAVEOPT,
    NBD_INFO_BLOCK_SIZE,
    NBD_INFO_DESCRIPTION,
    NBD_INFO_EXPORT,
    NBD_INFO_NAME,
    NBD_MAGIC,
    NBD_OPT_ABORT,
    NBD_OPT_EXPORT_NAME,
    NBD_OPT_GO,
    NBD_OPT_INFO,
    NBD_OPT_LIST,
    NBD_OPT_LIST_META_CONTEXT,
    NBD_OPT_REPLY_MAGIC,
    NBD_OPT_SET_META_CONTEXT,
    NBD_OPT_STARTTLS,
    NBD_OPT_STRUCTURED_REPLY,
    NBD_REP_ACK,
    NBD_REP_ERR_BLOCK_SIZE_REQD,
    NBD_REP_ERR_INVALID,
    NBD_REP_ERR_POLICY,
    NBD_REP_ERR_SHUTDOWN,
    NBD_REP_ERR_TOO_BIG,
    NBD_REP_ERR_UNKNOWN,
    NBD_REP_ERR_UNSUP,
    NBD_REP_INFO,
    NBD_REP_META_CONTEXT,
    NBD_REP_SERVER,
    OPTION_HEADER,
    OPTION_REPLY_HEADER,
    Opt,
    describe,
)
from .handshake_common import U16, U32, decode_string, encode_string, is_pow2
from .transmission import RequestValidator

_ZEROES: Final = bytes(124)

#: Default cap on option data the server accepts (proto.md sets none; the largest
#: legitimate option, a meta context request with a few 4 KiB queries, is far below).
DEFAULT_MAX_OPTION_LENGTH: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExportInfo:
    """What the server's export lookup returns.

    ``flags`` are the transmission flags the export supports (``NBD_FLAG_HAS_FLAGS`` is
    added, and ``NBD_FLAG_SEND_DF`` dropped without structured replies, by the
    handshake).  The block sizes are proto.md's size constraints: ``max_block_size`` is
    the maximum payload.  The defaults are proto.md's defaults, which need not be
    advertised.  ``require_block_size`` makes the server refuse clients that did not ask
    for ``NBD_INFO_BLOCK_SIZE`` in ``NBD_OPT_GO`` (and any ``NBD_OPT_EXPORT_NAME``).
    """

    name: str
    size: int
    flags: int = 0
    min_block_size: int = DEFAULT_MIN_BLOCK_SIZE
    preferred_block_size: int = DEFAULT_PREFERRED_BLOCK_SIZE
    max_block_size: int = DEFAULT_MAX_BLOCK_SIZE
    description: str = ""
    require_block_size: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.size < 1 << 64:
            raise ValueError(f"export size {self.size} out of range")
        if not is_pow2(self.min_block_size) or self.min_block_size > MAX_MIN_BLOCK_SIZE:
            raise ValueError("min_block_size must be a power of 2 no larger than 64 KiB")
        if not is_pow2(self.preferred_block_size) or self.preferred_block_size < max(
            self.min_block_size, 512
        ):
            raise ValueError("preferred_block_size must be a power of 2 >= min and >= 512")
        if not self.preferred_block_size <= self.max_block_size <= 0xFFFFFFFF:
            raise ValueError("max_block_size must be >= preferred_block_size and fit 32 bits")

    @property
    def default_block_sizes(self) -> bool:
        return (self.min_block_size, self.preferred_block_size, self.max_block_size) == (
            DEFAULT_MIN_BLOCK_SIZE,
            DEFAULT_PREFERRED_BLOCK_SIZE,
            DEFAULT_MAX_BLOCK_SIZE,
        )


@dataclass(frozen=True, slots=True)
class TransmissionReady:
    """Server handshake done: enter the transmission phase.

    ``flags`` are the transmission flags actually sent.  ``meta_contexts`` maps the id of
    each selected metadata context to its name (empty unless the client selected
    contexts for this very export).  ``block_size_negotiated`` is true when the client
    asked for ``NBD_INFO_BLOCK_SIZE`` in ``NBD_OPT_GO`` and thereby promised to honour the
    constraints.  ``trailing`` holds bytes received after the final option: feed them to
    the transmission parser.
    """

    export: ExportInfo
    name: str
    flags: int
    structured_replies: bool
    meta_contexts: dict[int, str]
    block_size_negotiated: bool
    via_go: bool
    trailing: bytes = b""

    def validator(self) -> RequestValidator:
        """The :class:`RequestValidator` matching what was negotiated."""
        return RequestValidator(
            self.export.size,
            self.flags,
            min_block_size=self.export.min_block_size,
            max_payload=self.export.max_block_size,
            structured_replies=self.structured_replies,
            block_status=bool(self.meta_contexts),
        )


@dataclass(frozen=True, slots=True)
class Closed:
    """Server handshake over without transmission: send what is queued, then close.

    ``soft`` is true for a client's ``NBD_OPT_ABORT`` (the ACK is queued); false when the
    protocol demands or permits a hard disconnect (``reason`` says why).
    """

    reason: str
    soft: bool = False


ServerEvent: TypeAlias = TransmissionReady | Closed

ExportLookup: TypeAlias = Callable[[str], ExportInfo | None]
ExportLister: TypeAlias = Callable[[], Iterable[ExportInfo]]

# States
_S_CLIENT_FLAGS: Final = 0
_S_OPTION: Final = 1
_S_SKIP: Final = 2
_S_DONE: Final = 3


class ServerHandshake:
    """Server side of the fixed-newstyle handshake.

    ``lookup(name)`` resolves an export name (``""`` is the default export) to an
    :class:`ExportInfo`, or None if there is no such export.  ``exports()`` lists the
    exports for ``NBD_OPT_LIST``; without it listing is refused with
    ``NBD_REP_ERR_POLICY``.  ``structured_replies`` and ``meta_contexts`` (the
    ``base:allocation`` context) can be turned off, which makes the options unknown
    (``NBD_REP_ERR_UNSUP``).  Option data longer than ``max_option_length`` is
    discarded as it arrives, never buffered, and answered with ``NBD_REP_ERR_TOO_BIG``.

    The greeting is queued at construction: call :meth:`data_to_send` first.
    """

    def __init__(
        self,
        lookup: ExportLookup,
        *,
        exports: ExportLister | None = None,
        no_zeroes: bool = True,
        structured_replies: bool = True,
        meta_contexts: bool = True,
        max_option_length: int = DEFAULT_MAX_OPTION_LENGTH,
    ) -> None:
        self._lookup = lookup
        self._exports = exports
        self._offer_no_zeroes = no_zeroes
        self._offer_structured = structured_replies
        self._offer_meta = meta_contexts and structured_replies
        self._max_option_length = max_option_length
        self._buf = bytearray()
        self._out = bytearray(
            GREETING.pack(
                NBD_MAGIC,
                NBD_IHAVEOPT,
                NBD_FLAG_FIXED_NEWSTYLE | (NBD_FLAG_NO_ZEROES if no_zeroes else 0),
            )
        )
        self._state = _S_CLIENT_FLAGS
        self._fixed = False
        self._no_zeroes = False
        self._structured = False
        # Export the last SET_META_CONTEXT named, and what it selected.
        self._meta_export: str | None = None
        self._meta: dict[int, str] = {}
        self._skip_left = 0
        self._skip_option = 0
        self._shutting_down = False
        self.event: ServerEvent | None = None

    # -- public API ----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes queued for the client (and forget them)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def shutdown(self) -> None:
        """The server is going away: answer further options with ``NBD_REP_ERR_SHUTDOWN``."""
        self._shutting_down = True

    @property
    def done(self) -> bool:
        return self._state == _S_DONE

    def receive_data(self, data: bytes | bytearray | memoryview) -> ServerEvent | None:
        """Feed bytes from the client; returns the terminal event when reached, else None.

        Always flush :meth:`data_to_send` afterwards, also (especially) after a
        :class:`Closed`.  Data received after the terminal event is ignored.
        """
        if self._state == _S_DONE:
            return None
        buf = self._buf
        buf += data
        pos = 0
        event: ServerEvent | None = None
        while event is None:
            avail = len(buf) - pos
            state = self._state
            if state == _S_SKIP:
                step = min(avail, self._skip_left)
                pos += step
                self._skip_left -= step
                if self._skip_left:
                    break
                self._state = _S_OPTION
                self._reply_oversized(self._skip_option)
            elif state == _S_OPTION:
                if avail < 16:
                    break
                magic, option, length = OPTION_HEADER.unpack_from(buf, pos)
                if magic != NBD_IHAVEOPT:
                    event = Closed(f"bad option magic 0x{magic:016x}")
                    break
                if length > self._max_option_length:
                    event = self._begin_skip(option, length)
                    pos += 16
                    continue
                if avail < 16 + length:
                    break
                payload = bytes(buf[pos + 16 : pos + 16 + length])
                pos += 16 + length
                event = self._handle_option(option, payload)
            elif state == _S_CLIENT_FLAGS:
                if avail < 4:
                    break
                event = self._handle_client_flags(U32.unpack_from(buf, pos)[0])
                pos += 4
            else:
                break
        if event is not None:
            self._state = _S_DONE
            if isinstance(event, TransmissionReady) and pos < len(buf):
                event = replace(event, trailing=bytes(buf[pos:]))
            buf.clear()
            self.event = event
        else:
            del buf[:pos]
        return event

    # -- internals -----------------------------------------------------------------------

    def _reply(self, option: int, rep: int, data: bytes = b"") -> None:
        self._out += OPTION_REPLY_HEADER.pack(NBD_OPT_REPLY_MAGIC, option, rep, len(data))
        self._out += data

    def _error(self, option: int, rep: int, message: str) -> None:
        self._reply(option, rep, encode_string(message))

    def _handle_client_flags(self, flags: int) -> Closed | None:
        known = NBD_FLAG_C_FIXED_NEWSTYLE | (NBD_FLAG_C_NO_ZEROES if self._offer_no_zeroes else 0)
        if flags & ~known:
            # proto.md: the server MUST drop the connection on unknown client flags or
            # flags that do not match something it advertised.
            return Closed(f"unsupported client flags 0x{flags:08x}")
        self._fixed = bool(flags & NBD_FLAG_C_FIXED_NEWSTYLE)
        self._no_zeroes = bool(flags & NBD_FLAG_C_NO_ZEROES)
        self._state = _S_OPTION
        return None

    def _begin_skip(self, option: int, length: int) -> Closed | None:
        if option == NBD_OPT_EXPORT_NAME or not self._fixed:
            # No error reply is possible: terminating is the only way to refuse.
            return Closed(f"option {describe(option, Opt)} with {length} bytes of data")
        self._state = _S_SKIP
        self._skip_left = length
        self._skip_option = option
        return None

    def _reply_oversized(self, option: int) -> None:
        if option in _KNOWN_OPTIONS:
            self._error(option, NBD_REP_ERR_TOO_BIG, "option data too long")
        else:
            self._error(option, NBD_REP_ERR_UNSUP, f"unknown option {option}")

    def _handle_option(self, option: int, data: bytes) -> ServerEvent | None:
        if option == NBD_OPT_EXPORT_NAME:
            return self._opt_export_name(data)
        if not self._fixed:
            # Non-fixed newstyle has no option replies, so nothing else can be answered.
            return Closed(f"option {describe(option, Opt)} from a non-fixed-newstyle client")
        if option == NBD_OPT_ABORT:
            # proto.md: ACK, and ignore any data rather than rejecting it.
            self._reply(option, NBD_REP_ACK)
            return Closed("client sent NBD_OPT_ABORT", soft=True)
        if self._shutting_down:
            self._error(option, NBD_REP_ERR_SHUTDOWN, "server is shutting down")
            return None
        if option in (NBD_OPT_GO, NBD_OPT_INFO):
            return self._opt_info_go(option, data)
        if option == NBD_OPT_LIST:
            self._opt_list(data)
        elif option == NBD_OPT_STRUCTURED_REPLY and self._offer_structured:
            self._opt_structured_reply(data)
        elif option in (NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT) and self._offer_meta:
            self._opt_meta_context(option, data)
        elif option == NBD_OPT_STARTTLS:
            self._error(option, NBD_REP_ERR_POLICY, "TLS is not configured on this server")
        else:
            self._error(option, NBD_REP_ERR_UNSUP, f"unsupported option {describe(option, Opt)}")
        return None

    def _tx_flags(self, export: ExportInfo) -> int:
        flags = (export.flags | NBD_FLAG_HAS_FLAGS) & 0xFFFF
        # Extended headers are never negotiated here, and proto.md ties DF to structured
        # replies and FAST_ZERO to WRITE_ZEROES.
        flags &= ~NBD_FLAG_BLOCK_STATUS_PAYLOAD
        if not self._structured:
            flags &= ~NBD_FLAG_SEND_DF
        if not flags & NBD_FLAG_SEND_WRITE_ZEROES:
            flags &= ~NBD_FLAG_SEND_FAST_ZERO
        return flags

    def _ready(
        self, export: ExportInfo, name: str, flags: int, block_size: bool, via_go: bool
    ) -> TransmissionReady:
        # proto.md: contexts only count if the final SET_META_CONTEXT named this export.
        meta = dict(self._meta) if self._meta_export == name else {}
        return TransmissionReady(
            export=export,
            name=name,
            flags=flags,
            structured_replies=self._structured,
            meta_contexts=meta,
            block_size_negotiated=block_size,
            via_go=via_go,
        )

    def _opt_export_name(self, data: bytes) -> ServerEvent:
        name = decode_string(data)
        if name is None:
            return Closed("NBD_OPT_EXPORT_NAME with an invalid name")
        if self._shutting_down:
            return Closed("server is shutting down")
        export = self._lookup(name)
        if export is None:
            return Closed(f"NBD_OPT_EXPORT_NAME for unknown export {name!r}")
        if export.require_block_size:
            return Closed(f"export {name!r} requires block size negotiation via NBD_OPT_GO")
        flags = self._tx_flags(export)
        self._out += EXPORT_NAME_REPLY.pack(export.size, flags)
        if not self._no_zeroes:
            self._out += _ZEROES
        return self._ready(export, name, flags, block_size=False, via_go=False)

    def _opt_list(self, data: bytes) -> None:
        if data:
            self._error(NBD_OPT_LIST, NBD_REP_ERR_INVALID, "NBD_OPT_LIST carries no data")
            return
        if self._exports is None:
            self._error(NBD_OPT_LIST, NBD_REP_ERR_POLICY, "export listing is disabled")
            return
        for export in self._exports():
            name = encode_string(export.name)
            self._reply(
                NBD_OPT_LIST,
                NBD_REP_SERVER,
                U32.pack(len(name)) + name + encode_string(export.description),
            )
        self._reply(NBD_OPT_LIST, NBD_REP_ACK)

    def _opt_structured_reply(self, data: bytes) -> None:
        option = NBD_OPT_STRUCTURED_REPLY
        if data:
            self._error(option, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY carries no data")
        elif self._structured:
            self._error(option, NBD_REP_ERR_INVALID, "structured replies already negotiated")
        else:
            self._structured = True
            self._reply(option, NBD_REP_ACK)

    def _opt_info_go(self, option: int, data: bytes) -> ServerEvent | None:
        # Data: u32 name length, name, u16 request count, u16 requests.
        if len(data) < 6:
            self._error(option, NBD_REP_ERR_INVALID, "option data too short")
            return None
        name_len = U32.unpack_from(data, 0)[0]
        if name_len > len(data) - 6:
            self._error(option, NBD_REP_ERR_INVALID, "export name length exceeds option data")
            return None
        count = U16.unpack_from(data, 4 + name_len)[0]
        if len(data) != 6 + name_len + 2 * count:
            self._error(option, NBD_REP_ERR_INVALID, "information request count mismatch")
            return None
        name = decode_string(data[4 : 4 + name_len])
        if name is None:
            self._error(option, NBD_REP_ERR_INVALID, "export name is not a valid string")
            return None
        requests = set(struct.unpack_from(f">{count}H", data, 6 + name_len))
        export = self._lookup(name)
        if export is None:
            self._error(option, NBD_REP_ERR_UNKNOWN, f"unknown export {name!r}")
            return None
        flags = self._tx_flags(export)
        self._reply(option, NBD_REP_INFO, INFO_EXPORT.pack(NBD_INFO_EXPORT, export.size, flags))
        if NBD_INFO_NAME in requests:
            self._reply(option, NBD_REP_INFO, U16.pack(NBD_INFO_NAME) + encode_string(export.name))
        if NBD_INFO_DESCRIPTION in requests and export.description:
            self._reply(
                option,
                NBD_REP_INFO,
                U16.pack(NBD_INFO_DESCRIPTION) + encode_string(export.description),
            )
        block_size = NBD_INFO_BLOCK_SIZE in requests
        # Non-default constraints are sent unasked too: proto.md says a server MUST
        # advertise them, and a client ignores info it does not understand.
        if block_size or not export.default_block_sizes:
            self._reply(
                option,
                NBD_REP_INFO,
                INFO_BLOCK_SIZE.pack(
                    NBD_INFO_BLOCK_SIZE,
                    export.min_block_size,
                    export.preferred_block_size,
                    export.max_block_size,
                ),
            )
        if option == NBD_OPT_GO and export.require_block_size and not block_size:
            self._error(option, NBD_REP_ERR_BLOCK_SIZE_REQD, "request NBD_INFO_BLOCK_SIZE")
            return None
        self._reply(option, NBD_REP_ACK)
        if option == NBD_OPT_INFO:
            return None
        return self._ready(export, name, flags, block_size=block_size, via_go=True)

    def _opt_meta_context(self, option: int, data: bytes) -> None:
        setting = option == NBD_OPT_SET_META_CONTEXT
        if setting:
            # proto.md: SET replaces the previous selection even when it fails.
            self._meta_export = None
            self._meta = {}
        if not self._structured:
            self._error(option, NBD_REP_ERR_INVALID, "negotiate structured replies first")
            return
        parsed = _parse_meta_request(data)
        if parsed is None:
            self._error(option, NBD_REP_ERR_INVALID, "malformed metadata context request")
            return
        name, queries = parsed
        if any(":" not in query for query in queries):
            self._error(option, NBD_REP_ERR_INVALID, "query without a namespace")
            return
        if self._lookup(name) is None:
            self._error(option, NBD_REP_ERR_UNKNOWN, f"unknown export {name!r}")
            return
        if setting:
            # "base:" is a wildcard for LIST only; SET ignores it, and anything unknown.
            selected = BASE_ALLOCATION in queries
        else:
            selected = not queries or any(q in ("base:", BASE_ALLOCATION) for q in queries)
        if selected:
            context_id = BASE_ALLOCATION_ID if setting else 0
            self._reply(
                option,
                NBD_REP_META_CONTEXT,
                U32.pack(context_id) + BASE_ALLOCATION.encode(),
            )
        self._reply(option, NBD_REP_ACK)
        if setting:
            self._meta_export = name
            self._meta = {BASE_ALLOCATION_ID: BASE_ALLOCATION} if selected else {}


_KNOWN_OPTIONS: Final = frozenset(
    {
        NBD_OPT_EXPORT_NAME,
        NBD_OPT_ABORT,
        NBD_OPT_LIST,
        NBD_OPT_INFO,
        NBD_OPT_GO,
        NBD_OPT_STRUCTURED_REPLY,
        NBD_OPT_LIST_META_CONTEXT,
        NBD_OPT_SET_META_CONTEXT,
    }
)


def _parse_meta_request(data: bytes) -> tuple[str, list[str]] | None:
    """(export name, queries) of a LIST/SET_META_CONTEXT option, None if malformed."""
    size = len(data)
    if size < 8:
        return None
    name_len = U32.unpack_from(data, 0)[0]
    pos = 4 + name_len
    if pos + 4 > size:
        return None
    name = decode_string(data[4:pos])
    if name is None:
        return None
    count = U32.unpack_from(data, pos)[0]
    pos += 4
    if count > (size - pos) // 4:  # each query needs at least its length field
        return None
    queries: list[str] = []
    for _ in range(count):
        if pos + 4 > size:
            return None
        query_len = U32.unpack_from(data, pos)[0]
        pos += 4
        if query_len > size - pos:
            return None
        query = decode_string(data[pos : pos + query_len])
        if query is None:
            return None
        queries.append(query)
        pos += query_len
    if pos != size:
        return None
    return name, queries


__all__ = [
    "DEFAULT_MAX_OPTION_LENGTH",
    "Closed",
    "ExportInfo",
    "ExportLister",
    "ExportLookup",
    "ServerEvent",
    "ServerHandshake",
    "TransmissionReady",
]
