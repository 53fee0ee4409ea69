"""log commands, with the arguments of SPDK's ``rpc.py`` (spdk/cli/log.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pybdev.cli.output import print_dict

LEVELS = ["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"]


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    def cmd(name: str, func: Callable[[argparse.Namespace], None],
            help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        return p

    p = cmd("log_set_flag", lambda a: a.client.call("log_set_flag", {"flag": a.flag}),
            "Set a log flag")
    p.add_argument("flag", help='log flag name (e.g. "bdev") or "all"')
    p = cmd("log_clear_flag", lambda a: a.client.call("log_clear_flag", {"flag": a.flag}),
            "Clear a log flag")
    p.add_argument("flag", help='log flag name (e.g. "bdev") or "all"')
    cmd("log_get_flags", lambda a: print_dict(a.client.call("log_get_flags")), "Log flags")
    p = cmd("log_set_level", lambda a: a.client.call("log_set_level", {"level": a.level}),
            "Set the log level")
    p.add_argument("level", choices=LEVELS, help="log level")
    cmd("log_get_level", lambda a: print_dict(a.client.call("log_get_level")),
        "The log level")
    p = cmd("log_set_print_level", lambda a: a.client.call(
        "log_set_print_level", {"level": a.level}), "Set the level printed to stderr")
    p.add_argument("level", choices=LEVELS, help="log print level")
    cmd("log_get_print_level", lambda a: print_dict(a.client.call("log_get_print_level")),
        "The level printed to stderr")
