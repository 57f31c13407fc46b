"""The plant's record database (SQLite): idempotent storage of unit records.

A record is stored in one transaction with the others of its batch (WAL, FULL); the recorder
acknowledges only after that commit. Storage is idempotent on record id, so a record delivered twice
(a resend after a lost ack) is stored once. A payload that is not a valid record but carries a
record id is quarantined (stored raw), so nothing is lost and the station does not resend it
forever.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from agent.errors import BadMessage
from agent.wire.codec import parse_inbound
from agent.wire.messages import UnitRecord

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    record_id   TEXT PRIMARY KEY,
    station     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    serial      TEXT,
    outcome     TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS records_serial ON records (serial);
CREATE INDEX IF NOT EXISTS records_station_seq ON records (station, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    record_id TEXT PRIMARY KEY,
    station   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    payload   BLOB NOT NULL
);
"""


async def open_record_db(path: Path) -> aiosqlite.Connection:
    """Open the recorder database with the durability pragmas."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
        await db.execute(f"PRAGMA {pragma}")
    await db.executescript(SCHEMA)
    return db


@dataclass(frozen=True)
class Incoming:
    """One received record payload and the station whose topic it came on."""

    station: str
    payload: bytes


class RecordStore:
    """Idempotent storage of unit records."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def store_batch(self, batch: list[Incoming]) -> dict[str, list[str]]:
        """Store a batch in one transaction; returns record ids to acknowledge, by station."""
        acks: dict[str, list[str]] = defaultdict(list)
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            for item in batch:
                record_id = await self._store_one(item)
                if record_id is not None:
                    acks[item.station].append(record_id)
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        await self._db.execute("COMMIT")
        return acks

    async def _store_one(self, item: Incoming) -> str | None:
        try:
            record = parse_inbound(UnitRecord, item.payload, max_bytes=MAX_RECORD_BYTES)
        except BadMessage as exc:
            return await self._quarantine(item, exc.reason)
        if record.station != item.station:
            log.error("record %s claims station %s but came from %s: dropped", record.record_id,
                      record.station, item.station)
            return None
        await self._db.execute(
            "INSERT INTO records (record_id, station, seq, serial, outcome, finished_at, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(record_id) DO NOTHING",
            (record.record_id, record.station, record.seq, record.serial, record.outcome,
             record.finished_at.isoformat(), item.payload.decode()))
        return record.record_id

    async def _quarantine(self, item: Incoming, reason: str) -> str | None:
        try:
            record_id = json.loads(item.payload).get("record_id")
        except (ValueError, AttributeError):
            record_id = None
        if not isinstance(record_id, str) or len(record_id) != 32:
            log.error("unreadable record from %s dropped: %s", item.station, reason)
            return None
        log.error("record %s from %s quarantined: %s", record_id, item.station, reason)
        await self._db.execute(
            "INSERT OR IGNORE INTO quarantine (record_id, station, reason, payload) "
            "VALUES (?, ?, ?, ?)", (record_id, item.station, reason, item.payload))
        return record_id
