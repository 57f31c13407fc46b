"""The buyer's and auditor's questions of the record database, on either backend.

What shipped on a serial or a chip; every unit carrying an image signed by key K (the
key-compromise question); every unit of a firmware set, a manifest or a job; first-pass yield;
an export of a time range. Each query has its index (:mod:`agent.plant.schema`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import aiosqlite

from agent.plant.backends import Backend, SqliteBackend

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)

# by -> the indexed column it looks up
BY_COLUMN = {"serial": "serial", "chip": "chip_uid", "set": "firmware_set_id",
             "manifest": "manifest_digest", "job": "job_id"}
Lookup = Literal["serial", "chip", "key", "set", "manifest", "job"]
GroupBy = Literal["station", "job", "set"]
GROUP_COLUMN = {"station": "station", "job": "job_id", "set": "firmware_set_id"}


def _backend(db: Backend | aiosqlite.Connection) -> Backend:
    return SqliteBackend(db) if isinstance(db, aiosqlite.Connection) else db


def lookup_sql(by: Lookup) -> str:
    """The SQL of a lookup: (value, since, until) -> payloads, oldest first."""
    if by == "key":
        return ("SELECT r.payload FROM record_keys k JOIN records r ON r.record_id = k.record_id"
                " WHERE k.key_ref = %s AND k.finished_at >= %s AND k.finished_at < %s"
                " ORDER BY k.finished_at")
    column = BY_COLUMN[by]
    return (f"SELECT payload FROM records WHERE {column} = %s"  # noqa: S608 (a fixed column)
            " AND finished_at >= %s AND finished_at < %s ORDER BY finished_at")


async def find(db: Backend | aiosqlite.Connection, by: Lookup, value: str, *,
               since: datetime = EARLIEST, until: datetime = LATEST) -> list[dict[str, Any]]:
    """Every record whose ``by`` is ``value`` (finished in [since, until)), oldest first."""
    backend = _backend(db)
    rows = await backend.fetch(lookup_sql(by), (value, backend.ts(since), backend.ts(until)))
    return [json.loads(row[0]) for row in rows]


async def find_by_serial(db: Backend | aiosqlite.Connection, serial: str) -> list[dict[str, Any]]:
    """Every record stored for ``serial``, oldest first, as decoded JSON."""
    return await find(db, "serial", serial)


async def missing_sequences(db: Backend | aiosqlite.Connection, station: str) -> list[int]:
    """Sequence numbers of ``station`` between 1 and its highest that the plant has not received."""
    rows = await _backend(db).fetch("SELECT seq FROM records WHERE station = %s ORDER BY seq",
                                    (station,))
    seen = [row[0] for row in rows]
    if not seen:
        return []
    return sorted(set(range(1, seen[-1] + 1)) - set(seen))


def yield_sql(group: GroupBy) -> str:
    """First-pass yield: a unit's first record (no earlier record of its serial) in the range."""
    column = GROUP_COLUMN[group]
    return (f"SELECT r.{column}, COUNT(*),"  # noqa: S608 (a fixed column)
            " SUM(CASE WHEN r.outcome = 'pass' THEN 1 ELSE 0 END) FROM records r"
            " WHERE r.finished_at >= %s AND r.finished_at < %s AND NOT EXISTS ("
            "SELECT 1 FROM records p WHERE p.serial = r.serial AND p.finished_at < r.finished_at)"
            f" GROUP BY r.{column} ORDER BY r.{column}")


@dataclass(frozen=True)
class Yield:
    """First-pass yield of one station, job or set."""

    group: str
    units: int
    passed_first_time: int

    @property
    def percent(self) -> float:
        """Passed at the first attempt, in percent of the units."""
        return 100.0 * self.passed_first_time / self.units if self.units else 0.0


async def first_pass_yield(db: Backend | aiosqlite.Connection, group: GroupBy, *,
                           since: datetime = EARLIEST, until: datetime = LATEST) -> list[Yield]:
    """Units first programmed in [since, until) and how many passed then, per ``group``."""
    backend = _backend(db)
    rows = await backend.fetch(yield_sql(group), (backend.ts(since), backend.ts(until)))
    return [Yield(group=str(r[0]), units=int(r[1]), passed_first_time=int(r[2] or 0))
            for r in rows]


EXPORT_SQL = ("SELECT payload FROM records WHERE finished_at >= %s AND finished_at < %s"
              " ORDER BY finished_at")


async def export(db: Backend | aiosqlite.Connection, *, since: datetime = EARLIEST,
                 until: datetime = LATEST) -> AsyncIterator[dict[str, Any]]:
    """Every record finished in [since, until), oldest first, streamed."""
    backend = _backend(db)
    async for row in backend.stream(EXPORT_SQL, (backend.ts(since), backend.ts(until))):
        yield json.loads(row[0])


CSV_COLUMNS = ("record_id", "station", "seq", "slot", "serial", "chip_uid", "job_id", "product",
               "firmware_set_id", "manifest_digest", "outcome", "routing", "failure_code",
               "started_at", "finished_at", "key_refs", "image_sha256", "prev_digest")


def csv_row(record: dict[str, Any]) -> list[str]:
    """One record flattened to :data:`CSV_COLUMNS` (images joined with spaces)."""
    failure = record.get("failure") or {}
    values = {**record, "failure_code": failure.get("code", ""),
              "key_refs": " ".join(i["key_ref"] for i in record["images"]),
              "image_sha256": " ".join(i["sha256"] for i in record["images"])}
    return ["" if values.get(c) is None else str(values.get(c, "")) for c in CSV_COLUMNS]


def format_trace(records: list[dict[str, Any]]) -> str:
    """A person's view of every record of one serial."""
    lines = []
    for r in records:
        verdict = r["outcome"].upper()
        if r.get("failure"):
            f = r["failure"]
            verdict += f" ({f['code']} at {f['stage']}: {f['detail']})"
        lines += [
            f"serial {r['serial']}: {verdict}, routed to {r['routing']}",
            f"  programmed {r['started_at']} .. {r['finished_at']} on station {r['station']} "
            f"slot {r['slot']} (record {r['record_id']}, seq {r['seq']})",
            f"  chip {r['chip_uid']}, job {r['job_id']}, product {r['product']}",
            f"  firmware set {r['firmware_set_id']} (manifest sha256 {r['manifest_digest']})",
            f"  locked: {r['locked']}, valid flag: {r['valid_flag_set']}, "
            f"agent {r['agent_version']}",
        ]
        for image in r["images"]:
            check = "verified" if image["verified"] else "NOT verified"
            lines.append(f"    {image['name']:<14} {image['version']:<16} "
                         f"sha256 {image['sha256']}  key {image['key_ref']}  "
                         f"@0x{image['address']:08X}+{image['size']}  {check}")
            if image.get("signature_id"):
                lines.append(f"    {'':<14} signature {image['signature_id']}")
        if (cert := r.get("device_certificate")) is not None:
            lines.append(f"  device certificate {cert['serial']} issued by {cert['issuer']} "
                         f"(key {cert['key_ref']})")
    return "\n".join(lines)
