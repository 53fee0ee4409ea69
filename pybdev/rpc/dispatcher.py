"""The JSON-RPC dispatcher: one parsed value in, the response bytes out (SPDK's rules).

Transport rules implemented here (SPDK's ``lib/jsonrpc/jsonrpc_server.c`` and
``lib/rpc/rpc.c``; limits in docs/guide.md): strict request validation (-32600),
exact case-sensitive lookup and the ``--rpcs-allowed`` list (-32601), the STARTUP/RUNTIME
state check (-1 with SPDK's two messages), params decoding through the method's model,
notifications (success suppressed, errors still sent with ``"id": null``), batches
(one array, one element per request, completion order) and the exact response format.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from pydantic import ValidationError

from pybdev.errors import OperationError
from pybdev.rpc import audit, errors
from pybdev.rpc.errors import RpcError
from pybdev.rpc.registry import IGNORE_PARAMS, NO_PARAMS, Method, Registry, State

log = logging.getLogger("pybdev.rpc")

STARTUP_ONLY_MESSAGE = (
    "Method may only be called before framework is initialized. Use --wait-for-rpc command "
    "line parameter and then issue this RPC before the framework_start_init RPC."
)
RUNTIME_ONLY_MESSAGE = (
    "Method may only be called after framework is initialized using framework_start_init RPC."
)
_REQUEST_KEYS = frozenset(("jsonrpc", "method", "params", "id"))


class ParseError(Exception):
    """The value is not valid JSON (the connection answers -32700 and closes)."""


class DuplicateKeys(dict):  # type: ignore[type-arg]
    """A JSON object that had a key twice; SPDK refuses those everywhere."""


class RpcContext(Protocol):
    state: State


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    return DuplicateKeys(obj) if len(obj) != len(pairs) else obj


def _params_problem(value: Any) -> str | None:
    """Why SPDK's object decoders would refuse ``value``: a duplicate key, or a string
    with a NUL (not a C string, ``spdk_json_strdup``)."""
    if isinstance(value, dict):
        if isinstance(value, DuplicateKeys):
            return "duplicate key"
        for key, item in value.items():
            if "\0" in key:
                return "string contains NUL"
            problem = _params_problem(item)
            if problem:
                return problem
    elif isinstance(value, list):
        for item in value:
            problem = _params_problem(item)
            if problem:
                return problem
    elif isinstance(value, str) and "\0" in value:
        return "string contains NUL"
    return None


class RawNumber:
    """A JSON number Python cannot hold as it was written: beyond float range (``1e400``)
    or an integer longer than Python's int/str conversion limit.

    SPDK keeps numbers as text, so such an ``id`` is echoed verbatim; as a parameter it
    fails the method's decoding like any value of the wrong type.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawNumber({self.text[:40]!r})"


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity; JSON (and SPDK's parser) does not.
    raise ParseError(f"{name} is not JSON")


class _Float(float):
    """A float that remembers how it was written, so an id like ``1E5`` or ``1.50`` is
    echoed as sent (SPDK echoes the id's raw text); elsewhere it is just a float."""

    __slots__ = ("text",)
    text: str


def _float(text: str) -> float | RawNumber:
    value = _Float(text)
    if not math.isfinite(value):
        return RawNumber(text)
    value.text = text
    return value


def _int(text: str) -> int | RawNumber:
    try:
        return int(text)
    except ValueError:  # longer than sys.get_int_max_str_digits()
        return RawNumber(text)


# One decoder and one encoder for every request: json.loads and json.dumps build a new
# one per call whenever options are given, a measurable share of a small RPC's time.
_DECODE = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_reject_constant,
                           parse_float=_float).decode
_DECODE_RAW_INTS = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_reject_constant,
                                    parse_float=_float, parse_int=_int).decode
_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


def parse_json(raw: bytes) -> Any:
    """Parse one framed value with SPDK's strictness (UTF-8, JSON numbers only).

    ``\\u0000`` is valid JSON and SPDK's parser accepts it; only a parameter string holding a
    NUL fails, when the method decodes it (``spdk_json_strdup``).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"invalid UTF-8: {e}") from None
    try:
        return _DECODE(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ParseError(str(e)) from None
    except ValueError:
        # An integer too long for int(): parse again keeping such integers as text. Only
        # then, so the common case keeps the C parser's own integer conversion.
        try:
            return _DECODE_RAW_INTS(text)
        except (ValueError, RecursionError) as e:
            raise ParseError(str(e)) from None


def encode(obj: Any) -> str:
    """Compact JSON as SPDK writes it: ASCII only, ``/`` unescaped, 0x7F escaped."""
    return _ENCODE(obj).replace("\x7f", "\\u007f")


def encode_response(response: dict[str, Any]) -> str:
    """One response object as SPDK writes it, the id verbatim even when Python cannot
    represent it; a result that is not JSON becomes -32603 rather than no answer."""
    req_id = response["id"]
    raw_id = isinstance(req_id, RawNumber | _Float)
    if raw_id:
        response = {**response, "id": None}
    try:
        text = encode(response)
    except (ValueError, TypeError, RecursionError):
        log.exception("response is not JSON")
        text = encode(_error(response["id"], RpcError(errors.INTERNAL_ERROR)))
    if raw_id:
        # The key order is fixed (jsonrpc, id, ...), so the first id member is the id.
        text = text.replace('"id":null', '"id":' + req_id.text, 1)
    return text


def describe_validation_error(e: ValidationError) -> str:
    """``field: reason`` for the first problem, phrased for people, not pydantic."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"]) or "params"
    kind = err["type"]
    if kind == "missing":
        return f"{loc}: required parameter missing"
    if kind == "extra_forbidden":
        return f"{loc}: unknown parameter"
    if kind == "model_type":
        return "params: expected a JSON object"
    return f"{loc}: {err['msg'].lower()}"


class Dispatcher:
    """Dispatches parsed requests against a registry for one target (``ctx``)."""

    def __init__(
        self,
        ctx: RpcContext,
        registry: Registry,
        allowed: frozenset[str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.registry = registry
        self.allowed = allowed
        self._warned_aliases: set[str] = set()
        #: Calls answered, by (method, 0 or the JSON-RPC error code); "" for unknown names.
        self.calls: dict[tuple[str, int], int] = {}

    def is_allowed(self, name: str) -> bool:
        return self.allowed is None or name in self.allowed

    def lookup(self, name: str) -> Method | None:
        method = self.registry.get(name)
        return method if method is not None and self.is_allowed(name) else None

    def _suggest(self, name: str) -> dict[str, list[str]] | None:
        """``{"did_you_mean": [...]}`` for a misspelt name (only methods this target serves)."""
        if not isinstance(name, str) or len(name) > 256:
            return None
        names = [m.name for m in self.registry.methods() if self.is_allowed(m.name)]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.75)
        return {"did_you_mean": close} if close else None

    def answer_now(self, raw: bytes) -> bytes | Coroutine[Any, Any, bytes | None] | None:
        """Answer one framed value as far as it goes without waiting. Raises ParseError.

        The response bytes (None: nothing to send) when the handler returned at once, which
        most do; a coroutine that finishes the answer when a handler awaits, and for batches.
        A transport answering in its read callback this way spends no task on a request.
        """
        value = parse_json(raw)
        if not isinstance(value, dict):
            return self.handle_value(value)
        response = self._single_now(value)
        if isinstance(response, Pending):
            return self._line_later(response)
        return None if response is None else (encode_response(response) + "\n").encode()

    async def handle_raw(self, raw: bytes) -> bytes | None:
        """Answer one framed value; None when nothing is to be sent. Raises ParseError."""
        response = self.answer_now(raw)
        return await response if inspect.isawaitable(response) else response

    async def _line_later(self, pending: Pending) -> bytes | None:
        response = await pending.coro
        return None if response is None else (encode_response(response) + "\n").encode()

    async def handle_value(self, value: Any) -> bytes | None:
        if isinstance(value, list):
            if not value:
                return self._error_line(None, RpcError(errors.INVALID_REQUEST))
            parts = []
            for element in value:
                response = await self.handle_single(element)
                if response is not None:
                    parts.append(encode_response(response))
            return ("[" + ",".join(parts) + "]\n").encode() if parts else None
        response = await self.handle_single(value)
        return None if response is None else (encode_response(response) + "\n").encode()

    def _error_line(self, req_id: Any, err: RpcError) -> bytes:
        return (encode(_error(req_id, err)) + "\n").encode()

    async def handle_single(self, request: Any) -> dict[str, Any] | None:
        """The response object for one request, or None for a successful notification."""
        response = self._single_now(request)
        return await response.coro if isinstance(response, Pending) else response

    def _single_now(self, request: Any) -> dict[str, Any] | Pending | None:
        """:meth:`handle_single` as far as it goes without waiting (see :meth:`call_now`)."""
        req_id: Any = None
        try:
            if not isinstance(request, dict):
                raise RpcError(errors.INVALID_REQUEST)
            method_name = self._check_envelope(request)
            # Only now is the id known: SPDK answers anything refused before this point
            # with "id": null (parse_single_request, lib/jsonrpc/jsonrpc_server.c).
            req_id = request.get("id")
            if isinstance(req_id, bool) or not isinstance(
                req_id, str | int | float | RawNumber | None
            ):
                req_id = None
                raise RpcError(errors.INVALID_REQUEST)
            params = request.get("params")
            if params is not None and not isinstance(params, dict | list):
                raise RpcError(errors.INVALID_REQUEST)
            result = self.call_now(method_name, params)
        except RpcError as e:
            # SPDK always sends errors, with id null for notifications.
            return _error(req_id, e)
        if isinstance(result, Pending):
            return Pending(_response_later(req_id, result))
        if req_id is None:
            return None
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    def _check_envelope(self, request: dict[str, Any]) -> str:
        """The method name, once the members, ``jsonrpc`` and ``method`` are valid."""
        if isinstance(request, DuplicateKeys) or not request.keys() <= _REQUEST_KEYS:
            raise RpcError(errors.INVALID_REQUEST)
        version = request.get("jsonrpc", "2.0")
        if not isinstance(version, str) or version != "2.0":
            raise RpcError(errors.INVALID_REQUEST)
        method_name = request.get("method")
        if not isinstance(method_name, str):
            raise RpcError(errors.INVALID_REQUEST)
        return method_name

    async def call(self, method_name: str, params: Any) -> Any:
        """Look up, state-check, decode and run a method; raises RpcError on failure."""
        result = self.call_now(method_name, params)
        return await result.coro if isinstance(result, Pending) else result

    def call_now(self, method_name: str, params: Any) -> Any:
        """:meth:`call` up to the handler's return: its result, or :class:`Pending` when the
        handler returned an awaitable (the rest of the call: await ``.coro``).

        Each call is counted by method and result (``calls``, for /metrics); a state-changing
        one is timed and gets an audit line (:mod:`pybdev.rpc.audit`). Raises RpcError.
        """
        method = self.lookup(method_name)
        if method is None:
            key = ("", errors.METHOD_NOT_FOUND)  # unknown names are not kept: unbounded
            self.calls[key] = self.calls.get(key, 0) + 1
            raise RpcError(errors.METHOD_NOT_FOUND, data=self._suggest(method_name))
        mutating = method.spec.mutating
        if mutating:
            start = time.perf_counter()
            token, owner = audit.begin_call(method_name)
        code = 0
        result: Any = None
        try:
            if method.alias_of is not None and method_name not in self._warned_aliases:
                self._warned_aliases.add(method_name)  # once per name, as SPDK's lib/rpc
                log.warning("RPC method %s is deprecated.  Use %s instead.", method_name,
                            method.alias_of)
            state = self.ctx.state
            if not method.states & state:
                message = (RUNTIME_ONLY_MESSAGE if state == State.STARTUP
                           else STARTUP_ONLY_MESSAGE)
                raise RpcError(errors.INVALID_STATE, message)
            if method.params == NO_PARAMS and params is not None:
                raise RpcError(method.decode_error_code, method.decode_error_message)
            args = () if method.params in (NO_PARAMS, IGNORE_PARAMS) else (
                self._decode(method, params),)
            try:
                result = method.handler(*args)
            except Exception as e:
                raise _as_rpc_error(method_name, e) from None
            if inspect.isawaitable(result):
                # The rest runs in the caller's task, which counts and audits it.
                result = Pending(self._finish(method_name, params, mutating,
                                              start if mutating else 0.0, result))
            return result
        except RpcError as e:
            code = e.code
            raise
        except BaseException:  # cancelled (the target stops): not a success
            code = errors.INTERNAL_ERROR
            raise
        finally:
            if mutating:
                audit.end_call(token, owner)
            if not isinstance(result, Pending):
                self._answered(method_name, params, code, start if mutating else None)

    async def _finish(self, method_name: str, params: Any, mutating: bool, start: float,
                      awaitable: Awaitable[Any]) -> Any:
        """Await a handler's awaitable: the second half of :meth:`call_now`."""
        if mutating:
            token = audit.CURRENT_METHOD.set((method_name, asyncio.current_task()))
        code = 0
        try:
            try:
                return await awaitable
            except Exception as e:
                raise _as_rpc_error(method_name, e) from None
        except RpcError as e:
            code = e.code
            raise
        except BaseException:  # cancelled (the target stops): not a success
            code = errors.INTERNAL_ERROR
            raise
        finally:
            if mutating:
                audit.CURRENT_METHOD.reset(token)
            self._answered(method_name, params, code, start if mutating else None)

    def _answered(self, method_name: str, params: Any, code: int, start: float | None) -> None:
        """Count a call by its result; a state-changing one (``start`` given) is audited."""
        key = (method_name, code)
        self.calls[key] = self.calls.get(key, 0) + 1
        if start is not None:
            audit.record(method_name, params, code, time.perf_counter() - start)

    @staticmethod
    def _decode(method: Method, params: Any) -> Any:
        model = method.params
        assert not isinstance(model, str)
        fail = method.decode_error_code, method.decode_error_message
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise RpcError(fail[0], f"{fail[1]}: params: expected a JSON object")
        problem = _params_problem(params)
        if problem:
            raise RpcError(fail[0], f"{fail[1]}: params: {problem}")
        try:
            return model.model_validate(params)
        except ValidationError as e:
            raise RpcError(fail[0], f"{fail[1]}: {describe_validation_error(e)}") from None


def _error(req_id: Any, err: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": err.to_json()}


class Pending:
    """The rest of a call whose handler returned an awaitable: await ``coro``."""

    __slots__ = ("coro",)

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro


async def _response_later(req_id: Any, pending: Pending) -> dict[str, Any] | None:
    try:
        result = await pending.coro
    except RpcError as e:
        return _error(req_id, e)
    if req_id is None:
        return None
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


def _as_rpc_error(method_name: str, e: Exception) -> RpcError:
    """What a handler's exception answers: its own RpcError, an OperationError's errno and
    message as SPDK's handlers send them, anything else -32603 (and a log line)."""
    if isinstance(e, RpcError):
        return e
    if isinstance(e, OperationError):
        return RpcError(-e.errno, e.message)
    log.error("RPC %s failed", method_name, exc_info=e)
    return RpcError(errors.INTERNAL_ERROR)


__all__ = ["Dispatcher", "ParseError", "Pending", "RawNumber", "encode", "encode_response",
           "parse_json"]
