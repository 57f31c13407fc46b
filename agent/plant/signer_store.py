"""Where the signing service keeps its signatures and its audit trail.

A small interface (:class:`SignerStore`) so the service does not care which engine holds it;
SQLite is implemented here. Every decision, signed or refused, is one audit row; every
signature one row of ``signatures``, written in the same transaction as its audit row, before
the station is answered. So a station that dies after being answered and asks again gets the
stored signature back, and the quota (distinct chips signed per job) counts that unit once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS signatures (
    signature_id TEXT PRIMARY KEY,
    product TEXT NOT NULL, job_id TEXT NOT NULL, serial TEXT NOT NULL,
    chip_uid TEXT NOT NULL, digest TEXT NOT NULL, station TEXT NOT NULL,
    key_ref TEXT NOT NULL, alg TEXT NOT NULL, signature TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS signatures_serial ON signatures (product, serial);
CREATE INDEX IF NOT EXISTS signatures_job ON signatures (job_id, chip_uid);
CREATE TABLE IF NOT EXISTS certificates (
    cert_serial TEXT PRIMARY KEY,
    product TEXT NOT NULL, job_id TEXT NOT NULL, serial TEXT NOT NULL,
    chip_uid TEXT NOT NULL, public_key TEXT NOT NULL, der TEXT NOT NULL, issuer TEXT NOT NULL,
    station TEXT NOT NULL, key_ref TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS certificates_serial ON certificates (product, serial);
CREATE INDEX IF NOT EXISTS certificates_job ON certificates (job_id, chip_uid);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, station TEXT NOT NULL,
    job_id TEXT NOT NULL, product TEXT NOT NULL, serial TEXT NOT NULL, chip_uid TEXT NOT NULL,
    digest TEXT NOT NULL, decision TEXT NOT NULL, code TEXT, reason TEXT,
    key_ref TEXT, signature_id TEXT);
CREATE INDEX IF NOT EXISTS audit_serial ON audit (serial);
CREATE INDEX IF NOT EXISTS audit_key ON audit (key_ref);
"""


@dataclass(frozen=True)
class SignatureRow:
    """One signature the service made."""

    signature_id: str
    product: str
    job_id: str
    serial: str
    chip_uid: str
    digest: str
    station: str
    key_ref: str
    alg: str
    signature: str


@dataclass(frozen=True)
class CertificateRow:
    """One device certificate the service issued."""

    cert_serial: str
    product: str
    job_id: str
    serial: str
    chip_uid: str
    public_key: str
    der: str
    issuer: str
    station: str
    key_ref: str


@dataclass(frozen=True)
class AuditRow:
    """One decision: ``signed``, ``certified``, ``repeated`` or ``refused`` (with its code);
    ``signature_id`` holds a certificate's serial for ``certified``."""

    station: str
    job_id: str
    product: str
    serial: str
    chip_uid: str
    digest: str
    decision: str
    code: str | None = None
    reason: str | None = None
    key_ref: str | None = None
    signature_id: str | None = None
    at: float = 0.0


class SignerStore(Protocol):
    """What the signing service needs from its storage."""

    async def signatures_for_serial(self, product: str, serial: str) -> list[SignatureRow]:
        """Every signature made for this serial of this product."""
        ...

    async def certificates_for_serial(self, product: str, serial: str) -> list[CertificateRow]:
        """Every device certificate issued for this serial of this product."""
        ...

    async def chips_signed(self, job_id: str) -> set[str]:
        """The distinct chip uids the job has signatures or certificates for (its quota use)."""
        ...

    async def record(self, audit: AuditRow, signature: SignatureRow | None = None,
                     certificate: CertificateRow | None = None) -> None:
        """Store a decision, and the signature or certificate it made if any, atomically."""
        ...

    async def audit(self, *, serial: str | None = None,
                    key_ref: str | None = None) -> list[AuditRow]:
        """The audit trail, oldest first, for a serial or a key (or all)."""
        ...

    async def close(self) -> None:
        """Release the connection."""
        ...


class SqliteSignerStore:
    """The store in one SQLite file; one connection, one writer (the service serialises)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteSignerStore:
        """Open (and create) the database; durability pragmas on every open."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)  # BEGIN when we say so
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    async def signatures_for_serial(self, product: str, serial: str) -> list[SignatureRow]:
        """Every signature made for this serial of this product."""
        cursor = await self._db.execute(
            "SELECT signature_id, product, job_id, serial, chip_uid, digest, station, key_ref, "
            "alg, signature FROM signatures WHERE product = ? AND serial = ? ORDER BY at",
            (product, serial))
        return [SignatureRow(*row) for row in await cursor.fetchall()]

    async def certificates_for_serial(self, product: str, serial: str) -> list[CertificateRow]:
        """Every device certificate issued for this serial of this product."""
        cursor = await self._db.execute(
            "SELECT cert_serial, product, job_id, serial, chip_uid, public_key, der, issuer, "
            "station, key_ref FROM certificates WHERE product = ? AND serial = ? ORDER BY at",
            (product, serial))
        return [CertificateRow(*row) for row in await cursor.fetchall()]

    async def chips_signed(self, job_id: str) -> set[str]:
        """The distinct chip uids the job has signatures or certificates for."""
        cursor = await self._db.execute(
            "SELECT chip_uid FROM signatures WHERE job_id = ? "
            "UNION SELECT chip_uid FROM certificates WHERE job_id = ?", (job_id, job_id))
        return {row[0] for row in await cursor.fetchall()}

    async def record(self, audit: AuditRow, signature: SignatureRow | None = None,
                     certificate: CertificateRow | None = None) -> None:
        """Store a decision, and the signature or certificate it made, in one transaction."""
        now = time.time()
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            if certificate is not None:
                c = certificate
                await self._db.execute(
                    "INSERT INTO certificates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (c.cert_serial, c.product, c.job_id, c.serial, c.chip_uid, c.public_key,
                     c.der, c.issuer, c.station, c.key_ref, now))
            if signature is not None:
                await self._db.execute(
                    "INSERT INTO signatures VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (signature.signature_id, signature.product, signature.job_id,
                     signature.serial, signature.chip_uid, signature.digest, signature.station,
                     signature.key_ref, signature.alg, signature.signature, now))
            await self._db.execute(
                "INSERT INTO audit (at, station, job_id, product, serial, chip_uid, digest, "
                "decision, code, reason, key_ref, signature_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (now, audit.station, audit.job_id, audit.product, audit.serial, audit.chip_uid,
                 audit.digest, audit.decision, audit.code, audit.reason, audit.key_ref,
                 audit.signature_id))
        except BaseException:
            await self._db.rollback()
            raise
        await self._db.commit()

    async def audit(self, *, serial: str | None = None,
                    key_ref: str | None = None) -> list[AuditRow]:
        """The audit trail, oldest first, for a serial or a key (or all)."""
        query = ("SELECT station, job_id, product, serial, chip_uid, digest, decision, code, "
                 "reason, key_ref, signature_id, at FROM audit")
        where, args = [], []
        if serial is not None:
            where.append("serial = ?")
            args.append(serial)
        if key_ref is not None:
            where.append("key_ref = ?")
            args.append(key_ref)
        if where:
            query += " WHERE " + " AND ".join(where)
        cursor = await self._db.execute(query + " ORDER BY id", args)
        return [AuditRow(*row) for row in await cursor.fetchall()]
