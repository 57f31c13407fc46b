"""Certificates for the plant broker: who may hold which name, and how certificates are made.

Two authorities, because mosquitto cannot tell them apart by anything but name. With
``use_identity_as_username`` the certificate's CN becomes the username and the client id, and a
listener trusts every certificate its ``cafile`` chain accepts. So the authority that signs
stations must never be one the plant services' listener trusts: the **station CA** signs station
certificates only (its listener grants station rights by ``%u`` pattern), the **plant CA** signs
the plant services and the broker's own server certificate (its listener grants role rights by
exact username).

One CA with X.509 name constraints does not do the same job: OpenSSL checks a CN against DNS name
constraints only when the certificate has no DNS subjectAltName and the CN has at least two labels
(``cn2dnsid`` in ``crypto/x509/v3_ncons.c``), and station ids are single labels; a constraint can
also only name suffixes, not the ``plant-`` prefix. A certificate for ``plant-recorder`` from a
constrained CA would still be accepted.

Names: station ids are ``[a-z0-9-]`` (the station configuration's rule, and safe inside ACL
patterns, which refuse ``+`` and ``#`` anyway), and never ``plant`` or ``plant-...``: those are the
plant's. Plant identities are ``plant-<role>`` or ``plant-<role>-<n>`` for the roles below.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import AgentError

Kind = Literal["station", "plant"]
STATION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")
PLANT_PREFIX = "plant"
# Each role's rights are in config/mosquitto/acl-plant; a role may run as several instances
# (plant-recorder-1, plant-recorder-2), each with a certificate of its own, because the broker
# makes the CN the client id and two connections with one client id take each other's place.
PLANT_ROLES = ("recorder", "rollout", "tools", "console")
PLANT_NAME = re.compile(rf"^{PLANT_PREFIX}-({'|'.join(PLANT_ROLES)})(-[0-9]{{1,3}})?$")
CLOCK_SKEW = dt.timedelta(minutes=5)


class PkiError(AgentError):
    """A certificate operation refused: the sentence says what and why."""


def check_station_id(name: str) -> None:
    """Refuse a name a station certificate must not carry."""
    if not STATION_ID.match(name):
        raise PkiError(f"station id {name!r} must be 1 to 48 of a-z, 0-9 and '-', "
                       "starting with a letter or digit")
    if name == PLANT_PREFIX or name.startswith(f"{PLANT_PREFIX}-"):
        raise PkiError(f"station id {name!r} is reserved: names starting with "
                       f"'{PLANT_PREFIX}-' belong to the plant's services")


def check_plant_name(name: str) -> None:
    """Refuse a name that is no plant role (``plant-<role>`` or ``plant-<role>-<n>``)."""
    if not PLANT_NAME.match(name):
        roles = ", ".join(f"plant-{role}" for role in PLANT_ROLES)
        raise PkiError(f"plant identity {name!r} must be one of {roles}, optionally with an "
                       "instance number (plant-recorder-2)")


def kind_of(name: str) -> Kind:
    """Which authority signs certificates for ``name``."""
    return "plant" if name.startswith(f"{PLANT_PREFIX}-") else "station"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-256 key (small, fast on a Pi, accepted by every TLS stack here)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM (mosquitto and the station read it unattended)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class Revoked:
    """One entry of a CRL."""

    serial: int
    revoked_at: dt.datetime


@dataclass(frozen=True)
class Authority:
    """A CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, common_name: str, *, days: int, now: dt.datetime) -> Authority:
        """A new self-signed CA that may sign end-entity certificates and CRLs only."""
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue_client(self, name: str, key: ec.EllipticCurvePublicKey, *,
                     not_after: dt.datetime, now: dt.datetime) -> x509.Certificate:
        """A TLS client certificate whose CN is the MQTT identity (and an HTTPS client's)."""
        return self._issue(name, key, not_after=not_after, now=now,
                           usage=ExtendedKeyUsageOID.CLIENT_AUTH, alt_names=[])

    def issue_server(self, *, dns: Sequence[str], ips: Sequence[str],
                     key: ec.EllipticCurvePublicKey, not_after: dt.datetime,
                     now: dt.datetime) -> x509.Certificate:
        """The broker's TLS server certificate for those host names and addresses."""
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns]
        for ip in ips:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise PkiError(f"{ip!r} is not an IP address") from None
        if not names:
            raise PkiError("a server certificate needs at least one --dns name or --ip address")
        return self._issue((list(dns) or list(ips))[0], key, not_after=not_after, now=now,
                           usage=ExtendedKeyUsageOID.SERVER_AUTH, alt_names=names)

    def _issue(self, common_name: str, key: ec.EllipticCurvePublicKey, *,
               not_after: dt.datetime, now: dt.datetime, usage: x509.ObjectIdentifier,
               alt_names: list[x509.GeneralName]) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject).public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def crl(self, revoked: Sequence[Revoked], *, number: int, now: dt.datetime,
            days: int) -> x509.CertificateRevocationList:
        """A CRL valid for ``days``: past its nextUpdate, OpenSSL refuses every certificate."""
        builder = (
            x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
            .last_update(now - CLOCK_SKEW).next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False))
        for entry in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(entry.serial)
                .revocation_date(entry.revoked_at).build())
        return builder.sign(self.key, hashes.SHA256())


def _usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)
