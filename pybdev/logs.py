"""Logging: levels, per-component debug flags, text or JSON lines, and SPDK's log RPCs.

SPDK has two thresholds, both changeable at run time: the *print level* (what reaches
stderr) and the *log level* (what reaches the log, here ``--log-file``). Its *flags*
(``-L bdev``, ``log_set_flag``) turn on debug messages of one component; here a flag is a
logger under ``pybdev.`` (``-L nbd`` is everything ``pybdev.nbd.*`` logs). NOTICE is a real
level between INFO and WARNING, as in SPDK.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from pybdev.rpc.errors import DECODE_FAILED, INTERNAL_ERROR, INVALID_PARAMS, RpcError
from pybdev.rpc.registry import BOTH, RpcTable
from pybdev.rpc.types import Params, Str

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

LEVELS = {"ERROR": logging.ERROR, "WARNING": logging.WARNING, "NOTICE": NOTICE,
          "INFO": logging.INFO, "DEBUG": logging.DEBUG}
#: Every component that logs: ``-L NAME`` and ``log_set_flag`` take these ("all": every one).
FLAGS = ("accel", "app", "assembly", "bdev", "config", "export", "http", "iobuf", "lvol", "nbd",
         "notify", "nvmf", "rpc", "scheduler", "ublk")
ROOT = "pybdev"
TEXT_FORMAT = "[%(asctime)s] %(name)s: %(levelname)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        audit = getattr(record, "audit", None)
        if audit is not None:  # an audit line's fields, for log processors (pybdev.rpc.audit)
            out["audit"] = audit
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class UnknownFlag(ValueError):
    pass


class LogControl:
    """The target's log handlers and thresholds; what the log RPCs change.

    Nothing changes in :mod:`logging` until :meth:`install` (the target process calls it;
    code that embeds an ``App``, tests among them, keeps its own logging).
    """

    def __init__(self, print_level: str = "INFO", log_file: str | None = None,
                 fmt: Literal["text", "json"] = "text", level: str = "INFO") -> None:
        formatter = JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)
        self.stderr = logging.StreamHandler(sys.stderr)
        self.file: logging.Handler | None = None
        handlers: list[logging.Handler] = [self.stderr]
        if log_file is not None:
            self.file = logging.FileHandler(log_file, encoding="utf-8")
            handlers.append(self.file)
        for handler in handlers:
            handler.setFormatter(formatter)
        self.handlers = handlers
        self.enabled: set[str] = set()
        self.print_level = print_level
        self.level = level
        self.set_print_level(print_level)
        self.set_level(level)

    def install(self) -> None:
        """Route every ``pybdev.*`` logger to this object's handlers (and nowhere else)."""
        root = logging.getLogger(ROOT)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in self.handlers:
            root.addHandler(handler)
        root.propagate = False
        # The formats use neither the caller's source line nor the thread or process:
        # records need not collect them (the logging HOWTO's "Optimization" switches; the
        # stack walk alone was a sixth of the cost of an audit line).
        logging._srcfile = None  # type: ignore[attr-defined]
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False

    def _apply(self) -> None:
        # The logger lets through the lowest threshold any handler wants; flags lower their
        # component's logger to DEBUG.
        thresholds = [LEVELS[self.print_level]] + ([LEVELS[self.level]] if self.file else [])
        logging.getLogger(ROOT).setLevel(min(thresholds))
        for flag in FLAGS:
            logging.getLogger(f"{ROOT}.{flag}").setLevel(
                logging.DEBUG if flag in self.enabled else logging.NOTSET)

    def set_print_level(self, name: str) -> None:
        self.print_level = name.upper()
        self.stderr.setLevel(LEVELS[self.print_level])
        self._apply()

    def set_level(self, name: str) -> None:
        self.level = name.upper()
        if self.file is not None:
            self.file.setLevel(LEVELS[self.level])
        self._apply()

    def set_flag(self, flag: str, on: bool = True) -> None:
        if flag != "all" and flag not in FLAGS:
            raise UnknownFlag(flag)
        names = FLAGS if flag == "all" else (flag,)
        if on:
            self.enabled.update(names)
            # Debug messages of a flag are printed even when the print level is higher.
            self.stderr.setLevel(min(self.stderr.level, logging.DEBUG))
        else:
            self.enabled.difference_update(names)
            if not self.enabled:
                self.stderr.setLevel(LEVELS[self.print_level])
        self._apply()

    def flags(self) -> dict[str, bool]:
        return {flag: flag in self.enabled for flag in FLAGS}


def check_flags(flags: list[str]) -> list[str]:
    """The ``-L`` values that are not flags (empty when all are)."""
    return [f for f in flags if f != "all" and f not in FLAGS]


RPC = RpcTable()
LevelName = Literal["ERROR", "WARNING", "NOTICE", "INFO", "DEBUG",
                    "error", "warning", "notice", "info", "debug"]
DECODE_ERROR = (INTERNAL_ERROR, DECODE_FAILED)


class LevelParams(Params):
    level: LevelName


class FlagParams(Params):
    flag: Str


@RPC.method("log_set_print_level", LevelParams, states=BOTH, decode_error=DECODE_ERROR,
            result={"type": "boolean"})
def log_set_print_level(logs: LogControl, p: LevelParams) -> bool:
    """Set the lowest level printed to stderr (ERROR, WARNING, NOTICE, INFO, DEBUG)."""
    logs.set_print_level(p.level)
    return True


@RPC.method("log_get_print_level", states=BOTH, result={"type": "string"},
            decode_error=(INVALID_PARAMS, "log_get_print_level requires no parameters"))
def log_get_print_level(logs: LogControl) -> str:
    """The lowest level printed to stderr."""
    return logs.print_level


@RPC.method("log_set_level", LevelParams, states=BOTH, decode_error=DECODE_ERROR,
            result={"type": "boolean"})
def log_set_level(logs: LogControl, p: LevelParams) -> bool:
    """Set the lowest level written to the log file (``--log-file``)."""
    logs.set_level(p.level)
    return True


@RPC.method("log_get_level", states=BOTH, result={"type": "string"},
            decode_error=(INVALID_PARAMS, "log_get_level requires no parameters"))
def log_get_level(logs: LogControl) -> str:
    """The lowest level written to the log file."""
    return logs.level


@RPC.method("log_set_flag", FlagParams, states=BOTH, decode_error=DECODE_ERROR,
            result={"type": "boolean"})
def log_set_flag(logs: LogControl, p: FlagParams) -> bool:
    """Turn on a component's debug messages (``all`` for every component)."""
    try:
        logs.set_flag(p.flag)
    except UnknownFlag:
        raise RpcError(INVALID_PARAMS, "invalid log flag") from None
    return True


@RPC.method("log_clear_flag", FlagParams, states=BOTH, decode_error=DECODE_ERROR,
            result={"type": "boolean"})
def log_clear_flag(logs: LogControl, p: FlagParams) -> bool:
    """Turn a component's debug messages off again."""
    try:
        logs.set_flag(p.flag, on=False)
    except UnknownFlag:
        raise RpcError(INVALID_PARAMS, "invalid log flag") from None
    return True


@RPC.method("log_get_flags", states=BOTH, result={"type": "object"},
            decode_error=(INVALID_PARAMS, "log_get_flags requires no parameters"))
def log_get_flags(logs: LogControl) -> dict[str, bool]:
    """Every flag and whether it is on."""
    return logs.flags()

