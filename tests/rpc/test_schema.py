"""rpc_schemas/ and docs/rpc-reference.md are generated from the registry; keep them fresh."""

from __future__ import annotations

import json

from pybdev.reference import builtin_registry
from pybdev.rpc.schema import REFERENCE_FILE, SCHEMA_FILE, rendered


def test_generated_files_are_up_to_date() -> None:
    expected = rendered(builtin_registry())
    for path in (SCHEMA_FILE, REFERENCE_FILE):
        assert path.exists(), f"{path} missing: run python -m pybdev.reference --write"
        assert path.read_text(encoding="utf-8") == expected[path], (
            f"{path.name} is out of date: run python -m pybdev.reference --write")


def test_every_method_is_described_with_its_params() -> None:
    doc = json.loads(rendered(builtin_registry())[SCHEMA_FILE])
    by_name = {m["name"]: m for m in doc["methods"]}
    assert {"rpc_get_methods", "framework_get_config", "bdev_malloc_create"} <= set(by_name)
    malloc = {p["name"]: p for p in by_name["bdev_malloc_create"]["params"]}
    assert malloc["block_size"]["required"] is True
    assert malloc["block_size"]["schema"]["maximum"] == 2**32 - 1
    assert by_name["bdev_set_options"]["x-states"] == ["STARTUP"]
