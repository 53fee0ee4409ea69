"""Run commands inside a small VM whose kernel has ``nbd.ko`` and ``ublk_drv.ko``.

The development and CI machines' kernel has neither driver and loads no modules, so kernel
tests (``/dev/nbdX``, ``/dev/ublkbN``) run in a throwaway QEMU guest (docs/development.md,
"Kernel tests"). The guest sees the host's whole root file system read-only
(over 9p) under a tmpfs overlay, so the repository and its ``.venv`` run there as they are.

What the guest looks like to a command run by :func:`run_in_vm`:

- it runs as root, by ``/bin/sh -c COMMAND``, in the repository root (``cwd``), with stdin
  from ``/dev/null`` and stdout+stderr captured together into ``VMResult.output``;
- ``/dev/nbd0..15`` (``nbd.nbds_max``), ``/dev/ublk-control``, ``/sys/module/{nbd,ublk_drv}``;
  ``modprobe`` works for the guest kernel's other modules (ext4, loop, null_blk, ...) and so
  does ``mount -t ext4`` (module auto-load);
- ``/`` is the host root read-only with a tmpfs overlay on top: writes succeed but vanish
  with the VM and never reach the host; ``/tmp``, ``/run`` and ``/dev/shm`` are fresh tmpfs;
- ``$PYBDEV_VM_SHARE`` (``/pybdev-share``) is read-write and shared with the host: write
  results there and read them from ``share_dir`` on the host afterwards;
- environment: ``PYBDEV_IN_VM=1``, ``PYTHONDONTWRITEBYTECODE=1``, ``PYTHONUNBUFFERED=1``
  (output written before a hang is kept), ``HOME=/root``, ``LANG=C.UTF-8``, plus ``env``;
- kernel parameters given in ``kernel_args`` are appended to the kernel command line;
  ``MODULE.PARAM=VALUE`` ones also reach ``nbd``/``ublk_drv`` (e.g. ``nbd.nbds_max=4``);
- no network device; 2 vCPUs, 2 GiB; software emulation (correctness only, never timings);
- hung-task warnings come after 30 s (not 120) so they show up in the console log, and a
  few seconds before the hard timeout the host asks the guest to print its blocked tasks and
  processes to the console; then it kills QEMU. A boot costs 10-40 s of wall time on an idle
  machine, two to three times that on a busy one: group checks per boot.

API (all in this module)::

    run_in_vm(command, *, timeout=180.0, env=None, cwd=REPO_ROOT, share_dir=None,
              kernel_args=(), image=None, interactive=False) -> VMResult
    run_guest_pytest(*pytest_args, timeout=240.0, env=None, share_dir=None,
                     kernel_args=(), image=None) -> VMResult
    prepare(cache=None) -> GuestImage            # download + cache, once per kernel version
    default_image() -> GuestImage                # prepare() once per process
    unavailable_reason() -> str | None           # why no VM can run here, or None
    VMResult: returncode (int | None), output, console, timed_out, duration, share_dir,
              pytest (PytestCounts | None), ok, describe(), assert_ok(allow_skipped=False)
    VMUnavailable (exception), GUEST_SHARE, IN_VM, GUEST_SKIP_REASON

Example, a host-side test in ``tests/kernel/`` with its guest half in ``tests/kernel/guest/``
(the ``kernel_vm`` fixture of ``tests/kernel/conftest.py`` skips when no VM can run here)::

    @pytest.mark.timeout(400)
    def test_nbd_export(kernel_vm):
        result = kernel_vm.pytest("-x", "tests/kernel/guest/test_nbd_export.py")
        result.assert_ok()          # exit 0 and at least one test passed, none skipped

    def test_something_quick():     # without the fixture: marker + helper
        r = run_in_vm("cat /sys/module/nbd/parameters/nbds_max", kernel_args=["nbd.nbds_max=4"])
        assert r.returncode == 0, r.describe()
        assert r.output.strip() == "4"

By hand: ``.venv/bin/python -m tests.kernel.vm -- 'ls -l /dev/nbd0 /dev/ublk-control'``
(``--help`` for options, ``--shell`` for an interactive shell in the guest).

Environment: ``PYBDEV_VM_CACHE`` (cache folder, default ``/var/tmp/pybdev-vm-cache``),
``PYBDEV_VM_KERNEL_PACKAGE`` (pin a Debian kernel package), ``PYBDEV_VM_ACCEL`` (QEMU
accelerator, default ``tcg``: ``/dev/kvm`` exists on the dev machines but nested KVM fails
there), ``PYBDEV_VM_REQUIRED=1`` (tests fail instead of skipping when no VM can run).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import fcntl
import gzip
import hashlib
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = Path("/var/tmp/pybdev-vm-cache")
DEFAULT_TIMEOUT = 180.0
# Below pyproject's pytest-timeout (300 s), so the harness kills the VM and reports first.
PYTEST_TIMEOUT = 240.0
GUEST_SHARE = "/pybdev-share"
# The harness's own files in the share; a leading dot keeps them out of the caller's way.
CONTROL = ".pybdev-vm"
IN_VM = os.environ.get("PYBDEV_IN_VM") == "1"
GUEST_SKIP_REASON = "runs inside the kernel VM (tests/kernel/vm.py)"
MEMORY_MB = 2048
CPUS = 2
HUNG_TASK_SECS = 30

# 6.12 is the newest Debian 12 kernel with nbd, ublk_drv and 9p as modules (the 6.1 one
# lacks ublk_drv, the -cloud flavour lacks 9p).
KERNEL_PACKAGE_RE = re.compile(r"^linux-image-(6\.12\.\d+\+deb12-amd64)-unsigned$")
KERNEL_PACKAGE_PATTERN = "linux-image-6.12.*+deb12-amd64-unsigned"
# Loaded by the initramfs, dependencies first; 9p and overlay are needed to reach the root.
BOOT_MODULES = ("netfs", "9pnet", "9pnet_virtio", "9p", "overlay", "nbd", "ublk_drv")
# 9p: larger messages cut round trips, which dominate Python's start-up under emulation.
NINEP_OPTS = "trans=virtio,version=9p2000.L,msize=512000"

INIT_SCRIPT = (
    r"""#!/bin/busybox sh
# pybdev kernel-VM init (generated by tests/kernel/vm.py). Mounts the host root read-only
# with a tmpfs overlay, runs /pybdev-share/.pybdev-vm/run.sh chrooted in it, powers off.
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node, so init starts without stdio.
exec </dev/console >/dev/console 2>&1
say() { echo "pybdev-vm: $*"; }
die() { say "FATAL: $*"; poweroff -f; }
modparams() {
    for w in $(cat /proc/cmdline); do
        case "$w" in "$1".*) echo "${w#"$1".}" ;; esac
    done
}
for m in $(cat /modules/order); do
    insmod "/modules/$m.ko" $(modparams "$m") || die "insmod $m failed"
done
echo HUNG_TASK_SECS > /proc/sys/kernel/hung_task_timeout_secs
mkdir -p /share /host /ovl /newroot
mount -t 9p -o NINEP_OPTS share /share || die "cannot mount the share"
. /share/CONTROL/config.sh
mount -t 9p -o NINEP_OPTS,ro hostroot /host || die "cannot mount the host root"
mount -t tmpfs -o mode=0755 tmpfs /ovl || die "cannot mount tmpfs"
mkdir -p /ovl/upper /ovl/work
mount -t overlay -o lowerdir=/host,upperdir=/ovl/upper,workdir=/ovl/work overlay /newroot \
    || die "cannot mount the overlay"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot/tmp /newroot/run /newroot/pybdev-share
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount --move /share /newroot/pybdev-share || die "cannot move the share"
# Host folders under /tmp that the run needs (a checkout there, as CI may have) would be
# hidden by the fresh /tmp: give each back, with an overlay of its own.
while read -r p; do
    [ -n "$p" ] || continue
    k="/ovl/tmpkeep$p"
    mkdir -p "/newroot$p" "$k/upper" "$k/work"
    mount -t overlay -o "lowerdir=/host$p,upperdir=$k/upper,workdir=$k/work" overlay "/newroot$p" \
        || die "cannot mount $p"
done < /newroot/pybdev-share/CONTROL/tmp-keep
if [ -n "$VM_WATCHDOG" ]; then
    # The host asks, a few seconds before it kills the VM, for what is stuck: the best clue
    # to a hang. It asks through the share because the guest's clock can lag far behind
    # the host's on a busy machine (TSC calibration under load).
    (
        while [ ! -e /newroot/pybdev-share/CONTROL/dump ]; do sleep 1; done
        say "the host's timeout is near: blocked tasks and processes follow"
        echo 7 > /proc/sys/kernel/printk
        echo w > /proc/sysrq-trigger
        ps -o pid,stat,args | grep -v ' \[[^]]*\]$'  # user processes; D state = blocked
    ) &
fi
# The kernel's module auto-load (mount -t ext4, ...) runs its helper in the initramfs's root,
# not in the chroot below: point it at a wrapper that runs the host's modprobe in there.
echo /bin/modprobe-newroot > /proc/sys/kernel/modprobe
say "running the command (guest uptime $(cut -d" " -f1 /proc/uptime) s)"
chroot /newroot /bin/sh /pybdev-share/CONTROL/run.sh
say "command finished"
sync
poweroff -f
""".replace("NINEP_OPTS", NINEP_OPTS)
    .replace("CONTROL", CONTROL)
    .replace("HUNG_TASK_SECS", str(HUNG_TASK_SECS))
)

MODPROBE_WRAPPER = """#!/bin/busybox sh
exec /bin/busybox chroot /newroot /sbin/modprobe "$@"
"""

BASE_GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "TMPDIR": "/tmp",
    "PYBDEV_IN_VM": "1",
    "PYBDEV_VM_SHARE": GUEST_SHARE,
    # The repository is read-only underneath; bytecode would only land in the overlay.
    "PYTHONDONTWRITEBYTECODE": "1",
    # Output reaches the share as it is written, so a run killed at its timeout keeps it.
    "PYTHONUNBUFFERED": "1",
}


class VMUnavailable(RuntimeError):
    """No VM can run on this machine; the message says what is missing."""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """A prepared guest: kernel, initramfs and the module tree for ``modprobe``."""

    kernel_version: str
    package: str
    vmlinuz: Path
    initrd: Path
    modules_dir: Path  # .../lib/modules/<kernel_version>, bind-mounted there in the guest


@dataclasses.dataclass(frozen=True)
class PytestCounts:
    """What a guest-side pytest run reported (from its JUnit XML)."""

    tests: int
    failures: int
    errors: int
    skipped: int

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped


@dataclasses.dataclass
class VMResult:
    """The outcome of one boot. ``returncode`` is None when the command gave no exit code
    (timed out, or the guest died first)."""

    command: str
    returncode: int | None
    output: str
    console: str
    timed_out: bool
    duration: float
    timeout: float
    qemu_returncode: int | None = None
    qemu_stderr: str = ""
    share_dir: Path | None = None  # kept only when the caller gave one
    pytest: PytestCounts | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def status(self) -> str:
        if self.timed_out:
            done = "" if self.returncode is None else f" (command had exited {self.returncode})"
            return f"killed at the {self.timeout:.0f} s timeout{done}"
        if self.returncode is None:
            return f"guest stopped without an exit code (qemu exit {self.qemu_returncode})"
        return f"exit code {self.returncode}"

    def console_tail(self, lines: int = 80) -> str:
        return _tail(self.console, lines)

    def describe(self, output_lines: int = 200, console_lines: int = 80) -> str:
        """A report for an assertion message: status, output and the console's tail."""
        parts = [
            f"VM command: {self.command}",
            f"VM result: {self.status()}, {self.duration:.1f} s",
        ]
        if self.pytest is not None:
            p = self.pytest
            parts.append(
                f"guest pytest: {p.passed} passed, {p.failures} failed, {p.errors} errors, "
                f"{p.skipped} skipped"
            )
        parts += [
            f"--- output (last {output_lines} lines) ---",
            _tail(self.output, output_lines),
            f"--- guest console (last {console_lines} lines) ---",
            self.console_tail(console_lines),
        ]
        if self.qemu_stderr.strip():
            parts += ["--- qemu stderr ---", self.qemu_stderr.rstrip()]
        return "\n".join(parts)

    def assert_ok(self, allow_skipped: bool = False) -> None:
        """Raise AssertionError (with :meth:`describe`) unless the command exited 0; for a
        guest pytest run also unless a test passed and, by default, none was skipped, so a
        guest run that skipped everything cannot pass silently."""
        problem = None if self.ok else self.status()
        if problem is None and self.pytest is not None:
            if self.pytest.passed == 0:
                problem = "guest pytest passed no test"
            elif self.pytest.skipped and not allow_skipped:
                problem = f"guest pytest skipped {self.pytest.skipped} test(s)"
        if problem is not None:
            raise AssertionError(f"{problem}\n{self.describe()}")


def _tail(text: str, lines: int) -> str:
    if lines <= 0:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


# ---------------------------------------------------------------------------- preparation


def cache_dir() -> Path:
    return Path(os.environ.get("PYBDEV_VM_CACHE") or DEFAULT_CACHE)


def _run(args: Sequence[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, check=False, timeout=900
    )
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [""]
        # apt says what went wrong on its first "E:" line; the rest repeats it.
        why = next((line for line in lines if line.startswith("E:")), lines[-1])
        raise VMUnavailable(f"{shlex.join(args)} failed ({proc.returncode}): {why}")
    return proc.stdout


def _is_static_elf(path: Path) -> bool:
    # A dynamically linked busybox (package busybox) cannot run in the bare initramfs; a
    # PT_INTERP program header is what marks it.
    data = path.read_bytes()[:4096]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    phoff = int.from_bytes(data[32:40], "little")
    phentsize = int.from_bytes(data[54:56], "little")
    phnum = int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(data[off : off + 4], "little") == 3:
            return False
    return True


def _host_tools() -> dict[str, Path]:
    """The host programs a boot needs; raises VMUnavailable naming the missing package."""
    needed = {
        "qemu-system-x86_64": "qemu-system-x86",
        "busybox": "busybox-static",
        "cpio": "cpio",
    }
    tools: dict[str, Path] = {}
    for prog, package in needed.items():
        found = shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if found is None:
            raise VMUnavailable(f"{prog} not found: install the Debian package {package}")
        tools[prog] = Path(found)
    if not _is_static_elf(tools["busybox"]):
        raise VMUnavailable(f"{tools['busybox']} is not static: install busybox-static")
    return tools


_apt_updated = False


def _apt_update_once() -> bool:
    """Refresh the apt lists once per process (root only); True if it ran."""
    global _apt_updated
    if _apt_updated or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    _apt_updated = True
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False, timeout=600)
    return True


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version))


def _newest_kernel_package() -> str | None:
    pinned = os.environ.get("PYBDEV_VM_KERNEL_PACKAGE")
    if pinned:
        return pinned
    if shutil.which("apt-cache") is None:
        return None
    for _ in range(2):
        out = subprocess.run(
            ["apt-cache", "search", "--names-only", r"^linux-image-6\.12\..*-amd64-unsigned$"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        names = [
            line.split(" ", 1)[0]
            for line in out.splitlines()
            if KERNEL_PACKAGE_RE.match(line.split(" ", 1)[0])
        ]
        if names:
            return max(names, key=_version_key)
        if not _apt_update_once():
            break
    return None


def _kernel_version(package: str) -> str:
    m = KERNEL_PACKAGE_RE.match(package)
    if m is None:
        raise VMUnavailable(f"{package!r} does not look like {KERNEL_PACKAGE_PATTERN}")
    return m.group(1)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Several pytest processes (other engineers, xdist) may prepare the same cache at once.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _unpack_kernel(package: str, kver: str, dest: Path) -> None:
    """apt-get download + dpkg -x + depmod into ``dest`` (created atomically)."""
    for prog, pkg in (("apt-get", "apt"), ("dpkg", "dpkg"), ("depmod", "kmod")):
        if shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise VMUnavailable(f"{prog} not found: install the Debian package {pkg}")
    tmp = Path(tempfile.mkdtemp(prefix=f"{kver}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable by anyone
    try:
        try:
            # Running as root, apt would drop to _apt, which cannot write into our folder.
            _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=tmp)
        except VMUnavailable:
            # Stale lists name a version the mirror no longer has: refresh once and retry.
            if not _apt_update_once():
                raise
            _run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise VMUnavailable(f"apt-get download {package} gave {debs}")
        _run(["dpkg", "-x", str(debs[0]), str(tmp / "root")])
        debs[0].unlink()  # 107 MB we no longer need
        vmlinuz = tmp / "root" / "boot" / f"vmlinuz-{kver}"
        moddir = tmp / "root" / "lib" / "modules" / kver
        if not vmlinuz.is_file() or not moddir.is_dir():
            raise VMUnavailable(f"{package} has no {vmlinuz.name} or lib/modules/{kver}")
        # The package leaves modules.dep to its postinst; modprobe in the guest needs it.
        _run(["depmod", "-b", str(tmp / "root"), kver])
        (tmp / "package").write_text(package + "\n")
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _module_order(moddir: Path) -> list[tuple[str, Path]]:
    """BOOT_MODULES and their dependencies, each after what it needs (from modules.dep)."""
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        paths[name] = path
        deps[name] = [Path(p).name.split(".ko")[0].replace("-", "_") for p in rest.split()]
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        if name not in paths:
            raise VMUnavailable(f"module {name} is not in {moddir}")
        for dep in deps[name]:
            visit(dep)
        order.append(name)

    for mod in BOOT_MODULES:
        visit(mod)
    return [(name, moddir / paths[name]) for name in order]


def _build_initrd(kdir: Path, kver: str, busybox: Path, cpio: Path) -> Path:
    moddir = kdir / "root" / "lib" / "modules" / kver
    modules = _module_order(moddir)
    digest = hashlib.sha256()
    digest.update(INIT_SCRIPT.encode())
    digest.update(MODPROBE_WRAPPER.encode())
    digest.update(busybox.read_bytes())
    for name, path in modules:
        digest.update(f"{name}:{path}".encode())
    initrd = kdir / f"initrd-{digest.hexdigest()[:16]}.img"
    if initrd.is_file():
        return initrd
    with tempfile.TemporaryDirectory(prefix="initrd-", dir=kdir) as tmp_s:
        tmp = Path(tmp_s)
        for d in ("bin", "modules", "proc", "sys", "dev"):
            (tmp / d).mkdir()
        shutil.copy2(busybox, tmp / "bin" / "busybox")
        (tmp / "init").write_text(INIT_SCRIPT)
        (tmp / "init").chmod(0o755)
        (tmp / "bin" / "modprobe-newroot").write_text(MODPROBE_WRAPPER)
        (tmp / "bin" / "modprobe-newroot").chmod(0o755)
        for name, path in modules:
            # busybox insmod passes the file to init_module, which wants it uncompressed.
            data = path.read_bytes()
            if path.suffix == ".xz":
                data = lzma.decompress(data)
            (tmp / "modules" / f"{name}.ko").write_bytes(data)
        (tmp / "modules" / "order").write_text("".join(f"{n}\n" for n, _ in modules))
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
        archive = subprocess.run(
            [str(cpio), "-o", "-H", "newc", "-R", "0:0", "--quiet"],
            input=("\n".join(files) + "\n").encode(),
            cwd=tmp,
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise VMUnavailable(f"cpio failed: {archive.stderr.decode(errors='replace')}")
        part = initrd.with_suffix(".part")
        part.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
        os.rename(part, initrd)
    return initrd


def prepare(cache: Path | None = None) -> GuestImage:
    """Make the guest kernel and initramfs ready (downloaded once, cached per kernel
    version) and return them. Raises :class:`VMUnavailable` with the reason when it cannot.

    The kernel is the newest ``linux-image-6.12.*+deb12-amd64-unsigned`` in the apt lists
    (or ``$PYBDEV_VM_KERNEL_PACKAGE``); without apt lists, the newest one already cached.
    """
    tools = _host_tools()
    root = cache or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        package = _newest_kernel_package()
        if package is None:
            cached = sorted(
                (p for p in root.iterdir() if (p / "package").is_file()),
                key=lambda p: _version_key(p.name),
            )
            if not cached:
                raise VMUnavailable(
                    f"no Debian kernel package {KERNEL_PACKAGE_PATTERN} in the apt lists "
                    "(apt-get update?) and none cached"
                )
            package = (cached[-1] / "package").read_text().strip()
        kver = _kernel_version(package)
        kdir = root / kver
        if not (kdir / "package").is_file():
            _unpack_kernel(package, kver, kdir)
        initrd = _build_initrd(kdir, kver, tools["busybox"], tools["cpio"])
    return GuestImage(
        kernel_version=kver,
        package=package,
        vmlinuz=kdir / "root" / "boot" / f"vmlinuz-{kver}",
        initrd=initrd,
        modules_dir=kdir / "root" / "lib" / "modules" / kver,
    )


_image: GuestImage | None = None
_unavailable: str | None = None


def default_image() -> GuestImage:
    """:func:`prepare` once per process; later calls return the same image (or raise the
    same VMUnavailable)."""
    global _image, _unavailable
    if _image is None:
        if _unavailable is not None:
            raise VMUnavailable(_unavailable)
        try:
            _image = prepare()
        except (VMUnavailable, OSError, subprocess.SubprocessError) as exc:
            _unavailable = str(exc)
            raise VMUnavailable(_unavailable) from exc
    return _image


def unavailable_reason() -> str | None:
    """Why no kernel VM can run here (for a pytest skip), or None when it can."""
    if IN_VM:
        return "already inside the kernel VM (no nested VM)"
    try:
        default_image()
    except VMUnavailable as exc:
        return f"kernel VM unavailable: {exc}"
    return None


# ---------------------------------------------------------------------------- running


def _qemu_opt(value: str | Path) -> str:
    # QEMU option values use ',' as separator; a literal comma is written ',,'.
    return str(value).replace(",", ",,")


def _hidden_by_guest_tmp(paths: Sequence[Path]) -> list[str]:
    """Those of ``paths`` that the guest's fresh /tmp would hide, outermost only."""
    tmp = Path("/tmp")
    keep: list[Path] = []
    for p in sorted({Path(os.path.realpath(p)) for p in paths}, key=lambda p: len(p.parts)):
        if p != tmp and p.is_relative_to(tmp) and not any(p.is_relative_to(k) for k in keep):
            keep.append(p)
    return [str(p) for p in keep]


def _write_control(
    control: Path,
    command: str,
    image: GuestImage,
    cwd: str | Path,
    env: Mapping[str, str] | None,
    interactive: bool,
) -> None:
    control.mkdir(parents=True)
    (control / "config.sh").write_text(f"VM_WATCHDOG={'' if interactive else 1}\n")
    (control / "tmp-keep").write_text(
        "".join(f"{p}\n" for p in _hidden_by_guest_tmp([REPO_ROOT, Path(cwd), image.modules_dir]))
    )
    guest_env = {**BASE_GUEST_ENV, **(env or {})}
    if interactive:
        guest_env["TERM"] = os.environ.get("TERM", "vt100")
    env_args = " ".join(shlex.quote(f"{k}={v}") for k, v in guest_env.items())
    out = f"{GUEST_SHARE}/{CONTROL}/output"
    rc = f"{GUEST_SHARE}/{CONTROL}/rc"
    kmod = f"/lib/modules/{image.kernel_version}"
    if interactive:
        # A controlling terminal on the serial line, so job control and ^C work.
        run = f"setsid -c /bin/bash -i <>/dev/ttyS0 >&0 2>&1; echo $? > {rc}"
    else:
        run = (
            f"env -i {env_args} /bin/sh -c {shlex.quote(command)} > {out} 2>&1 < /dev/null\n"
            f"echo $? > {rc}"
        )
    (control / "run.sh").write_text(
        "# generated by tests/kernel/vm.py\n"
        # modprobe and the kernel's module auto-load look in /lib/modules/$(uname -r).
        f"mkdir -p {kmod} && mount --bind {shlex.quote(str(image.modules_dir))} {kmod} "
        "|| echo 'pybdev-vm: no module tree for modprobe'\n"
        f"cd {shlex.quote(str(cwd))} || {{ echo 'pybdev-vm: cannot cd to {cwd}' > {out}; "
        f"echo 126 > {rc}; exit; }}\n"
        + (f"export {env_args}\n" if interactive else "")
        + run
        + "\n"
    )


def _die_with_parent() -> None:
    # Runs in the child before exec: an emulator orphaned by a killed test run would burn a
    # core until its guest ends, or for ever if the guest hangs.
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _dump_margin(timeout: float) -> float:
    # Time left to the guest, after the host asks, to print its blocked tasks before the kill.
    return min(20.0, max(4.0, timeout * 0.12))


BOOT_ATTEMPTS = 3


def run_in_vm(
    command: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | Path = REPO_ROOT,
    share_dir: Path | None = None,
    kernel_args: Sequence[str] = (),
    image: GuestImage | None = None,
    interactive: bool = False,
) -> VMResult:
    """Boot the VM, run ``command`` by ``/bin/sh -c`` as root in ``cwd`` and power off.

    ``timeout`` is a hard limit in seconds for the whole boot (QEMU is killed then; the result
    says ``timed_out`` and has the console). ``share_dir`` is the host folder that the guest
    sees read-write at ``$PYBDEV_VM_SHARE`` (``/pybdev-share``); it is kept, and created when
    missing. Without one a temporary folder is used and removed. ``kernel_args`` go on the
    kernel command line (``nbd.nbds_max=4``). Raises :class:`VMUnavailable` when no VM can
    run here; a failing, hanging or crashing guest is reported in the result, not raised.

    A guest kernel that panics while booting, before the command ran, is booted again (up to
    :data:`BOOT_ATTEMPTS` times): under software emulation the 6.12 kernel now and then dies
    in an early timer interrupt (an ``int3`` left by live code patching), which says nothing
    about the code under test.
    """
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        result = _run_once(command, timeout=timeout, env=env, cwd=cwd, share_dir=share_dir,
                           kernel_args=kernel_args, image=image, interactive=interactive)
        if not _died_booting(result) or attempt == BOOT_ATTEMPTS:
            return result
        print(f"kernel VM: guest kernel panicked while booting (attempt {attempt}); "
              "booting again", file=sys.stderr)
    raise AssertionError("unreachable")


def _died_booting(result: VMResult) -> bool:
    return (result.returncode is None and not result.timed_out and not result.output
            and "Kernel panic" in result.console)


def _run_once(
    command: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | Path = REPO_ROOT,
    share_dir: Path | None = None,
    kernel_args: Sequence[str] = (),
    image: GuestImage | None = None,
    interactive: bool = False,
) -> VMResult:
    """One boot of :func:`run_in_vm`."""
    if image is None:
        image = default_image()
    qemu = _host_tools()["qemu-system-x86_64"]
    with contextlib.ExitStack() as stack:
        if share_dir is None:
            share = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pybdev-vm-")))
        else:
            share = Path(share_dir).resolve()
            share.mkdir(parents=True, exist_ok=True)
        control = share / CONTROL
        shutil.rmtree(control, ignore_errors=True)
        _write_control(
            control,
            command,
            image,
            cwd,
            env,
            interactive,
        )
        console_path = control / "console.log"
        append = ["console=ttyS0", "panic=-1", *kernel_args]
        if not interactive:
            append.insert(1, "quiet")
        args = [
            str(qemu),
            "-accel", os.environ.get("PYBDEV_VM_ACCEL", "tcg"),
            "-m", str(MEMORY_MB),
            "-smp", str(CPUS),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-nic", "none",
            "-kernel", str(image.vmlinuz),
            "-initrd", str(image.initrd),
            "-append", " ".join(append),
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
            "multidevs=remap",
            "-virtfs", f"local,path={_qemu_opt(share)},mount_tag=share,security_model=none,"
            "multidevs=remap",
        ]  # fmt: skip
        if interactive:
            args += ["-serial", "mon:stdio"]
        else:
            args += ["-serial", f"file:{_qemu_opt(console_path)}", "-monitor", "none"]
        stderr_path = control / "qemu.stderr"
        start = time.monotonic()
        timed_out = False
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                args,
                stdin=None if interactive else subprocess.DEVNULL,
                stdout=None if interactive else subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=not interactive,
                preexec_fn=_die_with_parent,
            )
            try:
                if interactive:
                    proc.wait()
                else:
                    margin = _dump_margin(timeout)
                    try:
                        proc.wait(timeout=max(0.0, timeout - margin))
                    except subprocess.TimeoutExpired:
                        (control / "dump").touch()
                        proc.wait(timeout=min(margin, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        duration = time.monotonic() - start
        rc_text = _read(control / "rc").strip()
        result = VMResult(
            command=command,
            returncode=int(rc_text) if rc_text.lstrip("-").isdigit() else None,
            output=_read(control / "output"),
            console=_read(console_path),
            timed_out=timed_out,
            duration=duration,
            timeout=timeout,
            qemu_returncode=proc.returncode,
            qemu_stderr=_read(stderr_path),
            share_dir=None if share_dir is None else share,
            pytest=_junit_counts(control / "junit.xml"),
        )
    return result


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _junit_counts(path: Path) -> PytestCounts | None:
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, "0"))
    return PytestCounts(**total)


def guest_pytest_command(*pytest_args: str) -> str:
    """The guest-side pytest command line :func:`run_guest_pytest` runs."""
    python = REPO_ROOT / ".venv" / "bin" / "python"
    return shlex.join(
        [
            str(python if python.exists() else Path(sys.executable)),
            "-m", "pytest",
            # The repository is read-only underneath the overlay: no cache to keep.
            "-p", "no:cacheprovider",
            "--color=no",
            "-rfEsx",
            f"--junitxml={GUEST_SHARE}/{CONTROL}/junit.xml",
            *pytest_args,
        ]
    )  # fmt: skip


def run_guest_pytest(
    *pytest_args: str,
    timeout: float = PYTEST_TIMEOUT,
    env: Mapping[str, str] | None = None,
    share_dir: Path | None = None,
    kernel_args: Sequence[str] = (),
    image: GuestImage | None = None,
) -> VMResult:
    """Run pytest inside the VM (the repository's ``.venv``, cwd the repository root) with
    ``pytest_args``, e.g. ``run_guest_pytest("-x", "tests/kernel/guest/test_nbd.py")``. The
    result's ``pytest`` has the counts, and :meth:`VMResult.assert_ok` fails when nothing
    passed or something was skipped. The keyword arguments are those of :func:`run_in_vm`."""
    return run_in_vm(
        guest_pytest_command(*pytest_args),
        timeout=timeout,
        env=env,
        share_dir=share_dir,
        kernel_args=kernel_args,
        image=image,
    )


# ---------------------------------------------------------------------------- by hand


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.kernel.vm",
        description="Run a shell command inside the pybdev kernel VM (nbd.ko, ublk_drv.ko).",
    )
    parser.add_argument("command", nargs="*", help="shell command (joined by spaces)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--share", type=Path, help="host folder shared read-write")
    parser.add_argument("--kernel-arg", action="append", default=[], help="e.g. nbd.nbds_max=4")
    parser.add_argument("--prepare", action="store_true", help="only prepare the cache")
    parser.add_argument("--shell", action="store_true", help="interactive shell (exit to stop)")
    parser.add_argument("--console", action="store_true", help="print the whole console log")
    opts = parser.parse_args(argv)
    try:
        image = default_image()
    except VMUnavailable as exc:
        print(f"kernel VM unavailable: {exc}", file=sys.stderr)
        return 2
    if opts.prepare:
        print(f"{image.package}\n  kernel {image.vmlinuz}\n  initrd {image.initrd}")
        return 0
    if not opts.command and not opts.shell:
        parser.error("give a command, --shell or --prepare")
    result = run_in_vm(
        " ".join(opts.command),
        timeout=opts.timeout,
        share_dir=opts.share,
        kernel_args=opts.kernel_arg,
        image=image,
        interactive=opts.shell,
    )
    if opts.shell:
        return result.returncode or 0
    sys.stdout.write(result.output)
    if result.output and not result.output.endswith("\n"):
        sys.stdout.write("\n")
    sys.stdout.flush()
    if opts.console:
        sys.stderr.write(result.console)
    if not result.ok:
        print(result.describe(output_lines=0), file=sys.stderr)
    print(f"[{result.status()}, {result.duration:.1f} s]", file=sys.stderr)
    return 1 if result.returncode is None else result.returncode


if __name__ == "__main__":
    sys.exit(main())
