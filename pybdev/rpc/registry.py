"""RPC method declarations and the registry a target serves.

A method is declared once, next to the code that owns it, in that file's :class:`RpcTable`::

    RPC = RpcTable()

    class MallocModule(BdevModule):
        rpc = RPC

    @RPC.method("bdev_malloc_create", MallocCreateParams, result={"type": "string"})
    def bdev_malloc_create(module: MallocModule, p: MallocCreateParams) -> str: ...

Declaring registers nothing: the app assembles a :class:`Registry` from the tables of the
objects it builds (the framework, each subsystem, each bdev module), binding every handler to
the object that owns it. From that one registry come dispatch, validation,
``rpc_get_methods``, the schema in ``rpc_schemas/`` and the generated RPC reference.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from pybdev.rpc.audit import is_read_only_name
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
class MethodSpec:
    """A declared method: its handler takes the owner first, then the decoded params."""

    name: str
    func: Handler
    params: type[BaseModel] | str
    states: State
    summary: str
    result: Any  # a JSON Schema fragment describing the result, for rpc_schemas/
    decode_error_code: int
    decode_error_message: str
    #: Pre-2020 names SPDK kept as deprecated aliases (SPDK_RPC_REGISTER_ALIAS_DEPRECATED).
    aliases: tuple[str, ...] = ()
    #: The method changes state: each call gets an audit line (pybdev.rpc.audit).
    mutating: bool = True


class RpcTable:
    """The methods one file declares, in declaration order."""

    def __init__(self) -> None:
        self.specs: list[MethodSpec] = []

    def method(
        self,
        name: str,
        params: type[BaseModel] | str = NO_PARAMS,
        *,
        states: State = State.RUNTIME,
        result: Any = None,
        decode_error: tuple[int, str] = (INVALID_PARAMS, "Invalid parameters"),
        aliases: tuple[str, ...] = (),
        mutating: bool | None = None,
    ) -> Callable[[Handler], Handler]:
        """Declare ``handler(owner, params)`` (or ``handler(owner)`` without params).

        ``decode_error`` is the code and SPDK text used when params fail validation; SPDK's
        handlers disagree between -32602 and -32603 (docs/decisions/json-rpc-dispatcher.md),
        so each method names its own. For ``params=NO_PARAMS`` the message is the whole
        answer to unexpected params. The docstring's first line is the method summary.
        ``aliases`` are the method's old names, served with a deprecation warning.
        ``mutating`` says whether a call changes state and so gets an audit line; by
        default every method does except ``get_*`` and ``*_get_*`` ones (SPDK's naming).
        """
        changes = not is_read_only_name(name) if mutating is None else mutating

        def declare(handler: Handler) -> Handler:
            doc = (handler.__doc__ or "").strip().splitlines()
            self.specs.append(MethodSpec(
                name=name, func=handler, params=params, states=states,
                summary=doc[0] if doc else "", result=result,
                decode_error_code=decode_error[0], decode_error_message=decode_error[1],
                aliases=aliases, mutating=changes,
            ))
            return handler

        return declare

    def __iter__(self) -> Iterator[MethodSpec]:
        return iter(self.specs)


@dataclass(frozen=True)
class Method:
    """A served method: a spec bound to its owner, in the subsystem it belongs to."""

    name: str  # the spec's name, or for a deprecated alias the old name
    spec: MethodSpec
    subsystem: str
    handler: Handler  # the spec's function bound to its owner

    @property
    def alias_of(self) -> str | None:
        """For a deprecated alias, the current name it stands for."""
        return self.spec.name if self.name != self.spec.name else None

    @property
    def params(self) -> type[BaseModel] | str:
        return self.spec.params

    @property
    def states(self) -> State:
        return self.spec.states

    @property
    def summary(self) -> str:
        return self.spec.summary

    @property
    def result(self) -> Any:
        return self.spec.result

    @property
    def decode_error_code(self) -> int:
        return self.spec.decode_error_code

    @property
    def decode_error_message(self) -> str:
        return self.spec.decode_error_message


class Registry:
    """Methods in registration order; ``rpc_get_methods`` lists them reversed, as SPDK does."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add_table(self, table: RpcTable | None, owner: Any, subsystem: str) -> None:
        """Serve every method of ``table``, its handler bound to ``owner``."""
        for spec in table or ():
            handler = types.MethodType(spec.func, owner) if owner is not None else spec.func
            for name in (spec.name, *spec.aliases):
                if name in self._methods:
                    raise ValueError(f"RPC method {name} declared twice")
                self._methods[name] = Method(name, spec, subsystem, handler)

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def __iter__(self) -> Iterator[Method]:
        """Every method, aliases included, in registration order."""
        return iter(self._methods.values())

    def methods(self) -> Iterator[Method]:
        """The methods under their current names (no aliases)."""
        return (m for m in self._methods.values() if m.alias_of is None)

    def __len__(self) -> int:
        return len(self._methods)
