"""Misbehaving NBD servers for the NBD client bdev's tests, written from the protocol.

A :class:`HostileServer` listens on a Unix socket and runs a script (a plain function of
a :class:`Conn`) for each connection in a thread of its own, so that it works both
beside an in-process bdev layer (the test's event loop is never blocked) and in front of
a target process.  The bytes are built here with ``struct`` rather than with
``pybdev.proto.nbd``, so that a bug in the protocol package cannot hide on both sides.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
STRUCTURED_MAGIC = 0x668E33EF

OPT_EXPORT_NAME, OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT = 1, 7, 8, 10
REP_ACK, REP_INFO, REP_META_CONTEXT = 1, 3, 4
REP_ERR_UNSUP = (1 << 31) | 1
CMD_READ, CMD_DISC = 0, 2
FLAG_HAS_FLAGS, FLAG_SEND_FLUSH = 1, 4
CHUNK_NONE, CHUNK_DATA, CHUNK_HOLE = 0, 1, 2
DONE = 1


class Conn:
    """One accepted connection, with the few protocol moves the scripts are made of."""

    def __init__(self, sock: socket.socket, server: HostileServer) -> None:
        self.sock = sock
        self.server = server

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.server.sent += len(data)

    def recv_exact(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            chunk = self.sock.recv(size - len(out))
            if not chunk:
                raise EOFError("the client hung up")
            out += chunk
        return bytes(out)

    def wait_for_hangup(self) -> None:
        """Answer nothing more; return when the client closes the connection."""
        while self.sock.recv(65536):
            pass

    # -- handshake -----------------------------------------------------------------------------
    def greet(self) -> int:
        """Fixed-newstyle greeting with NO_ZEROES; the client's flags."""
        self.send(NBDMAGIC + IHAVEOPT + struct.pack(">H", 3))
        flags: int = struct.unpack(">I", self.recv_exact(4))[0]
        return flags

    def option(self) -> tuple[int, bytes]:
        magic, option, length = struct.unpack(">8sII", self.recv_exact(16))
        assert magic == IHAVEOPT, magic
        return option, self.recv_exact(length)

    def reply(self, option: int, rep: int, data: bytes = b"") -> None:
        self.send(struct.pack(">QIII", OPT_REPLY_MAGIC, option, rep, len(data)) + data)

    def handshake(self, size: int = 1 << 20, flags: int = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH,
                  ) -> None:
        """An honest handshake: structured replies, no metadata context, NBD_OPT_GO."""
        self.greet()
        while True:
            option, _data = self.option()
            if option == OPT_GO:
                self.reply(option, REP_INFO, struct.pack(">HQH", 0, size, flags))
                self.reply(option, REP_ACK)
                return
            if option in (OPT_STRUCTURED_REPLY, OPT_SET_META_CONTEXT):
                self.reply(option, REP_ACK)
            else:
                self.reply(option, REP_ERR_UNSUP)

    # -- transmission --------------------------------------------------------------------------
    def request(self) -> tuple[int, int, int, int]:
        """(type, cookie, offset, length) of the next request (no write payloads here)."""
        magic, _flags, typ, cookie, offset, length = struct.unpack(
            ">IHHQQI", self.recv_exact(28))
        assert magic == REQUEST_MAGIC, hex(magic)
        return typ, cookie, offset, length

    def data_chunk(self, cookie: int, offset: int, data: bytes, flags: int = 0) -> None:
        self.send(struct.pack(">IHHQIQ", STRUCTURED_MAGIC, flags, CHUNK_DATA, cookie,
                              8 + len(data), offset) + data)

    def hole_chunk(self, cookie: int, offset: int, size: int, flags: int = 0) -> None:
        self.send(struct.pack(">IHHQIQI", STRUCTURED_MAGIC, flags, CHUNK_HOLE, cookie, 12,
                              offset, size))

    def none_chunk(self, cookie: int) -> None:
        self.send(struct.pack(">IHHQI", STRUCTURED_MAGIC, DONE, CHUNK_NONE, cookie, 0))


Script = Callable[[Conn], None]


class HostileServer:
    """Serves ``script`` on a Unix socket at ``path`` until :meth:`close`.

    ``sent`` counts the bytes the scripts managed to send; ``failures`` keeps what a
    script raised other than the client hanging up (a test asserts it is empty).
    """

    def __init__(self, path: Path, script: Script) -> None:
        self.path = path
        self.script = script
        self.sent = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(8)  # ready from here: a connect succeeds
        self._listener.settimeout(0.05)
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def uri(self, export: str = "") -> str:
        return f"nbd+unix:///{export}?socket={self.path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            self._conns.append(sock)
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        with sock:
            try:
                self.script(Conn(sock, self))
            except (EOFError, BrokenPipeError, ConnectionResetError):
                pass  # the client hung up: what a hostile peer expects to happen
            except BaseException as exc:  # surfaced by the test through ``failures``
                self.failures.append(exc)

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self._listener.close()
        for sock in self._conns:
            with contextlib.suppress(OSError):  # already closed
                sock.shutdown(socket.SHUT_RDWR)  # ends a script still waiting on the client
        for thread in self._threads:
            thread.join(5)
