"""The firmware-set manifest (schema v2), its signed envelope and its canonical form.

A signed set on the wire::

    {"schema": "fixture-agent/signed-firmware-set@1",
     "manifest": {...FirmwareSetManifest...},
     "signatures": [{"key_id": "...", "alg": "ed25519" | "ecdsa-p256", "sig": "<base64>"}]}

Each signature covers ``canonical_manifest(manifest)``: the RFC 8785 (JCS) canonical JSON of the
``manifest`` object exactly as received. The manifest model is then built from those very bytes,
so what was verified and what is used cannot differ. The manifest digest (SHA-256 of the
canonical bytes) names the set in unit records and in anti-rollback state.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Final, Literal

import rfc8785
from pydantic import AwareDatetime, Field, model_validator

from agent.firmware.crypto import Alg
from agent.wire.messages import (
    FirmwareSet,
    Ident,
    ImageSpec,
    ManufacturingSpec,
    TargetSpec,
    ValidFlagSpec,
    Wire,
)

MANIFEST_SCHEMA: Final = "fixture-agent/firmware-set@2"
ENVELOPE_SCHEMA: Final = "fixture-agent/signed-firmware-set@1"
MAX_SIGNED_SET_BYTES = 128 * 1024
MAX_SIGNATURES = 8
MAX_SEQUENCE = 2**53 - 1  # the largest integer RFC 8785 (I-JSON) represents exactly

LockPolicy = Literal["never", "on-request", "always"]


class ActivationSpec(Wire):
    """When a staged set replaces the active one; always between units, never mid-unit.

    ``immediate``: as soon as it is staged. ``next_job``: when a job that names it starts.
    ``at``: from time ``at`` on (a job naming it before then waits).
    """

    mode: Literal["immediate", "next_job", "at"] = "next_job"
    at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _at_only_with_mode_at(self) -> ActivationSpec:
        if (self.mode == "at") != (self.at is not None):
            raise ValueError("activation.at is required with mode 'at' and allowed only there")
        return self


class FirmwareSetManifest(Wire):
    """What the product owner released: the images of one product and how to use them."""

    schema_: Literal["fixture-agent/firmware-set@2"] = Field(MANIFEST_SCHEMA, alias="schema")
    set_id: Ident
    product: Ident
    sequence: Annotated[int, Field(ge=1, le=MAX_SEQUENCE)]
    not_before: AwareDatetime
    expires: AwareDatetime
    target: TargetSpec
    images: Annotated[tuple[ImageSpec, ...], Field(min_length=1, max_length=16)]
    manufacturing: ManufacturingSpec | None = None
    valid_flag: ValidFlagSpec
    lock: LockPolicy = "on-request"
    activation: ActivationSpec = ActivationSpec()

    @model_validator(mode="after")
    def _consistent(self) -> FirmwareSetManifest:
        if self.expires <= self.not_before:
            raise ValueError(f"expires {self.expires} is not after not_before {self.not_before}")
        self.as_firmware_set()  # the region checks of the v1 model (overlaps, valid flag)
        return self

    def as_firmware_set(self) -> FirmwareSet:
        """The v1 model the programming path uses (images, regions, valid flag)."""
        return FirmwareSet(
            set_id=self.set_id,
            product=self.product,
            sequence=self.sequence,
            target=self.target,
            images=self.images,
            manufacturing=self.manufacturing,
            valid_flag=self.valid_flag,
        )


class SignatureEntry(Wire):
    """One detached signature over the canonical manifest."""

    key_id: Ident
    alg: Alg
    # base64 of exactly 64 bytes, canonical: the unused low bits of the last symbol are zero,
    # so one signature has one spelling (a changed byte is never "the same" signature)
    sig: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{85}[AQgw]==$")]


class SignedFirmwareSet(Wire):
    """The envelope: the manifest as a JSON object plus its signatures.

    ``manifest`` stays an untyped JSON object here on purpose: it is canonicalized and its
    signatures checked before any field of it is interpreted.
    """

    schema_: Literal["fixture-agent/signed-firmware-set@1"] = Field(
        ENVELOPE_SCHEMA, alias="schema"
    )
    manifest: dict[str, Any]
    signatures: Annotated[tuple[SignatureEntry, ...], Field(max_length=MAX_SIGNATURES)]


def canonical_manifest(manifest: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of a manifest object: the bytes that are signed.

    Raises ``ValueError`` (``rfc8785.CanonicalizationError``) for values JCS cannot represent,
    e.g. integers beyond 2**53.
    """
    return rfc8785.dumps(manifest)


def manifest_digest(canonical: bytes) -> str:
    """SHA-256 hex of the canonical manifest: the set's identity in records and state."""
    return hashlib.sha256(canonical).hexdigest()


def encode_signed_set(manifest: dict[str, Any], signatures: list[SignatureEntry]) -> bytes:
    """The envelope as published: canonical JSON too, so equal sets are equal bytes."""
    envelope: dict[str, Any] = {
        "schema": ENVELOPE_SCHEMA,
        "manifest": manifest,
        "signatures": [entry.model_dump() for entry in signatures],
    }
    return rfc8785.dumps(envelope)
