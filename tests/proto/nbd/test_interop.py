"""The protocol module against real NBD peers.

Server side: a small blocking server built only from :mod:`pybdev.proto.nbd` serves a RAM
disk on a Unix socket to libnbd (``nbdinfo``, ``nbdsh``) and QEMU (``qemu-io``, ``qemu-img``).
Client side: :class:`ClientHandshake` and :class:`ReplyParser` talk to ``nbdkit`` and
``qemu-nbd``.  Each test skips when its tool is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pybdev.proto import nbd
from tests.conftest import unix_listening

SIZE = 4 * 1024 * 1024
TX_FLAGS = (
    nbd.NBD_FLAG_SEND_FLUSH
    | nbd.NBD_FLAG_SEND_FUA
    | nbd.NBD_FLAG_SEND_TRIM
    | nbd.NBD_FLAG_SEND_WRITE_ZEROES
    | nbd.NBD_FLAG_SEND_DF
    | nbd.NBD_FLAG_CAN_MULTI_CONN
)
EXPORTS = {
    "disk0": nbd.ExportInfo(
        "disk0", SIZE, TX_FLAGS, min_block_size=512, max_block_size=1 << 20, description="ram"
    ),
    "ro": nbd.ExportInfo("ro", SIZE, nbd.NBD_FLAG_READ_ONLY),
}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def recv_exactly_some(sock: socket.socket) -> bytes:
    try:
        return sock.recv(256 * 1024)
    except OSError:
        return b""


class RamServer:
    """Blocking NBD server on a Unix socket: one thread per connection, one shared disk."""

    def __init__(self, path: str) -> None:
        self.disk = bytearray(SIZE)
        self.lock = threading.Lock()
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(path)
        self.listener.listen()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve_safely, args=(conn,), daemon=True).start()

    def _serve_safely(self, conn: socket.socket) -> None:
        try:
            with conn:
                self._serve(conn)
        except ConnectionError:
            pass  # a client may hang up without waiting, e.g. for the ACK to NBD_OPT_ABORT
        except BaseException as exc:  # surfaced by the fixture
            self.errors.append(exc)

    def _serve(self, conn: socket.socket) -> None:
        hs = nbd.ServerHandshake(EXPORTS.get, exports=lambda: EXPORTS.values())
        conn.sendall(hs.data_to_send())
        event: nbd.ServerEvent | None = None
        while event is None:
            data = recv_exactly_some(conn)
            if not data:
                return
            event = hs.receive_data(data)
            conn.sendall(hs.data_to_send())
        if isinstance(event, nbd.Closed):
            return
        check = event.validator().check
        structured = event.structured_replies
        read_only = bool(event.flags & nbd.NBD_FLAG_READ_ONLY)
        contexts = list(event.meta_contexts)
        buf = bytearray(event.trailing)
        while True:
            try:
                requests, pos, _ = nbd.parse_requests(buf)
            except nbd.ProtocolError:
                return
            out: list[bytes] = []
            for typ, flags, cookie, offset, length, payload in requests:
                if typ == nbd.NBD_CMD_DISC:
                    return
                err = check(typ, flags, offset, length)
                if err:
                    out.append(nbd.encode_error_reply(cookie, err, structured, "refused"))
                    continue
                assert not read_only or typ in (nbd.NBD_CMD_READ, nbd.NBD_CMD_FLUSH)
                with self.lock:
                    if typ == nbd.NBD_CMD_READ:
                        out.append(nbd.encode_read_reply_header(cookie, offset, length, structured))
                        out.append(bytes(self.disk[offset : offset + length]))
                    elif typ == nbd.NBD_CMD_WRITE:
                        self.disk[offset : offset + length] = payload  # type: ignore[assignment]
                        out.append(nbd.encode_simple_reply(cookie))
                    elif typ in (nbd.NBD_CMD_WRITE_ZEROES, nbd.NBD_CMD_TRIM):
                        self.disk[offset : offset + length] = bytes(length)
                        out.append(nbd.encode_simple_reply(cookie))
                    elif typ == nbd.NBD_CMD_BLOCK_STATUS:
                        extents = self._extents(offset, length, flags)
                        for i, context_id in enumerate(contexts):
                            done = i == len(contexts) - 1
                            out.append(
                                nbd.encode_block_status_chunk(cookie, context_id, extents, done)
                            )
                    else:
                        out.append(nbd.encode_simple_reply(cookie))
            requests = []
            payload = None
            del buf[:pos]
            if out:
                conn.sendall(b"".join(out))
            data = recv_exactly_some(conn)
            if not data:
                return
            buf += data

    def _extents(self, offset: int, length: int, flags: int) -> list[tuple[int, int]]:
        """Runs of zero (hole|zero) and data blocks of 64 KiB, as base:allocation."""
        grain = 64 * 1024
        extents: list[tuple[int, int]] = []
        pos = offset
        end = min(offset + length, SIZE)
        zero_block = bytes(grain)
        while pos < end:
            stop = min((pos // grain + 1) * grain, end)
            status = (
                nbd.NBD_STATE_HOLE | nbd.NBD_STATE_ZERO
                if self.disk[pos:stop] == zero_block[: stop - pos]
                else 0
            )
            if extents and extents[-1][1] == status:
                extents[-1] = (extents[-1][0] + stop - pos, status)
            else:
                extents.append((stop - pos, status))
            if flags & nbd.NBD_CMD_FLAG_REQ_ONE:
                break
            pos = stop
        return extents


@pytest.fixture
def ram_server(tmp_path: Path) -> Iterator[tuple[RamServer, str]]:
    path = str(tmp_path / "nbd.sock")
    server = RamServer(path)
    yield server, path
    server.close()
    assert not server.errors, server.errors


def libnbd_python() -> str:
    """A Python with libnbd's binding (Debian's python3-libnbd lives in the system Python)."""
    for exe in ("/usr/bin/python3", shutil.which("python3")):
        if exe and subprocess.run([exe, "-c", "import nbd"], capture_output=True).returncode == 0:
            return exe
    pytest.skip("no Python with the libnbd binding (python3-libnbd)")


def nbdsh(uri: str, script: str, structured: bool = True) -> str:
    """Run ``script`` with ``h`` connected to ``uri``, like ``nbdsh -c``."""
    prelude = (
        "import nbd\n"
        "h = nbd.NBD()\n"
        f"h.set_request_structured_replies({structured})\n"
        f"h.connect_uri({uri!r})\n"
    )
    return run(libnbd_python(), "-c", prelude + script)


def run(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


# ---------------------------------------------------------------------------------------------
# Our server, real clients
# ---------------------------------------------------------------------------------------------


def test_nbdinfo_sees_export(ram_server: tuple[RamServer, str]) -> None:
    _, path = ram_server
    info = json.loads(run(need("nbdinfo"), "--json", f"nbd+unix:///disk0?socket={path}"))
    assert info["protocol"] == "newstyle-fixed"
    [export] = info["exports"]
    assert export["export-name"] == "disk0"
    assert export["export-size"] == SIZE
    assert export["description"] == "ram"
    assert (
        export["block_size_minimum"],
        export["block_size_preferred"],
        export["block_size_maximum"],
    ) == (512, 4096, 1 << 20)
    assert export["can_flush"] and export["can_fua"] and export["can_trim"]
    assert export["can_zero"] and export["can_df"] and export["can_multi_conn"]
    assert not export["is_read_only"]
    assert "base:allocation" in export["contexts"]


def test_nbdinfo_lists_exports(ram_server: tuple[RamServer, str]) -> None:
    _, path = ram_server
    info = json.loads(run(need("nbdinfo"), "--json", "--list", f"nbd+unix://?socket={path}"))
    assert sorted(e["export-name"] for e in info["exports"]) == ["disk0", "ro"]


def test_nbdinfo_unknown_export_fails(ram_server: tuple[RamServer, str]) -> None:
    _, path = ram_server
    result = subprocess.run(
        [need("nbdinfo"), f"nbd+unix:///nope?socket={path}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "nope" in result.stderr or "unknown" in result.stderr.lower()


def test_qemu_io_write_read_and_map(ram_server: tuple[RamServer, str]) -> None:
    server, path = ram_server
    uri = f"nbd+unix:///disk0?socket={path}"
    out = run(
        need("qemu-io"),
        "-f",
        "raw",
        "-c",
        "write -P 0xab 65536 131072",
        "-c",
        "write -P 0x01 0 512",
        "-c",
        "read -P 0xab 65536 131072",
        "-c",
        "read -P 0x01 0 512",
        "-c",
        "read -P 0 512 65024",
        "-c",
        "flush",
        uri,
    )
    assert "Pattern verification failed" not in out
    assert server.disk[65536 : 65536 + 131072] == b"\xab" * 131072
    # Block status through libnbd: data where written, holes elsewhere.
    mapping = run(need("nbdinfo"), "--map", "--json", uri)
    extents = [(e["offset"], e["length"], e["type"]) for e in json.loads(mapping)]
    # The server reports in 64 KiB grains: the 512 bytes at 0 make the first grain data.
    assert extents == [(0, 196608, 0), (196608, SIZE - 196608, 3)]


def test_qemu_img_convert_roundtrip(ram_server: tuple[RamServer, str], tmp_path: Path) -> None:
    _, path = ram_server
    uri = f"nbd+unix:///disk0?socket={path}"
    source = tmp_path / "src.raw"
    data = os.urandom(SIZE // 2) + bytes(SIZE // 2)
    source.write_bytes(data)
    run(need("qemu-img"), "convert", "-n", "-f", "raw", "-O", "raw", str(source), uri)
    copy = tmp_path / "copy.raw"
    run(need("qemu-img"), "convert", "-f", "raw", "-O", "raw", uri, str(copy))
    assert copy.read_bytes() == data


NBDSH_ERRORS = """
h.set_strict_mode(0)
def attempt(name, fn):
    try:
        fn()
        print(name, 0)
    except nbd.Error as e:
        print(name, e.errno)
attempt("read-oob", lambda: h.pread(512, SIZE))
attempt("write-oob", lambda: h.pwrite(bytes(1024), SIZE - 512))
attempt("read-misaligned", lambda: h.pread(512, 1))
attempt("write-too-big", lambda: h.pwrite(bytes(2 << 20), 0))
attempt("zero-oob", lambda: h.zero(1024, SIZE - 512))
attempt("trim-oob", lambda: h.trim(1024, SIZE - 512))
attempt("read-ok", lambda: h.pread(512, 0))
attempt("write-fua", lambda: h.pwrite(b"x" * 512, 512, nbd.CMD_FLAG_FUA))
attempt("flush", lambda: h.flush())
print("data", bytes(h.pread(512, 512)[:4]))
"""


@pytest.mark.parametrize("structured", [True, False])
def test_nbdsh_error_replies(ram_server: tuple[RamServer, str], structured: bool) -> None:
    _, path = ram_server
    script = f"SIZE = {SIZE}\n" + NBDSH_ERRORS
    out = nbdsh(f"nbd+unix:///disk0?socket={path}", script, structured)
    results = dict(line.split(" ", 1) for line in out.splitlines())
    # libnbd reports errno names.  proto.md: ENOSPC for writes beyond the end, EINVAL for
    # reads and trims beyond it, misalignment and writes over the maximum payload.
    assert results["read-oob"] == "EINVAL"
    assert results["write-oob"] == "ENOSPC"
    assert results["read-misaligned"] == "EINVAL"
    assert results["write-too-big"] == "EINVAL"
    assert results["zero-oob"] == "ENOSPC"
    assert results["trim-oob"] == "EINVAL"
    assert results["read-ok"] == results["write-fua"] == results["flush"] == "0"
    assert results["data"] == "b'xxxx'"


def test_nbdsh_read_only_export(ram_server: tuple[RamServer, str]) -> None:
    _, path = ram_server
    out = nbdsh(
        f"nbd+unix:///ro?socket={path}",
        "h.set_strict_mode(0)\n"
        "print(h.is_read_only(), h.can_flush())\n"
        "try:\n"
        "    h.pwrite(b'x', 0)\n"
        "except nbd.Error as e:\n"
        "    print(e.errno)\n",
    )
    assert out.split() == ["True", "False", "EPERM"]


# ---------------------------------------------------------------------------------------------
# Our client, real servers
# ---------------------------------------------------------------------------------------------


def start_server(args: list[str], path: str) -> subprocess.Popen[bytes]:
    """Start a server and return once it listens on ``path`` (not when the file appears:
    that happens at bind(), before listen())."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not unix_listening(path):
        if proc.poll() is not None:
            pytest.fail(f"{args[0]} exited: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{args[0]} did not listen on {path}")
        time.sleep(0.02)
    return proc


def handshake(path: str, hs: nbd.ClientHandshake) -> tuple[socket.socket, nbd.ClientEvent]:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(path)
    event: nbd.ClientEvent | None = None
    while event is None:
        data = sock.recv(65536)
        assert data, "server closed during the handshake"
        event = hs.receive_data(data)
        sock.sendall(hs.data_to_send())
    return sock, event


class Client:
    """Minimal synchronous client on ReplyParser: one request at a time, or pipelined."""

    def __init__(self, sock: socket.socket, ready: nbd.ClientReady) -> None:
        self.sock = sock
        self.ready = ready
        self.inflight: dict[int, tuple[int, int, int]] = {}
        self.parser = nbd.ReplyParser(self.inflight.get, structured=ready.structured_replies)
        self.buf = bytearray()
        self.cookie = 0

    def submit(
        self, typ: int, offset: int, length: int, payload: bytes = b"", flags: int = 0
    ) -> int:
        self.cookie += 1
        self.inflight[self.cookie] = (typ, offset, length)
        self.sock.sendall(nbd.encode_request(typ, self.cookie, offset, length, flags) + payload)
        return self.cookie

    def collect(self) -> dict[int, list[nbd.Reply]]:
        """Wait for every in-flight request; replies copied out of the buffer."""
        got: dict[int, list[nbd.Reply]] = {}
        while self.inflight:
            for reply in self._parse_owned():
                got.setdefault(reply.cookie, []).append(reply)
                if reply.done:
                    del self.inflight[reply.cookie]
            if self.inflight:
                data = self.sock.recv(262144)
                assert data, "server closed"
                self.buf += data
        return got

    def _parse_owned(self) -> list[nbd.Reply]:
        """Parse the buffer, copy payloads out of it, and compact it."""
        replies, pos, _ = self.parser.parse(self.buf)
        owned = [
            r._replace(data=bytes(r.data))  # type: ignore[arg-type]
            if isinstance(r, nbd.SimpleReply | nbd.DataChunk) and r.data is not None
            else r
            for r in replies
        ]
        del replies  # drop the views so the buffer can be compacted
        del self.buf[:pos]
        return owned

    def read(self, offset: int, length: int) -> tuple[bytes, int]:
        """(data, NBD error) of one READ, reassembled from chunks if structured."""
        cookie = self.submit(nbd.NBD_CMD_READ, offset, length)
        out = bytearray(length)
        error = 0
        for reply in self.collect()[cookie]:
            if isinstance(reply, nbd.SimpleReply):
                error = reply.error
                if reply.data is not None:
                    out[:] = reply.data
            elif isinstance(reply, nbd.DataChunk):
                out[reply.offset - offset : reply.offset - offset + len(reply.data)] = reply.data
            elif isinstance(reply, nbd.HoleChunk):
                out[reply.offset - offset : reply.offset - offset + reply.length] = bytes(
                    reply.length
                )
            elif isinstance(reply, nbd.ErrorChunk):
                error = reply.error
        return bytes(out), error

    def disconnect(self) -> None:
        self.sock.sendall(nbd.encode_request(nbd.NBD_CMD_DISC, 0))
        self.sock.close()


@pytest.fixture
def nbdkit(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    exe = need("nbdkit")
    path = str(tmp_path / "kit.sock")
    yield path, [exe, "--foreground", "--exit-with-parent", "--unix", path]


def with_nbdkit(base: tuple[str, list[str]], *extra: str) -> tuple[str, subprocess.Popen[bytes]]:
    path, args = base
    return path, start_server([*args, *extra], path)


@pytest.mark.parametrize(
    ("options", "structured", "via_go"),
    [([], True, True), (["--no-sr"], False, True), (["--mask-handshake=0"], False, False)],
    ids=["go-structured", "go-simple", "export-name"],
)
def test_client_against_nbdkit(
    nbdkit: tuple[str, list[str]], options: list[str], structured: bool, via_go: bool
) -> None:
    path, proc = with_nbdkit(nbdkit, *options, "memory", "1M")
    try:
        sock, event = handshake(path, nbd.ClientHandshake("", meta_contexts=[nbd.BASE_ALLOCATION]))
        assert isinstance(event, nbd.ClientReady), event
        assert event.size == 1 << 20
        assert event.structured_replies is structured and event.via_go is via_go
        assert (nbd.BASE_ALLOCATION in event.meta_contexts) is structured
        client = Client(sock, event)
        payload = os.urandom(8192)
        write = client.submit(nbd.NBD_CMD_WRITE, 4096, len(payload), payload)
        flush = client.submit(nbd.NBD_CMD_FLUSH, 0, 0)
        replies = client.collect()
        assert replies[write] == [nbd.SimpleReply(write, 0, None)] or all(
            r.error == 0 for r in replies[write] if isinstance(r, nbd.ErrorChunk)
        )
        assert flush in replies
        data, error = client.read(0, 16384)
        assert error == 0 and data == bytes(4096) + payload + bytes(4096)
        # Pipelined reads come back matched to their cookies.
        cookies = [client.submit(nbd.NBD_CMD_READ, i * 4096, 4096) for i in range(16)]
        assert set(cookies) <= set(client.collect())
        if structured:
            cookie = client.submit(nbd.NBD_CMD_BLOCK_STATUS, 0, 1 << 20)
            [chunk] = client.collect()[cookie]
            assert isinstance(chunk, nbd.BlockStatusChunk) and chunk.done
            assert chunk.context_id == event.meta_contexts[nbd.BASE_ALLOCATION]
            assert chunk.extents[0][1] & nbd.NBD_STATE_HOLE == 0 or chunk.extents[0][0] < 4096
        client.disconnect()
    finally:
        proc.kill()
        proc.wait()


def test_client_error_reply_from_nbdkit(nbdkit: tuple[str, list[str]]) -> None:
    path, proc = with_nbdkit(nbdkit, "memory", "1M")
    try:
        sock, event = handshake(path, nbd.ClientHandshake(""))
        assert isinstance(event, nbd.ClientReady)
        client = Client(sock, event)
        _, error = client.read((1 << 20) - 512, 1024)  # beyond the end
        assert error == nbd.NBD_EINVAL
        client.disconnect()
    finally:
        proc.kill()
        proc.wait()


def test_client_list_and_unknown_export_against_nbdkit(nbdkit: tuple[str, list[str]]) -> None:
    path, proc = with_nbdkit(nbdkit, "--exportname", "kit", "memory", "1M")
    try:
        sock, event = handshake(path, nbd.ClientHandshake(list_exports=True))
        sock.close()
        assert isinstance(event, nbd.ExportList)
        # nbdkit's memory plugin lists its one (default) export.
        assert len(event.exports) == 1
        sock, event = handshake(path, nbd.ClientHandshake("kit"))
        sock.close()
        assert isinstance(event, nbd.ClientReady) and event.size == 1 << 20
    finally:
        proc.kill()
        proc.wait()


def test_client_against_qemu_nbd(tmp_path: Path) -> None:
    exe = need("qemu-nbd")
    image = tmp_path / "img.raw"
    image.write_bytes(b"\x5a" * 65536 + bytes(1 << 20))
    path = str(tmp_path / "qemu.sock")
    proc = start_server([exe, "-f", "raw", "-x", "exp", "-k", path, "-t", str(image)], path)
    try:
        sock, event = handshake(
            path, nbd.ClientHandshake("exp", meta_contexts=[nbd.BASE_ALLOCATION])
        )
        assert isinstance(event, nbd.ClientReady), event
        assert event.structured_replies and event.size == 65536 + (1 << 20)
        client = Client(sock, event)
        data, error = client.read(0, 131072)
        assert error == 0 and data == b"\x5a" * 65536 + bytes(65536)
        cookie = client.submit(nbd.NBD_CMD_BLOCK_STATUS, 0, event.size)
        chunks = client.collect()[cookie]
        assert any(isinstance(c, nbd.BlockStatusChunk) for c in chunks)
        client.disconnect()
        sock, event = handshake(path, nbd.ClientHandshake("missing"))
        sock.close()
        assert isinstance(event, nbd.ClientFailed) and event.reply == nbd.NBD_REP_ERR_UNKNOWN
    finally:
        proc.kill()
        proc.wait()
