"""The plant-side recorder: stores every station's unit records, then acknowledges them.

A record is acknowledged only after the transaction that stores it has committed (WAL, FULL), so a
station forgets a record only once the plant really holds it. Storage is idempotent on record id:
a record delivered twice (a resend after a lost ack) is stored once and acknowledged again.
A payload that is not a valid record but carries a record id is quarantined (stored raw) and
acknowledged, so nothing is lost and the station does not resend it forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import aiosqlite

from agent.errors import BadMessage
from agent.messages import RecordAck, UnitRecord
from agent.mqtt import Backoff, BrokerEndpoint, CheckedClient, PublishRefused, make_client
from agent.topics import ALL_RECORDS, StationTopics, station_of
from agent.wire import encode, parse_inbound

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


class Recorder:
    """Subscribes to every station's records, stores them, acknowledges them."""

    def __init__(self, *, endpoint: BrokerEndpoint, store: RecordStore,
                 client_id: str = "plant-recorder") -> None:
        self._endpoint = endpoint
        self._store = store
        self._client_id = client_id
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self.stored = 0
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled, reconnecting with backoff."""
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            client = make_client(self._endpoint, client_id=self._client_id, persistent=True,
                                 session_expiry_s=7 * 86400)
            try:
                async with client:
                    await client.subscribe(ALL_RECORDS, qos=1)
                    self.connected.set()
                    backoff.reset()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._read(client))
                        group.create_task(self._write(client))
            except* aiomqtt.MqttError as group:  # anything else is a bug: let it surface
                log.warning("recorder link down: %s", group.exceptions[0])
            self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _read(self, client: CheckedClient) -> None:
        async for message in client.messages:
            station = station_of(message.topic.value)
            if station is None or not isinstance(message.payload, bytes):
                continue
            await self._queue.put(Incoming(station, message.payload))

    async def _write(self, client: CheckedClient) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get_nowait())
            acks = await self._store.store_batch(batch)
            self.stored += sum(len(ids) for ids in acks.values())
            for station, ids in acks.items():
                for start in range(0, len(ids), 1000):
                    ack = RecordAck(record_ids=tuple(ids[start:start + 1000]))
                    try:
                        await client.publish_checked(StationTopics(station).acks, encode(ack))
                    except PublishRefused as exc:  # the station resends; we store it once
                        log.error("%s", exc)  # noqa: TRY400 (an ACL refusal, not a crash)


async def find_by_serial(db: aiosqlite.Connection, serial: str) -> list[dict[str, Any]]:
    """Every record stored for ``serial``, oldest first, as decoded JSON."""
    async with db.execute("SELECT payload FROM records WHERE serial = ? ORDER BY finished_at",
                          (serial,)) as cursor:
        return [json.loads(row[0]) for row in await cursor.fetchall()]


async def missing_sequences(db: aiosqlite.Connection, station: str) -> list[int]:
    """Sequence numbers of ``station`` between 1 and its highest that the plant has not received."""
    async with db.execute("SELECT seq FROM records WHERE station = ? ORDER BY seq",
                          (station,)) as cursor:
        seen = [row[0] for row in await cursor.fetchall()]
    if not seen:
        return []
    return sorted(set(range(1, seen[-1] + 1)) - set(seen))
