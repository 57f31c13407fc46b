"""The station's SQLite file: one writer connection, WAL, synchronous=FULL, explicit transactions.

Durability (see ``mqtt-durability-security.md``): WAL + FULL survives power loss on storage that
honours flush; aiosqlite adds none of its own, so the pragmas are set on every open and every change
goes through :meth:`StationStore.transaction`, serialised by one lock (one writer).

Reads outside a transaction go through a second, read-only connection. A read on the writer
connection would see rows of a transaction that has not committed yet, and a record read that way
could be published and then vanish with a crash before COMMIT (the restarted station would record
the unit again under the same seq). On its own connection a reader sees committed data only, by
SQLite's isolation, whoever calls it and whenever; in WAL mode it never blocks the writer and never
waits for it. What must react to a change registers :meth:`StationStore.after_commit` inside the
transaction, so nobody is woken to read a row that is not there yet (or never will be).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chain_head (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    digest TEXT NOT NULL
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

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._db = db
        self._reader = reader
        self._lock = asyncio.Lock()
        self._on_commit: list[Callable[[], None]] | None = None  # set while a transaction runs

    @classmethod
    async def open(cls, path: Path) -> StationStore:
        """Open (creating if needed) the database at ``path`` with the durability pragmas."""
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000",
                       "foreign_keys=ON"):
            await db.execute(f"PRAGMA {pragma}")
        await db.executescript(SCHEMA)
        reader = await aiosqlite.connect(path, isolation_level=None)
        for pragma in ("busy_timeout=5000", "query_only=ON"):
            await reader.execute(f"PRAGMA {pragma}")
        return cls(db, reader)

    async def close(self) -> None:
        """Close both connections (waits for a running transaction)."""
        async with self._lock:
            await self._reader.close()
            await self._db.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT`` (rolled back on any exception).

        Callbacks registered with :meth:`after_commit` meanwhile run after the COMMIT returned,
        in order; on a rollback they are dropped.
        """
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            self._on_commit = []
            try:
                try:
                    yield self._db
                except BaseException:
                    await self._db.execute("ROLLBACK")
                    raise
                await self._db.execute("COMMIT")
                callbacks = self._on_commit
            finally:
                self._on_commit = None
        for callback in callbacks:
            callback()

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the running transaction has committed (never if it rolls back).

        Only valid inside :meth:`transaction`; anything else is a bug and raises.
        """
        if self._on_commit is None:
            raise RuntimeError("after_commit() outside a transaction")
        self._on_commit.append(callback)

    async def fetchall(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read of committed data only (own connection; WAL readers never block the writer)."""
        async with self._reader.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def fetchone(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row of a read, or None."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None
