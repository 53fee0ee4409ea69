"""The Unix-socket transport of a real target, over raw sockets (SPDK's lib/rpc and lib/jsonrpc)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

from tests.conftest import Target


def connect(t: Target) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(15)
    s.connect(str(t.sock))
    return s


def read_values(s: socket.socket, count: int) -> list[Any]:
    dec = json.JSONDecoder()
    buf = ""
    out: list[Any] = []
    while len(out) < count:
        data = s.recv(65536)
        if not data:
            break
        buf += data.decode()
        while buf.strip():
            try:
                v, end = dec.raw_decode(buf.lstrip())
            except json.JSONDecodeError:
                break
            out.append(v)
            buf = buf.lstrip()[end:]
    return out


def test_socket_mode_and_lock(target: Target) -> None:
    assert stat.S_IMODE(os.stat(target.sock).st_mode) == 0o600
    assert Path(str(target.sock) + ".lock").exists()


def test_back_to_back_and_split_requests(target: Target) -> None:
    s = connect(target)
    reqs = b"".join(
        json.dumps({"jsonrpc": "2.0", "method": "spdk_get_version", "id": i}).encode()
        for i in range(1, 4))
    for i in range(0, len(reqs), 7):
        s.sendall(reqs[i:i + 7])
    got = read_values(s, 3)
    assert sorted(v["id"] for v in got) == [1, 2, 3]
    assert all(v["result"]["fields"]["major"] == 0 for v in got)
    s.close()


def test_exact_response_bytes(target: Target) -> None:
    s = connect(target)
    s.sendall(b'{"jsonrpc":"2.0","method":"framework_wait_init","id":"abc"}')
    assert s.recv(4096) == b'{"jsonrpc":"2.0","id":"abc","result":true}\n'
    s.close()


def test_batch_mixing_good_bad_and_notification(target: Target) -> None:
    s = connect(target)
    s.sendall(json.dumps([
        {"jsonrpc": "2.0", "method": "framework_wait_init", "id": 1},
        {"jsonrpc": "2.0", "method": "no_such_method", "id": 2},
        {"jsonrpc": "2.0", "method": "framework_wait_init"},
        5,
    ]).encode())
    (resp,) = read_values(s, 1)
    assert resp == [
        {"jsonrpc": "2.0", "id": 1, "result": True},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid request"}},
    ]
    s.close()


def test_parse_error_closes_connection_only(target: Target) -> None:
    s = connect(target)
    s.sendall(b'{"method": nope}')
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    assert json.loads(data)["error"]["code"] == -32700
    # The target keeps serving others.
    assert target.rpc("spdk_get_version")["version"].startswith("pybdev")


def test_invalid_utf8_is_a_parse_error(target: Target) -> None:
    s = connect(target)
    s.sendall(b'{"method":"spdk_get_version","id":"\xff"}')
    (resp,) = read_values(s, 1)
    assert resp["error"]["code"] == -32700


def test_deep_nesting_and_oversize_close_the_connection(target: Target) -> None:
    s = connect(target)
    s.sendall(b"[" * 100)
    (resp,) = read_values(s, 1)
    assert resp["error"]["code"] == -32700
    s = connect(target)
    s.sendall(b'{"method":"x","params":{"a":"' + b"x" * (300 * 1024))
    try:
        leftover = read_values(s, 1)
    except ConnectionResetError:
        leftover = []  # the target closed with our bytes unread
    assert leftover == [] or leftover[0]["error"]["code"] == -32700
    assert target.rpc("spdk_get_version")


def test_client_disconnecting_mid_request(target: Target) -> None:
    for _ in range(5):
        s = connect(target)
        s.sendall(b'{"jsonrpc":"2.0","method":"spdk_get_')
        s.close()
    assert target.rpc("framework_wait_init") is True


def test_half_close_still_gets_the_answer(target: Target) -> None:
    s = connect(target)
    s.sendall(b'{"jsonrpc":"2.0","method":"framework_wait_init","id":1}')
    s.shutdown(socket.SHUT_WR)
    assert read_values(s, 1) == [{"jsonrpc": "2.0", "id": 1, "result": True}]


def test_64_concurrent_clients(target: Target) -> None:
    socks = [connect(target) for _ in range(64)]
    results: list[Any] = [None] * 64

    def run(i: int) -> None:
        socks[i].sendall(json.dumps(
            {"jsonrpc": "2.0", "method": "rpc_get_methods", "id": i}).encode())
        results[i] = read_values(socks[i], 1)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert [r["id"] for r in results] == list(range(64))
    assert all("spdk_get_version" in r["result"] for r in results)


def test_slow_handler_does_not_block_others(start_target: Any) -> None:
    # bdev_get_bdevs with a timeout waits for a bdev that never comes.
    t = start_target()
    slow = connect(t)
    slow.sendall(json.dumps({"jsonrpc": "2.0", "method": "bdev_get_bdevs", "id": 1,
                             "params": {"name": "nope", "timeout": 3000}}).encode())
    assert t.rpc("spdk_get_version")  # answered while the slow call waits
    (resp,) = read_values(slow, 1)
    assert resp["error"] == {"code": -110, "message": "Connection timed out"}
