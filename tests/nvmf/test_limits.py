"""What NVMe/TCP hosts can make the target hold: bounded, documented, freed at close.

Each test measures the target's resident memory (not time) around hostile hosts written
with the test initiator: queues full of 128 KiB reads whose data is never read, and
queues full of 128 KiB writes whose data never completes (docs/guide.md, "Limits").
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from pybdev.proto import nvme
from tests.conftest import Target, wait_until
from tests.nbd.test_limits import rss
from tests.nvmf.conftest import NQN, free_port
from tests.nvmf.initiator import Host, Queue

MIB = 1 << 20
IO = 128 * 1024  # the default max_io_size
DEPTH = 127  # commands per queue (sqsize 126 + 1): the most the target accepts
QUEUES = 12
CAP_MIB = 32


def setup(start_target: Callable[..., Target]) -> tuple[Target, int]:
    t = start_target("--nvmf-max-buffered-mb", str(CAP_MIB))
    port = free_port()
    t.rpc("bdev_malloc_create", {"name": "M", "num_blocks": 16384, "block_size": 4096})
    t.rpc("nvmf_create_transport", {"trtype": "TCP"})
    t.rpc("nvmf_create_subsystem", {"nqn": NQN, "allow_any_host": True})
    t.rpc("nvmf_subsystem_add_ns", {"nqn": NQN, "namespace": {"bdev_name": "M"}})
    t.rpc("nvmf_subsystem_add_listener", {"nqn": NQN, "listen_address": {
        "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": str(port)}})
    return t, port


def stall(q: Queue) -> None:
    """Keep the host's receive window small: the target, not the kernel, must hold."""
    q.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


def hold_reads(port: int) -> Callable[[], None]:
    """One hostile host: every queue full of 128 KiB reads whose data it never reads;
    returns what closes it."""
    host = Host(port, NQN)
    queues = host.open_io(QUEUES, sqsize=DEPTH - 1)
    for q in queues:
        stall(q)
        q.send(*[b"".join(bytes(p) for p in q.framer.capsule_cmd(
            nvme.encode_read(cid, 1, (cid * 32) % 16384, 32, 4096))) for cid in range(DEPTH)])
    time.sleep(3)  # let the target take what it will (memory is asserted, not time)

    def close() -> None:
        host.io.clear()
        for q in queues:
            q.close()
    return close


def test_reads_never_read_hold_at_most_the_cap(start_target: Callable[..., Target]) -> None:
    t, port = setup(start_target)
    Host(port, NQN).close()  # the first connection's one-time costs are not the bound's
    before = rss(t)
    asked = QUEUES * DEPTH * IO  # 190 MiB of read data asked for and never read
    # Twice: the second round must reuse what the first freed at close. RSS is not
    # asserted to shrink, since the allocator may keep freed memory for reuse.
    for round_ in (1, 2):
        close = hold_reads(port)
        grown = rss(t) - before
        assert grown < (CAP_MIB + 24) * MIB, \
            f"round {round_}: {grown / MIB:.0f} MiB held for {asked / MIB:.0f} MiB"
        close()
    # a new host reads normally
    again = Host(port, NQN)
    (q,) = again.open_io(1)
    _, data = q.ok(lambda c: nvme.encode_read(c, 1, 64, 32, 4096))
    assert data == bytes(IO)
    again.close()


def test_writes_that_stall_get_r2ts_only_within_the_cap(
        start_target: Callable[..., Target]) -> None:
    t, port = setup(start_target)
    host = Host(port, NQN)
    queues = host.open_io(QUEUES, sqsize=DEPTH - 1)
    before = rss(t)
    for q in queues:
        q.send(*[b"".join(bytes(p) for p in q.framer.capsule_cmd(
            nvme.encode_write(cid, 1, (cid * 32) % 16384, 32, 4096))) for cid in range(DEPTH)])
    r2ts = 0
    for q in queues:  # every R2T sent: fill all of its buffer but the last 4 KiB, then stall
        q.sock.settimeout(2)
        while True:
            try:
                pdu = q.next_pdu()
            except TimeoutError:
                break
            assert isinstance(pdu, nvme.R2T), pdu
            r2ts += 1
            q.send(*q.framer.h2c_data(pdu.cccid, pdu.ttag, 0, b"\x5a" * (pdu.r2tl - 4096),
                                      last=False))
    assert 0 < r2ts <= CAP_MIB * MIB // IO, f"{r2ts} R2Ts of {IO} bytes"
    assert r2ts < QUEUES * DEPTH
    grown = rss(t) - before
    assert grown < (CAP_MIB + 24) * MIB, f"{grown / MIB:.0f} MiB for {r2ts} stalled writes"
    host.io.clear()
    for q in queues:
        q.close()
    wait_until(lambda: rss(t) < before + 16 * MIB,
               what=f"memory back after close (had grown {grown / MIB:.0f} MiB)")
    # the grants came back: a new host's large write gets its R2T and completes
    again = Host(port, NQN)
    (q,) = again.open_io(1)
    q.ok(lambda c: nvme.encode_write(c, 1, 0, 32, 4096), b"\x33" * IO)
    _, data = q.ok(lambda c: nvme.encode_read(c, 1, 0, 32, 4096))
    assert data == b"\x33" * IO
    again.close()


def test_one_connection_holds_at_most_its_share(start_target: Callable[..., Target]) -> None:
    """A single queue of stalled writes gets R2Ts for 8 MiB, not for its whole depth."""
    _, port = setup(start_target)
    host = Host(port, NQN)
    (q,) = host.open_io(1, sqsize=DEPTH - 1)
    q.send(*[b"".join(bytes(p) for p in q.framer.capsule_cmd(
        nvme.encode_write(cid, 1, 0, 32, 4096))) for cid in range(DEPTH)])
    q.sock.settimeout(2)
    r2ts = 0
    while True:
        try:
            pdu = q.next_pdu()
        except TimeoutError:
            break
        assert isinstance(pdu, nvme.R2T)
        r2ts += 1
    assert r2ts == 8 * MIB // IO
    host.close()
