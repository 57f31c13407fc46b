"""Device certificates issued by the plant's device intermediate, whose key stays on the HSM.

``cryptography`` signs certificates only with keys it holds, so the certificate is built here in
two steps: the builder makes the to-be-signed part (TBS) with a throwaway key of the
intermediate's type (that fixes the signature algorithm identifier inside the TBS), then the
token signs those TBS bytes and the certificate is assembled in DER: ``SEQUENCE { tbs,
algorithm, BIT STRING signature }``. The result is loaded and checked against the intermediate
before anyone sees it.

Chain: device certificate <- device intermediate (HSM key) <- device root (offline, a file).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.errors import AgentError
from agent.firmware.crypto import PublicKey
from agent.plant.pki import CLOCK_SKEW, Authority
from agent.plant.signer import TokenKey


class DeviceCaError(AgentError):
    """A device certificate could not be made; the sentence says why."""


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def _der(tag: int, body: bytes) -> bytes:
    return bytes((tag,)) + _der_length(len(body)) + body


def _first_element_end(der: bytes, start: int) -> int:
    """Where the DER element beginning at ``start`` ends."""
    first = der[start + 1]
    if first < 0x80:
        return start + 2 + first
    count = first & 0x7F
    length = int.from_bytes(der[start + 2:start + 2 + count], "big")
    return start + 2 + count + length


def _algorithm_identifier(cert_der: bytes) -> bytes:
    """The signatureAlgorithm element of a DER certificate (right after the TBS)."""
    first = cert_der[1]
    header = 2 + (first & 0x7F if first >= 0x80 else 0)
    tbs_end = _first_element_end(cert_der, header)
    return cert_der[tbs_end:_first_element_end(cert_der, tbs_end)]


def device_root(common_name: str, *, days: int, now: dt.datetime) -> Authority:
    """The offline device root: a CA that may have one level of intermediates below it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Authority(key, cert)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=False, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=True, crl_sign=True, encipher_only=False,
                         decipher_only=False)


def intermediate_certificate(root: Authority, key: PublicKey, *, name: str, days: int,
                             now: dt.datetime) -> x509.Certificate:
    """The device intermediate's certificate (CA, path length 0) for the HSM key ``key``."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(root.cert.subject)
            .public_key(key).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                root.key.public_key()), critical=False)
            .sign(root.key, hashes.SHA256()))


@dataclass(frozen=True)
class DeviceIntermediate:
    """The intermediate: its certificate and its key on the token."""

    cert: x509.Certificate
    key: TokenKey
    key_ref: str

    def issue(self, device_key: ec.EllipticCurvePublicKey, *, serial: str, chip_uid: str,
              product: str, days: int, now: dt.datetime) -> x509.Certificate:
        """A device certificate: CN = the unit's serial, serialNumber = its chip uid."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial),
                             x509.NameAttribute(NameOID.SERIAL_NUMBER, chip_uid),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, product)])
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(device_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.cert.public_key()), critical=False))  # type: ignore[arg-type]
        if self.key.alg == "ed25519":
            draft = builder.sign(ed25519.Ed25519PrivateKey.generate(), None)
        else:
            draft = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
        tbs = draft.tbs_certificate_bytes
        raw = self.key.sign(tbs)
        signature = raw if self.key.alg == "ed25519" else encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        body = tbs + _algorithm_identifier(draft.public_bytes(Encoding.DER)) \
            + _der(0x03, b"\x00" + signature)
        cert = x509.load_der_x509_certificate(_der(0x30, body))
        try:
            cert.verify_directly_issued_by(self.cert)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise DeviceCaError(f"the issued certificate does not verify against the "
                                f"intermediate: {exc!r}") from None
        return cert


def device_public_key(sec1_hex: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from its SEC1 uncompressed hex; ValueError if it is none."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(sec1_hex))
