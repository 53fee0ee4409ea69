"""Every benchmark of docs/performance.md, run and written into that page with its plots.

    python bench/run_all.py [--quick] [--skip vm,lvol,...] [--only nbd,control]

Runs, each as its own process (a failing one is reported on the page, not fatal):

=========  ===============================================================================
nbd        ``bench/nbd_fio.py``: pybdev (uvloop, asyncio's own loop, polling) vs ``nbdkit memory``,
           ``qemu-nbd`` and the Unix-socket ceiling (``bench/nbd_ceiling.py``), fio's nbd
           engine, three interleaved rounds; plus ``--micro`` (CPU per request in process)
           and ``--placement`` (server and fio on one CPU, on two, unpinned)
vm         ``bench/ublk_vs_nbd.py`` in the kernel VM (minutes of software emulation): ublk
           (queue thread / event loop / per-tag buffers), the kernel NBD export (one
           and two sockets), ``qemu-nbd -c``, 1 vs 2 queues
lvol       ``bench/lvol_nbd.py``: a thick lvol against its malloc base
nvmf       ``bench/nvmf_vs_kernel.py`` when it exists: the NVMe/TCP target against the kernel's
control    ``bench/control_plane.py``: RPC round trip, pipelined calls, 10,000 bdevs, RSS,
           idle CPU
=========  ===============================================================================

Raw results go to ``docs/perf/*.json`` and the console output to ``docs/perf/*.txt``;
``docs/performance.md`` is rewritten from them with the machine, kernel and date, and the
plots go to ``docs/img/perf_*.png`` and ``.svg`` (matplotlib: ``pip install .[bench]``).
``--render`` rewrites the page from the stored results without running anything.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "perf"
IMG = ROOT / "docs" / "img"
PAGE = ROOT / "docs" / "performance.md"
PY = sys.executable
NBD_SERVERS = "pybdev,pybdev-asyncio,pybdev-poll,nbdkit,qemu-nbd,ceiling"
PLACEMENT_SERVERS = "pybdev,pybdev-poll,nbdkit,ceiling"
SECTIONS = ("nbd", "vm", "lvol", "nvmf", "control")


# When each part of this invocation started: a page re-rendered after ``--only`` mixes runs.
STARTED: dict[str, str] = {}


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def run(name: str, argv: list[str], timeout: float) -> tuple[int, str]:
    """Run one benchmark; its output is kept in docs/perf/NAME.txt."""
    print(f"== {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    STARTED[name] = _utc_now()
    t = time.monotonic()
    try:
        res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, text = res.returncode, res.stdout + ("\n" + res.stderr if res.returncode else "")
    except subprocess.TimeoutExpired:
        rc, text = -1, f"timed out after {timeout:.0f} s"
    (OUT / f"{name}.txt").write_text(text)
    print(f"   {name}: rc {rc} in {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    return rc, text


def machine() -> dict[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    tools = {}
    for tool, argv in (("fio", ["fio", "--version"]), ("nbdkit", ["nbdkit", "--version"]),
                       ("qemu-nbd", ["qemu-nbd", "--version"])):
        try:
            tools[tool] = subprocess.run(argv, capture_output=True, text=True,
                                         timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            tools[tool] = "missing"
    try:
        import uvloop
        uv = uvloop.__version__
    except ImportError:
        uv = "not installed"
    return {"date": _utc_now(),
            "cpu": f"{cpu} x {os.cpu_count()}", "kernel": platform.release(),
            "python": platform.python_version(), "uvloop": uv,
            "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            **tools}


def collect(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    IMG.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in SECTIONS if (not args.only or s in args.only.split(","))
              and s not in args.skip.split(",")]
    quick = args.quick
    status: dict[str, Any] = {}
    if "nbd" in wanted:
        rc, _ = run("nbd", [PY, "bench/nbd_fio.py", "--rounds", "1" if quick else "3",
                            "--runtime", "2" if quick else "5",
                            "--size", "256M" if quick else "1G",
                            "--servers", NBD_SERVERS, "--json", str(OUT / "nbd.json"),
                            "--svg", ""], 3600)
        status["nbd"] = rc
        status["nbd-micro"] = run("nbd-micro", [PY, "bench/nbd_fio.py", "--micro"], 600)[0]
        status["nbd-placement"] = run("nbd-placement", [
            PY, "bench/nbd_fio.py", "--placement", "--rounds", "1" if quick else "3",
            "--runtime", "2" if quick else "3", "--size", "256M",
            "--servers", PLACEMENT_SERVERS, "--workloads", "rr4k_qd1,rw4k_qd1,rw4k_qd32",
            "--json", str(OUT / "nbd-placement.json")], 3600)[0]
    if "vm" in wanted:
        status["vm"] = run("vm", [PY, "bench/ublk_vs_nbd.py", "--runtime",
                                  "3", "--repeat", "1" if quick else "3",
                                  "--json", str(OUT / "vm.json")], 7200)[0]
    if "lvol" in wanted:
        status["lvol"] = run("lvol", [PY, "bench/lvol_nbd.py", "--rounds",
                                      "1" if quick else "3", "--runtime",
                                      "2" if quick else "5", "--load", "100,1000"], 3600)[0]
    if "nvmf" in wanted:
        script = ROOT / "bench" / "nvmf_vs_kernel.py"
        if script.exists():
            status["nvmf"] = run("nvmf", [PY, str(script)], 7200)[0]
        else:
            (OUT / "nvmf.txt").write_text("")
            status["nvmf"] = "absent"
    if "control" in wanted:
        status["control"] = run("control", [PY, "bench/control_plane.py", "--bdevs",
                                            "2000" if quick else "10000",
                                            "--json", str(OUT / "control.json")], 3600)[0]
    meta_path = OUT / "machine.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update(machine())
    meta.setdefault("status", {}).update(status)
    meta.setdefault("started", {}).update(STARTED)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")


# -- rendering -------------------------------------------------------------------------------
def _load(name: str) -> Any:
    p = OUT / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _text(name: str) -> str:
    p = OUT / f"{name}.txt"
    return p.read_text().strip() if p.exists() else ""


def _ratio(runs: list[dict[str, Any]], peer: list[dict[str, Any]]) -> float:
    return statistics.median(r["iops"] / p["iops"] for r, p in zip(runs, peer, strict=True))


def _bars(path: str, title: str, groups: list[str], series: dict[str, list[float | None]],
          ylabel: str) -> list[str]:
    """Grouped bars with a line at 1.0; PNG and SVG. The Markdown that shows it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [f"(plot {path} not drawn: matplotlib is not installed; "
                "`pip install .[bench]`)"]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    n = len(series)
    width = 0.8 / max(1, n)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0 for v in values]
        bars = ax.bar(xs, ys, width * 0.95, label=name)
        for b, v in zip(bars, values, strict=True):
            if v is not None:
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "svg"):
        fig.savefig(IMG / f"{path}.{ext}", dpi=110)
    plt.close(fig)
    return [f"![{title}](img/{path}.png)", "",
            f"([SVG](img/{path}.svg))"]


def render_nbd() -> list[str]:
    data = _load("nbd")
    if not data:
        return ["Not measured in this run."]
    lines: list[str] = []
    names = list(next(iter(data.values())))
    goals = {"rr4k_qd32": "≥ 1.3", "rw4k_qd32": "≥ 1.3", "rr4k_qd1": "≥ 1.0",
             "rw4k_qd1": "≥ 1.0", "sr128k_qd8": "≥ 1.0, and ≥ 0.9 x ceiling",
             "sw1m_qd4": "≥ 1.0"}
    if "nbdkit" in names:
        cols = [n for n in ("pybdev", "pybdev-asyncio", "pybdev-poll") if n in names]
        head = ["workload", *[f"{n} / nbdkit" for n in cols],
                *([f"{n} / ceiling" for n in cols] if "ceiling" in names else []),
                "goal (issue 19)"]
        lines += ["Summary (medians of per-round IOPS ratios):", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for w, by in data.items():
            row = [w, *[f"{_ratio(by[n], by['nbdkit']):.2f}" for n in cols]]
            if "ceiling" in names:
                row += [f"{_ratio(by[n], by['ceiling']):.2f}" for n in cols]
            lines.append("| " + " | ".join([*row, goals.get(w, "")]) + " |")
        lines += ["", "All figures:", ""]
    peers = [p for p in ("nbdkit", "qemu-nbd", "ceiling") if p in names]
    head = ["workload", "server", "IOPS", "MiB/s", "mean lat µs", "server µs CPU/IO",
            "of which kernel", *[f"x {p}" for p in peers]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w, by in data.items():
        for n in names:
            runs = by[n]
            row = [w, n, f"{statistics.median(r['iops'] for r in runs):.0f}",
                   f"{statistics.median(r['mib_s'] for r in runs):.0f}",
                   f"{statistics.median(r['lat_us'] for r in runs):.1f}",
                   f"{statistics.median(r['server_us_io'] for r in runs):.1f}",
                   # Runs recorded before the split have no kernel share.
                   f"{statistics.median(r['server_sys_us_io'] for r in runs):.1f}"
                   if all("server_sys_us_io" in r for r in runs) else ""]
            row += [f"{_ratio(runs, by[p]):.2f}" for p in peers]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    workloads = list(data)
    series = {n: [_ratio(data[w][n], data[w]["nbdkit"]) for w in workloads]
              for n in names if "nbdkit" in names}
    lines += _bars("perf_nbd", "fio nbd engine, Unix socket, RAM disks: IOPS / nbdkit "
                   "(median of per-round ratios)", workloads, series, "x nbdkit")
    if "ceiling" in names:
        lines.append("")
        series = {n: [_ratio(data[w][n], data[w]["ceiling"]) for w in workloads]
                  for n in names if n != "ceiling"}
        lines += _bars("perf_nbd_ceiling", "IOPS / the Unix-socket ceiling "
                       "(bench/nbd_ceiling.py), same run", workloads, series, "x ceiling")
    placement = _text("nbd-placement")
    if placement:
        lines += ["", "### CPU placement: server and fio on two CPUs, on one, unpinned", "",
                  "`bench/nbd_fio.py --placement`: the same servers with the server and fio "
                  "pinned to different CPUs (`split`), to one CPU (`same`), and left to the "
                  "scheduler (`free`, as above); medians over the rounds. See "
                  "[decisions/nbd-fast-paths.md](decisions/nbd-fast-paths.md), \"QD1 is "
                  "the vCPU wake-ups\".", "",
                  placement]
    micro = _text("nbd-micro")
    if micro:
        lines += ["", "Server CPU per request in process (`bench/nbd_fio.py --micro`, no "
                  "sockets, process time):", "", "```", micro, "```"]
    return lines


def render_vm() -> list[str]:
    data = _load("vm")
    if not data:
        return ["Not measured in this run."]
    lines = [f"{data.get('environment', '')}; {data.get('repeat')} interleaved rounds of "
             f"{data.get('runtime_s')} s, medians.", ""]
    results = data["results"]
    names = sorted({n for by in results.values() for n in by})
    head = ["job", *[f"{n} IOPS" for n in names]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job, by in results.items():
        lines.append("| " + " | ".join(
            [job, *[f"{by[n]['iops']:.0f}" if n in by else "" for n in names]]) + " |")
    # A serving process at exactly 0 % over whole runs was not the one measured (before
    # bench/ublk_vs_nbd.py counted qemu-nbd -c's forked server): left out.
    cpu_names = [n for n in names if any(by.get(n, {}).get("server_cpu_pct")
                                         for by in results.values())]
    if cpu_names:
        lines += ["", "CPU of the serving process during each run (% of one vCPU; the "
                  "drivers' kernel threads not counted):", "",
                  "| job | " + " | ".join(cpu_names) + " |",
                  "|---|" + "---|" * len(cpu_names)]
        for job, by in results.items():
            lines.append("| " + " | ".join(
                [job, *[f"{by[n]['server_cpu_pct']:.0f}" if n in by else ""
                        for n in cpu_names]]) + " |")
    lines += ["", "| ratio | " + " | ".join(results) + " |",
              "|---|" + "---|" * len(results)]
    for what, per_job in data["ratios"].items():
        if all(v is None for v in per_job.values()):
            continue  # a device that was not measured (the notes below say why)
        lines.append(f"| {what} | " + " | ".join(
            f"{per_job[j]:.2f}" if per_job.get(j) is not None else "" for j in results) + " |")
    lines.append("")
    jobs = [j for j in results if j in data["ratios"]["ublk/nbd"]]
    series = {w: [data["ratios"][w].get(j) for j in jobs]
              for w in ("ublk/nbd", "ublk-buf/nbd", "ublk-loop/nbd", "nbd/qemu-nbd")
              if any(data["ratios"][w].get(j) is not None for j in jobs)}
    lines += _bars("perf_ublk", "In the VM (software emulation): IOPS ratios", jobs, series,
                   "ratio")
    if data.get("notes"):
        lines += ["", *data["notes"]]
    return lines


def render_control() -> list[str]:
    data = _load("control")
    if not data:
        return ["Not measured in this run."]
    sys.path.insert(0, str(ROOT / "bench"))
    import control_plane
    return [control_plane.report(data)]


def render(meta: dict[str, Any]) -> str:
    status = meta.get("status", {})
    started = meta.get("started", {})
    lvol, nvmf = _text("lvol"), _text("nvmf")
    out = [
        "# Performance",
        "",
        "Generated by `python bench/run_all.py` (raw results in `docs/perf/`); do not edit",
        "by hand. The machine is shared and small, so every figure that matters is a **ratio "
        "to a peer measured in the same run**, rounds interleaved, medians; absolute numbers "
        "are only indications. How to read and rerun each part: the docstring of its "
        "`bench/` script.",
        "",
        "| | |", "|---|---|",
        *[f"| {k} | {meta[k]} |" for k in ("date", "cpu", "kernel", "python", "uvloop",
                                            "load", "fio", "nbdkit", "qemu-nbd") if k in meta],
        f"| exit status of each part | {', '.join(f'{k}: {v}' for k, v in status.items())} |",
        "| each part started | " + ", ".join(
            f"{k}: {started.get(k, 'not recorded')}" for k in status) + " |",
        "",
        "**Load.** The load average above is the machine's, shared with other engineers' "
        "VMs and test runs. Under CPU contention single-threaded servers (pybdev, the "
        "ceiling) lose more than multi-threaded ones (nbdkit serves each connection with "
        "a pool of threads, and the scheduler shares CPU per thread), most of all at QD1 "
        "where every request waits for a wake-up: compare runs at similar load only.",
        "",
        "## NBD network export vs nbdkit, qemu-nbd and the Unix-socket ceiling",
        "",
        "`bench/nbd_fio.py`: fio's nbd engine over a Unix socket; pybdev exports a malloc "
        "bdev, on uvloop (`pybdev`), on asyncio's own loop (`pybdev-asyncio`, what a plain "
        "`pip install` runs) and on uvloop with `--nbd-poll-us 50` (`pybdev-poll`: adaptive "
        "polling, CPU spent for latency, off by default); `nbdkit memory`; `qemu-nbd` on a "
        "file in /dev/shm; `ceiling` is `bench/nbd_ceiling.py`, a blocking Python server "
        "that only moves the bytes. `server µs CPU/IO` is the server's CPU time over the "
        "I/Os of the run: polling's cost shows there; `of which kernel` is its system time, "
        "the part no Python change reaches. `rr4k_4x1` and `rr4k_4x8` are four "
        "fio jobs at once, one connection each (the ceiling serves each on a thread).",
        "",
        *render_nbd(),
        "",
        "## ublk vs the kernel NBD export vs qemu-nbd (kernel VM)",
        "",
        "`bench/ublk_vs_nbd.py`: one malloc bdev as `/dev/ublkb0` (served on the queue "
        "thread, USER_COPY), `/dev/ublkb1` (a target with `PYBDEV_UBLK_QUEUE_SERVING=0`: "
        "every request through the event loop), `/dev/ublkb3` (`ublk-buf`: a target with "
        "`disable_user_copy`, the kernel copies into per-tag buffers), pybdev's kernel NBD "
        "export `/dev/nbd0`, the same with two sockets `/dev/nbd2` (`nbd-2c`: "
        "`num_connections` 2), and `qemu-nbd -c /dev/nbd1` on a RAM file; `ublk-2q` is a "
        "two-queue device against `ublk` under two fio processes (GIL contention), which "
        "also run on `nbd` and `nbd-2c`. Each device is written once before the timed runs. "
        "See [decisions/ublk-queue-serving.md](decisions/ublk-queue-serving.md) and "
        "[decisions/nbd-fast-paths.md](decisions/nbd-fast-paths.md).",
        "",
        *render_vm(),
        "",
        "## Logical volumes vs their base",
        "",
        "`bench/lvol_nbd.py` (output as printed):",
        "",
        *(["```", lvol, "```"] if lvol else ["Not measured in this run."]),
        "",
        "## NVMe/TCP vs the kernel's target",
        "",
        *(["`bench/nvmf_vs_kernel.py` (output as printed):", "", "```", nvmf, "```"] if nvmf
          else ["`bench/nvmf_vs_kernel.py` (in the kernel VM) was not run for this page: "
                "`python bench/run_all.py --only nvmf` adds it."
                if (ROOT / "bench" / "nvmf_vs_kernel.py").exists()
                else "`bench/nvmf_vs_kernel.py` is not in this tree yet; `run_all.py` runs it "
                     "when it is."]),
        "",
        "## Control plane",
        "",
        "`bench/control_plane.py`: a target process over its Unix socket.",
        "",
        *render_control(),
        "",
    ]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round of each (a smoke run)")
    p.add_argument("--only", default="", help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--skip", default="", help="comma list of parts not to run")
    p.add_argument("--render", action="store_true",
                   help="rewrite the page from docs/perf/ without running anything")
    args = p.parse_args()
    if not args.render:
        collect(args)
    meta_path = OUT / "machine.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else machine()
    PAGE.write_text(render(meta))
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
