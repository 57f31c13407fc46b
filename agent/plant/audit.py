"""`plant audit`: does the database still hold every station's records, unaltered?

Per station, walking its records in seq order: seqs missing between 1 and the highest, seqs held
by more than one record (duplicates), links that do not match the previous record's digest
(broken links: an edited, replaced or deleted record), and rows whose payload no longer hashes to
the digest stored when they arrived (altered rows). An attacker who edits a payload and its
digest still breaks the next record's link, which the station computed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.plant.backends import Backend
from agent.wire.messages import GENESIS_DIGEST, record_digest


@dataclass
class StationAudit:
    """What the audit found for one station."""

    station: str
    records: int = 0
    highest_seq: int = 0
    missing: list[int] = field(default_factory=list)
    duplicates: list[int] = field(default_factory=list)  # seqs held by several records
    broken_links: list[tuple[int, str]] = field(default_factory=list)  # (seq, record id)
    altered: list[tuple[int, str]] = field(default_factory=list)  # (seq, record id)
    unchained: int = 0  # records of the first format (unit-record@1), without a link

    @property
    def clean(self) -> bool:
        """Nothing missing, duplicated, broken or altered."""
        return not (self.missing or self.duplicates or self.broken_links or self.altered)

    def as_json(self) -> dict[str, object]:
        """The findings as plain JSON."""
        return {"station": self.station, "records": self.records,
                "highest_seq": self.highest_seq, "clean": self.clean,
                "missing_seqs": self.missing, "duplicate_seqs": self.duplicates,
                "broken_links": [{"seq": s, "record_id": r} for s, r in self.broken_links],
                "altered": [{"seq": s, "record_id": r} for s, r in self.altered],
                "unchained": self.unchained}

    def sentences(self) -> list[str]:
        """The findings for a person."""
        head = (f"station {self.station}: {self.records} records, seq 1..{self.highest_seq}"
                + (": clean" if self.clean else ""))
        lines = [head]
        if self.missing:
            lines.append(f"  missing seqs ({len(self.missing)}): {_ranges(self.missing)}")
        for seq in self.duplicates:
            lines.append(f"  seq {seq} is held by more than one record")
        for seq, record_id in self.altered:
            lines.append(f"  record {record_id} (seq {seq}) was altered: its payload no longer "
                         "matches the digest stored when it arrived")
        for seq, record_id in self.broken_links:
            lines.append(f"  record {record_id} (seq {seq}) does not link to record {seq - 1}: "
                         f"a record before it was altered or replaced")
        if self.unchained:
            lines.append(f"  {self.unchained} records predate the chain (unit-record@1)")
        return lines


def _ranges(seqs: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == prev + 1:
            prev = seq
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if seq is not None:
            start = prev = seq
    return ", ".join(parts[:20]) + (" ..." if len(parts) > 20 else "")


AUDIT_SQL = ("SELECT seq, record_id, prev_digest, digest, payload FROM records"
             " WHERE station = %s ORDER BY seq, record_id")


async def audit(backend: Backend, stations: Sequence[str] | None = None) -> list[StationAudit]:
    """Audit ``stations`` (default: every station with records)."""
    if stations is None:
        rows = await backend.fetch("SELECT DISTINCT station FROM records ORDER BY station")
        stations = [row[0] for row in rows]
    return [await audit_station(backend, station) for station in stations]


async def audit_station(backend: Backend, station: str) -> StationAudit:
    """Walk one station's records in seq order (streamed: millions are fine)."""
    found = StationAudit(station)
    prev_seq, prev_digests = 0, {GENESIS_DIGEST}
    async for seq, rows in _by_seq(backend.stream(AUDIT_SQL, (station,))):
        found.records += len(rows)
        if len(rows) > 1:
            found.duplicates.append(seq)
        found.missing.extend(range(prev_seq + 1, seq))
        expected = prev_digests if seq == prev_seq + 1 else None  # unknown after a gap
        digests = set()
        for record_id, link, digest, payload in rows:
            actual = record_digest(payload.encode())
            if digest is None:
                found.unchained += 1
            elif actual != digest:
                found.altered.append((seq, record_id))
            if link is not None and expected is not None and link not in expected:
                found.broken_links.append((seq, record_id))
            # the next record links to this one's digest as it arrived
            digests.add(digest or actual)
        prev_seq, prev_digests = seq, digests
    found.highest_seq = prev_seq
    return found


async def _by_seq(rows: AsyncIterator[tuple[Any, ...]]
                  ) -> AsyncIterator[tuple[int, list[tuple[Any, ...]]]]:
    """Consecutive rows of one seq together: (seq, [(record id, link, digest, payload)])."""
    seq: int | None = None
    group: list[tuple[Any, ...]] = []
    async for row in rows:
        if row[0] != seq and group:
            assert seq is not None
            yield seq, group
            group = []
        seq = row[0]
        group.append(tuple(row[1:]))
    if group and seq is not None:
        yield seq, group
