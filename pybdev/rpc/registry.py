"""The method registry: every RPC is declared once, here, by its subsystem.

From one registration come dispatch, validation, ``rpc_get_methods``, the schema in
``rpc_schemas/`` and the generated RPC reference. Subsystem packages register their methods
at import time with :func:`rpc_method`; the registry knows nothing of subsystems.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pybdev.rpc.errors import INVALID_PARAMS


class State(enum.IntFlag):
    """SPDK's RPC state mask (``SPDK_RPC_STARTUP`` = 1, ``SPDK_RPC_RUNTIME`` = 2)."""

    STARTUP = 1
    RUNTIME = 2


BOTH = State.STARTUP | State.RUNTIME

# How a method treats params: a model, "none" (any params are an error) or "ignore".
NO_PARAMS = "none"
IGNORE_PARAMS = "ignore"

Handler = Callable[..., Awaitable[Any] | Any]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    params: type[BaseModel] | str
    states: State
    subsystem: str
    summary: str
    result: Any  # a JSON Schema fragment describing the result, for rpc_schemas/
    decode_error_code: int
    decode_error_message: str


class Registry:
    """Methods in registration order; ``rpc_get_methods`` lists them reversed, as SPDK does."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(self, method: Method) -> None:
        if method.name in self._methods:
            raise ValueError(f"RPC method {method.name} registered twice")
        self._methods[method.name] = method

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._methods.values())

    def __len__(self) -> int:
        return len(self._methods)


REGISTRY = Registry()


def rpc_method(
    name: str,
    params: type[BaseModel] | str = NO_PARAMS,
    *,
    states: State = State.RUNTIME,
    subsystem: str = "framework",
    result: Any = None,
    decode_error: tuple[int, str] = (INVALID_PARAMS, "Invalid parameters"),
    registry: Registry = REGISTRY,
) -> Callable[[Handler], Handler]:
    """Register ``handler(app, params)`` (or ``handler(app)`` without params) as ``name``.

    ``decode_error`` is the code and SPDK text used when params fail validation; SPDK's
    handlers disagree between -32602 and -32603 (spec §10), so each method names its own.
    For ``params=NO_PARAMS`` the message is the whole answer to unexpected params.
    The handler's docstring first line becomes the method summary in the generated docs.
    """

    def register(handler: Handler) -> Handler:
        doc = (handler.__doc__ or "").strip().splitlines()
        registry.add(
            Method(
                name=name,
                handler=handler,
                params=params,
                states=states,
                subsystem=subsystem,
                summary=doc[0] if doc else "",
                result=result,
                decode_error_code=decode_error[0],
                decode_error_message=decode_error[1],
            )
        )
        return handler

    return register
