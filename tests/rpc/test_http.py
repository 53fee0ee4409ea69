"""HTTP JSON-RPC (pybdev.rpc.http) against a real target, with real HTTP clients.

Targets run as subprocesses on 127.0.0.1 with port 0; the bound URL is read from the log.
Clients: aiohttp's ClientSession, curl, and scripts/rpc.py (pybdev.rpc.http_client).
The non-loopback start with auth runs inside a private network namespace only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings

from pybdev.rpc.dispatcher import Dispatcher
from pybdev.rpc.framing import MAX_REQUEST_BYTES
from pybdev.rpc.http import (
    Credentials,
    Endpoint,
    HttpConfigError,
    HttpRpcServer,
    configure_http,
    parse_endpoint,
)
from pybdev.rpc.registry import BOTH, Registry, RpcTable, State
from tests.conftest import unix_listening
from tests.rpc.hostile import Case, requests

ROOT = Path(__file__).resolve().parents[2]
RPC_PY = ROOT / "scripts" / "rpc.py"
PARSE_ERROR = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}\n'
USER = "admin"
PASSWORD = "s3cret-Pa55word"
TOKEN = "tok-0123456789abcdef"
CURL = shutil.which("curl")
OPENSSL = shutil.which("openssl")
_LISTEN = re.compile(r"HTTP JSON-RPC listening on (\S+)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")
           and not k.startswith(("PYBDEV_HTTP_", "PYBDEV_RPC_"))}
    env["NO_PROXY"] = "*"
    env.update(extra)
    return env


def _health_answered(url: str) -> bool:
    """Whether GET /health is answered: the site serves, not merely logged that it bound."""
    if url.startswith("http+unix://"):
        return unix_listening(url[len("http+unix://"):])
    parts = urllib.parse.urlsplit(url)
    conn_class = (http.client.HTTPSConnection if parts.scheme == "https"
                  else http.client.HTTPConnection)
    kwargs: dict[str, Any] = {}
    if parts.scheme == "https":
        kwargs["context"] = ssl._create_unverified_context()  # only to see it answer
    conn = conn_class(parts.hostname or "", parts.port, timeout=10, **kwargs)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class HttpTarget:
    """``python -m pybdev`` with --http sites; ``urls`` are the bound addresses from its log."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str] | None = None,
                 sites: int = 1, wait_serving: bool = True) -> None:
        self.sock = tmp / "spdk.sock"
        self.log_path = tmp / "target.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pybdev", "-r", str(self.sock), *args],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, env=_env(**(env or {})),
        )
        self.urls = self._wait(sites, wait_serving)
        self.url = self.urls[0]

    def _wait(self, sites: int, wait_serving: bool, timeout: float = 30) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            urls = _LISTEN.findall(text)
            if len(urls) >= sites and (not wait_serving or "serving RPC" in text) \
                    and all(map(_health_answered, urls)):
                return urls
            if self.proc.poll() is not None:
                raise AssertionError(f"target exited {self.proc.returncode}:\n{text}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"target did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpTarget]:
    """Loopback without auth, plus an HTTP site on a Unix socket."""
    tmp = tmp_path_factory.mktemp("plain")
    t = HttpTarget(tmp, "--http", "127.0.0.1:0", "--http", f"unix:{tmp / 'http.sock'}",
                   sites=2)
    t.http_sock = tmp / "http.sock"  # type: ignore[attr-defined]
    yield t
    # Graceful shutdown: clean exit, both sockets removed.
    assert t.stop() == 0, t.log()
    assert not t.sock.exists() and not (tmp / "http.sock").exists()


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("secrets")
    for name, value in (("password", PASSWORD), ("token", TOKEN), ("wrong", "nope")):
        (tmp / name).write_text(value + "\n")
        (tmp / name).chmod(0o600)
    return tmp


@pytest.fixture(scope="module")
def auth(tmp_path_factory: pytest.TempPathFactory, secrets: Path) -> Iterator[HttpTarget]:
    """Basic auth (password file) and a bearer token (environment), with the access log on."""
    t = HttpTarget(tmp_path_factory.mktemp("auth"), "--http", "127.0.0.1:0",
                   "--http-user", USER, "--http-password-file", str(secrets / "password"),
                   "-L", "rpc", env={"PYBDEV_HTTP_TOKEN": TOKEN})
    yield t
    assert t.stop() == 0, t.log()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if OPENSSL is None:
        pytest.skip("openssl is not installed (Debian package openssl)")
    tmp = tmp_path_factory.mktemp("tls")
    key, crt = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=60,
    )
    key.chmod(0o600)
    return crt, key


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory,
        cert: tuple[Path, Path]) -> Iterator[HttpTarget]:
    """HTTPS with a self-signed certificate; Basic auth with the password from the env."""
    crt, key = cert
    t = HttpTarget(tmp_path_factory.mktemp("tlst"), "--http", "127.0.0.1:0",
                   "--http-tls-cert", str(crt), "--http-tls-key", str(key),
                   "--http-user", USER, env={"PYBDEV_HTTP_PASSWORD": PASSWORD})
    yield t
    assert t.stop() == 0, t.log()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def req(method: str, req_id: Any = 1, params: Any = None) -> bytes:
    r: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if req_id is not None:
        r["id"] = req_id
    if params is not None:
        r["params"] = params
    return json.dumps(r).encode()


async def post(s: aiohttp.ClientSession, url: str, body: bytes,
               **kw: Any) -> tuple[int, bytes, aiohttp.ClientResponse]:
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    async with s.post(url, data=body, headers=headers, **kw) as r:
        return r.status, await r.read(), r


def curl(*args: str) -> tuple[int, str]:
    """(HTTP status, body) from curl; fails the test if curl itself failed.

    A request with a body says it is JSON, as the server requires, unless ``args`` set a
    Content-Type.
    """
    if CURL is None:
        pytest.skip("curl is not installed (Debian package curl)")
    sends_body = any(a in ("-d", "--data", "--data-binary") for a in args)
    if sends_body and not any(a.lower().startswith("content-type:") for a in args):
        args = ("-H", "Content-Type: application/json", *args)
    res = subprocess.run([CURL, "-sS", "--noproxy", "*", "-w", "\n%{http_code}", *args],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    body, _, code = res.stdout.rpartition("\n")
    return int(code), body


def rpc_py(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RPC_PY), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=_env(**(env or {})))


# --- requests and answers ------------------------------------------------------------------


async def test_single_call(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    status, body, r = await post(session, plain.url, req("spdk_get_version"))
    assert status == 200
    assert r.headers["Content-Type"] == "application/json"
    assert body.endswith(b"}\n") and body.count(b"\n") == 1
    answer = json.loads(body)
    assert answer["id"] == 1 and answer["result"]["version"].startswith("pybdev")


async def test_any_path_is_jsonrpc(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    for path in ("/", "/jsonrpc", "/a/b?c=d", "/health", "/schema"):
        status, body, _ = await post(session, plain.url + path, req("spdk_get_version", 7))
        assert status == 200, path
        assert json.loads(body)["id"] == 7


async def test_jsonrpc_error_is_http_200(plain: HttpTarget,
                                         session: aiohttp.ClientSession) -> None:
    status, body, _ = await post(session, plain.url, req("no_such_method", "x"))
    assert status == 200
    assert body == (b'{"jsonrpc":"2.0","id":"x",'
                    b'"error":{"code":-32601,"message":"Method not found"}}\n')
    status, body, _ = await post(session, plain.url, b'{"id":1,"method":"spdk_get_version",'
                                                     b'"params":{"x":1}}')
    assert status == 200 and json.loads(body)["error"]["code"] == -32602
    # Not a request object, or an empty batch: -32600, still HTTP 200.
    for bad in (b"1", b'"str"', b"[]", b'{"id":1}'):
        status, body, _ = await post(session, plain.url, bad)
        assert status == 200, bad
        assert json.loads(body)["error"]["code"] == -32600, bad


async def test_batch(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    batch = (b'[{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"},'
             b'{"jsonrpc":"2.0","method":"spdk_get_version"},'
             b'{"jsonrpc":"2.0","id":2,"method":"nope"}, 5]')
    status, body, r = await post(session, plain.url, batch)
    assert status == 200 and r.headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert [e.get("id") for e in answer] == [1, 2, None]
    assert "result" in answer[0]
    assert answer[1]["error"]["code"] == -32601 and answer[2]["error"]["code"] == -32600
    # Only notifications: nothing to answer.
    status, body, _ = await post(session, plain.url,
                                 b'[{"method":"spdk_get_version"},{"method":"rpc_get_methods"}]')
    assert (status, body) == (204, b"")


async def test_notification(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    for note in (req("spdk_get_version", None), b'{"method":"spdk_get_version","id":null}'):
        status, body, r = await post(session, plain.url, note)
        assert (status, body) == (204, b"")
        assert "Content-Type" not in r.headers
    # SPDK sends errors even for notifications, with id null.
    status, body, _ = await post(session, plain.url, req("nope", None))
    assert status == 200
    assert body == (b'{"jsonrpc":"2.0","id":null,'
                    b'"error":{"code":-32601,"message":"Method not found"}}\n')


async def test_parse_error_is_400(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    nested = b"[" * 65 + b"]" * 65  # deeper than SPDK's 64, as on the socket
    for body in (b"nope", b"", b"   ", b'{"id":1,', b'{"id":1} {"id":2}', b"\xff\xfe",
                 b'{"id":NaN,"method":"a"}', nested):
        status, answer, r = await post(session, plain.url, body)
        assert status == 400, body
        assert answer == PARSE_ERROR, body
        assert r.headers["Content-Type"] == "application/json"
    # Nesting at the limit is JSON: a batch whose one element is not a request.
    status, answer, _ = await post(session, plain.url, b"[" * 64 + b"]" * 64)
    assert status == 200 and json.loads(answer)[0]["error"]["code"] == -32600
    # The connection survives a parse error (HTTP framing is intact).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        assert (await post(one, plain.url, b"nope"))[0] == 400
        assert (await post(one, plain.url, req("spdk_get_version")))[0] == 200


async def test_body_size_limit(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    call = req("spdk_get_version")
    exact = call + b" " * (MAX_REQUEST_BYTES - len(call))
    status, body, _ = await post(session, plain.url, exact)
    assert status == 200 and json.loads(body)["id"] == 1
    status, body, _ = await post(session, plain.url, exact + b" ")
    assert status == 413


def test_body_size_limit_chunked_and_expect(plain: HttpTarget, tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(req("spdk_get_version") + b" " * MAX_REQUEST_BYTES)
    # Chunked: no Content-Length, the limit applies while reading.
    code, _ = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}", plain.url)
    assert code == 413
    # Expect: 100-continue gets the 413 before the body is sent.
    code, _ = curl("-H", "Expect: 100-continue", "--data-binary", f"@{big}", plain.url)
    assert code == 413
    small = tmp_path / "small.json"
    small.write_bytes(req("spdk_get_version"))
    code, body = curl("-H", "Expect: 100-continue", "--data-binary", f"@{small}", plain.url)
    assert code == 200 and json.loads(body)["id"] == 1


async def test_other_verbs_405(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    for verb in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        async with session.request(verb, plain.url + "/") as r:
            assert r.status == 405, verb
            assert r.headers["Allow"] == "POST"
    async with session.get(plain.url + "/") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"
    async with session.put(plain.url + "/health") as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, HEAD, POST"


async def test_health(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    async with session.get(plain.url + "/health") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert await r.json() == {"status": "ok", "state": "RUNTIME"}
    async with session.head(plain.url + "/health") as r:
        assert r.status == 200


async def test_schema(plain: HttpTarget, session: aiohttp.ClientSession) -> None:
    async with session.get(plain.url + "/schema") as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        doc = await r.json()
    assert "openrpc" in doc
    _, body, _ = await post(session, plain.url, req("rpc_get_methods"))
    assert {m["name"] for m in doc["methods"]} == set(json.loads(body)["result"])


async def test_32_concurrent_clients(plain: HttpTarget) -> None:
    async def client(n: int) -> None:
        # Each client is its own session, so its own connections.
        async with aiohttp.ClientSession() as s:
            for i in range(5):
                rid = n * 100 + i
                status, body, _ = await post(s, plain.url, req("spdk_get_version", rid))
                assert status == 200 and json.loads(body)["id"] == rid
                batch = b"[" + req("rpc_get_methods", rid) + b"," + req("nope", -rid) + b"]"
                status, body, _ = await post(s, plain.url, batch)
                assert sorted(e["id"] for e in json.loads(body)) == sorted([rid, -rid])

    await asyncio.gather(*(client(n) for n in range(32)))


def _socket_exchange(path: Path, requests: list[bytes]) -> list[bytes]:
    """Send each request on one Unix-socket connection, reading one response line each."""
    out = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        buf = b""
        for r in requests:
            s.sendall(r + b"\n")  # ends a bare number, which the stream framer holds back
            while b"\n" not in buf:
                data = s.recv(65536)
                assert data, "socket closed"
                buf += data
            line, _, buf = buf.partition(b"\n")
            out.append(line + b"\n")
    return out


async def test_same_answers_as_unix_socket(plain: HttpTarget,
                                           session: aiohttp.ClientSession) -> None:
    uuid = "6d2f3a3e-9c1b-4a8e-8f00-0123456789ab"
    # Leaves the target as it found it, so both transports start from the same state.
    sequence = [
        req("rpc_get_methods", 1, {"current": True}),
        req("spdk_get_version", "two"),
        req("framework_get_subsystems", 3),
        req("framework_get_config", 4, {"name": "bdev", "with_batches": False}),
        req("bdev_malloc_create", 5, {"name": "Cmp0", "num_blocks": 64, "block_size": 512,
                                      "uuid": uuid}),
        req("bdev_get_bdevs", 6, {"name": "Cmp0"}),
        req("bdev_malloc_create", 7, {"name": "Cmp0", "num_blocks": 64, "block_size": 512}),
        req("bdev_malloc_delete", 8, {"name": "Cmp0"}),
        req("bdev_get_bdevs", 9, {"name": "Cmp0"}),
        req("framework_get_config", 10, {"name": "nope"}),
        req("spdk_get_version", 11, {"unexpected": 1}),
        req("no_such_method", 12),
        req("no_such_method", None),
        b'{"jsonrpc":"1.0","id":13,"method":"spdk_get_version"}',
        b'{"id":14,"method":"spdk_get_version","extra":1}',
        b"[" + req("spdk_get_version", 15) + b"," + req("nope", 16) + b",1]",
        b"[]",
        b"42",
    ]
    over_socket = await asyncio.to_thread(_socket_exchange, plain.sock, sequence)
    over_http = []
    for r in sequence:
        status, body, _ = await post(session, plain.url, r)
        assert status == 200, r
        over_http.append(body)
    assert over_http == over_socket


def test_curl(plain: HttpTarget) -> None:
    code, body = curl("-H", "Content-Type: application/json",
                      "-d", '{"jsonrpc":"2.0","id":1,"method":"spdk_get_version"}', plain.url)
    assert code == 200 and json.loads(body)["id"] == 1
    # The Unix-socket site, as curl --unix-socket reaches it.
    code, body = curl("--unix-socket", str(plain.http_sock),  # type: ignore[attr-defined]
                      "-d", '{"id":2,"method":"rpc_get_methods"}', "http://localhost/")
    assert code == 200 and "spdk_get_version" in json.loads(body)["result"]
    assert (os.stat(plain.http_sock).st_mode & 0o777) == 0o600  # type: ignore[attr-defined]
    code, body = curl("-d", "{", plain.url)
    assert code == 400 and body.encode() == PARSE_ERROR


def test_rpc_py_over_http(plain: HttpTarget) -> None:
    res = rpc_py("-s", plain.url, "spdk_get_version")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"].startswith("pybdev")
    res = rpc_py("-s", plain.url, "framework_get_config", "nope")
    assert res.returncode == 1 and "Got JSON-RPC error response" in res.stderr
    # Batch mode sends one JSON-RPC batch in one POST.
    res = subprocess.run([sys.executable, str(RPC_PY), "-s", plain.url, "-b"],
                         input="spdk_get_version\nframework_get_subsystems\n",
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env())
    assert res.returncode == 0, res.stderr
    assert "pybdev" in res.stdout and "subsystem" in res.stdout


def test_rpc_py_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connect is refused
        res = rpc_py("-s", f"http://127.0.0.1:{port}", "spdk_get_version")
    assert res.returncode == 1 and "Error while connecting" in res.stderr


def test_rpc_py_retries_connecting(tmp_path: Path) -> None:
    """``-r N`` waits for a target that is still starting, over HTTP as over the socket."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, str(RPC_PY), "-r", "150", "-s", f"http://127.0.0.1:{port}",
         "spdk_get_version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=ROOT, env=_env())
    target = HttpTarget(tmp_path, "--http", f"127.0.0.1:{port}")
    try:
        out, err = client.communicate(timeout=60)
        assert client.returncode == 0, err
        assert "pybdev" in out
    finally:
        assert target.stop() == 0


# --- authentication ------------------------------------------------------------------------


async def test_auth_required(auth: HttpTarget, session: aiohttp.ClientSession) -> None:
    bad = [
        {},
        basic(password="wrong"),
        basic(user="root"),
        basic(password=PASSWORD + "x"),
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Basic " + base64.b64encode(USER.encode()).decode()},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": TOKEN},
    ]
    for headers in bad:
        status, body, r = await post(session, auth.url, req("spdk_get_version"),
                                     headers=headers)
        assert status == 401, headers
        challenges = r.headers.getall("WWW-Authenticate")
        assert 'Basic realm="pybdev"' in challenges
        assert 'Bearer realm="pybdev"' in challenges
        assert b"pybdev v" not in body
    for headers in (basic(), {"Authorization": f"Bearer {TOKEN}"},
                    {"Authorization": f"bearer  {TOKEN} "}):
        status, body, _ = await post(session, auth.url, req("spdk_get_version"),
                                     headers=headers)
        assert status == 200, headers
        assert json.loads(body)["id"] == 1


async def test_auth_on_every_endpoint_but_health(auth: HttpTarget,
                                                 session: aiohttp.ClientSession) -> None:
    async with session.get(auth.url + "/health") as r:
        assert r.status == 200 and (await r.json())["state"] == "RUNTIME"
    async with session.get(auth.url + "/schema") as r:
        assert r.status == 401
    async with session.get(auth.url + "/schema", headers=basic()) as r:
        assert r.status == 200
    async with session.put(auth.url + "/") as r:
        assert r.status == 401  # nothing is revealed before authentication
    async with session.put(auth.url + "/", headers=basic()) as r:
        assert r.status == 405
    # Parse errors and size limits come after authentication too.
    assert (await post(session, auth.url, b"nope"))[0] == 401
    assert (await post(session, auth.url, b"nope", headers=basic()))[0] == 400


def test_auth_curl(auth: HttpTarget, secrets: Path) -> None:
    code, _ = curl("-D", "-", "-d", '{"id":1,"method":"spdk_get_version"}', auth.url)
    assert code == 401
    res = subprocess.run([CURL or "curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-D", "-",
                          auth.url], capture_output=True, text=True, timeout=60)
    assert re.search(r'(?im)^www-authenticate: Basic realm="pybdev"\r?$', res.stdout)
    # curl reads the credentials from a netrc file, so they stay off the command line.
    netrc = secrets / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    code, body = curl("--netrc-file", str(netrc), "-d", '{"id":1,"method":"spdk_get_version"}',
                      auth.url)
    assert code == 200 and json.loads(body)["id"] == 1


def test_auth_rpc_py(auth: HttpTarget, secrets: Path) -> None:
    ok = rpc_py("-s", auth.url, "-u", USER, "--password-file", str(secrets / "password"),
                "spdk_get_version")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["version"].startswith("pybdev")
    env = rpc_py("-s", auth.url, "-u", USER, "spdk_get_version",
                 env={"PYBDEV_RPC_PASSWORD": PASSWORD})
    assert env.returncode == 0, env.stderr
    token = rpc_py("-s", auth.url, "--token-file", str(secrets / "token"), "spdk_get_version")
    assert token.returncode == 0, token.stderr
    wrong = rpc_py("-s", auth.url, "-u", USER, "--password-file", str(secrets / "wrong"),
                   "spdk_get_version")
    assert wrong.returncode == 1 and "401" in wrong.stderr
    missing = rpc_py("-s", auth.url, "spdk_get_version")
    assert missing.returncode == 1 and "401" in missing.stderr
    no_password = rpc_py("-s", auth.url, "-u", USER, "spdk_get_version")
    assert no_password.returncode == 1 and "needs a password" in no_password.stderr
    in_url = rpc_py("-s", auth.url.replace("://", f"://{USER}:{PASSWORD}@"),
                    "spdk_get_version")
    assert in_url.returncode == 1 and "no credentials in the URL" in in_url.stderr


async def test_credentials_never_logged(auth: HttpTarget,
                                        session: aiohttp.ClientSession) -> None:
    # Right and wrong credentials both go through the access log (-L rpc).
    for headers in (basic(), basic(password=PASSWORD[:-1]), {"Authorization": f"Bearer {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        await post(session, auth.url + "/x", req("spdk_get_version"), headers=headers)
        await post(session, auth.url + "/x", b"nope", headers=headers)
    log = auth.log()
    assert "pybdev.rpc.http.access" in log, log
    secret_forms = [PASSWORD[:-1], TOKEN[:-1], basic()["Authorization"].split()[1][:-4]]
    assert not [s for s in secret_forms if s in log]


# --- TLS -----------------------------------------------------------------------------------


async def test_tls(tls: HttpTarget, cert: tuple[Path, Path]) -> None:
    assert tls.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    async with aiohttp.ClientSession() as s:
        status, body, _ = await post(s, tls.url, req("spdk_get_version"), ssl=ctx,
                                     headers=basic())
        assert status == 200 and json.loads(body)["id"] == 1
        status, _, _ = await post(s, tls.url, req("spdk_get_version"), ssl=ctx)
        assert status == 401
        # The certificate is not trusted without the CA.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await post(s, tls.url, req("spdk_get_version"), headers=basic())
        # Plain HTTP to the TLS port gets no JSON-RPC answer.
        with pytest.raises(aiohttp.ClientError):
            await post(s, tls.url.replace("https://", "http://"), req("spdk_get_version"),
                       headers=basic())


def test_tls_curl_and_rpc_py(tls: HttpTarget, cert: tuple[Path, Path], secrets: Path) -> None:
    crt = str(cert[0])
    code, body = curl("--cacert", crt, "https://127.0.0.1:{}/health".format(tls.url.split(":")[-1]))
    assert code == 200 and json.loads(body)["status"] == "ok"
    netrc = secrets / "netrc-tls"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    code, body = curl("--cacert", crt, "--netrc-file", str(netrc),
                      "-d", '{"id":3,"method":"spdk_get_version"}', tls.url)
    assert code == 200 and json.loads(body)["id"] == 3
    res = rpc_py("-s", tls.url, "--cacert", crt, "-u", USER,
                 "--password-file", str(secrets / "password"), "spdk_get_version")
    assert res.returncode == 0, res.stderr
    res = rpc_py("-s", tls.url, "-u", USER, "--password-file", str(secrets / "password"),
                 "spdk_get_version")
    assert res.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in res.stderr


# --- start-up checks -----------------------------------------------------------------------


def test_non_loopback_without_auth_refused(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    res = subprocess.run([sys.executable, "-m", "pybdev", "-r", str(sock), "--http", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, env=_env())
    assert res.returncode == 1
    assert "refusing to serve HTTP JSON-RPC on 0.0.0.0:0 without authentication" in res.stderr
    # Refused before anything was bound, the RPC socket included.
    assert not sock.exists()


def _options(*argv: str) -> argparse.Namespace:
    from pybdev.app import build_parser

    return build_parser().parse_args(["-r", "/nonexistent/s.sock", *argv])


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--http", "0.0.0.0:1"], {}, "not a loopback address"),
    (["--http", "127.0.0.1:0", "--http", "[::]:1"], {}, "not a loopback address"),
    (["--http", "0.0.0.0:1"], {"PYBDEV_HTTP_PASSWORD": "x"}, "not a loopback address"),
    (["--http", "127.0.0.1:0", "--http-user", "u"], {}, "needs a password"),
    (["--http", "127.0.0.1:0", "--http-user", "a:b"], {"PYBDEV_HTTP_PASSWORD": "x"}, "':'"),
    (["--http", "127.0.0.1:0", "--http-password-file", "/dev/null"], {}, "needs --http-user"),
    (["--http", "127.0.0.1:0", "--http-user", "u", "--http-password-file", "/nonexistent"], {},
     "cannot read"),
    (["--http", "127.0.0.1:0", "--http-tls-cert", "c.pem"], {}, "go together"),
    (["--http", "127.0.0.1:0", "--http-tls-cert", "/nonexistent", "--http-tls-key", "/x"], {},
     "TLS"),
    (["--http", "8080"], {}, "HOST:PORT"),
    (["--http", ":8080"], {}, "give a host"),
    (["--http", "::1:8080"], {}, "brackets"),
    (["--http", "127.0.0.1:99999"], {}, "HOST:PORT"),
    (["--http", "unix:"], {}, "needs a path"),
])
async def test_bad_options(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(HttpConfigError, match=re.escape(message)):
        await configure_http(_options(*argv), Dispatcher(_Ctx(), Registry()), environ=env)


async def test_loopback_and_unix_need_no_auth() -> None:
    for argv in (["--http", "127.0.0.1:0"], ["--http", "[::1]:0"], ["--http", "localhost:0"],
                 ["--http", "127.9.9.9:0"], ["--http", "unix:/tmp/x.sock"]):
        server = await configure_http(_options(*argv), Dispatcher(_Ctx(), Registry()),
                                      environ={})
        assert server is not None and not server.credentials.configured
    assert await configure_http(_options(), Dispatcher(_Ctx(), Registry()), environ={}) is None
    # With auth, any address is accepted.
    server = await configure_http(_options("--http", "0.0.0.0:1", "--http", "[::]:1"),
                                  Dispatcher(_Ctx(), Registry()),
                                  environ={"PYBDEV_HTTP_TOKEN": "t"})
    assert server is not None and server.credentials.bearer
    assert "t" not in repr(server.credentials).replace("Credentials", "").replace("True", "")


def test_endpoint_parsing() -> None:
    assert parse_endpoint("127.0.0.1:80") == Endpoint("127.0.0.1", 80)
    assert parse_endpoint("[::1]:8080") == Endpoint("::1", 8080)
    assert parse_endpoint("unix:/run/p.sock") == Endpoint(path="/run/p.sock")
    assert str(Endpoint("::1", 1)) == "[::1]:1"


def test_credentials_check() -> None:
    c = Credentials("u", b"p:w", b"tok")
    enc = base64.b64encode(b"u:p:w").decode()
    assert c.check(f"Basic {enc}") and c.check(f"basic {enc}") and c.check("Bearer tok")
    assert not c.check(None) and not c.check("") and not c.check("Basic") and not c.check("tok")
    assert not c.check("Digest x") and not c.check("Bearer \udcff")
    assert Credentials().check(None)  # nothing configured: everything passes
    token_only = Credentials(token=b"t")
    assert not token_only.check("Basic " + base64.b64encode(b"u:t").decode())
    assert token_only.challenges() == ['Bearer realm="pybdev"']


@pytest.mark.skipif(None in (shutil.which("unshare"), shutil.which("ip"), CURL),
                    reason="needs unshare (util-linux), ip (iproute2) and curl")
def test_non_loopback_with_auth_starts_in_netns(secrets: Path, tmp_path: Path) -> None:
    """Bind a non-loopback address, with auth, inside a private network namespace.

    192.0.2.1 (TEST-NET-1) exists only in that namespace, on its own lo device, so nothing
    leaves this machine's loopback.
    """
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {probe.stderr.decode().strip()}")
    script = r"""
set -e
ip link set lo up
ip addr add 192.0.2.1/32 dev lo
"$PY" -m pybdev -r "$TMP/s.sock" --http 192.0.2.1:8080 --http-user admin \
    --http-password-file "$PW" >"$TMP/log" 2>&1 &
pid=$!
for i in $(seq 200); do
    curl -sf --noproxy '*' http://192.0.2.1:8080/health >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { cat "$TMP/log"; exit 3; }
    sleep 0.05
done
echo "noauth=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' \
    -H 'Content-Type: application/json' -d '{"id":1,"method":"spdk_get_version"}' http://192.0.2.1:8080/)"
echo "auth=$(curl -s --noproxy '*' --netrc-file "$NETRC" \
    -H 'Content-Type: application/json' -d '{"id":1,"method":"spdk_get_version"}' http://192.0.2.1:8080/)"
kill -TERM $pid
wait $pid
echo "rc=$?"
"""
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 192.0.2.1 login {USER} password {PASSWORD}\n")
    res = subprocess.run(
        ["unshare", "-rn", "sh", "-c", script], capture_output=True, text=True, timeout=120,
        cwd=ROOT, env=_env(PY=sys.executable, TMP=str(tmp_path), PW=str(secrets / "password"),
                           NETRC=str(netrc)),
    )
    log = (tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""
    assert res.returncode == 0, res.stdout + res.stderr + log
    assert "noauth=401" in res.stdout, res.stdout + log
    auth_line = next(x for x in res.stdout.splitlines() if x.startswith("auth="))
    assert json.loads(auth_line[5:])["id"] == 1
    assert "rc=0" in res.stdout
    assert "without TLS" in log  # the clear-text warning for a non-loopback address


# --- start-up state ------------------------------------------------------------------------


class _Ctx:
    state = State.STARTUP


async def test_requests_wait_until_serving(session: aiohttp.ClientSession) -> None:
    table = RpcTable()

    @table.method("ping", states=BOTH)
    def ping(ctx: _Ctx) -> str:
        return "pong"

    reg = Registry()
    reg.add_table(table, _Ctx(), "framework")

    ready = asyncio.Event()
    server = HttpRpcServer(Dispatcher(_Ctx(), reg), [Endpoint("127.0.0.1", 0)], Credentials(),
                           ready=ready)
    await server.start()
    try:
        url = server.urls[0]
        call = asyncio.create_task(post(session, url, req("ping")))
        # /health answers at once, and says STARTUP, while the call waits.
        async with session.get(url + "/health") as r:
            assert await r.json() == {"status": "ok", "state": "STARTUP"}
        await asyncio.sleep(0)
        assert not call.done()
        ready.set()
        status, body, _ = await call
        assert status == 200 and json.loads(body)["result"] == "pong"
    finally:
        await server.stop()
    assert server.urls == []


def test_wait_for_rpc_over_http(tmp_path: Path) -> None:
    t = HttpTarget(tmp_path, "--wait-for-rpc", "--http", "127.0.0.1:0", wait_serving=False)
    try:
        def health() -> dict[str, Any]:
            code, body = curl(t.url + "/health")
            assert code == 200
            return json.loads(body)

        assert health()["state"] == "STARTUP"
        code, body = curl("-d", '{"id":1,"method":"framework_get_subsystems"}', t.url)
        assert code == 200 and json.loads(body)["error"]["code"] == -1
        code, body = curl("-d", '{"id":2,"method":"framework_start_init"}', t.url)
        assert code == 200 and json.loads(body)["result"] is True
        assert health()["state"] == "RUNTIME"
        # spdk_kill_instance over HTTP: answered, then a clean shutdown.
        code, body = curl("-d", '{"id":3,"method":"spdk_kill_instance",'
                                '"params":{"sig_name":"SIGTERM"}}', t.url)
        assert code == 200 and json.loads(body)["result"] is True
        assert t.proc.wait(20) == 0
    finally:
        t.stop()


# --- hostile clients: every request answered, browsers and slow clients refused ------------


def _http(url: str, body: bytes, headers: dict[str, str] | None = None,
          method: str = "POST") -> tuple[int, bytes]:
    """One request with the standard library's client (no header added but Host)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        # Refused before the whole body was sent, the answer is still there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(method, "/", body=body,
                         headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.data_too_large, HealthCheck.too_slow])
@given(case=requests())
def test_fuzzed_requests_are_all_answered_over_http(plain: HttpTarget, case: Case) -> None:
    status, body = _http(plain.url, case.body)
    if case.kind == "oversize":
        assert status == 413
    elif case.answer_id is None:
        assert (status, body) == (400, PARSE_ERROR), case.kind
    else:
        assert status == 200
        case.check_response(body)


def _bdev_names(t: HttpTarget) -> set[str]:
    status, body = _http(t.url, req("bdev_get_bdevs"))
    assert status == 200
    return {b["name"] for b in json.loads(body)["result"]}


def test_only_json_bodies_are_served(plain: HttpTarget) -> None:
    create = req("bdev_null_create", params={"name": "CT", "num_blocks": 64, "block_size": 512})
    # What an HTML form or a cross-origin fetch without preflight can send.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/octet-stream", ""):
        status, body = _http(plain.url, create, {"Content-Type": ctype})
        assert status == 415 and b"application/json" in body, ctype
    assert "CT" not in _bdev_names(plain)
    status, _ = _http(plain.url, req("spdk_get_version"),
                      {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200


def test_foreign_origin_and_host_are_refused(plain: HttpTarget) -> None:
    host = plain.url.split("://", 1)[1]
    create = req("bdev_null_create", params={"name": "XO", "num_blocks": 64, "block_size": 512})
    for origin in ("http://evil.example", "null", f"https://{host}", "http://127.0.0.1:1"):
        status, _ = _http(plain.url, create, {"Origin": origin})
        assert status == 403, origin
    # DNS rebinding: the attacker's name now points at 127.0.0.1.
    port = host.rsplit(":", 1)[1]
    for name in (f"evil.example:{port}", "rebind.attacker.test", f"localhost.evil:{port}"):
        status, _ = _http(plain.url, create, {"Host": name})
        assert status == 421, name
        status, _ = _http(plain.url, b"", {"Host": name}, method="GET")
        assert status == 421, name
    assert "XO" not in _bdev_names(plain)
    # The server's own origin, and the names a local client uses, are served.
    assert _http(plain.url, req("spdk_get_version"), {"Origin": f"http://{host}"})[0] == 200
    for name in (f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.1", f"[::1]:{port}",
                 f"LOCALHOST:{port}"):
        assert _http(plain.url, req("spdk_get_version"), {"Host": name})[0] == 200, name


def test_unix_site_does_not_check_host(plain: HttpTarget) -> None:
    code, body = curl("--unix-socket", str(plain.http_sock),  # type: ignore[attr-defined]
                      "-H", "Host: anything.example", "-d", req("spdk_get_version").decode(),
                      "http://x/")
    assert code == 200 and json.loads(body)["id"] == 1


def test_slow_clients_are_bounded(tmp_path: Path) -> None:
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0", "--http-allowed-host", "pybdev.test",
                   "--http-max-connections", "2", "--http-header-timeout", "1")
    try:
        host, port = t.url.split("://", 1)[1].rsplit(":", 1)
        assert _http(t.url, req("spdk_get_version"), {"Host": "pybdev.test"})[0] == 200

        def connect() -> socket.socket:
            s = socket.create_connection((host, int(port)), timeout=60)
            return s

        # A request head that never ends is cut off by the header timeout.
        slow = connect()
        slow.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert slow.recv(4096) == b""
        slow.close()
        # Two idle connections fill the limit; a third is told so and closed.
        idle = [connect(), connect()]
        extra = connect()
        answer = b""
        while data := extra.recv(4096):
            answer += data
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        # The idle ones time out too, and then clients are served again.
        for s in idle:
            assert s.recv(4096) == b""
            s.close()
        assert _http(t.url, req("spdk_get_version"))[0] == 200
    finally:
        assert t.stop() == 0, t.log()


def test_ipv4_mapped_loopback_is_loopback(tmp_path: Path) -> None:
    # The same rule as nbd:// (pybdev.netaddr): no authentication needed, served as IPv4.
    t = HttpTarget(tmp_path, "--http", "[::ffff:127.0.0.1]:0")
    try:
        assert t.url.startswith("http://127.0.0.1:")
        assert _http(t.url, req("spdk_get_version"))[0] == 200
    finally:
        assert t.stop() == 0, t.log()


@pytest.mark.parametrize("argv", [
    ["--http-header-timeout", "0"], ["--http-body-timeout", "-1"],
    ["--http-body-timeout", "inf"], ["--http-max-connections", "0"],
])
def test_limit_options_must_be_positive(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _options("--http", "127.0.0.1:0", *argv)


def test_limit_options_reach_the_server() -> None:
    options = _options("--http", "127.0.0.1:0", "--http-header-timeout", "2.5",
                       "--http-body-timeout", "7", "--http-max-connections", "3",
                       "--http-allowed-host", "Storage1.example.")
    server = asyncio.run(configure_http(options, Dispatcher(_Ctx(), Registry()), environ={}))
    assert server is not None
    assert (server.limits.header_timeout, server.limits.body_timeout,
            server.limits.max_connections) == (2.5, 7.0, 3)
    assert "storage1.example" in server.allowed_hosts


def test_rpc_py_survives_the_server_closing_idle_connections(tmp_path: Path) -> None:
    """Commands read from stdin share one client: after a pause longer than the target's
    header timeout the closed keep-alive connection is opened again, not reused."""
    t = HttpTarget(tmp_path, "--http", "127.0.0.1:0", "--http-header-timeout", "1")
    try:
        proc = subprocess.Popen([sys.executable, str(RPC_PY), "-s", t.url],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
        assert proc.stdin is not None and proc.stdout is not None
        for _ in range(2):
            proc.stdin.write("spdk_get_version\n")
            proc.stdin.flush()
            while '"version"' not in (line := proc.stdout.readline()):
                assert line, proc.stderr.read() if proc.stderr else ""
            time.sleep(2.5)  # the target closes the idle connection meanwhile
        proc.stdin.close()
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        assert t.stop() == 0, t.log()


def test_with_credentials_any_host_name_is_served(auth: HttpTarget) -> None:
    # Off-host clients use the operator's DNS name; a rebinding page has no credentials.
    status, _ = _http(auth.url, req("spdk_get_version"), {"Host": "storage1.example:8443"})
    assert status == 401
    status, body = _http(auth.url, req("spdk_get_version"),
                         {"Host": "storage1.example:8443", **basic()})
    assert status == 200 and json.loads(body)["id"] == 1
    # A foreign Origin is still refused, credentials or not.
    status, _ = _http(auth.url, req("spdk_get_version"),
                      {"Origin": "http://evil.example", **basic()})
    assert status == 403
