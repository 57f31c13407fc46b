"""One rollout engine per plant database: the others stand by.

Two engines stepping the same rollouts would publish twice and race on every wave move; the
slower one's moves would be refused, and before this lease its plant service (with its recorder)
stopped on the refusal. An engine now holds the database's engine lease while it ticks:

* PostgreSQL: a session advisory lock on a connection of its own. The server drops it when that
  connection ends (the engine's process died, its host vanished), so a standby takes over; the
  holder checks its connection before every tick and stops ticking the moment it is gone.
* SQLite: an exclusive ``flock`` on ``<database>.engine-lock`` beside the file; the kernel drops it
  when the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from agent.errors import AgentError
from agent.plant.backends import is_postgres_url, redacted

log = logging.getLogger(__name__)

LEASE_KEY = 0x6669787475726532  # pg_advisory_lock key of the rollout engine
RETRY_S = 2.0


class LeaseLost(AgentError):
    """The engine lease went with its connection: stop ticking, stand by again."""


class EngineLease(Protocol):
    """Held by at most one engine of a plant database at a time."""

    where: str

    async def try_take(self) -> bool:
        """Take the lease if nobody holds it; True when this engine now holds it."""

    async def check(self) -> None:
        """Raise LeaseLost unless this engine still holds the lease."""

    async def release(self) -> None:
        """Give the lease up (a standby may take it)."""


class FileLease:
    """The lease of a SQLite plant database: an exclusive flock beside the file."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".engine-lock")
        self.where = str(database)
        self._fd: int | None = None

    async def try_take(self) -> bool:
        """See :class:`EngineLease`."""
        return await asyncio.to_thread(self._try_take)

    def _try_take(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def check(self) -> None:
        """See :class:`EngineLease`: a lock of this process cannot be taken away."""
        if self._fd is None:
            raise LeaseLost(f"the rollout engine lease of {self.where} is not held")

    async def release(self) -> None:
        """See :class:`EngineLease`."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


class PostgresLease:
    """The lease of a PostgreSQL plant database: a session advisory lock."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted(url)
        self._conn: Any = None

    async def try_take(self) -> bool:
        """See :class:`EngineLease`."""
        import psycopg

        try:
            conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                         connect_timeout=10)
        except psycopg.OperationalError as exc:
            log.warning("rollout engine lease: cannot reach %s: %s", self.where, exc)
            return False
        try:
            cursor = await conn.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,))
            row = await cursor.fetchone()
        except psycopg.Error:
            await conn.close()
            raise
        if not row or not row[0]:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def check(self) -> None:
        """See :class:`EngineLease`: the lock lives as long as its connection answers."""
        import psycopg

        if self._conn is None:
            raise LeaseLost(f"the rollout engine lease of {self.where} is not held")
        try:
            async with asyncio.timeout(10):
                await self._conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError) as exc:
            await self.release()
            raise LeaseLost(f"the rollout engine lease of {self.where} went with its "
                            f"connection: {exc}") from exc

    async def release(self) -> None:
        """See :class:`EngineLease`."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a dead connection: its lock is gone already
                await conn.close()


def engine_lease(target: str) -> EngineLease:
    """The engine lease of the plant database ``target`` (a SQLite path or a PostgreSQL URL)."""
    if is_postgres_url(target):
        return PostgresLease(target)
    return FileLease(Path(target))


async def take(lease: EngineLease, *, retry_s: float = RETRY_S) -> None:
    """Wait until this engine holds ``lease``, saying once that it stands by."""
    said = False
    while not await lease.try_take():
        if not said:
            log.warning("the rollout engine lease of %s is held by another engine (or out of "
                        "reach): this one stands by and takes over when it can", lease.where)
            said = True
        await asyncio.sleep(retry_s)
    if said:
        log.warning("rollout engine on %s: taking over", lease.where)
