"""The ``accel`` subsystem: which module runs each accel operation.

SPDK routes copies, CRCs, compression, crypto and DIF through accel modules (``software``
or hardware engines) and lets ``accel_assign_opc`` pick one per operation before init
(``lib/accel/accel.c``, ``lib/accel/accel_rpc.c``). pybdev has one module, ``software``,
implemented in Python (:mod:`pybdev.accel.software`); the operations it lists are those
implemented there. Assignments are checked at init as SPDK does: an unknown module or one
that lacks the operation fails the framework's init.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

from pybdev.accel.software import OPERATIONS
from pybdev.errors import OperationError
from pybdev.rpc.errors import INVALID_PARAMS, PARSE_ERROR, RpcError, errno_error
from pybdev.rpc.registry import RpcTable, State
from pybdev.rpc.types import U32, Params, Str
from pybdev.subsystem import Config, Subsystem

if TYPE_CHECKING:
    from pybdev.app import App

RPC = RpcTable()

log = logging.getLogger("pybdev.accel")

#: Every opcode name SPDK knows, in its order (lib/accel/accel.c g_opcode_strings).
OPCODES = (
    "copy", "fill", "dualcast", "compare", "crc32c", "copy_crc32c", "compress", "decompress",
    "encrypt", "decrypt", "xor", "dif_verify", "dif_verify_copy", "dif_generate",
    "dif_generate_copy", "dix_generate", "dix_verify",
)
#: accel_set_options' defaults (lib/accel/accel.c): per-channel caches and pools that
#: SPDK's accel framework preallocates. pybdev has no accel task pools, so they are kept and
#: saved, so that SPDK's configs replay, and bound nothing (docs/guide.md).
DEFAULT_OPTIONS = {"small_cache_size": 128, "large_cache_size": 16, "task_count": 2048,
                   "sequence_count": 2048, "buf_count": 2048}
TASKS_IN_SEQUENCE_LIMIT = 8

#: Module name -> the opcodes it implements.
MODULES: dict[str, tuple[str, ...]] = {
    "software": tuple(op for op in OPCODES if op in OPERATIONS),
}


class AccelSubsystem(Subsystem):
    name = "accel"
    depends_on = ("iobuf",)
    rpc = RPC

    def __init__(self, app: App) -> None:
        super().__init__(app)
        self.options = dict(DEFAULT_OPTIONS)
        self.overrides: dict[str, str] = {}  # opcode -> module, as assigned before init
        self.assignments: dict[str, str] = {}
        self.started = False

    async def init(self) -> None:
        assignments = {op: module for module, ops in MODULES.items() for op in ops}
        for op, module in self.overrides.items():
            if module not in MODULES:
                log.error("Invalid module name of %s", module)
                raise OperationError(errno.EINVAL, f"accel module {module} does not exist")
            if op not in MODULES[module]:
                log.error("Module %s does not support op code %s", module, op)
                raise OperationError(errno.EINVAL, f"accel module {module} lacks {op}")
            assignments[op] = module
        self.assignments = {op: assignments[op] for op in OPCODES if op in assignments}
        self.started = True

    async def fini(self) -> None:
        self.started = False

    def write_config(self) -> Config | None:
        # spdk_accel_write_config_json: the options first, then each assignment.
        config: Config = [{"method": "accel_set_options", "params": dict(self.options)}]
        config += [{"method": "accel_assign_opc", "params": {"opname": op, "module": module}}
                   for op in OPCODES if (module := self.overrides.get(op)) is not None]
        return config


@RPC.method("accel_get_opc_assignments",
            decode_error=(INVALID_PARAMS, "accel_get_opc_assignments requires no parameters"),
            result={"type": "object", "additionalProperties": {"type": "string"}})
def accel_get_opc_assignments(sub: AccelSubsystem) -> dict[str, str]:
    """Each operation pybdev implements and the module that runs it."""
    return dict(sub.assignments)


@RPC.method("accel_get_module_info",
            decode_error=(INVALID_PARAMS, "accel_get_module_info requires no parameters"),
            result={"type": "array", "items": {"type": "object"}})
def accel_get_module_info(sub: AccelSubsystem) -> list[dict[str, object]]:
    """The accel modules and the operations each implements (``software``: Python)."""
    return [{"module": name, "supported ops": list(ops)} for name, ops in MODULES.items()]


class AssignOpcParams(Params):
    opname: Str
    module: Str


@RPC.method("accel_assign_opc", AssignOpcParams, states=State.STARTUP,
            decode_error=(PARSE_ERROR, "spdk_json_decode_object failed"),
            result={"type": "boolean"})
def accel_assign_opc(sub: AccelSubsystem, p: AssignOpcParams) -> bool:
    """Run one operation on the named module (checked at init, as SPDK does)."""
    if p.opname not in OPCODES:
        raise RpcError(INVALID_PARAMS, "spdk_json_decode_object failed")
    if sub.started:
        raise RpcError(INVALID_PARAMS, "error assigning opcode")
    sub.overrides[p.opname] = p.module
    log.info("Operation %s will be assigned to module %s", p.opname, p.module)
    return True


class SetOptionsParams(Params):
    small_cache_size: U32 | None = None
    large_cache_size: U32 | None = None
    task_count: U32 | None = None
    sequence_count: U32 | None = None
    buf_count: U32 | None = None


@RPC.method("accel_set_options", SetOptionsParams, states=State.STARTUP,
            decode_error=(PARSE_ERROR, "spdk_json_decode_object failed"),
            result={"type": "boolean"})
def accel_set_options(sub: AccelSubsystem, p: SetOptionsParams) -> bool:
    """Set the accel framework's cache and pool sizes; kept and saved (no pools here)."""
    new = {**sub.options, **p.model_dump(exclude_none=True)}
    if new["task_count"] < TASKS_IN_SEQUENCE_LIMIT:
        raise errno_error(errno.EINVAL)
    sub.options = new
    return True
