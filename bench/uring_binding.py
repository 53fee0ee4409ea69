"""io_uring from Python: pybdev's cffi ABI-mode binding against the alternatives.

The decision in ``docs/decisions/io_uring-binding.md`` rests on these numbers. Variants:

* baselines: ``os.pread`` (allocates a bytes per call) and ``os.preadv`` into one buffer,
  both synchronous (queue depth 1);
* (a) ``pybdev.uring`` (cffi ABI mode over the raw syscalls, rings mmap'ed): a Python loop
  keeping 32 reads in flight; the same with registered buffers and a fixed file; and an
  asyncio variant (eventfd + ``loop.add_reader``, 32 coroutines);
* (b) a small cffi API-mode module compiled here against Debian's liburing-dev 2.3, driven
  by the same Python loop. Skipped, with the reason, when gcc, Python headers or
  liburing-dev are missing (``apt-get install liburing-dev``).

Plus per-operation costs (prep, NOP round trips, the ublk-like URING_CMD re-arm loop).
All reads are 4 KiB at random aligned offsets of a page-cached 64 MiB file. Each number is
the best of ``--repeat`` rounds of ``--ops`` operations; the variants run
interleaved, one round of each after the other. Usage::

    python bench/uring_binding.py [--ops 100000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import random
import shutil
import struct
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pybdev import uring

FILE_SIZE = 64 << 20
BLOCK = 4096
QD = 32


def best_rate(fn: Callable[[int], None], ops: int, repeat: int) -> float:
    """Best ops/s over ``repeat`` runs of ``fn(ops)``."""
    best = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(ops)
        best = max(best, ops / (time.perf_counter() - t0))
    return best


# ----------------------------------------------------------------------- baselines --
def make_offsets(n: int) -> list[int]:
    rnd = random.Random(42)
    blocks = FILE_SIZE // BLOCK
    return [rnd.randrange(blocks) * BLOCK for _ in range(n)]


def bench_pread(fd: int, offsets: list[int]) -> Callable[[int], None]:
    def run(ops: int) -> None:
        pread = os.pread
        for i in range(ops):
            pread(fd, BLOCK, offsets[i & 0xFFFF])
    return run


def bench_preadv(fd: int, offsets: list[int]) -> Callable[[int], None]:
    buf = [bytearray(BLOCK)]

    def run(ops: int) -> None:
        preadv = os.preadv
        for i in range(ops):
            preadv(fd, buf, offsets[i & 0xFFFF])
    return run


# ------------------------------------------------------------------- (a) pybdev ring --
def bench_ring_reads(fd: int, offsets: list[int], fixed: bool) -> Callable[[int], None]:
    ring = uring.Ring(64)
    bufs = uring.Buffer(BLOCK * QD)
    addrs = [bufs.addr + BLOCK * i for i in range(QD)]
    if fixed:
        ring.register_buffers([bufs])
        ring.register_files([fd])

    def run(ops: int) -> None:
        assert not bufs.view.readonly  # keeps the buffer alive as long as run is
        issued = 0
        done = 0
        if fixed:
            prep = ring.prep_read_fixed
            for slot in range(QD):
                prep(0, addrs[slot], BLOCK, offsets[issued & 0xFFFF], 0, slot,
                     uring.IOSQE_FIXED_FILE)
                issued += 1
        else:
            prep_r = ring.prep_read
            for slot in range(QD):
                prep_r(fd, addrs[slot], BLOCK, offsets[issued & 0xFFFF], slot)
                issued += 1
        reap = ring.submit_and_reap
        while done < ops:
            for slot, res, _ in reap(1):
                if res != BLOCK:
                    raise OSError(-res, "read failed")
                done += 1
                if issued < ops:
                    if fixed:
                        prep(0, addrs[slot], BLOCK, offsets[issued & 0xFFFF], 0, slot,
                             uring.IOSQE_FIXED_FILE)
                    else:
                        prep_r(fd, addrs[slot], BLOCK, offsets[issued & 0xFFFF], slot)
                    issued += 1
    return run


def bench_ring_asyncio(fd: int, offsets: list[int], uvloop: Any = None
                       ) -> Callable[[int], None]:
    def run(ops: int) -> None:
        if uvloop is None:
            asyncio.run(_asyncio_reads(fd, offsets, ops))
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_asyncio_reads(fd, offsets, ops))
    return run


async def _asyncio_reads(fd: int, offsets: list[int], ops: int) -> None:
    loop = asyncio.get_running_loop()
    ring = uring.Ring(64)
    efd = ring.open_eventfd()
    bufs = uring.Buffer(BLOCK * QD)
    waiting: dict[int, asyncio.Future[int]] = {}
    flush_scheduled = False

    def flush() -> None:
        nonlocal flush_scheduled
        flush_scheduled = False
        ring.submit()

    def on_cqes() -> None:
        uring.drain_eventfd(efd)
        for ud, res, _ in ring.reap():
            waiting.pop(ud).set_result(res)

    async def read(slot: int, offset: int) -> int:
        nonlocal flush_scheduled
        fut = loop.create_future()
        waiting[slot] = fut
        ring.prep_read(fd, bufs.addr + slot * BLOCK, BLOCK, offset, slot)
        if not flush_scheduled:  # one io_uring_enter per loop tick, not per read
            flush_scheduled = True
            loop.call_soon(flush)
        return await fut

    async def worker(slot: int, count: int) -> None:
        for i in range(count):
            if await read(slot, offsets[(slot * 7919 + i) & 0xFFFF]) != BLOCK:
                raise OSError("short read")

    loop.add_reader(efd, on_cqes)
    try:
        await asyncio.gather(*(worker(s, ops // QD) for s in range(QD)))
    finally:
        loop.remove_reader(efd)
        ring.close()
        bufs.close()


def bench_os_getppid(ops: int) -> None:
    getppid = os.getppid
    for _ in range(ops):
        getppid()


def bench_cffi_abi_syscall(ops: int) -> None:
    # The same trivial syscall through the binding's cffi ABI-mode syscall() with all
    # seven arguments io_uring_enter needs: the fixed cost of one io_uring_enter call.
    from pybdev.uring._native import load

    syscall = load().lib.syscall
    for _ in range(ops):
        syscall(110, 0, 0, 0, 0, 0, 0)


def bench_prep_read(ops: int) -> None:
    with uring.Ring(64) as ring:
        prep = ring.prep_read
        for _ in range(ops // 32):
            for j in range(32):
                prep(5, 4096, 4096, 0, j)
            ring._tail -= 32  # discard without submitting


def make_bench_prep_cmd(sqe128: bool) -> Callable[[int], None]:
    io_cmd = struct.Struct("<HHiQ")

    def run(ops: int) -> None:
        with uring.Ring(64, sqe128=sqe128) as ring:
            prep = ring.prep_uring_cmd
            pack = io_cmd.pack
            for _ in range(ops // 32):
                for tag in range(32):
                    prep(0, 0xC0107521, pack(0, tag, 4096, 0), tag, uring.IOSQE_FIXED_FILE)
                ring._tail -= 32
    return run


def bench_ring_nop_qd32(ops: int) -> None:
    with uring.Ring(64) as ring:
        prep = ring.prep_nop
        for _ in range(ops // 32):
            for j in range(32):
                prep(j)
            ring.submit_and_reap(32)


def make_bench_cmd_loop(fd: int) -> Callable[[int], None]:
    # A ublk poller's shape: every completion re-arms its tag with a fresh URING_CMD
    # built from a struct. On a regular file each command completes at once with
    # -EOPNOTSUPP, so this measures the Python side of a COMMIT_AND_FETCH loop.
    io_cmd = struct.Struct("<HHiQ")

    def run(ops: int) -> None:
        with uring.Ring(64) as ring:
            ring.register_files([fd])
            prep = ring.prep_uring_cmd
            pack = io_cmd.pack
            for tag in range(QD):
                prep(0, 0xC0107520, pack(0, tag, 0, 0), tag, uring.IOSQE_FIXED_FILE)
            done = 0
            while done < ops:
                for tag, _res, _ in ring.submit_and_reap(1):
                    done += 1
                    prep(0, 0xC0107521, pack(0, tag, 4096, 0), tag, uring.IOSQE_FIXED_FILE)
            ring.submit_and_reap(QD)
    return run


# -------------------------------------------------------------- (b) cffi API mode --
SHIM_CDEF = """
int shim_init(unsigned entries);
void shim_exit(void);
int shim_prep_read(int fd, uint64_t addr, unsigned len, uint64_t off, uint64_t ud);
int shim_prep_nop(uint64_t ud);
int shim_submit(void);
int shim_submit_and_wait(unsigned n);
unsigned shim_reap(char *out, unsigned max);
void shim_discard(unsigned n);
int shim_register_file(int fd);
long shim_getppid(void);
int shim_prep_uring_cmd16(int fd, uint32_t cmd_op, const char *cmd, uint64_t ud,
                          unsigned flags);
"""

# Written for this benchmark against liburing 2.3's documented API (no
# io_uring_prep_uring_cmd there, and not needed to compare the read path).
SHIM_SOURCE = r"""
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <liburing.h>

static struct io_uring ring;

int shim_init(unsigned entries) { return io_uring_queue_init(entries, &ring, 0); }
void shim_exit(void) { io_uring_queue_exit(&ring); }

int shim_prep_read(int fd, uint64_t addr, unsigned len, uint64_t off, uint64_t ud) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, (void *)(uintptr_t)addr, len, off);
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

int shim_prep_nop(uint64_t ud) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

int shim_submit(void) { return io_uring_submit(&ring); }
int shim_submit_and_wait(unsigned n) { return io_uring_submit_and_wait(&ring, n); }

long shim_getppid(void) { return syscall(SYS_getppid); }

int shim_register_file(int fd) { return io_uring_register_files(&ring, &fd, 1); }

/* liburing 2.3 has no io_uring_prep_uring_cmd: fill the fields by hand, as pybdev does. */
int shim_prep_uring_cmd16(int fd, uint32_t cmd_op, const char *cmd, uint64_t ud,
                          unsigned flags) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, NULL, 0, 0);
    sqe->cmd_op = cmd_op;
    memcpy(sqe->cmd, cmd, 16);
    sqe->flags = flags;
    io_uring_sqe_set_data64(sqe, ud);
    return 0;
}

/* Forgets the last n unsubmitted SQEs (to time preparation alone). */
void shim_discard(unsigned n) { ring.sq.sqe_tail -= n; }

/* Copies up to max 16-byte CQEs to out (for struct.iter_unpack) and consumes them. */
unsigned shim_reap(char *out, unsigned max) {
    struct io_uring_cqe *cqes[256];
    unsigned n = io_uring_peek_batch_cqe(&ring, cqes, max > 256 ? 256 : max);
    for (unsigned i = 0; i < n; i++)
        memcpy(out + 16 * i, cqes[i], 16);
    io_uring_cq_advance(&ring, n);
    return n;
}
"""


def build_shim(workdir: Path) -> tuple[Any | None, str]:
    """Compile the API-mode module; (module, "") or (None, why not)."""
    if not Path("/usr/include/liburing.h").exists():
        return None, "liburing-dev is not installed"
    if shutil.which(sysconfig.get_config_var("CC").split()[0] or "cc") is None:
        return None, "no C compiler"
    include = sysconfig.get_paths()["include"]
    if not Path(include, "Python.h").exists():
        return None, f"no Python headers in {include}"
    import cffi

    ffib = cffi.FFI()
    ffib.cdef(SHIM_CDEF)
    ffib.set_source("_uring_shim", SHIM_SOURCE, libraries=["uring"],
                    extra_compile_args=["-O2"])
    t0 = time.perf_counter()
    try:
        so = ffib.compile(tmpdir=str(workdir), verbose=False)
    except Exception as exc:  # a build failure is a finding, not a crash
        return None, f"build failed: {exc}"
    build_s = time.perf_counter() - t0
    spec = importlib.util.spec_from_file_location("_uring_shim", so)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, f"built in {build_s:.1f} s"


def bench_shim_reads(shim: Any, fd: int, offsets: list[int]) -> Callable[[int], None]:
    lib, ffi = shim.lib, shim.ffi
    bufs = uring.Buffer(BLOCK * QD)
    addrs = [bufs.addr + BLOCK * i for i in range(QD)]
    out = ffi.new("char[]", 16 * 256)
    out_buf = ffi.buffer(out)
    unpack = struct.Struct("<QiI").iter_unpack

    def run(ops: int) -> None:
        assert not bufs.view.readonly  # keeps the buffer alive as long as run is
        lib.shim_init(64)
        try:
            issued = done = 0
            prep = lib.shim_prep_read
            for slot in range(QD):
                prep(fd, addrs[slot], BLOCK, offsets[issued & 0xFFFF], slot)
                issued += 1
            while done < ops:
                lib.shim_submit_and_wait(1)
                n = lib.shim_reap(out, 256)
                for slot, res, _ in unpack(out_buf[: 16 * n]):
                    if res != BLOCK:
                        raise OSError(-res, "read failed")
                    done += 1
                    if issued < ops:
                        prep(fd, addrs[slot], BLOCK, offsets[issued & 0xFFFF], slot)
                        issued += 1
        finally:
            lib.shim_exit()
    return run


def bench_shim_nop_qd32(shim: Any) -> Callable[[int], None]:
    lib, ffi = shim.lib, shim.ffi
    out = ffi.new("char[]", 16 * 256)
    out_buf = ffi.buffer(out)
    unpack = struct.Struct("<QiI").iter_unpack

    def run(ops: int) -> None:
        lib.shim_init(64)
        try:
            for _ in range(ops // 32):
                for j in range(32):
                    lib.shim_prep_nop(j)
                lib.shim_submit_and_wait(32)
                n = lib.shim_reap(out, 256)
                list(unpack(out_buf[: 16 * n]))
        finally:
            lib.shim_exit()
    return run


def bench_shim_cmd_loop(shim: Any, fd: int) -> Callable[[int], None]:
    lib, ffi = shim.lib, shim.ffi
    out = ffi.new("char[]", 16 * 256)
    out_buf = ffi.buffer(out)
    unpack = struct.Struct("<QiI").iter_unpack
    io_cmd = struct.Struct("<HHiQ")

    def run(ops: int) -> None:
        lib.shim_init(64)
        try:
            lib.shim_register_file(fd)
            prep = lib.shim_prep_uring_cmd16
            pack = io_cmd.pack
            for tag in range(QD):
                prep(0, 0xC0107520, pack(0, tag, 0, 0), tag, uring.IOSQE_FIXED_FILE)
            done = 0
            while done < ops:
                lib.shim_submit_and_wait(1)
                n = lib.shim_reap(out, 256)
                for tag, _res, _ in unpack(out_buf[: 16 * n]):
                    done += 1
                    prep(0, 0xC0107521, pack(0, tag, 4096, 0), tag, uring.IOSQE_FIXED_FILE)
        finally:
            lib.shim_exit()
    return run


def _shim_getppid(shim: Any) -> Callable[[int], None]:
    def run(ops: int) -> None:
        f = shim.lib.shim_getppid
        for _ in range(ops):
            f()
    return run


def bench_shim_prep_read(shim: Any) -> Callable[[int], None]:
    lib = shim.lib

    def run(ops: int) -> None:
        lib.shim_init(64)
        try:
            prep = lib.shim_prep_read
            for _ in range(ops // 32):
                for j in range(32):
                    prep(5, 4096, 4096, 0, j)
                lib.shim_discard(32)
        finally:
            lib.shim_exit()
    return run


# ---------------------------------------------------------------------------- main --
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not uring.available():
        sys.exit(f"io_uring unavailable: {uring.unavailable_reason()}")
    ops, rep = args.ops, args.repeat
    results: dict[str, Any] = {
        "machine": platform.machine(), "kernel": platform.release(),
        "python": platform.python_version(), "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0], "ops": ops, "repeat": rep,
        "ops_per_s": {}, "ns_per_op": {},
    }
    rates: dict[str, float] = results["ops_per_s"]
    costs: dict[str, float] = results["ns_per_op"]

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data"
        with open(path, "wb") as f:
            for _ in range(FILE_SIZE // (1 << 20)):
                f.write(os.urandom(1 << 20))
        fd = os.open(path, os.O_RDONLY)
        offsets = make_offsets(1 << 16)
        bench_pread(fd, offsets)(1 << 14)  # warm the page cache

        # (kind, name, fn): kind "rate" reports ops/s, "cost" ns/op. The variants run
        # interleaved, round after round, and keep their best round, so a burst of load
        # from other processes does not land on one variant only.
        cases: list[tuple[str, str, Callable[[int], None]]] = [
            ("rate", "os.pread (QD1, allocates)", bench_pread(fd, offsets)),
            ("rate", "os.preadv into one buffer (QD1)", bench_preadv(fd, offsets)),
            ("rate", "(a) pybdev.uring QD32", bench_ring_reads(fd, offsets, fixed=False)),
            ("rate", "(a) pybdev.uring QD32 fixed buf+file",
             bench_ring_reads(fd, offsets, fixed=True)),
            ("rate", "(a) pybdev.uring asyncio eventfd, 32 coroutines",
             bench_ring_asyncio(fd, offsets)),
        ]
        try:
            import uvloop
        except ImportError:
            pass
        else:
            cases.append(("rate", "(a) pybdev.uring uvloop eventfd, 32 coroutines",
                          bench_ring_asyncio(fd, offsets, uvloop)))
        cases += [
            ("cost", "(a) prep_read", bench_prep_read),
            ("cost", "(a) struct.pack + prep_uring_cmd, 64-byte SQE",
             make_bench_prep_cmd(False)),
            ("cost", "(a) struct.pack + prep_uring_cmd, 128-byte SQE",
             make_bench_prep_cmd(True)),
            ("cost", "(a) NOP x32 prep+submit+reap, per op", bench_ring_nop_qd32),
            ("cost", "(a) URING_CMD re-arm loop QD32, per op", make_bench_cmd_loop(fd)),
            ("cost", "os.getppid() (C-API call + syscall)", bench_os_getppid),
            ("cost", "(a) cffi ABI syscall(getppid), 7 args", bench_cffi_abi_syscall),
        ]
        shim, note = build_shim(Path(tmp) / "shim")
        results["shim"] = note
        if shim is not None:
            cases += [
                ("rate", "(b) cffi API-mode liburing shim QD32",
                 bench_shim_reads(shim, fd, offsets)),
                ("cost", "(b) prep_read", bench_shim_prep_read(shim)),
                ("cost", "(b) NOP x32 prep+submit+reap, per op", bench_shim_nop_qd32(shim)),
                ("cost", "(b) URING_CMD re-arm loop QD32, per op",
                 bench_shim_cmd_loop(shim, fd)),
                ("cost", "(b) cffi API-mode call doing getppid", _shim_getppid(shim)),
            ]
        best: dict[str, float] = {}
        for _ in range(rep):
            for _kind, name, fn in cases:
                best[name] = max(best.get(name, 0.0), best_rate(fn, ops, 1))
        for kind, name, _fn in cases:
            if kind == "rate":
                rates[name] = best[name]
            else:
                costs[name] = 1e9 / best[name]
        os.close(fd)
    results["loadavg_end"] = os.getloadavg()[0]

    print(f"{results['kernel']} {results['machine']} Python {results['python']}, "
          f"{results['cpus']} CPUs, load {results['loadavg_start']:.2f} -> "
          f"{results['loadavg_end']:.2f}; best of {rep} x {ops} ops")
    print(f"(b) shim: {note}")
    print("\n4 KiB random reads, page-cached 64 MiB file")
    for name, rate in rates.items():
        print(f"  {name:<52} {rate / 1000:8.0f} k/s  ({1e9 / rate:6.0f} ns/op)")
    print("\nper-operation costs")
    for name, ns in costs.items():
        print(f"  {name:<52} {ns:8.0f} ns")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
