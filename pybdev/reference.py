"""``python -m pybdev.reference --write``: regenerate ``rpc_schemas/`` and the RPC reference.

Only the built-in methods are described: installed plugins document their own.
"""

from __future__ import annotations

import argparse
import sys

from pybdev.app import App, build_parser
from pybdev.assembly import BUILTIN, Assembly
from pybdev.rpc.registry import Registry
from pybdev.rpc.schema import ROOT, rendered


def builtin_registry() -> Registry:
    assembly = Assembly([BUILTIN])
    return App(build_parser(assembly).parse_args(["--no-rpc-server"]), assembly).registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate rpc_schemas/ and the RPC reference")
    parser.add_argument("--write", action="store_true", help="write the files")
    parser.add_argument("--check", action="store_true", help="exit 1 if they are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered(builtin_registry()).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(path)
            if args.write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'wrote' if args.write else 'out of date'}: {path.relative_to(ROOT)}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
