"""The import direction between pybdev's packages (docs/architecture.md, "Layers").

Walks every module's imports that run (``if TYPE_CHECKING:`` blocks excluded: they never
execute, so they cannot form a cycle) and checks each one against the layer table below. A
package may import from lower layers only, so no cycle between packages can exist; the
cycle check is there to say which one formed if the table is ever loosened.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pybdev"

# Lowest first. Keep in step with docs/architecture.md.
LAYERS: list[set[str]] = [
    # leaves
    {"pybdev", "errors", "listener", "netaddr", "tasks", "proto", "uring", "ceph",
     "spdk_tgt_options", "peerwarn", "events"},
    {"rpc", "cpus"},  # JSON-RPC: registry, dispatcher, transports, client; core masks
    {"cli", "subsystem", "logs", "notify"},  # rpc.py commands; subsystem base; logging; notify
    {"bdev", "iobuf", "accel", "scheduler"},  # the bdev layer and its modules; iobuf, accel
    {"export"},  # the base of every export
    {"nbd", "ublk", "nvmf"},  # exports and their subsystems
    {"framework", "config", "assembly", "metrics"},  # framework RPCs, --json replay, what a
    # target holds, /metrics
    {"app"},  # the target process
    {"reference", "__main__"},  # entry points
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def package_of(module: str) -> str:
    """``pybdev.bdev.core`` -> ``bdev``; ``pybdev`` itself and its attributes -> ``pybdev``."""
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__init__":
        return "pybdev"
    top = parts[1]
    is_module = (PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").exists()
    return top if is_module else "pybdev"


def runtime_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # ``from pybdev import nbd`` imports the package nbd
                yield node.lineno, f"{node.module}.{alias.name}"


def package_edges() -> dict[tuple[str, str], str]:
    """(importer package, imported package) -> the first place it happens."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        importer = package_of(".".join(rel.with_suffix("").parts))
        for lineno, name in runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if name == "pybdev" or name.startswith("pybdev."):
                imported = package_of(name)
                if imported != importer:
                    edges.setdefault((importer, imported), f"{rel}:{lineno}")
    return edges


def test_every_package_has_a_layer() -> None:
    packages = {package_of(f"pybdev.{p.stem}") for p in PACKAGE.iterdir()
                if (p.suffix == ".py" or (p / "__init__.py").exists())}
    unknown = sorted(packages - LAYER_OF.keys())
    assert not unknown, (f"packages without a layer: {unknown}; add them to LAYERS here "
                         "and to docs/architecture.md")


def test_imports_point_down_the_layers() -> None:
    wrong = [f"{where}: {a} imports {b}" for (a, b), where in package_edges().items()
             if a in LAYER_OF and b in LAYER_OF and LAYER_OF[b] >= LAYER_OF[a]]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for a, b in package_edges():
        graph.setdefault(a, set()).add(b)

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, [*path, node])
            if found:
                return found
        return None

    for start in sorted(graph):
        found = cycle_from(start, [])
        assert found is None, "import cycle between packages: " + " -> ".join(found)
