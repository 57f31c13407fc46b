"""Where the plant keeps its records and rollouts: one interface, two engines.

SQLite (a path) is the embedded default: one file, WAL, ``synchronous=FULL``. PostgreSQL (a
``postgresql://`` URL, :mod:`agent.plant.pg`) is for a plant: several recorders, a replicated or
managed server. Both take the same SQL (``%s`` placeholders; SQLite's are rewritten) for the
queries, and both store idempotently: ``INSERT ... ON CONFLICT DO NOTHING`` on the record id.
Guarded read-check-write changes (the rollouts') run in :meth:`Backend.transaction`.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import aiosqlite

from agent.plant.schema import MIGRATIONS_TABLE, SQLITE

INSERT_RECORD = (
    "INSERT INTO records (record_id, station, seq, serial, outcome, finished_at, payload,"
    " chip_uid, job_id, firmware_set_id, manifest_digest, prev_digest, digest, link_ok)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (record_id) DO NOTHING")
INSERT_KEY = ("INSERT INTO record_keys (key_ref, finished_at, record_id) VALUES (%s, %s, %s)"
              " ON CONFLICT DO NOTHING")
INSERT_QUARANTINE = ("INSERT INTO quarantine (record_id, station, reason, payload)"
                     " VALUES (%s, %s, %s, %s) ON CONFLICT (record_id) DO NOTHING")
Span = tuple[str, int, int]  # a station and a range of its seqs, both ends included
Link = tuple[str, int, str, str | None]  # station, seq, record id, digest


def links_sql(spans: int) -> str:
    """The stored (station, seq, record id, digest) in ``spans`` station seq ranges: one query
    for a whole batch, each range an index range scan on (station, seq)."""
    ranges = " OR ".join(["(station = %s AND seq BETWEEN %s AND %s)"] * spans)
    return f"SELECT station, seq, record_id, digest FROM records WHERE {ranges}"  # noqa: S608


def span_params(spans: Sequence[Span]) -> list[Any]:
    """The parameters of :func:`links_sql` for ``spans``."""
    return [value for span in spans for value in span]


async def read_links(backend: Backend, spans: Sequence[Span]) -> list[Link]:
    """The stored records in each span (a station and a range of its seqs), on either engine."""
    if not spans:
        return []
    rows = await backend.fetch(links_sql(len(spans)), span_params(spans))
    return [(r[0], r[1], r[2], r[3]) for r in rows]


@dataclass(frozen=True, slots=True)
class Row:
    """A checked record, ready to store."""

    record_id: str
    station: str
    seq: int
    serial: str | None
    outcome: str
    finished_at: datetime
    payload: str
    chip_uid: str | None
    job_id: str
    firmware_set_id: str
    manifest_digest: str
    prev_digest: str
    digest: str
    link_ok: bool | None
    key_refs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A payload that carries a record id but is no valid record: kept raw."""

    record_id: str
    station: str
    reason: str
    payload: bytes


class Tx(Protocol):
    """One open transaction on one connection (see :meth:`Backend.transaction`)."""

    async def fetch(self, sql: str, params: Sequence[Any] = (), *,
                    for_update: bool = False) -> list[tuple[Any, ...]]:
        """Every row of a read (or of a write's RETURNING); ``for_update``: no other
        transaction may change or lock those rows until this one ends."""

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A write."""


class Backend(Protocol):
    """What the recorder, the queries, the audit and the rollouts need of an engine."""

    name: str  # "sqlite" or "postgresql"

    def ts(self, when: datetime) -> Any:
        """``when`` as this engine stores a time."""

    async def insert(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        """Store in one transaction, skipping record ids already there; returns how many new."""

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a read."""

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """A transaction that has a connection to itself: committed when the block ends,
        rolled back when it raises. Two of them that lock the same row (``for_update``) run
        one after the other, in this process or another. Inside, read and write through the
        :class:`Tx` only (on SQLite the backend's own reads wait for the block to end)."""

    def stream(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[tuple[Any, ...]]:
        """The rows of a read, a few at a time (exports, audits of millions)."""

    async def backup(self, dest: Path) -> None:
        """A consistent copy of the whole database at ``dest``."""

    async def close(self) -> None:
        """Release connections."""


def _key_rows(row: Row, finished: Any) -> list[tuple[Any, ...]]:
    return [(key, finished, row.record_id) for key in sorted(set(row.key_refs))]


def record_params(row: Row, finished: Any, link_ok: Any) -> tuple[Any, ...]:
    """The INSERT_RECORD parameters of ``row``."""
    return (row.record_id, row.station, row.seq, row.serial, row.outcome, finished, row.payload,
            row.chip_uid, row.job_id, row.firmware_set_id, row.manifest_digest, row.prev_digest,
            row.digest, link_ok)


def key_params(rows: Sequence[Row], ts: Any) -> list[tuple[Any, ...]]:
    """The INSERT_KEY parameters of ``rows`` (one per distinct signing key of each record)."""
    return [key for row in rows for key in _key_rows(row, ts(row.finished_at))]


async def open_record_db(path: Path) -> aiosqlite.Connection:
    """Open (creating and migrating) a SQLite record database with the durability pragmas."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
        await db.execute(f"PRAGMA {pragma}")
    await db.execute(MIGRATIONS_TABLE)
    await db.execute("BEGIN IMMEDIATE")
    try:
        async with db.execute("SELECT version FROM schema_migrations") as cursor:
            done = {row[0] for row in await cursor.fetchall()}
        if not done:  # a file of the first recorder has its tables and no migrations table
            async with db.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'") as cur:
                if await cur.fetchone() is not None:
                    done = {1}
                    await db.execute("INSERT INTO schema_migrations VALUES (1, 'found')")
        for version, script in SQLITE:
            if version not in done:
                for statement in filter(str.strip, script.split(";\n")):
                    await db.execute(statement)
                await db.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                 (version, datetime.now(UTC).isoformat()))
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")
    return db


class SqliteBackend:
    """The embedded engine: one connection, serialised by aiosqlite's thread.

    Its transactions are ``BEGIN IMMEDIATE``: the database's write lock from the first
    statement, so a read-check-write in one cannot interleave with another process's. In this
    process they take turns on the connection (a lock), and reads wait for an open one, so
    they see only committed rows: two coroutines may share a backend (the console's requests
    do). The recorder and the rollout parts still open one each: a long batch should not hold
    up the console.
    """

    name = "sqlite"

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._turn = asyncio.Lock()  # one transaction at a time on this connection

    @classmethod
    async def open(cls, path: Path) -> SqliteBackend:
        """Open (creating and migrating) the database at ``path``."""
        return cls(await open_record_db(path))

    def ts(self, when: datetime) -> str:
        """ISO 8601 in UTC with microseconds: sorts as text in time order."""
        return when.astimezone(UTC).isoformat(timespec="microseconds")

    async def insert(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        """See :class:`Backend`."""
        async with self._immediate() as db:
            before = db.total_changes
            await db.executemany(_q(INSERT_RECORD), [
                record_params(r, self.ts(r.finished_at), r.link_ok) for r in rows])
            added = db.total_changes - before
            keys = key_params(rows, self.ts)
            if keys:
                await db.executemany(_q(INSERT_KEY), keys)
            if quarantined:
                await db.executemany(_q(INSERT_QUARANTINE), [
                    (q.record_id, q.station, q.reason, q.payload) for q in quarantined])
        return added

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """See :class:`Backend`."""
        async with self._turn:
            return await _rows(self.db, sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """See :class:`Backend`."""
        async with self._immediate() as db:
            yield _SqliteTx(db)

    @asynccontextmanager
    async def _immediate(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._turn:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def stream(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[tuple[Any, ...]]:
        """See :class:`Backend`."""
        async with self.db.execute(_q(sql), tuple(params)) as cursor:
            while rows := await cursor.fetchmany(1000):
                for row in rows:
                    yield tuple(row)

    async def backup(self, dest: Path) -> None:
        """SQLite's online backup API: the WAL's committed pages included (a file copy misses
        them), pages copied in steps so the recorder keeps writing meanwhile."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        target = await asyncio.to_thread(sqlite3.connect, dest, check_same_thread=False)
        try:
            await self.db.backup(target, pages=1024)
        finally:
            await asyncio.to_thread(target.close)

    async def close(self) -> None:
        """See :class:`Backend`."""
        await self.db.close()


class _SqliteTx:
    """A transaction of :class:`SqliteBackend` (already holding the database's write lock)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, params: Sequence[Any] = (), *,
                    for_update: bool = False) -> list[tuple[Any, ...]]:
        # for_update needs nothing more: BEGIN IMMEDIATE holds every row against other writers
        return await _rows(self._db, sql, params)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._db.execute(_q(sql), tuple(params))


async def _rows(db: aiosqlite.Connection, sql: str,
                params: Sequence[Any]) -> list[tuple[Any, ...]]:
    async with db.execute(_q(sql), tuple(params)) as cursor:
        return [tuple(row) for row in await cursor.fetchall()]


def _q(sql: str) -> str:
    return sql.replace("%s", "?")


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_postgres_url(target: str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL (anything else is a SQLite path)."""
    return target.startswith(("postgresql://", "postgres://"))


async def open_backend(target: str) -> Backend:
    """A ``postgresql://`` or ``postgres://`` URL opens PostgreSQL, anything else SQLite."""
    if is_postgres_url(target):
        from agent.plant.pg import PostgresBackend

        return await PostgresBackend.open(target)
    return await SqliteBackend.open(Path(target))
