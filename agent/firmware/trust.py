"""The station's trust store and the one function that decides whether a signed set is usable.

:func:`verify_signed_set` is the same code on the station and in ``fixture-agent plant
verify-set``. Its order is deliberate: strict JSON, then the signatures over the canonical bytes,
and only then the manifest's fields (schema, validity window, anti-rollback).
"""

from __future__ import annotations

import base64
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.errors import BadMessage, ConfigError
from agent.firmware.antirollback import Accepted, check_sequence
from agent.firmware.crypto import Alg, PublicKey, load_public_key, verify_signature
from agent.firmware.manifest import (
    MAX_SIGNED_SET_BYTES,
    FirmwareSetManifest,
    SignatureEntry,
    SignedFirmwareSet,
    canonical_manifest,
    manifest_digest,
)
from agent.firmware.reasons import Reason, refuse
from agent.wire.codec import describe_validation_error, parse_inbound
from agent.wire.messages import FirmwareSet, Ident


class _Section(BaseModel):
    """Like ``agent.config.Section``; not imported from there so config.py can import us."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TrustedKey(_Section):
    """A release key the station accepts signatures from; ``alg`` is bound to the key."""

    key_id: Ident
    alg: Alg
    public_key_pem: Annotated[str, Field(min_length=1, max_length=4096)]
    not_after: AwareDatetime | None = None

    @model_validator(mode="after")
    def _key_matches_alg(self) -> TrustedKey:
        load_public_key(self.alg, self.public_key_pem)
        return self

    @cached_property
    def public_key(self) -> PublicKey:
        """The parsed public key."""
        return load_public_key(self.alg, self.public_key_pem)


class TrustSection(_Section):
    """``[trust]`` of the station configuration: release keys, revoked ids, threshold."""

    keys: Annotated[tuple[TrustedKey, ...], Field(min_length=1, max_length=32)]
    revoked: tuple[Ident, ...] = ()
    threshold: Annotated[int, Field(ge=1, le=8)] = 1

    @model_validator(mode="after")
    def _usable(self) -> TrustSection:
        ids = [key.key_id for key in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"key ids repeat: {ids}")
        usable = [key_id for key_id in ids if key_id not in self.revoked]
        if len(usable) < self.threshold:
            raise ValueError(f"threshold {self.threshold} needs more than the {len(usable)} "
                             "key(s) that are not revoked")
        return self

    def key(self, key_id: str) -> TrustedKey | None:
        """The trusted key of that id, if configured."""
        return next((key for key in self.keys if key.key_id == key_id), None)


def load_trust_store(path: Path) -> TrustSection:
    """Load a TOML file holding a ``[trust]`` table (the station config's shape)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"not valid TOML: {exc}"]) from None
    if not isinstance(raw.get("trust"), dict):
        raise ConfigError(str(path), ["trust: a [trust] table is required; found nothing"])
    try:
        return TrustSection.model_validate(raw["trust"])
    except ValidationError as exc:
        problems = describe_validation_error(exc).split("; ")
        raise ConfigError(str(path), [f"trust.{p}" for p in problems]) from None


@dataclass(frozen=True)
class VerifiedSet:
    """A signed set that passed every check; the only way code gets at a usable manifest."""

    manifest: FirmwareSetManifest
    digest: str
    signed_bytes: bytes
    key_ids: tuple[str, ...]

    @property
    def set_id(self) -> str:
        """The set's id."""
        return self.manifest.set_id

    @property
    def firmware_set(self) -> FirmwareSet:
        """The v1 model for the programming path."""
        return self.manifest.as_firmware_set()


def verify_signed_set(
    raw: bytes,
    trust: TrustSection,
    *,
    now: datetime,
    accepted: Mapping[str, Accepted] | None = None,
    check_window: bool = True,
) -> VerifiedSet:
    """Verify ``raw`` (a signed set as published) or raise FirmwareSetError with its reason.

    ``accepted`` is the anti-rollback state (``AntiRollbackStore.view()``); None skips that
    check (the plant's verify-set tool has no station state). Recording the acceptance is the
    caller's job (``AntiRollbackStore.accept``), after this returns. ``check_window=False``
    skips not-before/expiry, for sets accepted earlier and read back after a restart (their
    expiry is checked when a job wants them); ``now`` still applies to key expiry.
    """
    try:
        envelope = parse_inbound(SignedFirmwareSet, raw, max_bytes=MAX_SIGNED_SET_BYTES)
    except BadMessage as exc:
        bare = _bare_manifest_schema(raw)
        if bare is not None:
            raise refuse(Reason.UNSIGNED, f"this is a bare manifest ({bare}), not a signed set: "
                         "sign it first (fixture-agent plant sign-set)") from None
        raise refuse(Reason.MALFORMED, f"{exc.code}: {exc.reason}") from None
    claimed = _claimed_set_id(envelope)
    try:
        canonical = canonical_manifest(envelope.manifest)
    except ValueError as exc:
        raise refuse(Reason.MALFORMED, f"manifest has no canonical form: {exc}",
                     set_id=claimed) from None
    key_ids = _check_signatures(envelope.signatures, canonical, trust, now=now, set_id=claimed)
    try:
        manifest = FirmwareSetManifest.model_validate_json(canonical)
    except ValidationError as exc:
        raise refuse(Reason.INVALID_MANIFEST, describe_validation_error(exc),
                     set_id=claimed) from None
    if check_window:
        check_validity(manifest, now)
    digest = manifest_digest(canonical)
    if accepted is not None:
        check_sequence(accepted, product=manifest.product, sequence=manifest.sequence,
                       digest=digest, set_id=manifest.set_id)
    return VerifiedSet(manifest=manifest, digest=digest, signed_bytes=raw, key_ids=key_ids)


def _bare_manifest_schema(raw: bytes) -> str | None:
    """The schema of an unsigned manifest given where a signed set belongs, else None."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    schema = body.get("schema") if isinstance(body, dict) else None
    if isinstance(schema, str) and schema.startswith("fixture-agent/firmware-set@"):
        return schema
    return None


def _claimed_set_id(envelope: SignedFirmwareSet) -> str | None:
    """The set id the unverified manifest claims, for labelling a refusal only."""
    value = envelope.manifest.get("set_id")
    if isinstance(value, str) and len(value) <= 64 and value.isprintable():
        return value
    return None


def _check_signatures(
    signatures: tuple[SignatureEntry, ...],
    canonical: bytes,
    trust: TrustSection,
    *,
    now: datetime,
    set_id: str | None,
) -> tuple[str, ...]:
    """Ids of the trusted keys whose signatures hold; refuse below the threshold."""
    if not signatures:
        raise refuse(Reason.UNSIGNED, "the set carries no signature", set_id=set_id)
    good: list[str] = []
    problems: list[tuple[Reason, str]] = []
    for entry in signatures:
        if entry.key_id in good:
            continue  # one key counts once toward the threshold
        problem = _check_one(entry, canonical, trust, now)
        if problem is None:
            good.append(entry.key_id)
        else:
            problems.append(problem)
    if len(good) >= trust.threshold:
        return tuple(good)
    if good or not problems:
        raise refuse(Reason.THRESHOLD, f"{len(good)} valid signature(s) of {trust.threshold} "
                     f"required; " + "; ".join(text for _, text in problems), set_id=set_id)
    raise refuse(problems[0][0], "; ".join(text for _, text in problems), set_id=set_id)


def _check_one(
    entry: SignatureEntry, canonical: bytes, trust: TrustSection, now: datetime
) -> tuple[Reason, str] | None:
    """None if the signature holds, else its reason code and sentence."""
    key_id = entry.key_id
    if key_id in trust.revoked:
        return Reason.REVOKED_KEY, f"key {key_id} is revoked"
    key = trust.key(key_id)
    if key is None:
        return Reason.UNKNOWN_KEY, f"key {key_id} is not in the trust store"
    if key.not_after is not None and now > key.not_after:
        return Reason.EXPIRED_KEY, f"key {key_id} expired at {key.not_after.isoformat()}"
    if entry.alg != key.alg:
        return Reason.ALG_MISMATCH, f"signature claims {entry.alg} but key {key_id} is {key.alg}"
    signature = base64.b64decode(entry.sig, validate=True)
    if not verify_signature(key.alg, key.public_key, canonical, signature):
        return Reason.BAD_SIGNATURE, f"signature by {key_id} does not match the manifest"
    return None


def check_validity(manifest: FirmwareSetManifest, now: datetime) -> None:
    """Refuse a set outside its validity window (a freeze attack replays an expired one)."""
    if now < manifest.not_before:
        raise refuse(Reason.NOT_YET_VALID, f"valid from {manifest.not_before.isoformat()}, "
                     f"now is {now.isoformat()}", set_id=manifest.set_id)
    if now >= manifest.expires:
        raise refuse(Reason.EXPIRED, f"expired at {manifest.expires.isoformat()}, "
                     f"now is {now.isoformat()}", set_id=manifest.set_id)

