"""Checking and storing unit records: idempotent, chain and sequence checked on arrival.

A batch is stored in one transaction of the backend (:mod:`agent.plant.backends`); the recorder
acknowledges only after that commit. Storage is idempotent on record id, so a record delivered
twice (a resend after a lost ack, or to two recorders) is stored once. A record whose chain link
does not match the stored predecessor, or whose seq another record already holds, is logged and
still stored: nothing is dropped, ``plant audit`` reports it. A payload that is not a valid record
but carries a record id is quarantined (stored raw), so nothing is lost and the station does not
resend it forever.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import defaultdict
from dataclasses import dataclass

import aiosqlite

from agent.errors import BadMessage
from agent.plant.backends import (
    Backend,
    Quarantined,
    Row,
    SqliteBackend,
    open_record_db,
    read_links,
)
from agent.wire.codec import parse_inbound
from agent.wire.messages import GENESIS_DIGEST, UnitRecord, record_digest

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1024 * 1024

__all__ = ["MAX_RECORD_BYTES", "Incoming", "RecordStore", "open_record_db"]


@dataclass(frozen=True)
class Incoming:
    """One received record payload and the station whose topic it came on."""

    station: str
    payload: bytes


class RecordStore:
    """Checks records and stores them idempotently in a backend."""

    def __init__(self, backend: Backend | aiosqlite.Connection) -> None:
        self.backend: Backend = (SqliteBackend(backend) if isinstance(backend, aiosqlite.Connection)
                                 else backend)
        self.link_errors = 0  # chain links or seqs found wrong on arrival (still stored)
        self.inserted = 0  # records added (not already there)

    async def store_batch(self, batch: list[Incoming]) -> dict[str, list[str]]:
        """Store a batch in one transaction; returns record ids to acknowledge, by station."""
        acks: dict[str, list[str]] = defaultdict(list)
        rows: list[Row] = []
        quarantined: list[Quarantined] = []
        for item in batch:
            try:
                record = parse_inbound(UnitRecord, item.payload, max_bytes=MAX_RECORD_BYTES)
            except BadMessage as exc:
                held = _quarantine(item, exc.reason)
                if held is not None:
                    quarantined.append(held)
                    acks[item.station].append(held.record_id)
                continue
            if record.station != item.station:
                log.error("record %s claims station %s but came from %s: dropped",
                          record.record_id, record.station, item.station)
                continue
            rows.append(_row(record, item.payload))
            acks[item.station].append(record.record_id)
        rows = await self._check_chains(rows)
        self.inserted += await self.backend.insert(rows, quarantined)
        return acks

    async def _check_chains(self, rows: list[Row]) -> list[Row]:
        """Each row's link against its predecessor (stored, or earlier in this batch)."""
        by_station: dict[str, list[Row]] = defaultdict(list)
        for row in rows:
            by_station[row.station].append(row)
        spans = [(station, min(r.seq for r in mine) - 1, max(r.seq for r in mine))
                 for station, mine in by_station.items()]
        digests: dict[str, dict[int, str | None]] = defaultdict(dict)
        holders: dict[str, dict[int, str]] = defaultdict(dict)
        for station, seq, record_id, digest in await read_links(self.backend, spans):
            digests[station][seq] = digest
            holders[station][seq] = record_id
        checked: list[Row] = []
        for station, mine in by_station.items():
            for row in sorted(mine, key=lambda r: r.seq):
                checked.append(self._check(row, digests[station], holders[station]))
                digests[station].setdefault(row.seq, row.digest)
                holders[station].setdefault(row.seq, row.record_id)
        return checked

    def _check(self, row: Row, digests: dict[int, str | None],
               holders: dict[int, str]) -> Row:
        holder = holders.get(row.seq)
        if holder is not None and holder != row.record_id:
            self.link_errors += 1
            log.error("station %s seq %d: record %s, but record %s already holds that seq "
                      "(stored; plant audit reports it)", row.station, row.seq, row.record_id,
                      holder)
        expected = GENESIS_DIGEST if row.seq == 1 else digests.get(row.seq - 1)
        if expected is None:  # the predecessor has not arrived yet: the audit checks it later
            return row
        ok = expected == row.prev_digest
        if not ok:
            self.link_errors += 1
            log.error("station %s seq %d (record %s): chain link does not match the stored "
                      "record %d (stored; plant audit reports it)", row.station, row.seq,
                      row.record_id, row.seq - 1)
        return dataclasses.replace(row, link_ok=ok)


def _row(record: UnitRecord, payload: bytes) -> Row:
    return Row(record_id=record.record_id, station=record.station, seq=record.seq,
               serial=record.serial, outcome=record.outcome, finished_at=record.finished_at,
               payload=payload.decode(), chip_uid=record.chip_uid, job_id=record.job_id,
               firmware_set_id=record.firmware_set_id, manifest_digest=record.manifest_digest,
               prev_digest=record.prev_digest, digest=record_digest(payload), link_ok=None,
               key_refs=tuple(image.key_ref for image in record.images))


def _quarantine(item: Incoming, reason: str) -> Quarantined | None:
    try:
        record_id = json.loads(item.payload).get("record_id")
    except (ValueError, AttributeError):
        record_id = None
    if not isinstance(record_id, str) or len(record_id) != 32:
        log.error("unreadable record from %s dropped: %s", item.station, reason)
        return None
    log.error("record %s from %s quarantined: %s", record_id, item.station, reason)
    return Quarantined(record_id=record_id, station=item.station, reason=reason,
                       payload=item.payload)
