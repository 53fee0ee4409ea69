"""Parameter types with SPDK's decoding rules (``lib/util/json_util.c``) for pydantic models.

Integers must be JSON numbers; an integral float such as ``1.0`` or ``1e3`` is accepted as
an integer (SPDK normalises the exponent), ``1.5`` and strings are not. Booleans must be
``true``/``false``. Models are strict and forbid unknown keys.
"""

from __future__ import annotations

import uuid as _uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field


def integral(value: Any) -> Any:
    """For ``BeforeValidator``: an integral float counts as the integer (SPDK's decoding)."""
    # bool is an int subclass in Python but not a JSON number: leave it for strict to refuse.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _uuid_text(value: str) -> str:
    try:
        return str(_uuid.UUID(value))
    except ValueError:
        raise ValueError("not a UUID (expected 8-4-4-4-12 hex digits)") from None


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("string contains a NUL character")
    return value


U8 = Annotated[int, Field(ge=0, le=0xFF), BeforeValidator(integral)]
U16 = Annotated[int, Field(ge=0, le=0xFFFF), BeforeValidator(integral)]
U32 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF), BeforeValidator(integral)]
U64 = Annotated[int, Field(ge=0, le=0xFFFF_FFFF_FFFF_FFFF), BeforeValidator(integral)]
I32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1), BeforeValidator(integral)]
Str = Annotated[str, AfterValidator(_no_nul)]
Uuid = Annotated[str, AfterValidator(_uuid_text), Field(json_schema_extra={"format": "uuid"})]


class Params(BaseModel):
    """Base of every RPC params model: strict, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NameParams(Params):
    """``{"name": ...}``: the params of every delete and of several lookups."""

    name: Str
