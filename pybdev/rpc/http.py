"""HTTP JSON-RPC listener (aiohttp), served next to the Unix socket by the same Dispatcher.

Orchestration tools drive SPDK through ``scripts/rpc_http_proxy.py``; pybdev
serves HTTP itself instead, so a request over HTTP and the same request over the socket get
byte-identical JSON-RPC answers. What a client written for SPDK's proxy relies on is kept:
any path, ``POST`` with a request or batch, HTTP Basic auth, HTTP 200 even for a JSON-RPC
error. Where the proxy misbehaves, this does what HTTP expects instead:

==========================================  ===========================================
request                                     answer
==========================================  ===========================================
POST, request or batch with a response      200, ``application/json``, the exact bytes
                                            the socket would send
POST, notification (or batch of them)       204, no body
POST, body not JSON (or nested too deep)    400, the JSON-RPC -32700 response
POST, body over 256 KiB (the socket's cap)  413
POST without ``Content-Type:                415
application/json``
``Host`` that is not this listener          421
``Origin`` of another site                  403
more than ``--http-max-connections``        503, then the connection closes
missing or wrong credentials                401, ``WWW-Authenticate: Basic realm="pybdev"``
GET/HEAD /health (never authenticated)      200, ``{"status":"ok","state":"RUNTIME"}``
GET/HEAD /schema                            200, the OpenRPC description of the methods
GET /metrics                                200, Prometheus text format (pybdev.metrics)
GET /events                                 200, server-sent events (pybdev.events)
any other verb or GET path                  405 with ``Allow``
==========================================  ===========================================

Security model: loopback and ``unix:`` sites may run without authentication (the socket
file is mode 0600, like the RPC socket); any other address refuses to start unless Basic
auth or a bearer token is configured. Secrets come from files or the environment, never
from the command line, are compared in constant time and are never logged. A web page in
a browser must not be able to drive the target (docs/http.md): a POST must say
``Content-Type: application/json`` (which a cross-origin page cannot send without a CORS
preflight, and preflights are refused), an ``Origin`` header must name this very server,
and without authentication the ``Host`` header must be an IP address, ``localhost``, a name
given with ``--http`` or ``--http-allowed-host`` (DNS rebinding points a name of the
attacker's at 127.0.0.1).
Slow clients are bounded: the request head must arrive within ``--http-header-timeout``
seconds and the body within ``--http-body-timeout``, and at most
``--http-max-connections`` connections are served at once.

aiohttp is imported only when ``--http`` is given, so targets without HTTP start faster.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import errno
import hmac
import logging
import os
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pybdev.events import HEARTBEAT, WRITE_TIMEOUT, EventHub, lost_marker
from pybdev.listener import (
    Identity,
    ListenError,
    listen_tcp,
    listen_unix,
    unix_identity,
    unlink_unix,
)
from pybdev.netaddr import bind_address, is_ip_literal, is_loopback_ip
from pybdev.peerwarn import WARNINGS, quote
from pybdev.rpc import audit
from pybdev.rpc.dispatcher import Dispatcher, ParseError, encode
from pybdev.rpc.errors import PARSE_ERROR, RpcError
from pybdev.rpc.framing import MAX_REQUEST_BYTES, FramingError, JsonStream
from pybdev.rpc.registry import Registry, State
from pybdev.rpc.schema import openrpc_document

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("pybdev.rpc.http")

PASSWORD_ENV = "PYBDEV_HTTP_PASSWORD"
TOKEN_ENV = "PYBDEV_HTTP_TOKEN"
REALM = "pybdev"
LISTEN_BACKLOG = 512
# In-flight requests get this long to finish at shutdown; a request still waiting for
# the app to serve (start-up failed) must not hold the exit up for aiohttp's default 60 s.
SHUTDOWN_TIMEOUT = 2.0
# Slow-client limits (docs/guide.md, "Limits"), each with an option.
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
MAX_CONNECTIONS = 64  # as SPDK's RPC socket, SPDK_JSONRPC_MAX_CONNS
_BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                  b"Content-Type: text/plain\r\nContent-Length: 35\r\n\r\n"
                  b"too many connections, retry later\n")
PARSE_ERROR_BODY = (
    encode({"jsonrpc": "2.0", "id": None, "error": RpcError(PARSE_ERROR).to_json()}) + "\n"
).encode()


class HttpConfigError(Exception):
    """The ``--http*`` options cannot be served as given; start-up stops with this message."""


def add_http_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "HTTP JSON-RPC", "off unless --http is given; see docs/http.md for safe use"
    )
    g.add_argument("--http", action="append", default=[], metavar="HOST:PORT|unix:PATH",
                   help="also serve JSON-RPC over HTTP here (repeatable); an address that "
                        "is not loopback needs --http-user or --http-token-file")
    g.add_argument("--http-user", metavar="USER",
                   help="require HTTP Basic auth as USER; the password comes from "
                        f"--http-password-file or ${PASSWORD_ENV}")
    g.add_argument("--http-password-file", metavar="FILE",
                   help="file holding the Basic auth password (one line)")
    g.add_argument("--http-token-file", metavar="FILE",
                   help="accept 'Authorization: Bearer TOKEN' with TOKEN read from FILE "
                        f"(or ${TOKEN_ENV})")
    g.add_argument("--http-tls-cert", metavar="FILE",
                   help="serve HTTPS with this PEM certificate (chain)")
    g.add_argument("--http-tls-key", metavar="FILE",
                   help="the unencrypted PEM private key of --http-tls-cert")
    g.add_argument("--http-allowed-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header is NAME (repeatable); IP "
                        "addresses, localhost and the names given to --http always are")
    g.add_argument("--http-header-timeout", type=_positive_float, default=HEADER_TIMEOUT,
                   metavar="SECONDS",
                   help="close a connection whose request head has not arrived within "
                        f"this time, idle keep-alive ones too (default {HEADER_TIMEOUT:g})")
    g.add_argument("--http-body-timeout", type=_positive_float, default=BODY_TIMEOUT,
                   metavar="SECONDS",
                   help=f"answer 408 when a request body takes longer (default {BODY_TIMEOUT:g})")
    g.add_argument("--http-max-connections", type=_positive_int, default=MAX_CONNECTIONS,
                   metavar="N",
                   help="serve at most N connections at once; more get 503 "
                        f"(default {MAX_CONNECTIONS})")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One ``--http`` value: a TCP host and port, or a Unix socket path."""

    host: str = ""
    port: int = 0
    path: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    if text.startswith("unix:"):
        if not text[5:]:
            raise HttpConfigError("--http unix:PATH needs a path")
        return Endpoint(path=text[5:])
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise HttpConfigError(f"--http {text}: expected HOST:PORT, [IPV6]:PORT or unix:PATH")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise HttpConfigError(f"--http {text}: put an IPv6 address in brackets, [::1]:PORT")
    if not host:
        # An empty host would mean every interface; make that a visible choice.
        raise HttpConfigError(
            f"--http {text}: give a host (127.0.0.1 for this machine only, 0.0.0.0 or [::] "
            "for every interface)"
        )
    # An IPv4-mapped address is served as the IPv4 address it maps (pybdev.netaddr).
    return Endpoint(host=bind_address(host), port=int(port_text))


async def is_loopback(endpoint: Endpoint) -> bool:
    """True when every address the endpoint binds is a loopback address."""
    if endpoint.is_unix:
        return True
    try:
        return is_loopback_ip(endpoint.host)
    except ValueError:
        pass
    # A name binds every address it resolves to (as aiohttp does); all must be loopback.
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise HttpConfigError(f"--http {endpoint}: cannot resolve {endpoint.host}: {e}") from None
    return all(is_loopback_ip(str(info[4][0])) for info in infos)


def read_secret(path: str, what: str) -> bytes:
    try:
        st = os.stat(path)
        data = Path(path).read_bytes()
    except OSError as e:
        raise HttpConfigError(f"cannot read the {what} file {path}: {e.strerror}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s file %s is readable by other users; chmod 600 it", what, path)
    # `echo secret > file` and editors add a line end that is not part of the secret.
    secret = data.rstrip(b"\r\n")
    if not secret:
        raise HttpConfigError(f"the {what} file {path} is empty")
    return secret


class Credentials:
    """What a request must present; repr never shows the secrets."""

    def __init__(self, user: str | None = None, password: bytes | None = None,
                 token: bytes | None = None) -> None:
        self.user = user.encode() if user is not None else None
        self._password = password or b""
        self._token = token

    @property
    def basic(self) -> bool:
        return self.user is not None

    @property
    def bearer(self) -> bool:
        return self._token is not None

    @property
    def configured(self) -> bool:
        return self.basic or self.bearer

    def __repr__(self) -> str:
        return f"Credentials(basic={self.basic}, bearer={self.bearer})"

    def check(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header value is acceptable."""
        if not self.configured:
            return True
        if authorization is None:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        try:
            raw = value.strip().encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        if scheme == "basic" and self.user is not None:
            try:
                decoded = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                return False
            user, sep, password = decoded.partition(b":")
            # Both parts are compared every time, so timing tells nothing about which failed.
            user_ok = hmac.compare_digest(user, self.user)
            password_ok = hmac.compare_digest(password, self._password)
            return bool(sep) and user_ok and password_ok
        if scheme == "bearer" and self._token is not None:
            return hmac.compare_digest(raw, self._token)
        return False

    def who(self, authorization: str | None) -> str:
        """The user an accepted ``Authorization`` header names: the Basic user name,
        ``bearer`` for a token, ``-`` when no authentication is configured."""
        if not self.configured or authorization is None:
            return "-"
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            return "bearer"
        try:
            user = base64.b64decode(value.strip(), validate=True).partition(b":")[0]
        except (binascii.Error, ValueError):
            return "?"
        return quote(user.decode("utf-8", "replace"), 32)

    def challenges(self) -> list[str]:
        out = []
        if self.basic:
            out.append(f'Basic realm="{REALM}"')
        if self.bearer:
            out.append(f'Bearer realm="{REALM}"')
        return out


def load_credentials(options: argparse.Namespace, environ: Mapping[str, str]) -> Credentials:
    user: str | None = options.http_user
    password: bytes | None = None
    if options.http_password_file:
        if user is None:
            raise HttpConfigError("--http-password-file needs --http-user")
        password = read_secret(options.http_password_file, "HTTP password")
    elif environ.get(PASSWORD_ENV):
        if user is None:
            log.warning("%s is set but --http-user is not: Basic auth stays off", PASSWORD_ENV)
        else:
            password = environ[PASSWORD_ENV].encode()
    if user is not None:
        if not user or ":" in user:
            raise HttpConfigError("--http-user must be non-empty and must not contain ':'")
        if password is None:
            raise HttpConfigError(
                f"--http-user needs a password: --http-password-file FILE or ${PASSWORD_ENV} "
                "(never on the command line)"
            )
    token: bytes | None = None
    if options.http_token_file:
        token = read_secret(options.http_token_file, "HTTP token")
    elif environ.get(TOKEN_ENV):
        token = environ[TOKEN_ENV].encode()
    if token is not None and (b" " in token or b"\t" in token):
        raise HttpConfigError("the HTTP bearer token must not contain spaces")
    return Credentials(user, password, token)


def _encrypted_key() -> NoReturn:
    # Without this, OpenSSL would prompt on the terminal for a passphrase.
    raise HttpConfigError("the TLS key is encrypted; give an unencrypted key file (mode 0600)")


def load_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise HttpConfigError("--http-tls-cert and --http-tls-key go together")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key, password=_encrypted_key)
    except OSError as e:
        raise HttpConfigError(f"cannot read the TLS certificate or key: {e.strerror or e}") \
            from None
    except ssl.SSLError as e:
        raise HttpConfigError(f"cannot load TLS certificate {cert} with key {key}: {e}") \
            from None
    return ctx


async def configure_http(
    options: argparse.Namespace,
    dispatcher: Dispatcher,
    ready: asyncio.Event | None = None,
    environ: Mapping[str, str] | None = None,
    metrics: Callable[[], bytes] | None = None,
    events: EventHub | None = None,
) -> HttpRpcServer | None:
    """Check the ``--http*`` options and build the server, not yet listening.

    None without ``--http``. Raises :class:`HttpConfigError` before anything is bound, so a
    refused configuration never exposes the target even for a moment.
    """
    environ = os.environ if environ is None else environ
    if not options.http:
        return None
    endpoints = [parse_endpoint(text) for text in options.http]
    credentials = load_credentials(options, environ)
    ssl_context = load_tls(options.http_tls_cert, options.http_tls_key)
    public = [ep for ep in endpoints if not await is_loopback(ep)]
    if public and not credentials.configured:
        raise HttpConfigError(
            f"refusing to serve HTTP JSON-RPC on {public[0]} without authentication: it is "
            "not a loopback address. Configure --http-user with --http-password-file (or "
            f"${PASSWORD_ENV}), or --http-token-file (or ${TOKEN_ENV}), or bind 127.0.0.1"
        )
    if public and ssl_context is None:
        log.warning("HTTP JSON-RPC on %s without TLS: credentials and data travel in clear "
                    "text; use --http-tls-cert and --http-tls-key", public[0])
    limits = HttpLimits(
        header_timeout=options.http_header_timeout,
        body_timeout=options.http_body_timeout,
        max_connections=options.http_max_connections,
    )
    return HttpRpcServer(dispatcher, endpoints, credentials, ssl_context, ready, limits,
                         allowed_hosts=options.http_allowed_host, metrics=metrics,
                         events=events)


async def configure_metrics(
    options: argparse.Namespace, dispatcher: Dispatcher, metrics: Callable[[], bytes]
) -> HttpRpcServer | None:
    """The ``--metrics-addr`` listener: /metrics and /health only, no RPC, no auth."""
    text = getattr(options, "metrics_addr", None)
    if not text:
        return None
    try:
        endpoint = parse_endpoint(text)
    except HttpConfigError as e:
        raise HttpConfigError(str(e).replace("--http", "--metrics-addr", 1)) from None
    if not options.metrics_allow_remote and not await is_loopback(endpoint):
        raise HttpConfigError(
            f"--metrics-addr {endpoint} is not a loopback address; the metrics name bdevs "
            "and exports and are served without authentication: add --metrics-allow-remote "
            "to serve them there")
    # The Host check guards it as any listener without authentication (DNS rebinding); a
    # scraper that addresses it by a name needs --http-allowed-host NAME.
    return HttpRpcServer(dispatcher, [endpoint], Credentials(), metrics=metrics, rpc=False,
                         allowed_hosts=[endpoint.host, *options.http_allowed_host])


# --- schema --------------------------------------------------------------------------------


def schema_document(registry: Registry) -> bytes:
    """The OpenRPC description of the methods, as in ``rpc_schemas/`` (same generator)."""
    return (encode(openrpc_document(registry)) + "\n").encode()


# --- server --------------------------------------------------------------------------------


def frame_body(body: bytes) -> bytes:
    """The one JSON value of a body, with the socket's limits (raises ParseError).

    The socket's framer enforces nesting depth 64, which a plain parse would not, so the
    body goes through it too; anything after the value makes the body invalid JSON.
    """
    stream = JsonStream()
    # The newline ends a bare number at the end of the body, which the framer holds back.
    stream.feed(body + b"\n")
    try:
        value = stream.next_value()
        trailing = stream.next_value() if value is not None else None
    except FramingError as e:
        raise ParseError(str(e)) from None
    if value is None or trailing is not None or stream.buffered:
        raise ParseError("the body is not exactly one JSON value")
    return value


@dataclass(frozen=True)
class HttpLimits:
    """How long a client may take and how many may be connected (docs/guide.md, Limits)."""

    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: int = MAX_CONNECTIONS


def _peer_key(peer: object) -> str:
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unix"


def _describe_peer(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "a unix socket client"


def split_host(host: str) -> str:
    """The name or address of a ``Host`` header value, without port or IPv6 brackets."""
    host = host.strip()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class HttpRpcServer:
    """One aiohttp runner with a site per endpoint, answering through ``dispatcher``."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        endpoints: list[Endpoint],
        credentials: Credentials,
        ssl_context: ssl.SSLContext | None = None,
        ready: asyncio.Event | None = None,
        limits: HttpLimits | None = None,
        allowed_hosts: list[str] | None = None,
        metrics: Callable[[], bytes] | None = None,
        events: EventHub | None = None,
        rpc: bool = True,
    ) -> None:
        #: Renders GET /metrics (pybdev.metrics), the hub of GET /events; ``rpc=False``
        #: serves /metrics and /health only (--metrics-addr).
        self.metrics = metrics
        self.events = events
        self.rpc = rpc
        self.limits = limits or HttpLimits()
        # Host names a request may be addressed to; any IP address is fine too, since DNS
        # rebinding needs a name of the attacker's.
        self.allowed_hosts = {"localhost"} | {
            name.lower().rstrip(".") for name in (allowed_hosts or [])
        } | {ep.host.lower().rstrip(".") for ep in endpoints if not ep.is_unix}
        self.dispatcher = dispatcher
        self.endpoints = endpoints
        self.credentials = credentials
        self.ssl_context = ssl_context
        # Requests wait for this, as on SPDK's paused socket while subsystems initialise.
        self.ready = ready
        self.urls: list[str] = []
        self._runner: web.AppRunner | None = None
        self._unix_paths: list[tuple[str, Identity | None]] = []
        self._schema: bytes | None = None

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._handle, expect_handler=self._expect)
        # The access log shows request lines only (never headers), and only with -L rpc.
        access_log = logging.getLogger("pybdev.rpc.http.access")
        runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
            access_log=access_log if log.isEnabledFor(logging.DEBUG) else None,
            # aiohttp arms this from the connection's start (and again after each answer)
            # and only a complete request head disarms it: it is the header-read timeout.
            keepalive_timeout=self.limits.header_timeout,
        )
        await runner.setup()
        self._runner = runner
        self._limit_connections(runner)
        try:
            for ep in self.endpoints:
                await self._start_site(runner, ep)
        except BaseException:
            await self.stop()
            raise
        auth = ", ".join(
            name for name, on in (("Basic auth", self.credentials.basic),
                                  ("bearer token", self.credentials.bearer)) if on
        ) or "no authentication"
        for url in self.urls:
            if self.rpc:
                log.info("HTTP JSON-RPC listening on %s (%s)", url, auth)
            else:
                log.info("metrics listening on %s/metrics", url)

    async def _start_site(self, runner: web.AppRunner, ep: Endpoint) -> None:
        from aiohttp import web

        before = set(map(str, runner.addresses))
        try:
            if ep.path is not None:
                # Mode 0600 like the RPC socket: file permissions are its access check.
                sock = listen_unix(ep.path, mode=0o600, backlog=LISTEN_BACKLOG)
                self._unix_paths.append((ep.path, unix_identity(ep.path)))
                socks = [sock]
            else:
                socks = await listen_tcp([ep.host], ep.port, backlog=LISTEN_BACKLOG)
        except ListenError as e:
            hint = ("; stop it or choose another address with --http"
                    if e.errno == errno.EADDRINUSE else "")
            raise HttpConfigError(f"cannot serve HTTP on {ep}: {e}{hint}") from None
        ssl_context = None if ep.path is not None else self.ssl_context
        try:
            for sock in socks:
                site = web.SockSite(runner, sock, ssl_context=ssl_context,
                                    backlog=LISTEN_BACKLOG)
                await site.start()
        except OSError as e:
            for sock in socks:
                sock.close()
            raise HttpConfigError(
                f"cannot serve HTTP on {ep}: {e.strerror or e}"
            ) from None
        if ep.path is not None:
            self.urls.append(f"http+unix://{ep.path}")
            return
        scheme = "https" if self.ssl_context is not None else "http"
        for addr in runner.addresses:
            if str(addr) in before:
                continue
            host, port = addr[0], addr[1]
            shown = f"[{host}]" if ":" in host else host
            self.urls.append(f"{scheme}://{shown}:{port}")

    def _limit_connections(self, runner: web.AppRunner) -> None:
        """Answer 503 and close connections beyond ``max_connections``.

        aiohttp's Server is the manager each connection reports to; wrapping its
        ``connection_made`` is the one place that sees every new connection first.
        """
        server = runner.server
        assert server is not None
        limit = self.limits.max_connections
        made = server.connection_made

        def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            if len(server.connections) > limit:
                peer = transport.get_extra_info("peername")
                WARNINGS.warn(log, "http_connection_limit", _peer_key(peer),
                              "HTTP: more than %d connections, refusing %s", limit,
                              _describe_peer(peer))
                transport.write(_BUSY_RESPONSE)
                transport.close()

        server.connection_made = connection_made  # type: ignore[method-assign]

    async def stop(self) -> None:
        """Stop every site; in-flight requests get SHUTDOWN_TIMEOUT to finish."""
        runner, self._runner = self._runner, None
        if runner is not None:
            try:
                await runner.cleanup()
            except Exception:
                log.exception("HTTP server cleanup failed")
        for path, identity in self._unix_paths:
            unlink_unix(path, identity)
        self._unix_paths.clear()
        self.urls.clear()

    # --- request handling ------------------------------------------------------------------

    def _state_name(self) -> str:
        return State(self.dispatcher.ctx.state).name or str(int(self.dispatcher.ctx.state))

    def _unauthorized(self, request: web.Request) -> web.Response:
        from aiohttp import web
        from multidict import CIMultiDict

        peer = request.transport.get_extra_info("peername") if request.transport else None
        given = "wrong credentials" if "Authorization" in request.headers else "no credentials"
        WARNINGS.warn(log, "http_auth_failed", _peer_key(peer),
                      "HTTP: authentication failed (%s) from %s: %s %s", given,
                      _describe_peer(peer), request.method, quote(request.path))
        headers: CIMultiDict[str] = CIMultiDict()
        for challenge in self.credentials.challenges():
            headers.add("WWW-Authenticate", challenge)
        return web.Response(status=401, headers=headers, text="authentication required\n")

    @staticmethod
    def _too_large() -> web.Response:
        from aiohttp import web

        return web.Response(status=413,
                            text=f"request body exceeds {MAX_REQUEST_BYTES} bytes\n")

    def _foreign(self, request: web.Request) -> web.Response | None:
        """403/421 for a request a browser made on behalf of another site, else None."""
        from aiohttp import web

        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        on_unix = isinstance(sockname, str | bytes)
        host = request.headers.get("Host")
        # With credentials required, a rebinding page has nothing to send: the check
        # guards the unauthenticated (loopback) case, and names clients use off-host
        # (a DNS name, a TLS certificate's name) keep working without configuration.
        if host is not None and not on_unix and not self.credentials.configured:
            name = split_host(host).lower().rstrip(".")
            if not (is_ip_literal(name) or name in self.allowed_hosts):
                return web.Response(
                    status=421,
                    text=f"this server does not serve host {name!r}; use its IP address, "
                         "localhost, or allow the name with --http-allowed-host\n")
        origin = request.headers.get("Origin")
        if origin is not None:
            scheme = "https" if self.ssl_context is not None and not on_unix else "http"
            if host is None or origin.lower() != f"{scheme}://{host}".lower():
                return web.Response(status=403,
                                    text="cross-origin requests are refused\n")
        return None

    @staticmethod
    def _not_json(request: web.Request) -> web.Response | None:
        from aiohttp import web

        if request.content_type == "application/json":
            return None
        return web.Response(
            status=415, headers={"Accept-Post": "application/json"},
            text="POST JSON-RPC with 'Content-Type: application/json'\n")

    @staticmethod
    def _limit_hit(event: str, peer: object, what: str) -> None:
        WARNINGS.warn(log, event, _peer_key(peer), "HTTP client %s: %s", _describe_peer(peer),
                      what)

    def _caller(self, request: web.Request, peer: object) -> str:
        user = self.credentials.who(request.headers.get("Authorization"))
        if isinstance(peer, tuple):
            return f"http user={user} from {_describe_peer(peer)}"
        sock = request.transport.get_extra_info("socket") if request.transport else None
        return f"http user={user} on a unix socket, {audit.unix_peer(sock)}"

    def _metrics_response(self) -> web.Response:
        from aiohttp import web

        assert self.metrics is not None
        response = web.Response(body=self.metrics())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _event_stream(self, request: web.Request, hub: EventHub) -> web.StreamResponse:
        """Server-sent events from ``Last-Event-ID`` + 1 (or from now) until the client
        goes, the target stops, or the client stops taking data (docs/http.md)."""
        from aiohttp import web

        wanted = {t for t in request.query.get("types", "").split(",") if t} or None
        cursor = hub.next_id
        last = request.headers.get("Last-Event-ID", "")
        if last.isdigit() and len(last) < 20:
            cursor = min(int(last) + 1, hub.next_id)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        hub.subscribers += 1
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await response.write(b": pybdev events\n\n")
            while not hub.closed:
                await hub.wait(cursor, HEARTBEAT)
                lost, events = hub.since(cursor)
                chunks = [lost_marker(lost)] if lost else []
                chunks += [e.sse() for e in events if wanted is None or e.type in wanted]
                if events:
                    cursor = events[-1].id + 1
                elif lost:
                    cursor += lost
                if not chunks:
                    chunks = [b": keep-alive\n\n"]
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(b"".join(chunks))
        except TimeoutError:
            peer = request.transport.get_extra_info("peername") if request.transport else None
            WARNINGS.warn(log, "events_subscriber_stalled", _peer_key(peer),
                          "HTTP /events client %s took no data for %.0f s; dropped",
                          _describe_peer(peer), WRITE_TIMEOUT)
            if request.transport is not None:
                request.transport.close()
        except ConnectionError:
            pass
        finally:
            hub.subscribers -= 1
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: refuse before the client sends a body we would reject."""
        from aiohttp import HttpVersion11, web

        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="unknown Expect header\n")
        refusal = self._foreign(request)
        if refusal is not None:
            return refusal
        if request.method == "POST":
            if not self.credentials.check(request.headers.get("Authorization")):
                return self._unauthorized(request)
            refusal = self._not_json(request)
            if refusal is not None:
                return refusal
            if (request.content_length or 0) > MAX_REQUEST_BYTES:
                return self._too_large()
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim response is not part of the body size
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        refusal = self._foreign(request)
        if refusal is not None:
            return refusal
        is_get = request.method in ("GET", "HEAD")
        if is_get and request.path == "/health":
            # No auth, and only whether the target is up and its state: safe to expose
            # to load balancers and probes.
            body = encode({"status": "ok", "state": self._state_name()}) + "\n"
            return web.Response(body=body.encode(), content_type="application/json")
        if not self.rpc:
            if is_get and request.path == "/metrics" and self.metrics is not None:
                return self._metrics_response()
            return web.Response(status=404, text="this address serves /metrics only\n")
        if not self.credentials.check(request.headers.get("Authorization")):
            return self._unauthorized(request)
        if request.method == "POST":
            return await self._post(request)
        if is_get and request.path == "/metrics" and self.metrics is not None:
            return self._metrics_response()
        if request.method == "GET" and request.path == "/events" and self.events is not None:
            return await self._event_stream(request, self.events)
        if is_get and request.path == "/schema":
            if self._schema is None:
                self._schema = schema_document(self.dispatcher.registry)
            return web.Response(body=self._schema, content_type="application/json")
        allow = "GET, HEAD, POST" if request.path in ("/health", "/schema") else "POST"
        return web.Response(status=405, headers={"Allow": allow},
                            text=f"{request.method} is not allowed here; POST JSON-RPC\n")

    async def _post(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        refusal = self._not_json(request)
        if refusal is not None:
            return refusal
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            self._limit_hit("http_body_too_large", peer, "request body over the limit")
            return self._too_large()
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await request.read()  # chunked bodies are capped by client_max_size
        except web.HTTPRequestEntityTooLarge:
            self._limit_hit("http_body_too_large", peer, "request body over the limit")
            return self._too_large()
        except TimeoutError:
            self._limit_hit("http_body_timeout", peer, "request body slower than "
                            "--http-body-timeout")
            return web.Response(status=408, headers={"Connection": "close"},
                                text="request body too slow\n")
        audit.CALLER.set(self._caller(request, peer))  # this request's task only
        try:
            raw = frame_body(body)
            if self.ready is not None and not self.ready.is_set():
                await self.ready.wait()
            response = await self.dispatcher.handle_raw(raw)
        except ParseError as e:
            # 400, not SPDK proxy's 500: the client sent a broken body, and plain HTTP tools
            # (curl --fail, proxies, monitoring) should see a client error. The body is
            # still the JSON-RPC parse error, so JSON-RPC clients report -32700.
            log.debug("HTTP request body is not JSON: %s", e)
            return web.Response(status=400, body=PARSE_ERROR_BODY,
                                content_type="application/json")
        if response is None:
            return web.Response(status=204)
        return web.Response(body=response, content_type="application/json")


__all__ = [
    "HttpConfigError",
    "HttpRpcServer",
    "add_http_options",
    "configure_http",
    "configure_metrics",
    "schema_document",
]
