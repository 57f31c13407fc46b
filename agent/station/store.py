"""The station's SQLite file: one writer connection, WAL, synchronous=FULL, explicit transactions.

Durability (see ``mqtt-durability-security.md``): WAL + FULL survives power loss on storage that
honours flush; aiosqlite adds none of its own, so the pragmas are set on every open and every change
goes through :meth:`StationStore.transaction`, serialised by one lock (one writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    record_id  TEXT NOT NULL UNIQUE,
    payload    BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id      TEXT PRIMARY KEY,
    digest      TEXT NOT NULL,
    payload     BLOB NOT NULL,
    state       TEXT NOT NULL,
    next_serial INTEGER NOT NULL,
    passed      INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS units_in_progress (
    slot       TEXT PRIMARY KEY,
    job_id     TEXT NOT NULL,
    serial     TEXT NOT NULL,
    chip_uid   TEXT,
    started_at REAL NOT NULL,
    manifest_digest TEXT NOT NULL
);
"""


class StationStore:
    """Owns the single writer connection to the station database."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> StationStore:
        """Open (creating if needed) the database at ``path`` with the durability pragmas."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000",
                       "foreign_keys=ON"):
            await db.execute(f"PRAGMA {pragma}")
        await db.executescript(SCHEMA)
        return cls(db)

    async def close(self) -> None:
        """Close the connection (waits for a running transaction)."""
        async with self._lock:
            await self._db.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT`` (rolled back on any exception)."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read outside any transaction (WAL readers never block the writer)."""
        async with self._db.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of a read, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
