"""Printing as SPDK's rpc.py prints: strings bare, everything else as JSON."""

from __future__ import annotations

import json
from typing import Any

# --dry-run prints requests only, as SPDK's suppress_cli_prints does.
suppressed = False


def print_json(value: Any) -> None:
    """A string without quotes (so ``$(rpc.py bdev_malloc_create 8 512)`` is the name)."""
    if value is None or suppressed:
        return
    print(value if isinstance(value, str) else json.dumps(value, indent=2))


def print_dict(value: Any) -> None:
    if not suppressed:
        print(json.dumps(value, indent=2))


def print_array(value: list[Any]) -> None:
    if not suppressed:
        print(" ".join(str(v) for v in value))
