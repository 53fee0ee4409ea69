"""The network export's fast paths, with data verified end to end on both event loops.

The target picks uvloop when it is installed; ``PYBDEV_EVENT_LOOP=asyncio`` makes it run
asyncio's own loop, where replies leave through ``pybdev.nbd.sendq`` (gathered
``sendmsg``, no join). Large sequential reads at queue depth 8 and 1 MiB writes at depth 4
go through fio's verify and qemu-io's pattern checks: on malloc a large write is received
straight into the bdev's memory (zero copy), on a passthru above it piece by piece into
reused buffers. Adaptive polling (``--nbd-poll-us``) serves the same data checks, with
several clients at once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pybdev.nbd import sendq
from tests.conftest import Target

from .conftest import need, run, unix_uri

LOOPS = ["asyncio", "uvloop"]


def _exported(start_target: Callable[..., Target], sockdir: Path, loop: str,
              monkeypatch: pytest.MonkeyPatch, *args: str, passthru: bool = False) -> str:
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the [fast] extra)")
        monkeypatch.delenv("PYBDEV_EVENT_LOOP", raising=False)
    else:
        monkeypatch.setenv("PYBDEV_EVENT_LOOP", "asyncio")
    t = start_target(*args)
    t.rpc("bdev_malloc_create", {"name": "Malloc0", "num_blocks": 65536, "block_size": 512})
    name = "Malloc0"
    if passthru:  # no zero-copy buffers: large writes take the piecewise path
        name = t.rpc("bdev_passthru_create", {"base_bdev_name": "Malloc0", "name": "Pass0"})
    uri: str = t.rpc("nbd_start_disk", {"bdev_name": name,
                                        "nbd_device": unix_uri(name, sockdir / "f.sock")})
    return uri


def _fio(uri: str, *args: str) -> None:
    res = subprocess.run(["fio", "--name=v", "--ioengine=nbd", f"--uri={uri}", "--size=32M",
                          "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                          "--randrepeat=0", *args], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "verify:" not in res.stderr, res.stderr


@need("fio")
@pytest.mark.parametrize("bdev", ["malloc", "passthru"])
@pytest.mark.parametrize("loop", LOOPS)
def test_large_transfers_verified(loop: str, bdev: str, start_target: Callable[..., Target],
                                  sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = _exported(start_target, sockdir, loop, monkeypatch, passthru=bdev == "passthru")
    # 1 MiB writes at depth 4 (larger than the receive buffer: the piecewise path), read
    # back and checked at the same size; then 128 KiB random writes and reads at depth 8.
    _fio(uri, "--rw=write", "--bs=1m", "--iodepth=4")
    _fio(uri, "--rw=randwrite", "--bs=128k", "--iodepth=8")
    _fio(uri, "--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=8M")


@need("fio")
@pytest.mark.parametrize("loop", LOOPS)
def test_polling_serves_verified_data_to_several_clients(
        loop: str, start_target: Callable[..., Target], sockdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A window far above any client's turnaround (spins mostly succeed); two clients at
    once, so one client's spin must not starve the other, then a large write."""
    uri = _exported(start_target, sockdir, loop, monkeypatch, "--nbd-poll-us", "1000")
    _fio(uri, "--rw=randwrite", "--bs=4k", "--iodepth=1", "--size=4M", "--numjobs=2",
         "--offset_increment=4M")
    _fio(uri, "--rw=randrw", "--bs=4k", "--iodepth=1", "--size=4M")
    _fio(uri, "--rw=write", "--bs=1m", "--iodepth=2", "--size=8M")


@need("qemu-io")
@pytest.mark.parametrize("loop", LOOPS)
def test_pipelined_large_reads_keep_order(loop: str, start_target: Callable[..., Target],
                                          sockdir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Several multi-MiB reads in flight at once: each reply's bytes arrive whole and in
    their own reply, although the socket takes only part of a batch per send."""
    uri = _exported(start_target, sockdir, loop, monkeypatch)
    cmds: list[str] = []
    for i in range(8):
        cmds += ["-c", f"write -P {0x11 * (i + 1)} {i * 4}M 4M"]
    for i in range(8):
        cmds += ["-c", f"aio_read -P {0x11 * (i + 1)} {i * 4}M 4M"]
    cmds += ["-c", "aio_flush"]
    out = run(["qemu-io", "-f", "raw", *cmds, uri]).stdout
    assert "Pattern verification failed" not in out, out
    assert out.count("read 4194304/4194304 bytes") == 8, out


# -- the send queue alone, on a socket pair -------------------------------------------------
async def test_send_queue_sends_everything_in_order_with_flow_control() -> None:
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_add_writer"):
        pytest.skip("the send queue serves asyncio's selector loop only")
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    events: list[str] = []
    chunks = [os.urandom(n) for n in (28, 131072, 16, 3 << 20, 7, 65536)] * 4
    expected = b"".join(chunks)

    class Proto(asyncio.Protocol):
        def pause_writing(self) -> None:
            events.append("pause")

        def resume_writing(self) -> None:
            events.append("resume")

    transport, protocol = await loop.connect_accepted_socket(Proto, a)
    assert sendq.usable(transport, loop) == (
        type(transport).writelines is asyncio.WriteTransport.writelines)
    if not sendq.usable(transport, loop):
        transport.close()
        b.close()
        pytest.skip("this Python's transport gathers in writelines itself")
    q = sendq.SendQueue(transport, loop, protocol.pause_writing, protocol.resume_writing,
                        lambda exc: events.append(f"fatal {exc}"))
    q.writelines(chunks[:12])
    q.writelines(chunks[12:])
    assert q.queued > sendq.HIGH_WATER and events == ["pause"]
    got = bytearray()
    while len(got) < len(expected):
        try:
            got += b.recv(1 << 20)
        except BlockingIOError:
            await asyncio.sleep(0.001)
    assert bytes(got) == expected
    assert q.queued == 0 and events == ["pause", "resume"]
    q.close()
    await asyncio.sleep(0.01)
    assert transport.is_closing()
    q.detach()
    b.close()
