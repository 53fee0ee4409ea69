"""A JSON-RPC client for pybdev and SPDK targets (standard library only).

Used by ``scripts/rpc.py`` and the tests. It speaks the transport as SPDK's Python client
does (``python/spdk/rpc/client.py``): one connection, ids counting up from 1, requests
sent as indented JSON with no newline, responses read until one complete JSON value has
arrived. Addresses: a Unix socket path, an IP address with a port, or an ``http(s)://`` URL (see
:mod:`pybdev.rpc.http_client` where present).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from typing import Any

DEFAULT_ADDR = "/var/tmp/spdk.sock"
DEFAULT_PORT = 5260
DEFAULT_TIMEOUT = 60.0


class JsonRpcException(Exception):
    """A failed call; ``message`` is what the CLI prints."""

    def __init__(self, message: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error

    @property
    def code(self) -> int | None:
        return None if self.error is None else self.error.get("code")


class Transport:
    """A byte stream to the target."""

    def send(self, data: bytes) -> None:
        raise NotImplementedError

    def recv(self) -> bytes:
        """Some bytes; b"" at end of stream."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SocketTransport(Transport):
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


def open_transport(addr: str, port: int, timeout: float, retries: int,
                   **http_options: Any) -> Transport:
    if addr.startswith(("http://", "https://")):
        from pybdev.rpc.http_client import HttpTransport

        for attempt in range(retries + 1):
            try:
                return HttpTransport(addr, timeout=timeout, **http_options)
            except JsonRpcException:
                if attempt == retries:
                    raise
                time.sleep(0.2)
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        family, target = socket.AF_UNIX, addr
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        target = (addr, port)  # type: ignore[assignment]
    for attempt in range(retries + 1):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(target)
            return SocketTransport(sock)
        except OSError as e:
            sock.close()
            if attempt == retries:
                raise JsonRpcException(f"Error while connecting to {addr}\nError details: {e}") \
                    from None
            time.sleep(0.2)
    raise AssertionError("unreachable")


class RpcClient:
    """Calls methods over one connection; raises :class:`JsonRpcException` on errors."""

    def __init__(self, addr: str = DEFAULT_ADDR, port: int = DEFAULT_PORT,
                 timeout: float | None = None, conn_retries: int = 0,
                 **http_options: Any) -> None:
        self.addr = addr
        self.timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        self.transport = open_transport(addr, port, self.timeout, conn_retries, **http_options)
        self._next_id = 0
        self._buf = ""
        self._decoder = json.JSONDecoder()

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        req: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": self._next_id}
        if params:
            req["params"] = params
        return req

    def send_raw(self, payload: Any) -> None:
        self.transport.send(json.dumps(payload, indent=2).encode())

    def recv_value(self) -> Any:
        """The next complete JSON value from the target (None at end of stream)."""
        deadline = time.monotonic() + self.timeout
        while True:
            text = self._buf.lstrip()
            if text:
                try:
                    value, end = self._decoder.raw_decode(text)
                except json.JSONDecodeError:
                    pass
                else:
                    self._buf = text[end:]
                    return value
            if time.monotonic() > deadline:
                raise JsonRpcException("Timeout while waiting for response:\n" + self._buf)
            try:
                data = self.transport.recv()
            except TimeoutError:
                raise JsonRpcException("Timeout while waiting for response:\n" + self._buf) \
                    from None
            except ConnectionError as e:
                raise JsonRpcException(f"Connection to the target failed: {e}") from None
            if not data:
                return None
            self._buf += data.decode("utf-8", errors="replace")

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        req = self.request(method, params)
        self.send_raw(req)
        response = self.recv_value()
        if response is None:
            if method == "spdk_kill_instance":
                return {}
            raise JsonRpcException("Connection closed with partial response:\n" + self._buf)
        if "error" in response:
            shown = dict(params)
            shown.update(method=method, req_id=req["id"])
            raise JsonRpcException(
                "request:\n" + json.dumps(shown, indent=2) + "\nGot JSON-RPC error response\n"
                "response:\n" + json.dumps(response["error"], indent=2),
                response["error"],
            )
        return response.get("result")

    def call_batch(self, calls: list[tuple[str, dict[str, Any] | None]]) -> list[Any]:
        """Send one JSON-RPC batch; answers in completion order (results and errors)."""
        reqs = [self.request(m, {k: v for k, v in (p or {}).items() if v is not None})
                for m, p in calls]
        self.send_raw(reqs)
        response = self.recv_value()
        if not isinstance(response, list):
            raise JsonRpcException(f"Batch response is not an array: {response!r}")
        return response
