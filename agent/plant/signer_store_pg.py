"""The signing service's store in PostgreSQL (psycopg 3, async): the same rows as SQLite's.

For a plant whose recorder already runs on PostgreSQL. One connection: the service takes one
decision at a time, and each decision's audit row and signature (or certificate) commit in one
transaction before the station is answered.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import psycopg

from agent.errors import AgentError
from agent.plant.signer_store import (
    AuditRow,
    CertificateRow,
    SignatureRow,
    SignerStore,
    SqliteSignerStore,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS signer_signatures (
    signature_id TEXT PRIMARY KEY,
    product TEXT NOT NULL, job_id TEXT NOT NULL, serial TEXT NOT NULL,
    chip_uid TEXT NOT NULL, digest TEXT NOT NULL, station TEXT NOT NULL,
    key_ref TEXT NOT NULL, alg TEXT NOT NULL, signature TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS signer_signatures_serial ON signer_signatures (product, serial);
CREATE INDEX IF NOT EXISTS signer_signatures_job ON signer_signatures (job_id, chip_uid);
CREATE TABLE IF NOT EXISTS signer_certificates (
    cert_serial TEXT PRIMARY KEY,
    product TEXT NOT NULL, job_id TEXT NOT NULL, serial TEXT NOT NULL,
    chip_uid TEXT NOT NULL, public_key TEXT NOT NULL, der TEXT NOT NULL, issuer TEXT NOT NULL,
    station TEXT NOT NULL, key_ref TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS signer_certificates_serial ON signer_certificates (product, serial);
CREATE INDEX IF NOT EXISTS signer_certificates_job ON signer_certificates (job_id, chip_uid);
CREATE TABLE IF NOT EXISTS signer_audit (
    id BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, station TEXT NOT NULL,
    job_id TEXT NOT NULL, product TEXT NOT NULL, serial TEXT NOT NULL, chip_uid TEXT NOT NULL,
    digest TEXT NOT NULL, decision TEXT NOT NULL, code TEXT, reason TEXT,
    key_ref TEXT, signature_id TEXT);
CREATE INDEX IF NOT EXISTS signer_audit_serial ON signer_audit (serial);
CREATE INDEX IF NOT EXISTS signer_audit_key ON signer_audit (key_ref);
"""


class PostgresSignerStore:
    """:class:`SignerStore` on one PostgreSQL connection."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, url: str) -> PostgresSignerStore:
        """Connect and create the tables when missing."""
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        async with conn.transaction():
            await conn.execute(SCHEMA)
        return cls(conn)

    async def close(self) -> None:
        """Close the connection."""
        await self._conn.close()

    async def _rows(self, query: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        cursor = await self._conn.execute(query, args)
        return await cursor.fetchall()

    async def signatures_for_serial(self, product: str, serial: str) -> list[SignatureRow]:
        """Every signature made for this serial of this product."""
        rows = await self._rows(
            "SELECT signature_id, product, job_id, serial, chip_uid, digest, station, key_ref, "
            "alg, signature FROM signer_signatures WHERE product = %s AND serial = %s "
            "ORDER BY at", (product, serial))
        return [SignatureRow(*row) for row in rows]  # type: ignore[arg-type]

    async def certificates_for_serial(self, product: str, serial: str) -> list[CertificateRow]:
        """Every device certificate issued for this serial of this product."""
        rows = await self._rows(
            "SELECT cert_serial, product, job_id, serial, chip_uid, public_key, der, issuer, "
            "station, key_ref FROM signer_certificates WHERE product = %s AND serial = %s "
            "ORDER BY at", (product, serial))
        return [CertificateRow(*row) for row in rows]  # type: ignore[arg-type]

    async def chips_signed(self, job_id: str) -> set[str]:
        """The distinct chip uids the job has signatures or certificates for."""
        rows = await self._rows(
            "SELECT chip_uid FROM signer_signatures WHERE job_id = %s "
            "UNION SELECT chip_uid FROM signer_certificates WHERE job_id = %s", (job_id, job_id))
        return {str(row[0]) for row in rows}

    async def record(self, audit: AuditRow, signature: SignatureRow | None = None,
                     certificate: CertificateRow | None = None) -> None:
        """Store a decision, and the signature or certificate it made, in one transaction."""
        now = time.time()
        async with self._conn.transaction():
            if signature is not None:
                s = signature
                await self._conn.execute(
                    "INSERT INTO signer_signatures VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (s.signature_id, s.product, s.job_id, s.serial, s.chip_uid, s.digest,
                     s.station, s.key_ref, s.alg, s.signature, now))
            if certificate is not None:
                c = certificate
                await self._conn.execute(
                    "INSERT INTO signer_certificates VALUES "
                    "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (c.cert_serial, c.product, c.job_id, c.serial, c.chip_uid, c.public_key,
                     c.der, c.issuer, c.station, c.key_ref, now))
            await self._conn.execute(
                "INSERT INTO signer_audit (at, station, job_id, product, serial, chip_uid, "
                "digest, decision, code, reason, key_ref, signature_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (now, audit.station, audit.job_id, audit.product, audit.serial, audit.chip_uid,
                 audit.digest, audit.decision, audit.code, audit.reason, audit.key_ref,
                 audit.signature_id))

    async def audit(self, *, serial: str | None = None,
                    key_ref: str | None = None) -> list[AuditRow]:
        """The audit trail, oldest first, for a serial or a key (or all)."""
        rows = await self._rows(
            "SELECT station, job_id, product, serial, chip_uid, digest, decision, code, "
            "reason, key_ref, signature_id, at FROM signer_audit "
            "WHERE (%s::text IS NULL OR serial = %s) AND (%s::text IS NULL OR key_ref = %s) "
            "ORDER BY id", (serial, serial, key_ref, key_ref))
        return [AuditRow(*row) for row in rows]  # type: ignore[arg-type]


class StoreUnavailable(AgentError):
    """The signer's database cannot be opened; the sentence says which and why."""


async def open_signer_store(db: str) -> SignerStore:
    """A ``postgresql://`` URL opens PostgreSQL; anything else is a SQLite file."""
    try:
        if db.startswith(("postgresql://", "postgres://")):
            return await PostgresSignerStore.open(db)
        return await SqliteSignerStore.open(Path(db))
    except (psycopg.Error, sqlite3.Error, OSError) as exc:
        where = db.split("@")[-1]  # no password in a message
        raise StoreUnavailable(f"cannot open the signer's database {where}: "
                               f"{str(exc).strip() or type(exc).__name__}") from None
