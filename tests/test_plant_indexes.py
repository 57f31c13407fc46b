"""Every query of the record database uses an index on a million records (PostgreSQL's plans),
and on SQLite (its query plans, on fewer rows: SQLite's planner does not weigh table size)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.plant.audit import AUDIT_SQL
from agent.plant.backends import Backend, links_sql, open_backend
from agent.plant.trace import EXPORT_SQL, lookup_sql, yield_sql

T0 = datetime(2030, 1, 1, tzinfo=UTC)
HOUR = (T0 + timedelta(days=3), T0 + timedelta(days=3, hours=1))
MISSING_SQL = "SELECT seq FROM records WHERE station = %s ORDER BY seq"


def queries() -> dict[str, tuple[str, tuple[Any, ...]]]:
    """Every query the recorder, the commands and the audit run, with typical parameters."""
    since, until = HOUR
    found: dict[str, tuple[str, tuple[Any, ...]]] = {
        f"by {by}": (lookup_sql(by), (value, T0, T0 + timedelta(days=3650)))  # type: ignore[arg-type]
        for by, value in (("serial", "SN-123456"), ("chip", "c123456"), ("key", "key-7"),
                          ("set", "set-7"), ("manifest", "m7"), ("job", "wo-77"))}
    found["key in a time range"] = (lookup_sql("key"), ("key-7", since, until))
    for group in ("station", "job", "set"):
        found[f"yield by {group}"] = (yield_sql(group), (since, until))  # type: ignore[arg-type]
    found["export"] = (EXPORT_SQL, (since, until))
    found["audit"] = (AUDIT_SQL, ("st-7",))
    found["chain links on arrival"] = (links_sql(3), ("st-7", 100, 600, "st-8", 90, 400,
                                                      "st-9", 1, 20))
    found["missing seqs"] = (MISSING_SQL, ("st-7",))
    return found


# 1M records of 50 stations, one a second; 200 sets, 2000 jobs, 100 signing keys.
FILL = """
INSERT INTO records (record_id, station, seq, serial, outcome, finished_at, payload, chip_uid,
                     job_id, firmware_set_id, manifest_digest, prev_digest, digest, link_ok)
SELECT md5(i::text), 'st-' || (i % 50), i / 50 + 1, 'SN-' || i,
       CASE WHEN i % 17 = 0 THEN 'fail' ELSE 'pass' END, {t0} + i * {second}, '{{}}', 'c' || i,
       'wo-' || (i % 2000), 'set-' || (i % 200), 'm' || (i % 200), md5('p' || i), md5('d' || i),
       {true}
FROM generate_series(1, {n}) AS i;
INSERT INTO record_keys (key_ref, finished_at, record_id)
SELECT 'key-' || (i % 100), {t0} + i * {second}, md5(i::text) FROM generate_series(1, {n}) AS i
"""


async def test_every_query_uses_an_index_on_a_million_records_in_postgresql(
        pg_url: str) -> None:
    backend = await open_backend(pg_url)
    try:
        sql = FILL.format(t0="timestamptz '2030-01-01 00:00:00+00'", second="interval '1 second'",
                          true="true", n=1_000_000)
        for statement in sql.split(";\n"):
            await backend.fetch(statement)
        await backend.fetch("ANALYZE records")
        await backend.fetch("ANALYZE record_keys")
        (count,) = await backend.fetch("SELECT COUNT(*) FROM records")
        assert count[0] == 1_000_000
        for name, (query, params) in queries().items():
            plan = "\n".join(row[0] for row in await backend.fetch("EXPLAIN " + query, params))
            assert "Index" in plan, f"{name} does not use an index:\n{plan}"
            assert "Seq Scan on records" not in plan, f"{name} scans the table:\n{plan}"
            assert "Seq Scan on record_keys" not in plan, f"{name} scans the keys:\n{plan}"
    finally:
        await backend.close()


SQLITE_FILL = """
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
INSERT INTO records (record_id, station, seq, serial, outcome, finished_at, payload, chip_uid,
                     job_id, firmware_set_id, manifest_digest, prev_digest, digest, link_ok)
SELECT printf('%032x', i), 'st-' || (i % 50), i / 50 + 1, 'SN-' || i,
       CASE WHEN i % 17 = 0 THEN 'fail' ELSE 'pass' END, {ts}, '{{}}', 'c' || i,
       'wo-' || (i % 2000), 'set-' || (i % 200), 'm' || (i % 200), 'p' || i, 'd' || i, 1 FROM s;
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {n})
INSERT INTO record_keys (key_ref, finished_at, record_id)
SELECT 'key-' || (i % 100), {ts}, printf('%032x', i) FROM s
"""
SQLITE_TS = ("strftime('%Y-%m-%dT%H:%M:%S', '2030-01-01', '+' || i || ' seconds')"
             " || '.000000+00:00'")


async def test_every_query_uses_an_index_in_sqlite(tmp_path: Path) -> None:
    backend: Backend = await open_backend(str(tmp_path / "records.db"))
    try:
        for statement in SQLITE_FILL.format(n=100_000, ts=SQLITE_TS).split(";\n"):
            await backend.fetch(statement)
        await backend.fetch("ANALYZE")
        for name, (query, params) in queries().items():
            converted = tuple(backend.ts(p) if isinstance(p, datetime) else p for p in params)
            plan = "\n".join(str(row[3]) for row in
                             await backend.fetch("EXPLAIN QUERY PLAN " + query, converted))
            assert "INDEX" in plan, f"{name} does not use an index:\n{plan}"
            for line in plan.splitlines():
                assert not (line.startswith("SCAN") and "INDEX" not in line), \
                    f"{name} scans a table:\n{plan}"
    finally:
        await backend.close()
