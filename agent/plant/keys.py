"""Release keys for the plant: generate, store and load (plant side only, never on a station).

A key pair is two files: ``NAME.key`` (PKCS#8 PEM, mode 0600, optionally encrypted) and
``NAME.pub`` (SubjectPublicKeyInfo PEM). The key id defaults to the key's fingerprint
(:func:`agent.firmware.crypto.key_fingerprint`), so two sites cannot name different keys alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent.firmware.crypto import Alg, PublicKey, key_fingerprint, public_key_pem

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class KeyFiles:
    """Where a generated key pair was written and how the station names it."""

    key_id: str
    alg: Alg
    private_path: Path
    public_path: Path
    public_pem: str


def generate_private_key(alg: Alg) -> PrivateKey:
    """A fresh private key of ``alg``."""
    if alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def alg_of(key: PrivateKey | PublicKey) -> Alg:
    """The algorithm name of a key; ValueError for anything we do not sign with."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        return "ecdsa-p256"
    raise ValueError(f"unsupported key type {type(key).__name__}: use Ed25519 or EC P-256")


def write_key_pair(
    key: PrivateKey, *, out_dir: Path, name: str, key_id: str | None, passphrase: bytes | None
) -> KeyFiles:
    """Write ``NAME.key`` (0600, refusing to overwrite) and ``NAME.pub`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    private_path = out_dir / f"{name}.key"
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public = key.public_key()
    pem = public_key_pem(public)
    public_path = out_dir / f"{name}.pub"
    public_path.write_text(pem, encoding="ascii")
    return KeyFiles(
        key_id=key_id or key_fingerprint(public),
        alg=alg_of(key),
        private_path=private_path,
        public_path=public_path,
        public_pem=pem,
    )


def load_private_key(path: Path, passphrase: bytes | None) -> PrivateKey:
    """Read a PEM private key; ValueError if it is not an Ed25519 or P-256 key."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except TypeError as exc:  # encrypted without a passphrase, or the other way round
        raise ValueError(f"{path}: {exc}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        alg_of(key)
        return key
    raise ValueError(f"{path} holds a {type(key).__name__}: use Ed25519 or EC P-256")


def trust_entry_toml(*, key_id: str, alg: Alg, public_pem: str) -> str:
    """A ``[[trust.keys]]`` entry to paste into a station's configuration."""
    return (
        "[[trust.keys]]\n"
        f'key_id = "{key_id}"\n'
        f'alg = "{alg}"\n'
        f'public_key_pem = """\n{public_pem.strip()}\n"""\n'
    )
