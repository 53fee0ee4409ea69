"""The lvstore consistency checker: verifies a store's model and reports what it found.

:func:`check_store` checks a loaded (in-memory) store; :func:`check_base` reads the store on
a bdev afresh, as a restart would, and checks that. The invariants (docs/lvol-format.md):
every cluster reference lies in the data area; no cluster has two owners; the free count is
the data clusters minus the referenced ones; thick lvols own every cluster; parents exist,
are read-only and form no cycle; names are unique and valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pybdev.bdev.core import Descriptor
from pybdev.bdev.lvol.store import NAME_MAX, LvolStore, read_slots
from pybdev.errors import OperationError


@dataclass
class Report:
    """What the checker found; ``ok`` when ``problems`` is empty."""

    found: bool
    generation: int = 0
    lvols: int = 0
    used_clusters: int = 0
    free_clusters: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.found and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"found": self.found, "ok": self.ok, "generation": self.generation,
                "lvols": self.lvols, "used_clusters": self.used_clusters,
                "free_clusters": self.free_clusters, "problems": list(self.problems)}


def check_store(store: LvolStore, *, settled: bool = True) -> Report:
    """Check ``store``'s model. ``settled``: no operation is running (free counts exact)."""
    geo = store.geometry
    report = Report(True, store.generation, len(store.lvols))
    problems = report.problems
    owner: dict[int, str] = {}
    names: set[str] = set()
    for lvol in store.lvols.values():
        where = f"lvol {lvol.name} ({lvol.uuid})"
        if not lvol.name or len(lvol.name.encode()) > NAME_MAX:
            problems.append(f"{where}: invalid name")
        if lvol.name in names:
            problems.append(f"{where}: name used twice")
        names.add(lvol.name)
        for idx, phys in enumerate(lvol.clusters):
            if not phys:
                if not lvol.thin:
                    problems.append(f"{where}: thick but cluster {idx} is not allocated")
                continue
            if phys < geo.md_clusters or phys >= geo.total_clusters:
                problems.append(f"{where}: cluster {idx} maps to {phys}, outside the data area")
                continue
            if phys in owner:
                problems.append(f"cluster {phys} owned by {owner[phys]} and by {where}")
            owner[phys] = where
            if not store._used[phys]:
                problems.append(f"{where}: cluster {phys} is in use but marked free")
        seen = {lvol.uuid}
        p = lvol.parent
        while p is not None:
            if p.uuid not in store.lvols:
                problems.append(f"{where}: parent {p.uuid} is not in the store")
                break
            if not p.read_only:
                problems.append(f"{where}: parent {p.name} is writable")
            if p.uuid in seen:
                problems.append(f"{where}: parent chain has a cycle")
                break
            seen.add(p.uuid)
            p = p.parent
        if lvol.parent is not None and lvol.esnap is not None:
            problems.append(f"{where}: has a parent and an external snapshot")
        if lvol.parent is not None and lvol not in lvol.parent.children:
            problems.append(f"{where}: missing from its parent's clone list")
    report.used_clusters = len(owner)
    report.free_clusters = store.free_clusters
    if settled:
        expected = geo.data_clusters - len(owner)
        if store.free_clusters != expected:
            problems.append(f"free_clusters is {store.free_clusters}, the maps say {expected}")
        marked = sum(store._used[geo.md_clusters:])
        if marked != len(owner):
            problems.append(f"{marked} clusters marked used, {len(owner)} referenced")
    return report


async def check_base(desc: Descriptor) -> Report:
    """Load the store on ``desc``'s bdev (read only) and check it; ``found`` False if none."""
    if not await read_slots(desc):
        return Report(False)
    try:
        store = await LvolStore.load(desc)
    except OperationError as e:
        report = Report(True)
        report.problems.append(f"the store does not load: {e}")
        return report
    return check_store(store)
