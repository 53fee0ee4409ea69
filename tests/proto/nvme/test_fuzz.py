"""Property tests: random and mutated PDU streams against :class:`PduParser`.

Whatever the peer sends, the parser returns PDU events or raises :class:`PduError`, and
never holds more than one PDU of its limits (plus the last input) in its buffer.
"""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybdev.proto import nvme

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_CAPSULE = 8192
MAX_DATA = 16384
BOUND = 4 + nvme.PDO_MAX + max(MAX_CAPSULE, MAX_DATA) + 4 + 128


def h2c_parts(hdgst: bool, ddgst: bool) -> list[bytes]:
    f = nvme.Framer(hdgst, ddgst)
    return [
        b"".join(f.capsule_cmd(nvme.encode_read(1, 1, 0, 8, 512))),
        b"".join(f.capsule_cmd(nvme.encode_write(2, 1, 0, 1, 512, in_capsule=True),
                               b"w" * 512)),
        b"".join(f.capsule_cmd(nvme.encode_connect(3, 0, 31, 5000),
                               nvme.ConnectData(bytes(16), 0xFFFF, "s", "h").encode())),
        b"".join(f.h2c_data(4, 0, 0, b"d" * 4096, last=False)),
        b"".join(f.h2c_data(4, 0, 4096, b"e" * 100, last=True)),
        f.term_req(nvme.PDU_H2C_TERM_REQ, 1, 0, b"x" * 30),
    ]


def c2h_parts(hdgst: bool, ddgst: bool) -> list[bytes]:
    f = nvme.Framer(hdgst, ddgst)
    return [
        f.capsule_resp(nvme.encode_cqe(1)),
        b"".join(f.c2h_data(1, 0, b"r" * 4096, last=True, success=True)),
        f.r2t(2, 1, 0, 8192),
        f.term_req(nvme.PDU_C2H_TERM_REQ, 2, 0),
    ]


def run(parser: nvme.PduParser, stream: bytes, cuts: list[int]) -> None:
    pos = 0
    try:
        for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
            events = parser.feed(stream[pos:cut])
            assert all(isinstance(e, (nvme.ICReq, nvme.ICResp, nvme.CapsuleCmd,
                                      nvme.CapsuleResp, nvme.H2CData, nvme.C2HData, nvme.R2T,
                                      nvme.TermReq)) for e in events)
            assert parser.buffered <= BOUND + (cut - pos)
            pos = cut
    except nvme.PduError as err:
        assert 1 <= err.fes <= 6
        assert len(err.header) <= 128


def mutated(parts: list[bytes], picks: list[int], flips: list[tuple[int, int]]) -> bytes:
    stream = bytearray(b"".join(parts[p % len(parts)] for p in picks))
    for where, value in flips:
        if stream:
            stream[where % len(stream)] = value
    return bytes(stream)


@FUZZ
@given(st.booleans(), st.booleans(), st.lists(st.integers(0, 20), max_size=12),
       st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
       st.lists(st.integers(0, 1 << 20), max_size=5))
def test_controller_parser_on_mutated_streams(hdgst: bool, ddgst: bool, picks: list[int],
                                              flips: list[tuple[int, int]],
                                              cuts: list[int]) -> None:
    stream = nvme.encode_ic_req(hdgst=hdgst, ddgst=ddgst) + mutated(
        h2c_parts(hdgst, ddgst), picks, flips)
    parser = nvme.PduParser(nvme.CONTROLLER, max_capsule_data=MAX_CAPSULE, max_data=MAX_DATA)
    run(parser, stream, cuts)


@FUZZ
@given(st.booleans(), st.booleans(), st.lists(st.integers(0, 20), max_size=12),
       st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6),
       st.lists(st.integers(0, 1 << 20), max_size=5))
def test_host_parser_on_mutated_streams(hdgst: bool, ddgst: bool, picks: list[int],
                                        flips: list[tuple[int, int]], cuts: list[int]) -> None:
    stream = nvme.encode_ic_resp(MAX_DATA, hdgst=hdgst, ddgst=ddgst) + mutated(
        c2h_parts(hdgst, ddgst), picks, flips)
    parser = nvme.PduParser(nvme.HOST, max_data=MAX_DATA)
    run(parser, stream, cuts)


@FUZZ
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=4))
def test_random_bytes_after_ic(noise: bytes, cuts: list[int]) -> None:
    parser = nvme.PduParser(nvme.CONTROLLER, max_capsule_data=MAX_CAPSULE, max_data=MAX_DATA)
    run(parser, nvme.encode_ic_req() + noise, cuts)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_from_the_start(noise: bytes) -> None:
    for role in (nvme.CONTROLLER, nvme.HOST):
        run(nvme.PduParser(role), noise, [])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 4095), st.binary(min_size=1, max_size=64)),
                max_size=8), st.integers(0, 4095))
def test_structure_decoders_raise_only_decode_error(patches: list[tuple[int, bytes]],
                                                    cut: int) -> None:
    page = bytearray(4096)
    for where, chunk in patches:
        page[where:where + len(chunk)] = chunk
    data = bytes(page[:4096])
    for decode in (nvme.IdentifyController.decode, nvme.IdentifyNamespace.decode,
                   nvme.decode_ns_list, nvme.decode_ns_descriptors,
                   nvme.decode_discovery_entries, nvme.ConnectData.decode):
        for chunk in (data, data[:cut], data[:1024]):
            with contextlib.suppress(nvme.DecodeError):
                decode(chunk)
