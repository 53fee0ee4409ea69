"""pybdev.proto is a leaf: exports and bdevs depend on it, never the other way round."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pybdev.proto

PROTO = Path(pybdev.proto.__file__).parent


def _imports(path: Path) -> list[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(PROTO.parent.parent).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


# Optional C accelerators a proto module may try, each with a pure-Python fallback in the
# same module (tests/proto/nvme/test_crc32c.py checks both agree).
ACCELERATORS = {"crc32c"}


def test_proto_imports_only_stdlib_and_itself() -> None:
    files = sorted(PROTO.rglob("*.py"))
    assert len(files) >= 7  # the package, nbd and its five modules
    foreign = {
        (str(path.relative_to(PROTO)), name)
        for path in files
        for name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] != "__future__"
        and name not in ACCELERATORS
        and not (name == "pybdev.proto" or name.startswith("pybdev.proto."))
    }
    assert foreign == set()


def test_importing_proto_loads_no_other_pybdev_package() -> None:
    code = (
        "import sys, pybdev.proto.nbd as n; "
        "print(sorted(m for m in sys.modules if m.startswith('pybdev.')"
        " and not m.startswith('pybdev.proto')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
