"""Sign with a key that never leaves a PKCS#11 token (an HSM, or SoftHSM2 in tests and labs).

The token signs; this process only sees signatures and the public key. ECDSA P-256 hashes here
(SHA-256) and asks the token for raw ``CKM_ECDSA``, which every HSM offers and which returns the
``r || s`` form the stations expect; Ed25519 uses ``CKM_EDDSA`` over the message itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import TracebackType
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from agent.errors import AgentError
from agent.firmware.crypto import Alg, PublicKey, key_fingerprint, public_key_pem
from agent.plant.keys import alg_of

_CURVES: dict[Alg, tuple[Any, str, Any]] = {
    "ecdsa-p256": (KeyType.EC, "secp256r1", Mechanism.EC_KEY_PAIR_GEN),
    "ed25519": (KeyType.EC_EDWARDS, "1.3.101.112", Mechanism.EC_EDWARDS_KEY_PAIR_GEN),
}


class TokenError(AgentError):
    """The token, the key on it, or the PIN is not usable; the message says which."""


def open_session(module: Path, token_label: str, pin: str, *, rw: bool = False) -> Any:
    """A logged-in session on the token; TokenError says why not."""
    try:
        token = pkcs11.lib(str(module)).get_token(token_label=token_label)
        try:
            return token.open(user_pin=pin, rw=rw)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            # Login is per process and token: a second key (the signing service holds two)
            # opens its session on the login the first one made.
            return token.open(rw=rw)
    except pkcs11.exceptions.NoSuchToken:
        raise TokenError(f"no token labelled {token_label!r} in {module}") from None
    except pkcs11.exceptions.PinIncorrect:
        raise TokenError(f"wrong PIN for token {token_label!r}") from None
    except (pkcs11.exceptions.PKCS11Error, RuntimeError, OSError) as exc:
        raise TokenError(f"cannot open token {token_label!r} in {module}: {exc!r}") from None


def public_key_of(public: Any) -> PublicKey:
    """The token's public key object as a ``cryptography`` key."""
    if public.key_type == KeyType.EC_EDWARDS:
        point = bytes(public[Attribute.EC_POINT])
        raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    key = serialization.load_der_public_key(encode_ec_public_key(public))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TokenError(f"the token holds a {type(key).__name__}, not an EC key")
    alg_of(key)  # P-256 only
    return key


def generate_on_token(
    *, module: Path, token_label: str, key_label: str, pin: str, alg: Alg
) -> tuple[str, str]:
    """Create a non-extractable signing key pair on the token; returns (fingerprint, PEM)."""
    key_type, curve, mechanism = _CURVES[alg]
    session = open_session(module, token_label, pin, rw=True)
    try:
        params = session.create_domain_parameters(
            key_type, {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)}, local=True
        )
        public, _ = params.generate_keypair(
            store=True, label=key_label, mechanism=mechanism,
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        key = public_key_of(public)
    except pkcs11.exceptions.PKCS11Error as exc:
        raise TokenError(f"the token could not generate an {alg} key: {exc!r}") from None
    finally:
        session.close()
    return key_fingerprint(key), public_key_pem(key)


class Pkcs11Signer:
    """A :class:`agent.plant.sign.Signer` backed by a token key; use as a context manager."""

    def __init__(
        self, *, module: Path, token_label: str, key_label: str, pin: str, key_id: str | None
    ) -> None:
        self._session = open_session(module, token_label, pin)
        try:
            self._private = self._session.get_key(ObjectClass.PRIVATE_KEY, label=key_label)
            public = self._session.get_key(ObjectClass.PUBLIC_KEY, label=key_label)
            self._public = public_key_of(public)
        except (pkcs11.exceptions.NoSuchKey, pkcs11.exceptions.MultipleObjectsReturned):
            self._session.close()
            raise TokenError(f"token {token_label!r} holds no single key pair labelled "
                             f"{key_label!r}") from None
        except ValueError as exc:
            self._session.close()
            raise TokenError(f"key {key_label!r}: {exc}") from None
        self.alg: Alg = alg_of(self._public)
        self.key_id = key_id or key_fingerprint(self._public)

    def __enter__(self) -> Pkcs11Signer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._session.close()

    def public_key(self) -> PublicKey:
        """The public half, read from the token."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """The token's 64-byte signature of ``data``."""
        try:
            if self.alg == "ed25519":
                return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))
            digest = hashlib.sha256(data).digest()
            return bytes(self._private.sign(digest, mechanism=Mechanism.ECDSA))
        except pkcs11.exceptions.PKCS11Error as exc:
            raise TokenError(f"the token refused to sign: {exc!r}") from None
