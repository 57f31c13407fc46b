"""The record database's schema, versioned: one list of migrations per engine, applied at start.

A plain ``schema_migrations`` table records the versions applied: two tables and a handful of
indexes do not need a migration library (Alembic would bring SQLAlchemy along). Every migration
runs in the transaction that records it, under a lock (SQLite's ``BEGIN IMMEDIATE``, a PostgreSQL
advisory lock), so two recorders starting together migrate once.

Every query of :mod:`agent.plant.queries` has its index here (tests/test_plant_store.py shows the
plans on a million records).

Version 3 adds the rollout tables (:mod:`agent.plant.rollout.store`). On SQLite they were made by
``CREATE TABLE IF NOT EXISTS`` when a rollout command first opened the file, before they were a
migration: version 3 keeps those statements, so such a file migrates without a change. JSON (a
plan, a wave's stations, a decision's figures) is text on both engines, as a record's payload
is: the store reads and writes whole documents; times are text (ISO 8601, UTC) on SQLite and
TIMESTAMPTZ on PostgreSQL, as in ``records``; station names sort bytewise on both (``"C"``).
"""

from __future__ import annotations

# Version 1 is the schema of the first recorder (SQLite only); version 2 adds what the chain,
# the audit and the queries need, and fills it from the stored payloads.
SQLITE: tuple[tuple[int, str], ...] = (
    (1, """
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
"""),
    (2, """
ALTER TABLE records ADD COLUMN chip_uid TEXT;
ALTER TABLE records ADD COLUMN job_id TEXT;
ALTER TABLE records ADD COLUMN firmware_set_id TEXT;
ALTER TABLE records ADD COLUMN manifest_digest TEXT;
ALTER TABLE records ADD COLUMN prev_digest TEXT;
ALTER TABLE records ADD COLUMN digest TEXT;
ALTER TABLE records ADD COLUMN link_ok INTEGER;
UPDATE records SET chip_uid = json_extract(payload, '$.chip_uid'),
    job_id = json_extract(payload, '$.job_id'),
    firmware_set_id = json_extract(payload, '$.firmware_set_id'),
    manifest_digest = json_extract(payload, '$.manifest_digest'),
    prev_digest = json_extract(payload, '$.prev_digest');
CREATE TABLE record_keys (
    key_ref     TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    record_id   TEXT NOT NULL,
    PRIMARY KEY (key_ref, finished_at, record_id)
);
INSERT OR IGNORE INTO record_keys (key_ref, finished_at, record_id)
    SELECT json_extract(image.value, '$.key_ref'), records.finished_at, records.record_id
    FROM records, json_each(records.payload, '$.images') AS image;
DROP INDEX records_serial;
CREATE INDEX records_serial ON records (serial, finished_at);
CREATE INDEX records_chip ON records (chip_uid, finished_at);
CREATE INDEX records_job ON records (job_id, finished_at);
CREATE INDEX records_set ON records (firmware_set_id, finished_at);
CREATE INDEX records_manifest ON records (manifest_digest, finished_at);
CREATE INDEX records_finished ON records (finished_at);
"""),
    (3, """
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    plan         TEXT NOT NULL,
    state        TEXT NOT NULL,
    current_wave INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_waves (
    rollout_id      INTEGER NOT NULL REFERENCES rollouts (rollout_id),
    idx             INTEGER NOT NULL,
    state           TEXT NOT NULL,
    stations        TEXT NOT NULL,
    started_at      TEXT,
    measuring_since TEXT,
    ended_at        TEXT,
    PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE IF NOT EXISTS rollout_steps (
    rollout_id     INTEGER NOT NULL REFERENCES rollouts (rollout_id),
    station        TEXT NOT NULL,
    wave           INTEGER NOT NULL,
    previous_set   TEXT,
    published_at   TEXT,
    active_at      TEXT,
    rolled_back_at TEXT,
    PRIMARY KEY (rollout_id, station)
);
CREATE TABLE IF NOT EXISTS rollout_decisions (
    decision_id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id  INTEGER NOT NULL REFERENCES rollouts (rollout_id),
    wave        INTEGER,
    at          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    summary     TEXT NOT NULL,
    figures     TEXT
);
CREATE INDEX IF NOT EXISTS rollout_decisions_rollout
    ON rollout_decisions (rollout_id, decision_id);
"""),
)

POSTGRES: tuple[tuple[int, str], ...] = (
    (2, """
CREATE TABLE records (
    record_id       TEXT PRIMARY KEY,
    station         TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    serial          TEXT,
    outcome         TEXT NOT NULL,
    finished_at     TIMESTAMPTZ NOT NULL,
    payload         TEXT NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    chip_uid        TEXT,
    job_id          TEXT,
    firmware_set_id TEXT,
    manifest_digest TEXT,
    prev_digest     TEXT,
    digest          TEXT,
    link_ok         BOOLEAN
);
CREATE INDEX records_station_seq ON records (station, seq);
CREATE INDEX records_serial ON records (serial, finished_at);
CREATE INDEX records_chip ON records (chip_uid, finished_at);
CREATE INDEX records_job ON records (job_id, finished_at);
CREATE INDEX records_set ON records (firmware_set_id, finished_at);
CREATE INDEX records_manifest ON records (manifest_digest, finished_at);
CREATE INDEX records_finished ON records (finished_at);
CREATE TABLE record_keys (
    key_ref     TEXT NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    record_id   TEXT NOT NULL,
    PRIMARY KEY (key_ref, finished_at, record_id)
);
CREATE TABLE quarantine (
    record_id TEXT PRIMARY KEY,
    station   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    payload   BYTEA NOT NULL
);
"""),
    (3, """
CREATE TABLE rollouts (
    rollout_id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan         TEXT NOT NULL,
    state        TEXT NOT NULL,
    current_wave INTEGER NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL,
    created_by   TEXT NOT NULL
);
CREATE TABLE rollout_waves (
    rollout_id      BIGINT NOT NULL REFERENCES rollouts (rollout_id),
    idx             INTEGER NOT NULL,
    state           TEXT NOT NULL,
    stations        TEXT NOT NULL,
    started_at      TIMESTAMPTZ,
    measuring_since TIMESTAMPTZ,
    ended_at        TIMESTAMPTZ,
    PRIMARY KEY (rollout_id, idx)
);
CREATE TABLE rollout_steps (
    rollout_id     BIGINT NOT NULL REFERENCES rollouts (rollout_id),
    station        TEXT COLLATE "C" NOT NULL,
    wave           INTEGER NOT NULL,
    previous_set   TEXT,
    published_at   TIMESTAMPTZ,
    active_at      TIMESTAMPTZ,
    rolled_back_at TIMESTAMPTZ,
    PRIMARY KEY (rollout_id, station)
);
CREATE TABLE rollout_decisions (
    decision_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id  BIGINT NOT NULL REFERENCES rollouts (rollout_id),
    wave        INTEGER,
    at          TIMESTAMPTZ NOT NULL,
    kind        TEXT NOT NULL,
    actor       TEXT NOT NULL,
    summary     TEXT NOT NULL,
    figures     TEXT
);
CREATE INDEX rollout_decisions_rollout ON rollout_decisions (rollout_id, decision_id);
"""),
)

MIGRATIONS_TABLE = ("CREATE TABLE IF NOT EXISTS schema_migrations ("
                    "version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
LATEST = 3
