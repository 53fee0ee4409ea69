"""CPU cores: SPDK's core masks, core lock files, and the threads pybdev runs.

``framework_get_reactors`` reports what really runs (docs/guide.md, "Reactors and
scheduler"): one reactor for the event loop's thread on the first core of ``-m``, and the
ublk queue threads grouped by the core each is pinned to. Busy and idle times are the
threads' CPU time and the rest of their lifetime, read from ``/proc/self/task``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from pybdev.errors import OperationError

#: Where SPDK's claim_cpu_cores (lib/event/app.c) keeps one lock file per core.
LOCK_PATH = "/var/tmp/spdk_cpu_lock_{:03d}"
TICK_RATE = 1_000_000_000  # busy/idle/elapsed are nanoseconds


# -- masks --------------------------------------------------------------------------------
def parse_cpumask(text: str) -> frozenset[int]:
    """SPDK's forms: hex with or without 0x, or a list "[0,2-3]". ValueError when invalid."""
    text = text.strip()
    if not text:
        raise ValueError("empty cpumask")
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"unterminated cpu list {text!r}")
        cpus: set[int] = set()
        for part in text[1:-1].split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not m:
                raise ValueError(f"bad cpu list element {part!r}")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) else lo
            if hi < lo:
                raise ValueError(f"bad cpu range {part!r}")
            cpus.update(range(lo, hi + 1))
        if not cpus:
            raise ValueError("empty cpu list")
        return frozenset(cpus)
    digits = text[2:] if text.lower().startswith("0x") else text
    if not digits or not re.fullmatch(r"[0-9a-fA-F]+", digits):
        raise ValueError(f"cpumask {text!r} is not hexadecimal")
    value = int(digits, 16)
    if value == 0:
        raise ValueError("cpumask selects no CPU")
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


def format_cpumask(cpus: frozenset[int] | set[int]) -> str:
    """Lowercase hex without 0x, as SPDK's spdk_cpuset_fmt ("0" for no CPU)."""
    return format(sum(1 << c for c in cpus), "x")


def app_cores(mask: str) -> frozenset[int]:
    """The cores of the target's ``-m``; core 0 when the mask does not parse."""
    try:
        return parse_cpumask(mask)
    except ValueError:
        return frozenset({0})


# -- core locks ---------------------------------------------------------------------------
class CoreLocks:
    """SPDK's per-core lock files: an fcntl write lock and the owner's pid in each.

    A real SPDK target started on a core pybdev locked refuses to start, and the other way
    round ``framework_enable_cpumask_locks`` fails naming the first core another process
    holds. pybdev does not take them at start-up (see docs/guide.md).
    """

    def __init__(self, cores: frozenset[int], path: str = LOCK_PATH) -> None:
        self.cores = sorted(cores)
        self.path = path
        self.fds: dict[int, int] = {}

    def claim(self) -> None:
        """Lock every core not yet locked; OperationError(core) names the first refused."""
        for core in self.cores:
            if core in self.fds:
                continue
            name = self.path.format(core)
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                raise OperationError(e.errno or errno.EIO, str(core)) from None
            try:
                os.ftruncate(fd, 4)
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = 0
                with contextlib.suppress(OSError, struct.error):
                    holder = struct.unpack("i", os.pread(fd, 4, 0))[0]
                os.close(fd)
                raise OperationError(e.errno or errno.EBUSY, str(core),
                                     message=f"probably process {holder} has claimed it") from None
            os.pwrite(fd, struct.pack("i", os.getpid()), 0)
            self.fds[core] = fd

    def release(self) -> None:
        for core, fd in sorted(self.fds.items()):
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path.format(core))
        self.fds.clear()


# -- threads ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerThread:
    """A thread a subsystem runs besides the event loop (a ublk queue poller)."""

    name: str
    tid: int
    cpu: int | None  # the core it is pinned to, None when not pinned


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_times(tid: int) -> tuple[int, int, int] | None:
    """(user, system, age) of a thread of this process in clock ticks, None if it is gone."""
    try:
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime, start = int(fields[11]), int(fields[12]), int(fields[19])
    return utime, stime, max(0, int(uptime * _CLK_TCK) - start)


def _ns(ticks: int) -> int:
    return ticks * TICK_RATE // _CLK_TCK


def reactors(cores: frozenset[int], loop_tid: int, workers: list[WorkerThread],
             cpumask: str) -> dict[str, Any]:
    """``framework_get_reactors``' result: one reactor per core that runs a thread."""
    main = min(cores)
    by_core: dict[int, list[tuple[str, int, int]]] = {main: [("app_thread", 1, loop_tid)]}
    for i, w in enumerate(workers):
        by_core.setdefault(main if w.cpu is None else w.cpu, []).append((w.name, i + 2, w.tid))
    out = []
    for core in sorted(by_core):
        threads = by_core[core]
        first = thread_times(threads[0][2]) or (0, 0, 0)
        usr, sys_, age = first
        lw = []
        for name, ident, tid in threads:
            t = thread_times(tid) or (0, 0, 0)
            lw.append({"name": name, "id": ident,
                       "cpumask": format_cpumask({core}) if name != "app_thread" else cpumask,
                       "elapsed": _ns(t[2])})
        out.append({"lcore": core, "numa_id": _numa_of(core), "tid": threads[0][2],
                    "busy": _ns(usr + sys_), "idle": max(0, _ns(age - usr - sys_)),
                    # Every pybdev thread sleeps in epoll or io_uring until work arrives.
                    "in_interrupt": True, "irq": 0, "sys": sys_, "usr": usr,
                    "lw_threads": lw})
    return {"tick_rate": TICK_RATE, "pid": os.getpid(), "reactors": out}


def _numa_of(core: int) -> int:
    try:
        names = os.listdir(f"/sys/devices/system/cpu/cpu{core}")
    except OSError:
        return -1
    for name in names:
        if name.startswith("node") and name[4:].isdigit():
            return int(name[4:])
    return -1
