"""The factory-data layout a firmware set declares: which fields a unit's partition carries.

The set's ``manufacturing`` section names the format version, every field (its TLV tag, where
its value comes from, its type and size), calibration slots with their defaults, and whether
the data must be signed by the plant's signing service before it is written. The encoding
itself is :mod:`agent.firmware.factory_data`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from agent.wire.messages_base import Address, Ident, Wire

# Where a field's value comes from. ``pool``: an identity from a plant-assigned block (a MAC
# range, say): the unit with serial number n gets ``pool_first + n`` (the serial's number, not
# its position in one job, so two jobs of a product never hand out one identity twice).
FieldSource = Literal["serial", "chip_uid", "station", "slot", "job", "product", "time",
                      "pool", "calibration"]
# text: UTF-8, at most ``size`` bytes; hex: exactly ``size`` bytes given as hex;
# u32/u64: little-endian unsigned integers of 4 or 8 bytes.
FieldType = Literal["text", "hex", "u32", "u64"]
INT_SIZES = {"u32": 4, "u64": 8}


class FactoryField(Wire):
    """One field of the factory data: a TLV entry with this tag."""

    tag: Annotated[int, Field(ge=1, le=239)]
    name: Ident
    source: FieldSource
    type: FieldType
    size: Annotated[int, Field(ge=1, le=255)]
    default: Annotated[int, Field(ge=0, le=2**64 - 1)] | Annotated[str, Field(max_length=510)] \
        | None = Field(None, description="calibration slots only: the value written until "
                                         "the unit is calibrated")
    pool_first: Annotated[int, Field(ge=0, le=2**64 - 1)] | None = None
    pool_count: Annotated[int, Field(ge=1, le=2**48)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FactoryField:
        if self.type in INT_SIZES and self.size != INT_SIZES[self.type]:
            raise ValueError(f"field {self.name}: {self.type} is {INT_SIZES[self.type]} bytes, "
                             f"not {self.size}")
        if (self.source == "calibration") != (self.default is not None):
            raise ValueError(f"field {self.name}: a default is required for calibration slots "
                             "and allowed only there")
        is_pool = self.source == "pool"
        if is_pool != (self.pool_first is not None and self.pool_count is not None):
            raise ValueError(f"field {self.name}: pool_first and pool_count are required for "
                             "pool fields and allowed only there")
        if self.source == "time" and self.type != "u64":
            raise ValueError(f"field {self.name}: time is u64 (Unix seconds)")
        return self


class DeviceCertificateSpec(Wire):
    """A per-device X.509 certificate for a part that holds its own key.

    The part's firmware leaves its public key at ``key_address`` (``"DKEY"``, algorithm 2 for
    P-256, length, the SEC1 uncompressed point); the station reads it, the plant signing service
    issues a certificate chained to the plant's device intermediate (key on the HSM), and the
    station writes it to ``cert_address`` (``"DCRT"``, DER length u16 LE, DER, erased flash).
    """

    key_address: Address
    cert_address: Address
    cert_size: Annotated[int, Field(ge=256, le=4096)] = 1024


class ManufacturingSpec(Wire):
    """The per-unit manufacturing partition the station generates for every unit.

    Without ``fields`` the station writes the version-1 JSON blob (``agent.station.mfgdata``);
    with them, the TLV factory data of ``format_version`` 2. ``signing: required`` makes the
    station write the partition only with the plant signing service's signature.
    """

    address: Address
    size: Annotated[int, Field(ge=64, le=64 * 1024)]
    format_version: Annotated[int, Field(ge=1, le=255)] = 1
    fields: Annotated[tuple[FactoryField, ...], Field(max_length=64)] = ()
    signing: Literal["none", "required"] = "none"
    device_certificate: DeviceCertificateSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ManufacturingSpec:
        tags = [field.tag for field in self.fields]
        names = [field.name for field in self.fields]
        if len(set(tags)) != len(tags) or len(set(names)) != len(names):
            raise ValueError("factory data field tags and names must be unique")
        if self.signing == "required" and not self.fields:
            raise ValueError("signed factory data needs a field layout ('fields')")
        for required in ("serial", "chip_uid"):
            if self.fields and not any(field.source == required for field in self.fields):
                raise ValueError(f"factory data must carry the unit's {required}")
        return self
