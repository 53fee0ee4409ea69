"""``--json FILE`` at start-up: read the file and replay it in two passes.

As SPDK's ``lib/init/json_config.c`` does it.

Pass 1 runs in STARTUP and sends only methods allowed in STARTUP; pass 2 runs after
subsystem init and sends the RUNTIME-only methods. A batch goes in one pass, as one
JSON-RPC batch. Entries go through the same dispatcher as RPC clients, so validation and
error semantics are exactly those of the socket.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pybdev.rpc.dispatcher import Dispatcher
from pybdev.rpc.registry import State

log = logging.getLogger("pybdev.config")

# Strings are matched first so that comment markers inside them survive.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|/\*.*?\*/', re.S)


class ConfigError(Exception):
    """The config file cannot be loaded; start-up stops with this message."""


def strip_comments(text: str) -> str:
    """Remove ``//`` and ``/* */`` comments, which SPDK accepts in config files."""
    return _TOKENS.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", text)


@dataclass
class SubsystemConfig:
    name: str | None
    entries: list[Any] = field(default_factory=list)


def read_config_file(path: str | Path) -> list[SubsystemConfig]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"Could not read JSON configuration file {path}: {e}") from None
    try:
        root = json.loads(strip_comments(text))
    except json.JSONDecodeError as e:
        raise ConfigError(f"Parsing JSON configuration failed: {path}: {e}") from None
    if not isinstance(root, dict):
        raise ConfigError("Invalid JSON configuration: not enclosed in {}.")
    if "subsystems" not in root:
        log.warning("%s: no 'subsystems' key, nothing to load", path)
        return []
    subsystems = root["subsystems"]
    if not isinstance(subsystems, list):
        raise ConfigError("Invalid JSON configuration: 'subsystems' should be an array.")
    result = []
    for i, sub in enumerate(subsystems):
        if not isinstance(sub, dict):
            raise ConfigError(f"Invalid JSON configuration: subsystems[{i}] is not an object.")
        config = sub.get("config")
        if config is None:
            config = []
        if not isinstance(config, list):
            raise ConfigError(
                f"Invalid JSON configuration: 'config' of subsystem {sub.get('subsystem')!r} "
                "should be an array or null."
            )
        result.append(SubsystemConfig(sub.get("subsystem"), config))
    return result


def _methods(entry: Any) -> Iterator[tuple[str, Any]]:
    for item in entry if isinstance(entry, list) else [entry]:
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            raise ConfigError(f"Invalid JSON configuration: entry is not a method call: {item}")
        yield item["method"], item


async def replay(
    dispatcher: Dispatcher,
    config: list[SubsystemConfig],
    phase: State,
    known_subsystems: set[str],
    ignore_errors: bool,
) -> None:
    """Send the entries of ``config`` that belong to ``phase``; raises ConfigError.

    Every error and every skipped entry names where it is in the file: the subsystem, the
    entry's index in its ``config`` array, and the method.
    """
    next_id = 1
    for sub in config:
        for index, entry in enumerate(sub.entries):
            where = f"subsystem {sub.name!r}, config[{index}]"
            states = []
            skip = False
            for method_name, _item in _methods(entry):
                method = dispatcher.lookup(method_name)
                if method is None:
                    if sub.name not in known_subsystems:
                        log.info("%s: skipping %s: no subsystem %s here", where, method_name,
                                 sub.name)
                        skip = True
                    elif ignore_errors:
                        log.warning("%s: skipping %s: pybdev does not implement it "
                                    "(--json-ignore-init-errors)", where, method_name)
                        skip = True
                    else:
                        raise ConfigError(
                            f"{where}: method '{method_name}' was not found (pybdev does not "
                            "implement it; --json-ignore-init-errors skips it)"
                        )
                else:
                    states.append(method.states)
            if skip or not states:
                continue
            in_startup = all(s & State.STARTUP for s in states)
            if (phase == State.STARTUP) != in_startup:
                continue
            # A batch's calls one by one, in order, each stopping the replay on failure as
            # a single entry does; the response objects are checked as they are, never
            # encoded and parsed back.
            for method_name, item in _methods(entry):
                req: dict[str, Any] = {"jsonrpc": "2.0", "method": method_name, "id": next_id}
                next_id += 1
                if "params" in item:
                    req["params"] = item["params"]
                response = await dispatcher.handle_single(req)
                _check_response(response, ignore_errors, where, method_name)


def _check_response(response: dict[str, Any] | None, ignore_errors: bool, where: str,
                    method: str) -> None:
    if response is None or "error" not in response:
        return
    error = response["error"]
    text = f"{where}: {method} failed: {error.get('message')} (code {error.get('code')})"
    if not ignore_errors:
        raise ConfigError(f"loading the JSON configuration failed: {text}")
    log.warning("%s; skipped (--json-ignore-init-errors)", text)
