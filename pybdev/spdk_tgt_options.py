"""``spdk_tgt`` options that mean nothing here, accepted so SPDK's scripts start pybdev.

SPDK's test scripts start the target with DPDK, hugepage, PCI and trace options
(``-s 1024``, ``-e bdev``, ``-i 0``, ``-g``, ``-u``, ...; ``lib/event/app.c``'s option table
and ``app/spdk_tgt/spdk_tgt.c``). pybdev takes every one of them, names the ones given once
in the log, and otherwise ignores them. Options that do mean something here (``-r``, ``-m``,
``-L``, ``--json``, ``-f``, ``--silence-noticelog``, ...) are the target's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# (flags, takes a value) for every spdk_tgt option that does not apply to pybdev.
NOT_APPLICABLE: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("-d", "--limit-coredump"), False),
    (("-e", "--tpoint-group"), True),
    (("-g", "--single-file-segments"), False),
    (("-i", "--shm-id"), True),
    (("-n", "--mem-channels"), True),
    (("-p", "--main-core"), True),
    (("-s", "--mem-size"), True),
    (("-u", "--no-pci"), False),
    (("-A", "--pci-allowed"), True),
    (("-B", "--pci-blocked"), True),
    (("-R", "--huge-unlink"), False),
    (("-S",), True),  # spdk_tgt's vhost/vfio-user socket directory
    (("--lcores",), True),
    (("--disable-cpumask-locks",), False),
    (("--interrupt-mode",), False),
    (("--iova-mode",), True),
    (("--base-virtaddr",), True),
    (("--huge-dir",), True),
    (("--msg-mempool-size",), True),
    (("--no-huge",), False),
    (("--enforce-numa",), False),
    (("--num-trace-entries",), True),
    (("--env-context",), True),
    (("--vfio-vf-token",), True),
)


def _dest(flags: tuple[str, ...]) -> str:
    return "spdk_na_" + flags[-1].lstrip("-").replace("-", "_")


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "spdk_tgt options that do not apply to pybdev (accepted, logged once, ignored)")
    for flags, takes_value in NOT_APPLICABLE:
        if takes_value:
            group.add_argument(*flags, dest=_dest(flags), action="append", metavar="X",
                               help=argparse.SUPPRESS)
        else:
            group.add_argument(*flags, dest=_dest(flags), action="store_true",
                               help=argparse.SUPPRESS)


def given(options: argparse.Namespace) -> list[str]:
    """The not-applicable options present on the command line, by their long name."""
    return [flags[-1] for flags, _ in NOT_APPLICABLE if getattr(options, _dest(flags))]


def drop_empty(argv: Sequence[str]) -> list[str]:
    """Empty arguments (an unset ``"$env_ctx"`` in blockdev.sh) are skipped, as getopt does."""
    return [a for a in argv if a != ""]
