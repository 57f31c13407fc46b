"""Sign firmware-set manifests (plant side): canonical bytes, detached signature, envelope.

A :class:`Signer` returns the 64-byte signature format the station expects (Ed25519, or ECDSA
P-256 as ``r || s``); :class:`PemSigner` uses a key file, ``pkcs11_signer.Pkcs11Signer`` a token.
Every signature is checked against the signer's public key before it is written out, so a faulty
HSM or a mixed-up key cannot produce a set the stations will refuse.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from agent.errors import BadMessage
from agent.firmware.crypto import Alg, PublicKey, verify_signature
from agent.firmware.manifest import (
    ENVELOPE_SCHEMA,
    MAX_SIGNED_SET_BYTES,
    FirmwareSetManifest,
    SignatureEntry,
    SignedFirmwareSet,
    canonical_manifest,
    encode_signed_set,
)
from agent.plant.keys import PrivateKey, alg_of
from agent.wire.codec import parse_inbound


class Signer(Protocol):
    """Something that holds a release key and signs with it."""

    key_id: str
    alg: Alg

    def public_key(self) -> PublicKey:
        """The public half, to check signatures before they leave the plant."""
        ...

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte signature of ``data``."""
        ...


class PemSigner:
    """Signs with a private key loaded from a PEM file."""

    def __init__(self, key: PrivateKey, *, key_id: str) -> None:
        self._key = key
        self.key_id = key_id
        self.alg: Alg = alg_of(key)

    def public_key(self) -> PublicKey:
        """The public half of the key."""
        return self._key.public_key()

    def sign(self, data: bytes) -> bytes:
        """Ed25519 directly; ECDSA P-256 with SHA-256, converted from DER to ``r || s``."""
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(self._key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return self._key.sign(data)


def read_document(raw: bytes) -> tuple[dict[str, Any], list[SignatureEntry]]:
    """A manifest, or an already signed set to add a signature to; both are checked strictly.

    Returns the manifest object and the signatures it already carries.
    """
    try:
        head = json.loads(raw)
    except ValueError as exc:
        raise BadMessage("not_json", f"not valid JSON: {exc}") from None
    if isinstance(head, dict) and head.get("schema") == ENVELOPE_SCHEMA:
        envelope = parse_inbound(SignedFirmwareSet, raw, max_bytes=MAX_SIGNED_SET_BYTES)
        manifest, signatures = envelope.manifest, list(envelope.signatures)
    else:
        parse_inbound(FirmwareSetManifest, raw, max_bytes=MAX_SIGNED_SET_BYTES)
        manifest, signatures = json.loads(raw), []
    FirmwareSetManifest.model_validate_json(canonical_manifest(manifest))
    return manifest, signatures


def sign_set(raw: bytes, signer: Signer) -> bytes:
    """Sign a manifest (or add a signature to a signed set) and return the envelope bytes."""
    manifest, signatures = read_document(raw)
    canonical = canonical_manifest(manifest)
    signature = signer.sign(canonical)
    if not verify_signature(signer.alg, signer.public_key(), canonical, signature):
        raise ValueError(f"the signature by {signer.key_id} does not verify with its own "
                         "public key: wrong key, or a faulty token")
    entry = SignatureEntry(
        key_id=signer.key_id, alg=signer.alg, sig=base64.b64encode(signature).decode("ascii")
    )
    kept = [old for old in signatures if old.key_id != signer.key_id]
    return encode_signed_set(manifest, [*kept, entry])
