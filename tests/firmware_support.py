"""Helpers for the firmware-set tests: manifests, keys, trust stores, signed sets."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.firmware.crypto import Alg, public_key_pem
from agent.firmware.manifest import SignatureEntry, canonical_manifest, encode_signed_set
from agent.firmware.trust import TrustedKey, TrustSection
from agent.plant.keys import PrivateKey, generate_private_key
from agent.plant.sign import PemSigner, sign_set

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def image_bytes(tag: str, size: int = 4096) -> bytes:
    """Deterministic image content, different per tag."""
    seed = hashlib.sha256(tag.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def image_entry(name: str, data: bytes, *, url: str, address: int, role: str = "application"
                ) -> dict[str, Any]:
    """One manifest image entry describing ``data``."""
    return {
        "name": name,
        "role": role,
        "address": f"0x{address:08X}",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "version": "1.0.0",
        "url": url,
        "key_ref": "hsm:app-2030",
    }


def manifest_dict(
    *,
    set_id: str = "widget-2030.1",
    product: str = "widget",
    sequence: int = 5,
    images: list[dict[str, Any]] | None = None,
    not_before: datetime = NOW - timedelta(days=1),
    expires: datetime = NOW + timedelta(days=30),
    activation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A valid v2 manifest object."""
    if images is None:
        data = image_bytes(set_id)
        images = [image_entry("app", data, url="https://example.invalid/app.bin",
                              address=0x1000)]
    body: dict[str, Any] = {
        "schema": "fixture-agent/firmware-set@2",
        "set_id": set_id,
        "product": product,
        "sequence": sequence,
        "not_before": not_before.isoformat().replace("+00:00", "Z"),
        "expires": expires.isoformat().replace("+00:00", "Z"),
        "target": {"family": "nrf52", "pyocd_target": "nrf52840"},
        "images": images,
        "valid_flag": {"kind": "flash-word", "address": "0x000FF000"},
        "lock": "on-request",
    }
    if activation is not None:
        body["activation"] = activation
    return body


class Release:
    """A release key and the trust entry that names it."""

    def __init__(self, key_id: str, alg: Alg = "ed25519") -> None:
        self.key_id = key_id
        self.alg = alg
        self.key: PrivateKey = generate_private_key(alg)

    def trusted(self, **extra: Any) -> TrustedKey:
        return TrustedKey(key_id=self.key_id, alg=self.alg,
                          public_key_pem=public_key_pem(self.key.public_key()), **extra)

    @property
    def signer(self) -> PemSigner:
        return PemSigner(self.key, key_id=self.key_id)

    def sign(self, manifest_or_envelope: bytes) -> bytes:
        return sign_set(manifest_or_envelope, self.signer)

    def sign_unchecked(self, manifest: dict[str, Any]) -> bytes:
        """Sign without the plant tool's schema check (a set only a broken tool would make)."""
        sig = self.signer.sign(canonical_manifest(manifest))
        entry = SignatureEntry(key_id=self.key_id, alg=self.alg,
                               sig=base64.b64encode(sig).decode())
        return encode_signed_set(manifest, [entry])


def trust_of(*keys: TrustedKey, revoked: tuple[str, ...] = (), threshold: int = 1
             ) -> TrustSection:
    return TrustSection(keys=keys, revoked=revoked, threshold=threshold)


def to_bytes(manifest: dict[str, Any]) -> bytes:
    import json

    return json.dumps(manifest, indent=2).encode()
