"""The rollout store on both engines: moves racing on one rollout take turns, and a SQLite plant
file whose rollout tables were made before they were a migration still opens."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite
import psycopg
import pytest

from agent.plant.fleet import FleetWatch
from agent.plant.rollout.actions import apply_action
from agent.plant.rollout.engine import RolloutEngine
from agent.plant.rollout.model import IllegalMove, Rollout, RolloutState, WaveState
from agent.plant.rollout.store import RolloutStore
from agent.plant.rollout.yields import RecordYields
from agent.plant.schema import LATEST, SQLITE
from agent.sim.broker import free_port
from agent.wire.mqtt import BrokerEndpoint
from tests.test_rollout_plan import plan


@contextlib.asynccontextmanager
async def held(db_target: str, rollout_id: int) -> AsyncIterator[None]:
    """Another writer holds the rollout (PostgreSQL: its row; SQLite: the write lock) meanwhile."""
    if db_target.startswith("postgresql://"):
        async with await psycopg.AsyncConnection.connect(db_target) as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM rollouts WHERE rollout_id = %s FOR UPDATE",
                               (rollout_id,))
            yield
        return
    async with aiosqlite.connect(db_target, isolation_level=None) as db:
        await db.execute("BEGIN IMMEDIATE")
        yield
        await db.execute("COMMIT")


async def blocked(db_target: str, count: int) -> None:
    """Until ``count`` transactions wait for a lock (SQLite cannot tell: a moment, then)."""
    if not db_target.startswith("postgresql://"):
        await asyncio.sleep(0.3)
        return
    async with await psycopg.AsyncConnection.connect(db_target, autocommit=True) as conn:
        async with asyncio.timeout(10):
            while True:
                cursor = await conn.execute("SELECT count(*) FROM pg_stat_activity"
                                            " WHERE wait_event_type = 'Lock'")
                row = await cursor.fetchone()
                if row is not None and row[0] >= count:
                    return
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("shared", [True, False], ids=["one-store", "two-stores"])
async def test_two_approvals_racing_on_one_rollout_take_turns_and_the_second_is_refused(
        db_target: str, shared: bool) -> None:
    # one store: two console requests on one backend; two stores: the engine and a command
    first = await RolloutStore.open(db_target)
    second = first if shared else await RolloutStore.open(db_target)
    try:
        rollout_id = await first.create(plan(), by="ana", approved=False)
        async with held(db_target, rollout_id):  # both moves start while it is held
            moves = [asyncio.create_task(apply_action(store, rollout_id, "approve", by=who))
                     for store, who in ((first, "ana"), (second, "bo"))]
            await blocked(db_target, 2)
            assert not any(move.done() for move in moves)
        results = await asyncio.gather(*moves, return_exceptions=True)
        refused = next(r for r in results if isinstance(r, IllegalMove))
        assert [r for r in results if r is not refused] == [f"rollout {rollout_id} approved"]
        assert str(refused) == f"rollout {rollout_id} is running and cannot become running"
        rollout = await first.load(rollout_id)
        assert rollout.state == RolloutState.RUNNING
        assert [d.kind for d in rollout.decisions] == ["start", "approve"]  # stored once
    finally:
        await first.close()
        if second is not first:
            await second.close()


class PausedRightAfterTheEngineReads(RolloutStore):
    """The engine's store; a person's pause lands between the engine's read and its move."""

    pause_next = False

    async def load(self, rollout_id: int) -> Rollout:
        rollout = await super().load(rollout_id)
        if self.pause_next:
            self.pause_next = False
            await apply_action(RolloutStore(self.backend), rollout_id, "pause", by="bo")
        return rollout


async def test_a_pause_that_lands_while_the_engine_advances_stays_paused(db_target: str) -> None:
    store = PausedRightAfterTheEngineReads((await RolloutStore.open(db_target)).backend)
    endpoint = BrokerEndpoint(host="127.0.0.1", port=free_port())  # the engine publishes nothing
    engine = RolloutEngine(store=store, yields=RecordYields(store.backend),
                           fleet=FleetWatch(endpoint=endpoint, client_id="t-fleet"),
                           endpoint=endpoint)
    try:
        rollout_id = await store.create(plan(), by="ana", approved=True)
        for state in (WaveState.ACTIVATING, WaveState.MEASURING, WaveState.PASSED):
            await store.move_wave(rollout_id, 0, state, kind=state, summary=state)
        store.pause_next = True
        await engine.tick()  # read: running, wave 1 passed; then paused; then advance
        rollout = await store.load(rollout_id)
        assert rollout.state == RolloutState.PAUSED  # not resumed by the engine's advance
        assert rollout.current_wave == 0
        assert [d.kind for d in rollout.decisions][-2:] == ["passed", "pause"]
        await apply_action(store, rollout_id, "resume", by="bo")
        await engine.tick()  # the next look advances from what is stored
        assert (await store.load(rollout_id)).current_wave == 1
    finally:
        await store.close()


# The rollout tables as the first rollout commands made them (CREATE TABLE IF NOT EXISTS on a
# recorder file at schema version 2), before they were migration 3.
TABLES_BEFORE_MIGRATION_3 = """
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
"""


def old_plant_file(path: Path) -> None:
    """A plant file of the version before: schema 2, rollout tables, one paused rollout."""
    at = datetime(2026, 11, 1, 8, 0, tzinfo=UTC).isoformat()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY,"
                   " applied_at TEXT NOT NULL)")
        for version, script in SQLITE[:2]:
            db.executescript(script)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, at))
        db.executescript(TABLES_BEFORE_MIGRATION_3)
        db.execute("INSERT INTO rollouts (plan, state, created_at, created_by)"
                   " VALUES (?, 'paused', ?, 'ana')", (plan(waves=("100%",)).model_dump_json(), at))
        db.execute("INSERT INTO rollout_waves VALUES (1, 0, 'failed', '[\"st-01\"]', ?, ?, ?)",
                   (at, at, at))
        db.execute("INSERT INTO rollout_decisions (rollout_id, wave, at, kind, actor, summary)"
                   " VALUES (1, 0, ?, 'gate_fail', 'engine', 'wave 1 failed the gate')", (at,))


async def test_a_plant_file_whose_rollout_tables_came_before_the_migration_opens_as_it_was(
        tmp_path: Path) -> None:
    path = tmp_path / "plant.db"
    await asyncio.to_thread(old_plant_file, path)
    store = await RolloutStore.open(str(path))
    try:
        old = await store.load(1)
        assert (old.state, old.created_by, old.waves[0].stations) == (
            RolloutState.PAUSED, "ana", ("st-01",))
        assert old.created_at == datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
        await apply_action(store, 1, "resume", by="bo")
        assert await store.create(plan(), by="bo", approved=False) == 2
        versions = await store.backend.fetch("SELECT version FROM schema_migrations"
                                             " ORDER BY version")
        assert [v for (v,) in versions] == [1, 2, LATEST]
    finally:
        await store.close()
