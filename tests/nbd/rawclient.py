"""A small blocking NBD client built from pybdev.proto.nbd, for protocol-level tests.

Real clients (libnbd, QEMU) refuse to send what the protocol forbids; this one sends
anything, so the server's answers to bad requests can be checked byte by byte.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from pybdev.proto import nbd


def connect_socket(address: str | tuple[str, int], timeout: float = 10) -> socket.socket:
    if isinstance(address, tuple):
        sock = socket.create_connection(address, timeout=timeout)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address)
    return sock


class RawClient:
    """Handshake with ``ClientHandshake``, then requests and replies by cookie."""

    def __init__(self, address: str | tuple[str, int], name: str = "", *,
                 structured: bool = True, meta: bool = True, timeout: float = 10) -> None:
        self.sock = connect_socket(address, timeout)
        hs = nbd.ClientHandshake(name, structured_replies=structured,
                                 meta_contexts=[nbd.BASE_ALLOCATION] if meta else [])
        event = None
        while event is None:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection during the handshake")
            event = hs.receive_data(data)
            out = hs.data_to_send()
            if out:
                self.sock.sendall(out)
        if not isinstance(event, nbd.ClientReady):
            raise ConnectionError(f"handshake failed: {event}")
        self.ready = event
        self.inflight: dict[int, tuple[int, int, int]] = {}
        self.parser = nbd.ReplyParser(self.inflight.get, structured=event.structured_replies)
        self.buf = bytearray(event.trailing)
        self.cookie = 0
        self.results: dict[int, dict[str, Any]] = {}

    def send(self, typ: int, offset: int = 0, length: int = 0, flags: int = 0,
             payload: bytes | None = None, expect_reply: bool = True) -> int:
        self.cookie += 1
        if expect_reply:
            self.inflight[self.cookie] = (typ, offset, length)
            self.results[self.cookie] = {"error": 0, "data": bytearray(length)
                                         if typ == nbd.NBD_CMD_READ else None,
                                         "extents": None, "chunks": 0}
        self.sock.sendall(nbd.encode_request(typ, self.cookie, offset, length, flags)
                          + (payload or b""))
        return self.cookie

    def pump(self) -> list[int]:
        """Receive until at least one request completed; the cookies completed."""
        done: list[int] = []
        while not done:
            replies, pos, _ = self.parser.parse(self.buf)
            r: Any = None
            for r in replies:
                res = self.results[r.cookie]
                res["chunks"] += 1
                _typ, offset, _length = self.inflight[r.cookie]
                if isinstance(r, nbd.SimpleReply):
                    res["error"] = r.error
                    if r.data is not None:
                        res["data"][:] = r.data
                elif isinstance(r, nbd.DataChunk):
                    at = r.offset - offset
                    res["data"][at:at + len(r.data)] = r.data
                elif isinstance(r, nbd.ErrorChunk):
                    res["error"] = r.error
                    res["message"] = r.message
                elif isinstance(r, nbd.BlockStatusChunk):
                    res["extents"] = r.extents
                    res["context"] = r.context_id
                if r.done:
                    del self.inflight[r.cookie]
                    done.append(r.cookie)
            replies = r = None  # drop the views into buf before resizing it
            del self.buf[:pos]
            if done:
                break
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buf += data
        return done

    def wait(self, cookie: int) -> dict[str, Any]:
        while cookie in self.inflight:
            self.pump()
        return self.results.pop(cookie)

    def call(self, typ: int, offset: int = 0, length: int = 0, flags: int = 0,
             payload: bytes | None = None) -> dict[str, Any]:
        return self.wait(self.send(typ, offset, length, flags, payload))

    def read(self, offset: int, length: int) -> bytes:
        res = self.call(nbd.NBD_CMD_READ, offset, length)
        assert res["error"] == 0, res
        return bytes(res["data"])

    def write(self, offset: int, data: bytes, flags: int = 0) -> None:
        res = self.call(nbd.NBD_CMD_WRITE, offset, len(data), flags, data)
        assert res["error"] == 0, res

    def disconnect(self) -> None:
        self.send(nbd.NBD_CMD_DISC, expect_reply=False)
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def wait_closed(sock: socket.socket, timeout: float = 10) -> bytes:
    """Read until EOF; fails the test if the peer neither closes nor answers in time."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(got)
        if not data:
            return bytes(got)
        got += data
    raise AssertionError("the server neither closed the connection nor went quiet")
