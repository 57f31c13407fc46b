"""PostgreSQL as the plant's record database: psycopg 3 (async) and a connection pool.

Any number of recorders share one server; each batch is one transaction of ``executemany``
(psycopg pipelines it: one round trip per batch, not per record) with ``ON CONFLICT DO NOTHING``,
so a record two recorders both received is stored once. Migrations run under an advisory lock.
A guarded change (a rollout's) is a transaction on one pooled connection that locks the rows it
checks (``SELECT ... FOR UPDATE``), so the engine and a command racing on one rollout take turns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from agent.errors import AgentError
from agent.plant.backends import (
    INSERT_KEY,
    INSERT_QUARANTINE,
    INSERT_RECORD,
    Quarantined,
    Row,
    Tx,
    key_params,
    record_params,
    redacted,
)
from agent.plant.schema import MIGRATIONS_TABLE, POSTGRES

MIGRATION_LOCK = 0x6669787475726531  # pg_advisory_xact_lock key of the record schema


class PostgresBackend:
    """A pool of connections to one PostgreSQL database."""

    name = "postgresql"

    def __init__(self, url: str, pool: AsyncConnectionPool) -> None:
        self.url = url
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, max_size: int = 4) -> PostgresBackend:
        """Connect (the pool opens its connections) and migrate the schema."""
        pool = AsyncConnectionPool(url, min_size=1, max_size=max_size, open=False,
                                   kwargs={"autocommit": True})
        try:
            await pool.open(wait=True, timeout=15)
        except PoolTimeout as exc:
            await pool.close()
            raise AgentError(f"cannot connect to PostgreSQL at {redacted(url)}: {exc}") from exc
        backend = cls(url, pool)
        await backend._migrate()
        return backend

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(MIGRATIONS_TABLE)
            cursor = await conn.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in await cursor.fetchall()}
            for version, script in POSTGRES:
                if version not in done:
                    await conn.execute(script.encode())
                    await conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)",
                                       (version, datetime.now(UTC).isoformat()))

    def ts(self, when: datetime) -> datetime:
        """A timezone-aware datetime (TIMESTAMPTZ)."""
        return when.astimezone(UTC)

    async def insert(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        """See :class:`agent.plant.backends.Backend`."""
        async with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            added = 0
            if rows:
                await cur.executemany(INSERT_RECORD, [
                    record_params(r, r.finished_at, r.link_ok) for r in rows])
                added = max(cur.rowcount, 0)
                keys = key_params(rows, self.ts)
                if keys:
                    await cur.executemany(INSERT_KEY, keys)
            if quarantined:
                await cur.executemany(INSERT_QUARANTINE, [
                    (q.record_id, q.station, q.reason, q.payload) for q in quarantined])
        return added

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """See :class:`agent.plant.backends.Backend`."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql.encode(), tuple(params) or None)
            if cursor.description is None:  # a statement that returns no rows
                return []
            return [tuple(row) for row in await cursor.fetchall()]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """See :class:`agent.plant.backends.Backend`."""
        async with self._pool.connection() as conn, conn.transaction():
            yield _PostgresTx(conn)

    async def stream(self, sql: str, params: Sequence[Any] = ()) -> AsyncIterator[tuple[Any, ...]]:
        """A server-side cursor: millions of rows without holding them all."""
        async with (self._pool.connection() as conn, conn.transaction(),
                    conn.cursor(name="fixture_agent_stream") as cursor):
            await cursor.execute(sql.encode(), tuple(params) or None)
            while rows := await cursor.fetchmany(1000):
                for row in rows:
                    yield tuple(row)

    async def backup(self, dest: Path) -> None:
        """``pg_dump --format=custom``: consistent while recorders write (restore: pg_restore)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            process = await asyncio.create_subprocess_exec(
                "pg_dump", "--format=custom", f"--file={dest}", f"--dbname={self.url}",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "PGCONNECT_TIMEOUT": "15"})
        except FileNotFoundError as exc:
            raise AgentError("pg_dump not found: install PostgreSQL's client programs "
                             "(Debian: postgresql-client)") from exc
        _, err = await process.communicate()
        if process.returncode != 0:
            raise AgentError(f"pg_dump of {redacted(self.url)} failed: "
                             f"{err.decode(errors='replace').strip()}")

    async def close(self) -> None:
        """See :class:`agent.plant.backends.Backend`."""
        await self._pool.close()


class _PostgresTx:
    """A transaction of :class:`PostgresBackend` on one pooled connection."""

    def __init__(self, conn: AsyncConnection[Any]) -> None:
        self._conn = conn

    async def fetch(self, sql: str, params: Sequence[Any] = (), *,
                    for_update: bool = False) -> list[tuple[Any, ...]]:
        if for_update:
            sql += " FOR UPDATE"
        cursor = await self._conn.execute(sql.encode(), tuple(params) or None)
        if cursor.description is None:  # a statement that returns no rows
            return []
        return [tuple(row) for row in await cursor.fetchall()]

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        await self._conn.execute(sql.encode(), tuple(params) or None)
