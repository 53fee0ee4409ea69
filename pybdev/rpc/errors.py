"""JSON-RPC error codes and the exception handlers raise to answer with an error.

Codes follow SPDK (``include/spdk/jsonrpc.h``): envelope errors in the -32xxx range,
``-errno`` with the glibc ``strerror`` text for failed operations, and -1 for a call in the
wrong state. Messages start with SPDK's text; pybdev may add a precise detail after ``": "``.
"""

from __future__ import annotations

import os

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
INVALID_STATE = -1

# SPDK's text for params that fail to decode, in most bdev, nbd and ublk handlers.
DECODE_FAILED = "spdk_json_decode_object failed"

ENVELOPE_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid parameters",
    INTERNAL_ERROR: "Internal error",
}


class RpcError(Exception):
    """Raised by a handler (or the dispatcher) to answer with ``{"code", "message"}``."""

    def __init__(self, code: int, message: str | None = None, data: object = None) -> None:
        self.code = code
        self.message = message if message is not None else ENVELOPE_MESSAGES.get(code, "Error")
        self.data = data  # JSON-RPC's optional "data" member; SPDK never sends one
        super().__init__(self.code, self.message)

    def to_json(self) -> dict[str, object]:
        out = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


def errno_error(err: int, detail: str | None = None) -> RpcError:
    """``-err`` with strerror's text, as SPDK's ``spdk_strerror``; ``detail`` is appended."""
    err = abs(err)
    text = os.strerror(err)
    return RpcError(-err, f"{text}: {detail}" if detail else text)
