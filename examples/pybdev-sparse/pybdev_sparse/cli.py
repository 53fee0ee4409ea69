"""``scripts/rpc.py`` commands of the sparse plugin (standard library only)."""

from __future__ import annotations

import argparse
import json


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def create(args: argparse.Namespace) -> None:
        print(args.client.call("bdev_sparse_create", {
            "name": args.name, "num_blocks": args.num_blocks, "block_size": args.block_size}))

    p = sub.add_parser("bdev_sparse_create", help="Create a sparse (thin) RAM bdev")
    p.add_argument("name", help="bdev name")
    p.add_argument("num_blocks", type=int, help="number of blocks")
    p.add_argument("block_size", type=int, nargs="?", default=512, help="block size in bytes")
    p.set_defaults(func=create)

    def delete(args: argparse.Namespace) -> None:
        args.client.call("bdev_sparse_delete", {"name": args.name})

    p = sub.add_parser("bdev_sparse_delete", help="Delete a sparse bdev")
    p.add_argument("name", help="bdev name")
    p.set_defaults(func=delete)

    def stats(args: argparse.Namespace) -> None:
        print(json.dumps(args.client.call("bdev_sparse_get_stats", {"name": args.name}),
                         indent=2))

    p = sub.add_parser("bdev_sparse_get_stats", help="Blocks a sparse bdev stores")
    p.add_argument("name", help="bdev name")
    p.set_defaults(func=stats)
