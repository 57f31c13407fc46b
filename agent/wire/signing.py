"""What a station and the plant signing service say to each other over HTTPS.

``POST /v1/sign`` with a :class:`SignRequest`; the service answers 200 with a
:class:`SignResponse` or 403/404/409 with a :class:`SignRefusal` whose ``code`` is stable.
The station is whoever its TLS client certificate names; the request does not say.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from agent.wire.messages_base import Ident, Sha256Hex, Wire

SIGN_PATH = "/v1/sign"
CERTIFY_PATH = "/v1/certify"
Alg = Literal["ed25519", "ecdsa-p256"]
RefusalCode = Literal[
    "not_a_station", "unknown_job", "station_not_allowed", "wrong_product",
    "serial_outside_job", "serial_bound_to_other_chip", "quota_exhausted", "bad_request",
    "token_error", "no_device_ca", "bad_public_key",
]


# one unit, as both requests name it
UnitSerial = Annotated[str, Field(min_length=1, max_length=64)]
ChipUid = Annotated[str, Field(pattern=r"^[0-9a-f]{2,64}$")]

class SignRequest(Wire):
    """Sign the factory data of one unit: its digest, bound to job, serial and chip uid."""

    schema_: Literal["fixture-agent/sign-request@1"] = Field(
        "fixture-agent/sign-request@1", alias="schema")
    job_id: Ident
    product: Ident
    serial: UnitSerial
    chip_uid: ChipUid
    digest: Sha256Hex = Field(description="SHA-256 hex of the factory data bytes")


class SignResponse(Wire):
    """The signature of the digest, which key made it, and the service's id for it."""

    schema_: Literal["fixture-agent/sign-response@1"] = Field(
        "fixture-agent/sign-response@1", alias="schema")
    signature_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    key_ref: Annotated[str, Field(min_length=1, max_length=200)]
    alg: Alg
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$", description="hex, 64 bytes")]
    repeated: bool = Field(False, description="true when this exact request was signed before "
                                              "and the stored signature is returned again")


class SignRefusal(Wire):
    """Why the service did not sign."""

    schema_: Literal["fixture-agent/sign-refusal@1"] = Field(
        "fixture-agent/sign-refusal@1", alias="schema")
    code: RefusalCode
    reason: Annotated[str, Field(max_length=500)]


class CertifyRequest(Wire):
    """Issue a certificate for the key a part made itself, bound to job, serial and chip."""

    schema_: Literal["fixture-agent/certify-request@1"] = Field(
        "fixture-agent/certify-request@1", alias="schema")
    job_id: Ident
    product: Ident
    serial: UnitSerial
    chip_uid: ChipUid
    public_key: Annotated[str, Field(pattern=r"^04[0-9a-f]{128}$",
                                     description="P-256 point, SEC1 uncompressed, hex")]


class CertifyResponse(Wire):
    """The device certificate (DER, hex), its serial and issuer, and the issuing key."""

    schema_: Literal["fixture-agent/certify-response@1"] = Field(
        "fixture-agent/certify-response@1", alias="schema")
    certificate: Annotated[str, Field(pattern=r"^[0-9a-f]{2,8192}$")]
    cert_serial: Annotated[str, Field(pattern=r"^[0-9a-f]{1,40}$")]
    issuer: Annotated[str, Field(max_length=500)]
    key_ref: Annotated[str, Field(min_length=1, max_length=200)]
    repeated: bool = False
