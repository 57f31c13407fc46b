"""Shared types of the wire models: the frozen base and the field types (ids, addresses).

Kept apart from :mod:`agent.wire.messages` so the factory-data layout (its own module) and the
messages can both use them without importing each other.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

MAX_IMAGE_BYTES = 64 * 1024 * 1024


def _int_or_hex(value: object) -> object:
    """Addresses may be written as integers or as "0x..." strings (manifests are read by people)."""
    if isinstance(value, str) and value.lower().startswith("0x"):
        try:
            return int(value, 16)
        except ValueError:
            return value
    return value


# What the JSON may hold for a 32-bit address or word: the schema says so for other languages.
_U32_SCHEMA = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 0xFFFF_FFFF},
                         {"type": "string", "pattern": "^0[xX][0-9a-fA-F]{1,8}$"}]}
Address = Annotated[int, BeforeValidator(_int_or_hex), Field(ge=0, le=0xFFFF_FFFF),
                    WithJsonSchema(_U32_SCHEMA)]
Word = Annotated[int, BeforeValidator(_int_or_hex), Field(ge=0, le=0xFFFF_FFFF),
                 WithJsonSchema(_U32_SCHEMA)]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
Text = Annotated[str, Field(min_length=1, max_length=200)]
ImageRole = Literal["bootloader", "application", "filesystem", "manufacturing"]

ROLE_ORDER: dict[str, int] = {
    "bootloader": 0, "application": 1, "filesystem": 2, "manufacturing": 3,
}


class Wire(BaseModel):
    """Base of every wire model: frozen, no unknown keys, no silent type coercion."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
