"""The plant's PKI folder: two CAs, what they issued, what they revoked, their CRLs.

Layout of ``--dir PKI`` (keep it on the machine that runs the PKI, not on the broker)::

    station-ca.pem  station-ca.key  station-ca.crl.pem     the station CA
    plant-ca.pem    plant-ca.key    plant-ca.crl.pem       the plant CA (services, broker)
    inventory.json                                         every certificate issued, revocations
    issued/                                                default folder for issued certificates

Private keys are written once, mode 0600, and never overwritten (a CA key above all: every
certificate in the field hangs on it). Serial numbers are random (RFC 5280, 20 bytes at most).
The inventory is the revocation list's source: a CRL is re-signed from it on every revocation and
on every refresh, with a fresh nextUpdate and a CRL number one higher. Writes are atomic and the
folder is locked while a command changes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.firmware.atomic import write_atomic
from agent.plant.pki import Authority, Kind, PkiError, Revoked, cert_pem, key_pem, new_key

KINDS: tuple[Kind, ...] = ("station", "plant")
CA_NAMES = {"station": "station CA", "plant": "plant CA"}


class CertRecord(BaseModel):
    """One certificate an authority issued."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    serial: str  # hex, as `openssl x509 -serial` prints it
    name: str
    use: Literal["client", "server", "takeover"]
    issued_at: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None


class AuthorityState(BaseModel):
    """What one CA issued and the number of its last CRL."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    crl_number: int = 0
    certificates: tuple[CertRecord, ...] = ()


class Inventory(BaseModel):
    """Everything the PKI folder knows beyond the keys and certificates themselves."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    crl_days: int
    station: AuthorityState = AuthorityState()
    plant: AuthorityState = AuthorityState()

    def authority(self, kind: Kind) -> AuthorityState:
        """What the CA of ``kind`` issued."""
        state: AuthorityState = getattr(self, kind)
        return state

    def certificates(self, kind: Kind) -> tuple[CertRecord, ...]:
        """Every certificate the CA of ``kind`` issued, oldest first."""
        return self.authority(kind).certificates


@dataclass(frozen=True)
class IssuedFiles:
    """Where a certificate and its key were written."""

    record: CertRecord
    cert: Path
    key: Path


def write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` with ``data``; PkiError if it exists (nothing issued is overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise _exists(path) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _exists(path: Path) -> PkiError:
    return PkiError(f"{path} exists; refusing to overwrite it (move it away or choose another "
                    "folder)")


class PkiFolder:
    """A PKI folder on disk (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ca_cert_path(self, kind: Kind) -> Path:
        """The CA certificate clients and the broker trust."""
        return self.root / f"{kind}-ca.pem"

    def crl_path(self, kind: Kind) -> Path:
        """The CA's current CRL (PEM)."""
        return self.root / f"{kind}-ca.crl.pem"

    def _key_path(self, kind: Kind) -> Path:
        return self.root / f"{kind}-ca.key"

    @property
    def _inventory_path(self) -> Path:
        return self.root / "inventory.json"

    @contextlib.contextmanager
    def locked(self, *, create: bool = False) -> Iterator[None]:
        """Hold the folder's lock: one command at a time changes the inventory and the CRLs."""
        if create:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise PkiError(f"{self.root} is no PKI folder: create one with "
                           f"`fixture-agent plant pki init --dir {self.root}`")
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def create(self, *, org: str, ca_days: int, crl_days: int, now: dt.datetime) -> None:
        """Both CAs, an empty inventory and empty CRLs; PkiError if a CA key is already here."""
        with self.locked(create=True):
            for kind in KINDS:
                if self._key_path(kind).exists():
                    raise PkiError(f"{self._key_path(kind)} exists: this folder already holds "
                                   "a CA, and a CA key is never overwritten")
            for kind in KINDS:
                authority = Authority.create(f"{org} {CA_NAMES[kind]}", days=ca_days, now=now)
                write_new(self._key_path(kind), key_pem(authority.key), mode=0o600)
                write_new(self.ca_cert_path(kind), cert_pem(authority.cert), mode=0o644)
            self._save(Inventory(crl_days=crl_days))
            self._write_crls(now=now)

    def authority(self, kind: Kind) -> Authority:
        """Load a CA; PkiError naming the folder and how to create it when it is missing."""
        try:
            key = serialization.load_pem_private_key(self._key_path(kind).read_bytes(), None)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path(kind).read_bytes())
        except FileNotFoundError as exc:
            raise PkiError(f"{exc.filename} is missing: create the CAs with "
                           f"`fixture-agent plant pki init --dir {self.root}`") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self._key_path(kind)} is not an EC key made by this tool")
        return Authority(key, cert)

    def inventory(self) -> Inventory:
        """The inventory; PkiError when it is missing or unreadable."""
        try:
            return Inventory.model_validate_json(self._inventory_path.read_bytes())
        except FileNotFoundError:
            raise PkiError(f"{self._inventory_path} is missing: create the CAs with "
                           f"`fixture-agent plant pki init --dir {self.root}`") from None
        except ValidationError as exc:
            raise PkiError(f"{self._inventory_path} is damaged: {exc.errors()[0]['msg']}") from None

    def _save(self, inventory: Inventory) -> None:
        write_atomic(self._inventory_path, inventory.model_dump_json(indent=2).encode(),
                     mode=0o600)

    def issue_client(self, name: str, *, kind: Kind, days: int, out: Path,
                     now: dt.datetime) -> IssuedFiles:
        """A client certificate and key for ``name`` (already checked), written to ``out``."""
        key = new_key()
        with self.locked():
            cert = self.authority(kind).issue_client(
                name, key.public_key(), not_after=now + dt.timedelta(days=days), now=now)
            record = _record_of(cert, name, "client", now)
            return self._deliver(kind, record, cert, key, out=out)

    def issue_server(self, name: str, *, dns: list[str], ips: list[str], days: int, out: Path,
                     now: dt.datetime) -> IssuedFiles:
        """The broker's server certificate (plant CA) as ``out/NAME.pem`` and ``out/NAME.key``."""
        key = new_key()
        with self.locked():
            cert = self.authority("plant").issue_server(
                dns=dns, ips=ips, key=key.public_key(), not_after=now + dt.timedelta(days=days),
                now=now)
            record = _record_of(cert, name, "server", now)
            return self._deliver("plant", record, cert, key, out=out)

    def issue_takeover(self, name: str, *, kind: Kind, minutes: int,
                       now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A short-lived certificate for ``name``, kept in memory (see pki_disconnect)."""
        key = new_key()
        with self.locked():
            cert = self.authority(kind).issue_client(
                name, key.public_key(), not_after=now + dt.timedelta(minutes=minutes), now=now)
            self._record(kind, _record_of(cert, name, "takeover", now))
        return cert, key

    def _deliver(self, kind: Kind, record: CertRecord, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey, *, out: Path) -> IssuedFiles:
        files = IssuedFiles(record=record, cert=out / f"{record.name}.pem",
                            key=out / f"{record.name}.key")
        for path in (files.cert, files.key):
            if path.exists():
                raise _exists(path)
        write_new(files.key, key_pem(key), mode=0o600)
        write_new(files.cert, cert_pem(cert), mode=0o644)
        self._record(kind, files.record)
        return files

    def _record(self, kind: Kind, record: CertRecord) -> None:
        inventory = self.inventory()
        state = inventory.authority(kind)
        state = state.model_copy(update={"certificates": (*state.certificates, record)})
        self._save(inventory.model_copy(update={kind: state}))

    def revoke(self, *, name: str | None = None, serial: str | None = None,
               now: dt.datetime) -> list[CertRecord]:
        """Revoke every live certificate of ``name``, or the one with ``serial``; new CRLs."""
        with self.locked():
            inventory = self.inventory()
            revoked: list[CertRecord] = []
            changes: dict[str, AuthorityState] = {}
            for kind in KINDS:
                records = []
                for record in inventory.certificates(kind):
                    if record.revoked_at is None and (record.name == name
                                                      or _same_serial(record.serial, serial)):
                        record = record.model_copy(update={"revoked_at": now})
                        revoked.append(record)
                    records.append(record)
                changes[kind] = inventory.authority(kind).model_copy(
                    update={"certificates": tuple(records)})
            if not revoked:
                what = f"certificate named {name!r}" if name else f"certificate {serial}"
                raise PkiError(f"no unrevoked {what} in {self._inventory_path}")
            self._save(inventory.model_copy(update=changes))
            self._write_crls(now=now)
            return revoked

    def refresh_crls(self, *, now: dt.datetime, days: int | None = None) -> list[Path]:
        """Re-sign both CRLs with a fresh nextUpdate (``days`` becomes the folder's default)."""
        with self.locked():
            if days is not None:
                self._save(self.inventory().model_copy(update={"crl_days": days}))
            return self._write_crls(now=now)

    def _write_crls(self, *, now: dt.datetime) -> list[Path]:
        inventory = self.inventory()
        changes: dict[str, AuthorityState] = {}
        for kind in KINDS:
            state = inventory.authority(kind)
            entries = [Revoked(int(r.serial, 16), r.revoked_at) for r in state.certificates
                       if r.revoked_at is not None]
            crl = self.authority(kind).crl(entries, number=state.crl_number + 1, now=now,
                                           days=inventory.crl_days)
            write_atomic(self.crl_path(kind), crl.public_bytes(serialization.Encoding.PEM))
            changes[kind] = state.model_copy(update={"crl_number": state.crl_number + 1})
        self._save(inventory.model_copy(update=changes))
        return [self.crl_path(kind) for kind in KINDS]

    def publish(self, out: Path) -> list[Path]:
        """Copy what the broker reads (CA certificates, CRLs) into ``out``, replacing old copies."""
        written = []
        for source in [*map(self.ca_cert_path, KINDS), *map(self.crl_path, KINDS)]:
            write_atomic(out / source.name, source.read_bytes())
            written.append(out / source.name)
        return written

    def crl_next_update(self, kind: Kind) -> dt.datetime:
        """When the CA's current CRL stops being accepted."""
        crl = x509.load_pem_x509_crl(self.crl_path(kind).read_bytes())
        if crl.next_update_utc is None:
            raise PkiError(f"{self.crl_path(kind)} has no nextUpdate")
        return crl.next_update_utc


def _record_of(cert: x509.Certificate, name: str, use: Literal["client", "server", "takeover"],
               now: dt.datetime) -> CertRecord:
    return CertRecord(serial=f"{cert.serial_number:X}", name=name, use=use, issued_at=now,
                      not_after=cert.not_valid_after_utc)


def _same_serial(hex_serial: str, wanted: str | None) -> bool:
    if wanted is None:
        return False
    try:
        return int(hex_serial, 16) == int(wanted.replace(":", ""), 16)
    except ValueError:
        return False
