"""A throwaway single-node Ceph cluster (one mon, one mgr, one OSD) for tests and benchmarks.

Everything lives in one directory: ceph.conf, the keyring, the daemons' data, run and log
directories. Daemons bind 127.0.0.1 only (msgr2 on a free port for the mon, 6800+ for the
others), run with cephx, and are children of this process started in the foreground (``-f``)
so their PIDs are known without pid files and ``PR_SET_PDEATHSIG`` kills them if this process
dies without running its teardown. ``stop()`` sends SIGTERM, then SIGKILL after a grace period.

Used by ``tests/ceph/conftest.py`` and ``bench/rbd_binding.py``; it imports nothing of pybdev
so that a broken binding cannot break the fixture that tests it.

The facts this is built on (Debian 12, Ceph 16.2.15) are in the shared spec ``ceph.md``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# The programs the fixture runs; missing ones are the skip reason.
REQUIRED_PROGRAMS = ("ceph-mon", "ceph-mgr", "ceph-osd", "monmaptool", "ceph", "rbd")
DEBIAN_PACKAGES = "ceph-mon ceph-osd ceph-mgr ceph-common librbd1 librados2"
POOL = "rbd"
PG_NUM = 8
CLIENT_ID = "admin"

_PR_SET_PDEATHSIG = 1


def missing_programs() -> list[str]:
    return [p for p in REQUIRED_PROGRAMS if shutil.which(p) is None]


def unavailable_reason() -> str | None:
    """Why no cluster can be started here, or None when it can be tried."""
    missing = missing_programs()
    if missing:
        return (
            f"Ceph is not installed (missing {', '.join(missing)}; "
            f"apt-get install {DEBIAN_PACKAGES})"
        )
    return None


def gen_key() -> str:
    """A cephx secret as ceph-authtool writes it: base64 of an encoded CryptoKey (AES)."""
    # CryptoKey encoding: u16 type (1 = AES), utime_t created (u32 s, u32 ns), u16 len, secret.
    header = struct.pack("<HIIH", 1, int(time.time()), 0, 16)
    return base64.b64encode(header + os.urandom(16)).decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel SIGKILLs the daemon when the
    # thread that started it (the test process) dies, even by SIGKILL.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ClusterError(RuntimeError):
    pass


@dataclass
class CephCluster:
    """One throwaway cluster under ``root``. ``start()``/``stop()``, or use as a context."""

    root: Path
    objectstore: str = "memstore"
    memstore_bytes: int = 2 << 30
    start_timeout: float = 120.0
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    port: int = 0
    keys: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    startup_seconds: float = 0.0

    # ---- what tests use -------------------------------------------------------------

    @property
    def conf_path(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def keyring_path(self) -> Path:
        return self.root / "keyring"

    @property
    def mon_addr(self) -> str:
        return f"v2:127.0.0.1:{self.port}"

    @property
    def mon_host(self) -> str:
        """The ``mon_host`` value a client sets (the msgr2 address in brackets)."""
        return f"[{self.mon_addr}]"

    @property
    def client_name(self) -> str:
        return f"client.{CLIENT_ID}"

    @property
    def client_id(self) -> str:
        return CLIENT_ID

    @property
    def client_key(self) -> str:
        return self.keys[self.client_name]

    @property
    def pool(self) -> str:
        return POOL

    def client_conf(self, **extra: str) -> dict[str, str]:
        """Options for a librados client that needs no conf file (includes the secret)."""
        conf = {"mon_host": self.mon_host, "key": self.client_key}
        conf.update(extra)
        return conf

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items() if p.poll() is None}

    def run(
        self, prog: str, *args: str, timeout: float = 60.0, check: bool = True,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Ceph CLI (``ceph``, ``rbd``, ``rados``...) against this cluster."""
        cmd = [prog, "-c", str(self.conf_path), "--id", CLIENT_ID, *args]
        proc = subprocess.run(
            cmd, capture_output=True, timeout=timeout, env=self._env(), input=input,
        )
        out = proc.stdout.decode(errors="replace")
        err = proc.stderr.decode(errors="replace")
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(cmd)} exited {proc.returncode}: {err.strip()}")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def ceph(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.run("ceph", *args, timeout=timeout, check=check).stdout

    def ceph_json(self, *args: str, timeout: float = 60.0) -> object:
        return json.loads(self.ceph(*args, "--format", "json", timeout=timeout))

    def rbd(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        return self.run("rbd", *args, timeout=timeout, check=check).stdout

    # ---- life cycle -----------------------------------------------------------------

    def __enter__(self) -> CephCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise ClusterError(reason)
        t0 = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every daemon by PID, SIGKILL what is left after ``grace`` seconds.

        The OSD goes first: on SIGTERM it tells the mon it is going down and waits for the
        answer (up to ``osd_mon_shutdown_timeout``, 5 s), so stopping the mon with it costs
        those 5 s.
        """
        osds = [p for name, p in self.procs.items() if name.startswith("osd.")]
        rest = [p for p in self.procs.values() if p not in osds]
        for group in (osds, rest):
            for p in group:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
            for p in group:
                if p.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    p.wait()
        # The OSD's data (a sparse block file for bluestore) is the only large thing; keep
        # config and logs for post-mortems.
        shutil.rmtree(self.root / "osd", ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        """The ends of the daemons' logs, for failure messages."""
        out: list[str] = []
        for f in sorted((self.root / "log").glob("*")):
            with contextlib.suppress(OSError):
                text = f.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {f.name}\n" + "\n".join(text))
        return "\n".join(out)

    # ---- internals ------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CEPH_")}
        env["CEPH_CONF"] = str(self.conf_path)
        return env

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for d in ("run", "log", "mon", "mgr", "osd"):
            (self.root / d).mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
        self._write_keyring()
        self._write_conf()

        self._check_call(
            ["monmaptool", "--create", "--fsid", self.fsid, "--addv", "a",
             f"[{self.mon_addr}]", str(self.root / "monmap")]
        )
        self._check_call(
            ["ceph-mon", "-c", str(self.conf_path), "-i", "a", "--mkfs",
             "--monmap", str(self.root / "monmap"), "--keyring", str(self.keyring_path)]
        )
        self._spawn("mon.a", ["ceph-mon", "-f", "-c", str(self.conf_path), "-i", "a"])
        self._spawn("mgr.x", ["ceph-mgr", "-f", "-c", str(self.conf_path), "-i", "x"])

        # The OSD's mkfs fetches the monmap from the mon, so the mon must be up; the OSD
        # entry in the osdmap and the pool are mon commands that need no OSD.
        osd_uuid = str(uuid.uuid4())
        mkfs = self._popen(
            "osd.0.mkfs",
            ["ceph-osd", "-c", str(self.conf_path), "-i", "0", "--mkfs",
             "--osd-uuid", osd_uuid],
        )
        self.ceph("osd", "new", osd_uuid, "0")
        self.ceph("osd", "pool", "create", POOL, str(PG_NUM), str(PG_NUM))
        self.ceph("osd", "pool", "application", "enable", POOL, "rbd")
        if mkfs.wait(timeout=self.start_timeout) != 0:
            raise ClusterError(f"ceph-osd --mkfs failed:\n{self.log_tail()}")
        self._spawn("osd.0", ["ceph-osd", "-f", "-c", str(self.conf_path), "-i", "0"])
        self.wait_active_clean()

    def wait_serving(self) -> None:
        """Every PG active+clean and a client operation answered by the OSD (listing the
        pool reads an object): what a test that stopped a daemon waits for before the
        cluster is used again."""
        self.wait_active_clean()
        deadline = time.monotonic() + self.start_timeout
        while True:
            self._check_alive()
            try:
                self.rbd("ls", self.pool, timeout=15)
                return
            except (ClusterError, subprocess.TimeoutExpired) as e:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the OSD does not serve clients: {e}\n"
                                       + self.log_tail()) from None
                time.sleep(0.2)

    def reassert_osd(self) -> None:
        """Have the OSD re-peer every PG after it was stopped (SIGSTOP), then wait until it
        serves.

        A PG whose read lease lapsed while the only OSD was stopped can stay
        ``active+clean+laggy`` long after it runs again, serving nothing: seen in CI for
        over 120 s, with a client's requests "delayed" behind it. Marked down, the OSD
        tells the mon it is alive, boots into the new map and peers again with fresh leases.
        """
        self.ceph("osd", "down", "0")
        self.wait_serving()

    def wait_active_clean(self) -> None:
        """Return once every PG is active+clean (the OSD is up and serving), or fail.

        Start-up, and any test that stops or disturbs a daemon, wait for this before the
        cluster is used again: a daemon that runs is not yet one that serves."""
        # Right after the OSD boots the mgr may report a stale or partial PG map (and the
        # mgr's devicehealth module adds a pool of its own), so the cluster counts as ready
        # only when two reports in a row say every PG is active+clean.
        deadline = time.monotonic() + self.start_timeout
        last: object = None
        good = 0
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                st = self.ceph_json("pg", "stat", timeout=15)  # from the mgr: proves it is up
            except (ClusterError, json.JSONDecodeError, subprocess.TimeoutExpired) as e:
                last, good = e, 0
                time.sleep(0.2)
                continue
            last = st
            summary = st.get("pg_summary", {}) if isinstance(st, dict) else {}
            total = summary.get("num_pgs", 0)
            clean = sum(
                s["num"] for s in summary.get("num_pg_by_state", [])
                if s.get("name") == "active+clean"
            )
            ok = bool(st.get("pg_ready")) and total >= PG_NUM and clean == total
            good = good + 1 if ok else 0
            if good >= 2:
                return
            time.sleep(0.1)
        raise ClusterError(
            f"cluster not active+clean after {self.start_timeout}s (last: {last!r})\n"
            + self.log_tail()
        )

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if name.endswith(".mkfs"):
                continue
            if p.poll() is not None:
                raise ClusterError(
                    f"{name} exited with {p.returncode} during start-up:\n{self.log_tail()}"
                )

    def _check_call(self, cmd: Sequence[str]) -> None:
        proc = subprocess.run(cmd, capture_output=True, env=self._env(), timeout=60)
        if proc.returncode != 0:
            raise ClusterError(
                f"{' '.join(cmd)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )

    def _popen(self, name: str, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - child owns it
        try:
            p = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self._env(), preexec_fn=_die_with_parent, close_fds=True,
            )
        finally:
            out.close()
        self.procs[name] = p
        return p

    def _spawn(self, name: str, cmd: Sequence[str]) -> None:
        self._popen(name, cmd)

    def _write_keyring(self) -> None:
        caps = {
            "mon.": {"mon": "allow *"},
            f"client.{CLIENT_ID}": {
                "mon": "allow *", "osd": "allow *", "mgr": "allow *", "mds": "allow *",
            },
            "mgr.x": {"mon": "allow profile mgr", "osd": "allow *", "mds": "allow *"},
            "osd.0": {"mon": "allow profile osd", "mgr": "allow profile osd", "osd": "allow *"},
        }
        lines: list[str] = []
        for entity, entity_caps in caps.items():
            key = self.keys.setdefault(entity, gen_key())
            lines.append(f"[{entity}]")
            lines.append(f"\tkey = {key}")
            lines.extend(f'\tcaps {svc} = "{cap}"' for svc, cap in entity_caps.items())
        self.keyring_path.write_text("\n".join(lines) + "\n")
        self.keyring_path.chmod(0o600)

    def _write_conf(self) -> None:
        d = self.root
        conf = f"""\
[global]
fsid = {self.fsid}
mon host = [{self.mon_addr}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {self.keyring_path}
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
osd crush chooseleaf type = 0
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
osd pool default pg autoscale mode = off
mgr stats period = 1
osd mon report interval = 1
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
crash dir = {d}/crash

[client]
# Every client process (CLIs, librados in tests) would try to bind the same socket.
admin socket =

[mon]
mon data = {d}/mon
mon cluster log file = {d}/log/cluster.log

[mgr]
mgr data = {d}/mgr
mgr initial modules =

[osd]
osd data = {d}/osd
osd objectstore = {self.objectstore}
memstore device bytes = {self.memstore_bytes}
bluestore block create = true
bluestore block size = 4294967296
bluestore block db create = false
bluestore block wal create = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 1073741824
"""
        self.conf_path.write_text(conf)
