"""Malformed input against the running export: random and mutated handshakes, options and
requests.  After each example the server must have closed the connection or answered and
gone quiet once the client stops sending (no hang), the target must still run, and a
connection opened before the fuzzing must still read back what it wrote.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybdev.proto import nbd

from .conftest import MALLOC1_SIZE, Served
from .rawclient import RawClient, connect_socket, wait_closed

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def witness(served: Served) -> Iterator[RawClient]:
    """A well-behaved client connected for the whole module."""
    c = RawClient(str(served.sock), "Malloc1")
    yield c
    c.disconnect()


def check_alive(served: Served, witness: RawClient, marker: int) -> None:
    assert served.target.proc.poll() is None, served.target.log()
    assert "Traceback" not in served.target.log()
    data = bytes([marker % 256]) * 4096
    witness.write(MALLOC1_SIZE - 4096, data)
    assert witness.read(MALLOC1_SIZE - 4096, 4096) == data


def throw(served: Served, payload: bytes, *, after_greeting: bool = True) -> None:
    sock = connect_socket(str(served.sock))
    try:
        if after_greeting:
            got = b""
            while len(got) < nbd.GREETING_SIZE:
                chunk = sock.recv(nbd.GREETING_SIZE - len(got))
                assert chunk, "no greeting"
                got += chunk
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return  # closed on us already: fine
        wait_closed(sock, timeout=15)
    finally:
        sock.close()


def valid_handshake(name: str = "Malloc1") -> bytes:
    return (struct.pack(">I", nbd.NBD_FLAG_C_FIXED_NEWSTYLE | nbd.NBD_FLAG_C_NO_ZEROES)
            + nbd.encode_option(nbd.NBD_OPT_STRUCTURED_REPLY)
            + nbd.encode_option(nbd.NBD_OPT_SET_META_CONTEXT,
                                nbd.encode_meta_context_request(name, [nbd.BASE_ALLOCATION]))
            + nbd.encode_option(nbd.NBD_OPT_GO, nbd.encode_info_request(
                name, [nbd.NBD_INFO_BLOCK_SIZE])))


_counter = iter(range(1, 1 << 30))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_handshake(served: Served, witness: RawClient, data: bytes) -> None:
    throw(served, data)
    check_alive(served, witness, next(_counter))


@FUZZ
@given(st.data())
def test_mutated_handshake(served: Served, witness: RawClient, data: st.DataObject) -> None:
    raw = bytearray(valid_handshake())
    for _ in range(data.draw(st.integers(0, 6))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    tail = data.draw(st.binary(max_size=64))
    throw(served, bytes(raw[:cut]) + tail)
    check_alive(served, witness, next(_counter))


options = st.lists(st.tuples(
    st.one_of(st.sampled_from([int(o) for o in nbd.Opt]), st.integers(0, 0xFFFFFFFF)),
    st.binary(max_size=300),
), max_size=8)


@FUZZ
@given(options)
def test_random_options(served: Served, witness: RawClient,
                        opts: list[tuple[int, bytes]]) -> None:
    payload = struct.pack(">I", nbd.NBD_FLAG_C_FIXED_NEWSTYLE)
    payload += b"".join(nbd.encode_option(o, d) for o, d in opts)
    throw(served, payload)
    check_alive(served, witness, next(_counter))


offsets = st.one_of(st.sampled_from([0, 512, 4096, MALLOC1_SIZE - 4096, MALLOC1_SIZE,
                                     1 << 63, (1 << 64) - 1]),
                    st.integers(0, (1 << 64) - 1))
lengths = st.one_of(st.sampled_from([0, 1, 512, 4096, 65536, 1 << 20, 1 << 31,
                                     (1 << 32) - 1]),
                    st.integers(0, (1 << 32) - 1))
requests = st.lists(st.tuples(
    st.one_of(st.integers(0, 9), st.integers(0, 0xFFFF)),  # type
    st.one_of(st.sampled_from([0, 1, 2, 4, 8, 16, 32]), st.integers(0, 0xFFFF)),  # flags
    offsets, lengths,
    st.binary(max_size=8192),  # what follows a WRITE header (may be short or long)
), max_size=12)


@FUZZ
@given(requests, st.binary(max_size=64))
def test_random_requests(served: Served, witness: RawClient,
                         reqs: list[tuple[int, int, int, int, bytes]], tail: bytes) -> None:
    stream = bytearray(valid_handshake())
    for cookie, (typ, flags, offset, length, payload) in enumerate(reqs):
        stream += struct.pack(">IHHQQI", nbd.NBD_REQUEST_MAGIC, flags, typ, cookie, offset,
                              length)
        if typ == nbd.NBD_CMD_WRITE:
            stream += payload
    stream += tail
    throw(served, bytes(stream))
    check_alive(served, witness, next(_counter))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 64)), max_size=8))
def test_well_formed_requests_are_all_answered(served: Served, witness: RawClient,
                                               ops: list[tuple[int, int]]) -> None:
    """Valid and invalid requests on one connection: each gets exactly one final reply."""
    c = RawClient(str(served.sock), "Malloc1")
    try:
        cookies = []
        for typ, blocks in ops:
            offset, length = 4096 * blocks, 4096 * (blocks % 5)
            payload = bytes(length) if typ == nbd.NBD_CMD_WRITE else None
            if typ == nbd.NBD_CMD_DISC:
                continue
            cookies.append(c.send(typ, offset, length, 0, payload))
        for ck in cookies:
            c.wait(ck)
        assert not c.inflight
    finally:
        c.disconnect()
    check_alive(served, witness, next(_counter))
