"""Public-key signature verification for firmware sets (the station side: no private keys here).

Two algorithms: ``ed25519`` (RFC 8032, 64-byte signatures) and ``ecdsa-p256`` (ECDSA over
NIST P-256 with SHA-256; the signature is the fixed-length 64-byte ``r || s`` form, as HSMs
return it through PKCS#11 and as JWS ES256 writes it). The algorithm used to check a signature is
the one configured for the trusted key, never the one a message claims.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

Alg = Literal["ed25519", "ecdsa-p256"]
ALGORITHMS: tuple[Alg, ...] = ("ed25519", "ecdsa-p256")
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
SIGNATURE_BYTES = 64


def load_public_key(alg: Alg, pem: str) -> PublicKey:
    """Parse a PEM ``PUBLIC KEY`` and check that it is a key of ``alg``; ValueError if not."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    if alg == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if (
        alg == "ecdsa-p256"
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise ValueError(f"the PEM holds a {type(key).__name__}, not an {alg} public key")


def public_key_pem(key: PublicKey) -> str:
    """The key as a PEM ``SubjectPublicKeyInfo`` string."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def key_fingerprint(key: PublicKey) -> str:
    """A short stable name for a key: the first 16 hex digits of SHA-256 over its DER SPKI."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def verify_signature(alg: Alg, key: PublicKey, data: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid ``alg`` signature of ``data`` by ``key``."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        if alg == "ed25519" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
            return True
        if alg == "ecdsa-p256" and isinstance(key, ec.EllipticCurvePublicKey):
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False
