"""The audit log: one INFO line per state-changing RPC, naming who did what (docs/operations.md).

A method is state-changing unless it is declared ``mutating=False`` in its ``RpcTable``; the
default follows the naming rule SPDK's methods keep (``*_get_*`` and ``get_*`` only read), so
a new method is audited unless its author says it only reads. The decision is made once,
when the method is declared, and costs one attribute test per call.

The caller is what the transport knows: ``uid=U pid=P`` of the peer of the Unix socket
(``SO_PEERCRED``), ``http user=NAME from ADDR`` (``bearer`` for a token, ``-`` without
authentication) for HTTP, ``config FILE`` for ``--json`` replay. Transports put it in
:data:`CALLER`, a context variable, so the dispatcher's signature stays the same and each
request task sees its own caller.

Parameters are logged by value only when they are scalars and their key does not look like a
secret (:func:`shown_params`); strings are cut and escaped so a client cannot forge log
lines.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from contextvars import ContextVar, Token
from typing import Any

from pybdev.peerwarn import quote

log = logging.getLogger("pybdev.rpc.audit")

#: Who sent the request being answered; set by the transport for each request.
CALLER: ContextVar[str] = ContextVar("pybdev_rpc_caller", default="internal")
#: The state-changing method being answered and its owner (the task answering it, or the
#: call answered inline: :func:`begin_call`), for events it causes (a bdev it deletes).
#: Callbacks and tasks started during the call inherit the variable (asyncio copies
#: contexts), so only the owner counts as the call: a vbdev removed because its base went,
#: or an NBD bdev whose server went, is a hot-remove.
CURRENT_METHOD: ContextVar[tuple[str, object] | None] = ContextVar("pybdev_rpc_method",
                                                                  default=None)


class _Inline:
    """The owner of the call running inline now (outside its own task), or None."""

    owner: object | None = None


def begin_call(method: str) -> tuple[Token[tuple[str, object] | None], object | None]:
    """Mark ``method`` as the call being answered, until :func:`end_call`.

    Inside a task the task owns the call. A transport may also run a handler straight
    from its read callback, outside any task: then a fresh object owns it, current only
    until end_call, so callbacks scheduled meanwhile (which inherit the variable) do not
    count as the call when they run later.
    """
    try:
        owner: object | None = asyncio.current_task()
    except RuntimeError:
        owner = None
    previous = _Inline.owner
    if owner is None:
        owner = _Inline.owner = object()
    return CURRENT_METHOD.set((method, owner)), previous


def end_call(token: Token[tuple[str, object] | None], previous: object | None) -> None:
    CURRENT_METHOD.reset(token)
    _Inline.owner = previous


def current_method() -> str | None:
    """The method whose own task (or inline call) runs now, or None (a callback, another
    task)."""
    current = CURRENT_METHOD.get()
    if current is None:
        return None
    if current[1] is _Inline.owner:
        return current[0]
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return current[0] if current[1] is task else None


# Keys whose values are never logged, whatever the method (nvmf's psk and dhchap keys,
# rbd's key and key_file, HTTP-style password/token/secret names).
_SECRET = re.compile(r"key|psk|passw|secret|token|dhchap|cred|auth", re.IGNORECASE)
MAX_VALUE_CHARS = 64
MAX_PARAMS = 8


def is_read_only_name(name: str) -> bool:
    """SPDK's naming rule: ``get_*`` and ``*_get_*`` methods only read."""
    return name.startswith("get_") or "_get_" in name


def _key_text(key: str) -> str | None:
    """How an audit line's text names ``key`` (cut, escaped), or None when it looks secret.

    The secret test, a regex search, costs about 3 µs a key: most of an audit line. Clients
    send the same few keys again and again, so the answers are kept, for at most
    _KEYS_KEPT keys (a client inventing keys costs a search each, not memory).
    """
    if key in _key_texts:
        return _key_texts[key]
    text = None if _SECRET.search(key) else quote(key, 32)[1:-1]
    if len(_key_texts) < _KEYS_KEPT:
        _key_texts[key] = text
    return text


_KEYS_KEPT = 1024
_key_texts: dict[str, str | None] = {}


def shown_params(params: Any) -> dict[str, Any]:
    """The parameters an audit line shows: scalars whose key is not secret-looking."""
    out: dict[str, Any] = {}
    if not isinstance(params, dict):
        return out
    for key, value in params.items():
        if len(out) >= MAX_PARAMS:
            break
        if not isinstance(key, str) or _key_text(key) is None:
            continue
        if isinstance(value, str):
            out[key[:MAX_VALUE_CHARS]] = value[:MAX_VALUE_CHARS]
        elif isinstance(value, (bool, int, float)):  # a tuple: 3x faster than a union
            out[key[:MAX_VALUE_CHARS]] = value
    return out


def record(method: str, params: Any, code: int, duration: float) -> None:
    """Write the audit line of one call; ``code`` 0 for success, else the JSON-RPC code."""
    if not log.isEnabledFor(logging.INFO):  # --log-level NOTICE and above: nothing to build
        return
    shown = shown_params(params)
    args = " ".join(
        f"{_key_text(k)}={quote(v) if isinstance(v, str) else v}" for k, v in shown.items()
    )
    result = "ok" if code == 0 else f"error {code}"
    caller = CALLER.get()
    log.info("rpc %s%s -> %s in %.1f ms by %s", method, f" {args}" if args else "", result,
             duration * 1000, caller,
             extra={"audit": {"method": method, "params": shown, "result": result,
                              "code": code, "duration_ms": round(duration * 1000, 3),
                              "caller": caller}})


_UCRED = struct.Struct("3i")


def unix_peer(sock: socket.socket | None) -> str:
    """``uid=U pid=P`` of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    if sock is None:
        return "unix peer"
    try:
        pid, uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError):
        return "unix peer"
    return f"uid={uid} pid={pid}"


__all__ = ["CALLER", "CURRENT_METHOD", "begin_call", "current_method", "end_call",
           "is_read_only_name", "quote", "record", "shown_params", "unix_peer"]
