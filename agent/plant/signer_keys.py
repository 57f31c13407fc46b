"""Keys on the signing service's token: list them, name them (key references), open one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pkcs11
from pkcs11 import Attribute, ObjectClass

from agent.firmware.crypto import key_fingerprint, public_key_pem
from agent.plant.pkcs11_signer import Pkcs11Signer, TokenError, open_session, public_key_of


def key_ref(*, token_label: str, key_label: str, fingerprint: str) -> str:
    """How records name a token key: an RFC 7512 PKCS#11 URI plus the public key's fingerprint
    (a label can be reused for a new key; the fingerprint cannot)."""
    return f"pkcs11:token={token_label};object={key_label};x-fingerprint={fingerprint}"


@dataclass(frozen=True)
class TokenKeyInfo:
    """One key pair on the token."""

    label: str
    alg: str
    fingerprint: str
    public_pem: str


def list_keys(*, module: Path, token_label: str, pin: str) -> list[TokenKeyInfo]:
    """Every public key on the token that has a label (its private half stays inside)."""
    session = open_session(module, token_label, pin)
    try:
        found = []
        for public in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY}):
            try:
                key = public_key_of(public)
            except (TokenError, ValueError):
                continue  # not a key this service signs with
            alg = "ed25519" if public.key_type == pkcs11.KeyType.EC_EDWARDS else "ecdsa-p256"
            found.append(TokenKeyInfo(label=str(public.label), alg=alg,
                                      fingerprint=key_fingerprint(key),
                                      public_pem=public_key_pem(key)))
        return sorted(found, key=lambda info: info.label)
    finally:
        session.close()


def open_key(*, module: Path, token_label: str, key_label: str,
             pin: str) -> tuple[Pkcs11Signer, str]:
    """The token key to sign with and its key reference."""
    signer = Pkcs11Signer(module=module, token_label=token_label, key_label=key_label, pin=pin,
                          key_id=None)
    ref = key_ref(token_label=token_label, key_label=key_label,
                  fingerprint=key_fingerprint(signer.public_key()))
    return signer, ref
