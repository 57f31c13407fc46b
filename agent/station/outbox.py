"""The durable outbox of unit records.

A record is appended in the same transaction that counts the unit against its job, gets the next
per-station sequence number (no gaps: the number is taken inside that transaction) and the digest
of the station's previous record (the hash chain: the plant's audit finds an edited or deleted
record by a link that no longer matches), and is forgotten
only when the plant's recorder acknowledges its record id. A broker PUBACK is not enough: mosquitto
may lose a message it acknowledged (``mqtt-durability-security.md``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiosqlite

from agent.station.store import StationStore
from agent.wire.messages import GENESIS_DIGEST, record_digest


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A record waiting for the recorder's acknowledgement."""

    seq: int
    record_id: str
    payload: bytes


class Outbox:
    """Append, list and forget unit records."""

    def __init__(self, store: StationStore) -> None:
        self._store = store
        self._watchers: list[asyncio.Event] = []

    def watch(self) -> asyncio.Event:
        """An event of the caller's own, set whenever a record is appended or forgotten."""
        event = asyncio.Event()
        self._watchers.append(event)
        return event

    def _notify(self) -> None:
        for event in self._watchers:
            event.set()

    async def append(
        self, tx: aiosqlite.Connection, *, record_id: str, build: Callable[[int, str], bytes]
    ) -> int:
        """Inside ``tx``: take the next seq and chain link, store ``build(seq, prev_digest)``.

        Returns seq. The digest of the stored bytes becomes the next record's link.

        Watchers are woken after the commit, never before: the record is not there until then.
        """
        async with tx.execute("SELECT value FROM meta WHERE key = 'last_seq'") as cursor:
            row = await cursor.fetchone()
        seq = (row[0] if row else 0) + 1
        async with tx.execute("SELECT digest FROM chain_head WHERE id = 1") as cursor:
            head = await cursor.fetchone()
        payload = build(seq, head[0] if head else GENESIS_DIGEST)
        await tx.execute(
            "INSERT INTO meta (key, value) VALUES ('last_seq', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (seq,))
        await tx.execute(
            "INSERT INTO chain_head (id, digest) VALUES (1, ?) "
            "ON CONFLICT(id) DO UPDATE SET digest = excluded.digest", (record_digest(payload),))
        await tx.execute(
            "INSERT INTO outbox (seq, record_id, payload, created_at) VALUES (?, ?, ?, ?)",
            (seq, record_id, payload, time.time()))
        self._store.after_commit(self._notify)
        return seq

    async def pending(self, *, limit: int = 100) -> list[PendingRecord]:
        """The oldest ``limit`` unacknowledged records, oldest first."""
        rows = await self._store.fetchall(
            "SELECT seq, record_id, payload FROM outbox ORDER BY seq LIMIT ?", (limit,))
        return [PendingRecord(seq=r[0], record_id=r[1], payload=bytes(r[2])) for r in rows]

    async def forget(self, record_ids: Iterable[str]) -> int:
        """Delete acknowledged records; returns how many were still held."""
        ids = list(record_ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        async with self._store.transaction() as tx:
            cursor = await tx.execute(f"DELETE FROM outbox WHERE record_id IN ({marks})", ids)  # noqa: S608
            removed = cursor.rowcount
        if removed:
            self._notify()
        return removed

    async def depth(self) -> int:
        """How many records wait for acknowledgement."""
        row = await self._store.fetchone("SELECT COUNT(*) FROM outbox")
        return int(row[0]) if row else 0

    async def last_seq(self) -> int:
        """The sequence number of the newest record ever appended."""
        row = await self._store.fetchone("SELECT value FROM meta WHERE key = 'last_seq'")
        return int(row[0]) if row else 0
