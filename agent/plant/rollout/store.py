"""Rollouts in the plant database (the recorder's SQLite file): plans, waves, stations, decisions.

The engine and the command line are separate processes writing the same rows, so every change is
one ``BEGIN IMMEDIATE`` transaction that reads the current state, checks the move against the
state machine (:mod:`agent.plant.rollout.model`) and writes it together with the decision that
explains it. Each user of the store opens its own connection: the recorder's connection holds its
own transactions, and a rollout write must never land inside one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from agent.errors import AgentError
from agent.plant.records import open_record_db
from agent.plant.rollout.model import (
    FINISHED,
    Decision,
    Figures,
    IllegalMove,
    Rollout,
    RolloutPlan,
    RolloutState,
    StationStep,
    Wave,
    WaveState,
    check_rollout_move,
    check_wave_move,
    wave_members,
)

SCHEMA = """
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


class RolloutNotFound(AgentError):
    """No rollout with that id."""

    def __init__(self, rollout_id: int) -> None:
        self.rollout_id = rollout_id
        super().__init__(f"there is no rollout {rollout_id}")


def now_utc() -> datetime:
    """The plant's clock."""
    return datetime.now(UTC)


def _t(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def open_rollout_db(path: Path) -> aiosqlite.Connection:
    """A connection of its own to the plant database, with the rollout tables in place."""
    db = await open_record_db(path)
    await db.executescript(SCHEMA)
    return db


class RolloutStore:
    """Rollout rows: created, read, and changed only through guarded transitions."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            await self._db.execute("ROLLBACK")
            raise
        await self._db.execute("COMMIT")

    async def create(self, plan: RolloutPlan, *, by: str, approved: bool) -> int:
        """Store a new rollout; it runs at once when ``approved``, else awaits approval."""
        state = RolloutState.RUNNING if approved else RolloutState.AWAITING_APPROVAL
        at = now_utc().isoformat()
        async with self._tx() as db:
            cursor = await db.execute(
                "INSERT INTO rollouts (plan, state, created_at, created_by) VALUES (?, ?, ?, ?)",
                (plan.model_dump_json(), state, at, by))
            rollout_id = int(cursor.lastrowid or 0)
            for index, members in enumerate(wave_members(plan.stations, plan.waves)):
                await db.execute("INSERT INTO rollout_waves (rollout_id, idx, state, stations) "
                                 "VALUES (?, ?, ?, ?)",
                                 (rollout_id, index, WaveState.PENDING, json.dumps(members)))
            await self._decide(db, rollout_id, None, "start", by,
                               f"rollout of {plan.set_id} to {plan.target} "
                               f"({len(plan.stations)} stations, waves {','.join(plan.waves)}) "
                               + ("started" if approved else "awaits approval"))
        return rollout_id

    async def ids(self, *, unfinished_only: bool = False) -> list[int]:
        """Rollout ids, oldest first."""
        sql = "SELECT rollout_id, state FROM rollouts ORDER BY rollout_id"
        async with self._db.execute(sql) as cursor:
            rows = await cursor.fetchall()
        return [int(r[0]) for r in rows if not unfinished_only or r[1] not in FINISHED]

    async def load(self, rollout_id: int) -> Rollout:
        """One rollout with its waves, stations and decisions."""
        async with self._db.execute("SELECT plan, state, current_wave, created_at, created_by "
                                    "FROM rollouts WHERE rollout_id = ?", (rollout_id,)) as c:
            row = await c.fetchone()
        if row is None:
            raise RolloutNotFound(rollout_id)
        return Rollout(rollout_id=rollout_id, plan=RolloutPlan.model_validate_json(row[0]),
                       state=RolloutState(row[1]), current_wave=row[2],
                       created_at=datetime.fromisoformat(row[3]), created_by=row[4],
                       waves=await self._waves(rollout_id), steps=await self._steps(rollout_id),
                       decisions=await self._decisions(rollout_id))

    async def _rows(self, sql: str, rollout_id: int) -> list[Any]:
        async with self._db.execute(sql, (rollout_id,)) as cursor:
            return list(await cursor.fetchall())

    async def _waves(self, rollout_id: int) -> tuple[Wave, ...]:
        rows = await self._rows("SELECT idx, state, stations, started_at, measuring_since, "
                                "ended_at FROM rollout_waves WHERE rollout_id = ? ORDER BY idx",
                                rollout_id)
        return tuple(Wave(index=r[0], state=WaveState(r[1]), stations=tuple(json.loads(r[2])),
                          started_at=_t(r[3]), measuring_since=_t(r[4]), ended_at=_t(r[5]))
                     for r in rows)

    async def _steps(self, rollout_id: int) -> tuple[StationStep, ...]:
        rows = await self._rows("SELECT station, wave, previous_set, published_at, active_at, "
                                "rolled_back_at FROM rollout_steps WHERE rollout_id = ? "
                                "ORDER BY wave, station", rollout_id)
        return tuple(StationStep(station=r[0], wave=r[1], previous_set=r[2],
                                 published_at=_t(r[3]), active_at=_t(r[4]),
                                 rolled_back_at=_t(r[5])) for r in rows)

    async def _decisions(self, rollout_id: int) -> tuple[Decision, ...]:
        rows = await self._rows("SELECT wave, at, kind, actor, summary, figures FROM "
                                "rollout_decisions WHERE rollout_id = ? ORDER BY decision_id",
                                rollout_id)
        return tuple(Decision(rollout_id=rollout_id, wave=r[0], at=datetime.fromisoformat(r[1]),
                              kind=r[2], actor=r[3], summary=r[4],
                              figures=Figures.model_validate_json(r[5]) if r[5] else None)
                     for r in rows)

    async def _decide(self, db: aiosqlite.Connection, rollout_id: int, wave: int | None,
                      kind: str, actor: str, summary: str,
                      figures: Figures | None = None) -> None:
        await db.execute("INSERT INTO rollout_decisions (rollout_id, wave, at, kind, actor, "
                         "summary, figures) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (rollout_id, wave, now_utc().isoformat(), kind, actor, summary,
                          figures.model_dump_json() if figures else None))

    async def decide(self, rollout_id: int, *, wave: int | None, kind: str, summary: str,
                     actor: str = "engine", figures: Figures | None = None) -> None:
        """Store a decision that changes no state (e.g. a station reported the set active)."""
        async with self._tx() as db:
            await self._decide(db, rollout_id, wave, kind, actor, summary, figures)

    async def move(self, rollout_id: int, wanted: RolloutState, *, kind: str, summary: str,
                   actor: str = "engine", figures: Figures | None = None,
                   wave: int | None = None, wave_to: WaveState | None = None,
                   next_wave: int | None = None,
                   expect: frozenset[RolloutState] | None = None) -> None:
        """Change the rollout's state (and maybe its current wave's) with the decision, or raise.

        ``expect``: the states this move is meant for (approve is not resume); others raise.
        """
        async with self._tx() as db:
            async with db.execute("SELECT state, current_wave FROM rollouts WHERE rollout_id = ?",
                                  (rollout_id,)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise RolloutNotFound(rollout_id)
            current = RolloutState(row[0])
            if expect is not None and current not in expect:
                raise IllegalMove(f"rollout {rollout_id}", current, wanted)
            if wanted != current:
                check_rollout_move(current, wanted, what=f"rollout {rollout_id}")
            index = row[1] if wave is None else wave
            if wave_to is not None:
                await self._move_wave(db, rollout_id, index, wave_to)
            await db.execute("UPDATE rollouts SET state = ?, current_wave = ? "
                             "WHERE rollout_id = ?",
                             (wanted, row[1] if next_wave is None else next_wave, rollout_id))
            await self._decide(db, rollout_id, index, kind, actor, summary, figures)

    async def move_wave(self, rollout_id: int, index: int, wanted: WaveState, *, kind: str,
                        summary: str, figures: Figures | None = None) -> None:
        """Change one wave's state with the decision, or raise IllegalMove."""
        async with self._tx() as db:
            await self._move_wave(db, rollout_id, index, wanted)
            await self._decide(db, rollout_id, index, kind, "engine", summary, figures)

    async def _move_wave(self, db: aiosqlite.Connection, rollout_id: int, index: int,
                         wanted: WaveState) -> None:
        async with db.execute("SELECT state FROM rollout_waves WHERE rollout_id = ? AND idx = ?",
                              (rollout_id, index)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise RolloutNotFound(rollout_id)
        check_wave_move(WaveState(row[0]), wanted, what=f"wave {index + 1} of rollout "
                                                       f"{rollout_id}")
        stamp = {WaveState.ACTIVATING: "started_at", WaveState.MEASURING: "measuring_since"}.get(
            wanted, "ended_at")
        await db.execute(f"UPDATE rollout_waves SET state = ?, {stamp} = ? "  # noqa: S608
                         "WHERE rollout_id = ? AND idx = ?",
                         (wanted, now_utc().isoformat(), rollout_id, index))

    async def step(self, rollout_id: int, station: str, *, wave: int,
                   previous_set: str | None = None, published: bool = False,
                   active: bool = False, rolled_back: bool = False) -> None:
        """Note what happened to one station (published, active, rolled back)."""
        at = now_utc().isoformat()
        async with self._tx() as db:
            await db.execute("INSERT INTO rollout_steps (rollout_id, station, wave, previous_set)"
                             " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                             (rollout_id, station, wave, previous_set))
            for flag, column in ((published, "published_at"), (active, "active_at"),
                                 (rolled_back, "rolled_back_at")):
                if flag:
                    await db.execute(f"UPDATE rollout_steps SET {column} = ? "  # noqa: S608
                                     "WHERE rollout_id = ? AND station = ?",
                                     (at, rollout_id, station))
