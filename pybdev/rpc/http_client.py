"""HTTP(S) transport for :class:`pybdev.rpc.client.RpcClient` (standard library only).

``scripts/rpc.py -s http://host:port`` (or ``https://``) lands here through
:func:`pybdev.rpc.client.open_transport`. Each :meth:`HttpTransport.send` is one POST on a
kept-alive connection and the following :meth:`~HttpTransport.recv` returns its body, so
RpcClient's stream reader works unchanged. Secrets come from files or the environment
(``PYBDEV_RPC_PASSWORD``, ``PYBDEV_RPC_TOKEN``), never from the command line, which other
users can read in ``ps``.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import time
import urllib.parse

from pybdev.rpc.client import JsonRpcException, Transport

PASSWORD_ENV = "PYBDEV_RPC_PASSWORD"
TOKEN_ENV = "PYBDEV_RPC_TOKEN"
# The server closes a connection that waits this long for a request head (its
# --http-header-timeout, default 10 s, can be lower): a connection idle longer is opened
# again rather than reused and found closed after the request went out.
IDLE_RECONNECT = 1.0


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise JsonRpcException(f"Cannot read the {what} file {path}: {e.strerror}") from None
    # A trailing line end comes from `echo` or an editor, not from the secret.
    return text.rstrip("\r\n")


class HttpTransport(Transport):
    """POSTs each request to ``url``; :meth:`recv` returns the response body once."""

    def __init__(self, url: str, timeout: float, user: str | None = None,
                 password_file: str | None = None, token_file: str | None = None,
                 cacert: str | None = None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.username is not None or parts.password is not None:
            raise JsonRpcException(
                "Put no credentials in the URL: use -u USER with --password-file FILE "
                f"(or {PASSWORD_ENV}), or --token-file FILE (or {TOKEN_ENV})"
            )
        if not parts.hostname:
            raise JsonRpcException(f"No host in the URL {url}")
        self.url = url
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self.headers.update(self._auth_header(user, password_file, token_file))
        try:
            port = parts.port
        except ValueError as e:
            raise JsonRpcException(f"Bad port in the URL {url}: {e}") from None
        if parts.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as e:
                raise JsonRpcException(f"Cannot load the CA certificate {cacert}: {e}") \
                    from None
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, port, timeout=timeout, context=context)
        else:
            self.conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        # Connect now, so a dead target is reported as a connection error, as for sockets.
        try:
            self.conn.connect()
        except ssl.SSLError as e:
            self.conn.close()
            raise JsonRpcException(f"TLS handshake with {url} failed: {e}") from None
        except OSError as e:
            self.conn.close()
            raise JsonRpcException(f"Error while connecting to {url}\nError details: {e}") \
                from None
        self._sent = False
        self._closed = False
        self._idle_since = time.monotonic()

    @staticmethod
    def _auth_header(user: str | None, password_file: str | None,
                     token_file: str | None) -> dict[str, str]:
        if user is not None:
            if password_file is not None:
                password = _read_secret(password_file, "password")
            elif PASSWORD_ENV in os.environ:
                password = os.environ[PASSWORD_ENV]
            else:
                raise JsonRpcException(
                    f"-u {user} needs a password: --password-file FILE or {PASSWORD_ENV}"
                )
            basic = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            return {"Authorization": f"Basic {basic}"}
        if token_file is not None:
            token = _read_secret(token_file, "token")
        elif os.environ.get(TOKEN_ENV):
            token = os.environ[TOKEN_ENV]
        else:
            return {}
        return {"Authorization": f"Bearer {token}"}

    def send(self, data: bytes) -> None:
        if self._sent:
            raise JsonRpcException("HTTP transport: a response is still unread")
        if time.monotonic() - self._idle_since > IDLE_RECONNECT:
            self.conn.close()  # http.client connects again for the request
        try:
            self.conn.request("POST", self.path, body=data, headers=self.headers)
        except OSError as e:
            raise JsonRpcException(f"Error while sending to {self.url}\nError details: {e}") \
                from None
        self._sent = True

    def recv(self) -> bytes:
        if not self._sent:
            return b""  # one body per request: after it, the "stream" has ended
        self._sent = False
        try:
            response = self.conn.getresponse()
            body = response.read()
        except http.client.HTTPException as e:
            raise ConnectionError(f"bad HTTP response: {e!r}") from None
        finally:
            self._idle_since = time.monotonic()
        status = response.status
        if status in (200, 204):
            return body
        if status == 400 and response.getheader("Content-Type", "").startswith(
                "application/json"):
            return body  # the JSON-RPC parse error, for RpcClient to report
        if status == 401:
            raise JsonRpcException(
                f"HTTP 401 from {self.url}: wrong or missing credentials (use -u USER with "
                f"--password-file or {PASSWORD_ENV}, or --token-file or {TOKEN_ENV})"
            )
        text = body.decode("utf-8", "replace").strip()
        raise JsonRpcException(f"HTTP {status} {response.reason} from {self.url}"
                               + (f": {text}" if text else ""))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.conn.close()


__all__ = ["HttpTransport"]
