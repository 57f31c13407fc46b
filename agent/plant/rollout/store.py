"""Rollouts in the plant database (the recorder's, SQLite or PostgreSQL): plans, waves, decisions.

The engine and the command line are separate processes writing the same rows, so every change is
one transaction of the backend (:meth:`~agent.plant.backends.Backend.transaction`) that reads
the current state with the rollout's row locked, checks the move against the state machine
(:mod:`agent.plant.rollout.model`) and writes it together with the decision that explains it:
two moves racing on one rollout take turns, and the second is checked against the first's
result. The tables are part of the versioned schema (:mod:`agent.plant.schema`, version 3).
Each part of the plant opens its own backend: the recorder's batches and a rollout write never
share a connection.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from agent.errors import AgentError
from agent.plant.backends import Backend, Tx, open_backend
from agent.plant.rollout.model import (
    FINISHED,
    Decision,
    Figures,
    Rollout,
    RolloutPlan,
    RolloutState,
    StationStep,
    UnexpectedState,
    Wave,
    WaveState,
    check_rollout_move,
    check_wave_move,
    wave_members,
)


class RolloutNotFound(AgentError):
    """No rollout with that id."""

    def __init__(self, rollout_id: int) -> None:
        self.rollout_id = rollout_id
        super().__init__(f"there is no rollout {rollout_id}")


def now_utc() -> datetime:
    """The plant's clock."""
    return datetime.now(UTC)


def _t(value: str | datetime | None) -> datetime | None:
    """A stored time (ISO text on SQLite, a datetime in the session's zone on PostgreSQL), UTC."""
    if value is None or value == "":
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment.astimezone(UTC)


def _at(value: str | datetime) -> datetime:
    moment = _t(value)
    assert moment is not None  # a NOT NULL column
    return moment


class RolloutStore:
    """Rollout rows: created, read, and changed only through guarded transitions."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @classmethod
    async def open(cls, target: str) -> RolloutStore:
        """A store on a backend of its own: a SQLite path, or a ``postgresql://`` URL."""
        return cls(await open_backend(target))

    async def close(self) -> None:
        """Close the backend (the store's, or the one it was given)."""
        await self.backend.close()

    def _now(self) -> Any:
        return self.backend.ts(now_utc())

    async def create(self, plan: RolloutPlan, *, by: str, approved: bool) -> int:
        """Store a new rollout; it runs at once when ``approved``, else awaits approval."""
        state = RolloutState.RUNNING if approved else RolloutState.AWAITING_APPROVAL
        async with self.backend.transaction() as tx:
            ((rollout_id,),) = await tx.fetch(
                "INSERT INTO rollouts (plan, state, created_at, created_by)"
                " VALUES (%s, %s, %s, %s) RETURNING rollout_id",
                (plan.model_dump_json(), state.value, self._now(), by))
            for index, members in enumerate(wave_members(plan.stations, plan.waves)):
                await tx.execute("INSERT INTO rollout_waves (rollout_id, idx, state, stations)"
                                 " VALUES (%s, %s, %s, %s)",
                                 (rollout_id, index, WaveState.PENDING.value,
                                  json.dumps(members)))
            await self._decide(tx, rollout_id, None, "start", by,
                               f"rollout of {plan.set_id} to {plan.target} "
                               f"({len(plan.stations)} stations, waves {','.join(plan.waves)}) "
                               + ("started" if approved else "awaits approval"))
        return int(rollout_id)

    async def ids(self, *, unfinished_only: bool = False) -> list[int]:
        """Rollout ids, oldest first."""
        rows = await self.backend.fetch("SELECT rollout_id, state FROM rollouts"
                                        " ORDER BY rollout_id")
        return [int(r[0]) for r in rows if not unfinished_only or r[1] not in FINISHED]

    async def load(self, rollout_id: int) -> Rollout:
        """One rollout with its waves, stations and decisions."""
        rows = await self._rows("SELECT plan, state, current_wave, created_at, created_by"
                                " FROM rollouts WHERE rollout_id = %s", rollout_id)
        if not rows:
            raise RolloutNotFound(rollout_id)
        row = rows[0]
        return Rollout(rollout_id=rollout_id, plan=RolloutPlan.model_validate_json(row[0]),
                       state=RolloutState(row[1]), current_wave=row[2],
                       created_at=_at(row[3]), created_by=row[4],
                       waves=await self._waves(rollout_id), steps=await self._steps(rollout_id),
                       decisions=await self._decisions(rollout_id))

    async def _rows(self, sql: str, rollout_id: int) -> list[tuple[Any, ...]]:
        return await self.backend.fetch(sql, (rollout_id,))

    async def _waves(self, rollout_id: int) -> tuple[Wave, ...]:
        rows = await self._rows("SELECT idx, state, stations, started_at, measuring_since, "
                                "ended_at FROM rollout_waves WHERE rollout_id = %s ORDER BY idx",
                                rollout_id)
        return tuple(Wave(index=r[0], state=WaveState(r[1]), stations=tuple(json.loads(r[2])),
                          started_at=_t(r[3]), measuring_since=_t(r[4]), ended_at=_t(r[5]))
                     for r in rows)

    async def _steps(self, rollout_id: int) -> tuple[StationStep, ...]:
        rows = await self._rows("SELECT station, wave, previous_set, published_at, active_at, "
                                "rolled_back_at FROM rollout_steps WHERE rollout_id = %s "
                                "ORDER BY wave, station", rollout_id)
        return tuple(StationStep(station=r[0], wave=r[1], previous_set=r[2],
                                 published_at=_t(r[3]), active_at=_t(r[4]),
                                 rolled_back_at=_t(r[5])) for r in rows)

    async def _decisions(self, rollout_id: int) -> tuple[Decision, ...]:
        rows = await self._rows("SELECT wave, at, kind, actor, summary, figures FROM "
                                "rollout_decisions WHERE rollout_id = %s ORDER BY decision_id",
                                rollout_id)
        return tuple(Decision(rollout_id=rollout_id, wave=r[0], at=_at(r[1]),
                              kind=r[2], actor=r[3], summary=r[4],
                              figures=Figures.model_validate_json(r[5]) if r[5] else None)
                     for r in rows)

    async def _decide(self, tx: Tx, rollout_id: int, wave: int | None,
                      kind: str, actor: str, summary: str,
                      figures: Figures | None = None) -> None:
        await tx.execute("INSERT INTO rollout_decisions (rollout_id, wave, at, kind, actor,"
                         " summary, figures) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (rollout_id, wave, self._now(), kind, actor, summary,
                          figures.model_dump_json() if figures else None))

    async def decide(self, rollout_id: int, *, wave: int | None, kind: str, summary: str,
                     actor: str = "engine", figures: Figures | None = None) -> None:
        """Store a decision that changes no state (e.g. a station reported the set active)."""
        async with self.backend.transaction() as tx:
            await self._decide(tx, rollout_id, wave, kind, actor, summary, figures)

    async def move(self, rollout_id: int, wanted: RolloutState, *, kind: str, summary: str,
                   actor: str = "engine", figures: Figures | None = None,
                   wave: int | None = None, wave_to: WaveState | None = None,
                   next_wave: int | None = None,
                   expect: frozenset[RolloutState] | None = None) -> None:
        """Change the rollout's state (and maybe its current wave's) with the decision, or raise.

        ``expect``: the states this move is meant for (approve is not resume; the engine's
        step is meant for the state it read); others raise UnexpectedState.
        """
        async with self.backend.transaction() as tx:
            current, current_wave = await self._lock(tx, rollout_id)
            if expect is not None and current not in expect:
                raise UnexpectedState(f"rollout {rollout_id}", current, wanted)
            if wanted != current:
                check_rollout_move(current, wanted, what=f"rollout {rollout_id}")
            index = current_wave if wave is None else wave
            if wave_to is not None:
                await self._move_wave(tx, rollout_id, index, wave_to)
            await tx.execute("UPDATE rollouts SET state = %s, current_wave = %s"
                             " WHERE rollout_id = %s",
                             (wanted.value, current_wave if next_wave is None else next_wave,
                              rollout_id))
            await self._decide(tx, rollout_id, index, kind, actor, summary, figures)

    async def move_wave(self, rollout_id: int, index: int, wanted: WaveState, *, kind: str,
                        summary: str, figures: Figures | None = None) -> None:
        """Change one wave's state with the decision, or raise IllegalMove."""
        async with self.backend.transaction() as tx:
            await self._lock(tx, rollout_id)
            await self._move_wave(tx, rollout_id, index, wanted)
            await self._decide(tx, rollout_id, index, kind, "engine", summary, figures)

    async def _lock(self, tx: Tx, rollout_id: int) -> tuple[RolloutState, int]:
        """The rollout's state and current wave, its row locked until the transaction ends:
        every guarded change locks it first, so they take turns (and never deadlock)."""
        rows = await tx.fetch("SELECT state, current_wave FROM rollouts WHERE rollout_id = %s",
                              (rollout_id,), for_update=True)
        if not rows:
            raise RolloutNotFound(rollout_id)
        return RolloutState(rows[0][0]), int(rows[0][1])

    async def _move_wave(self, tx: Tx, rollout_id: int, index: int, wanted: WaveState) -> None:
        rows = await tx.fetch("SELECT state FROM rollout_waves WHERE rollout_id = %s AND idx = %s",
                              (rollout_id, index))
        if not rows:
            raise RolloutNotFound(rollout_id)
        check_wave_move(WaveState(rows[0][0]), wanted, what=f"wave {index + 1} of rollout "
                                                           f"{rollout_id}")
        stamp = {WaveState.ACTIVATING: "started_at", WaveState.MEASURING: "measuring_since"}.get(
            wanted, "ended_at")
        await tx.execute(f"UPDATE rollout_waves SET state = %s, {stamp} = %s"  # noqa: S608
                         " WHERE rollout_id = %s AND idx = %s",
                         (wanted.value, self._now(), rollout_id, index))

    async def step(self, rollout_id: int, station: str, *, wave: int,
                   previous_set: str | None = None, published: bool = False,
                   active: bool = False, rolled_back: bool = False) -> None:
        """Note what happened to one station (published, active, rolled back)."""
        at = self._now()
        async with self.backend.transaction() as tx:
            await tx.execute("INSERT INTO rollout_steps (rollout_id, station, wave, previous_set)"
                             " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                             (rollout_id, station, wave, previous_set))
            for flag, column in ((published, "published_at"), (active, "active_at"),
                                 (rolled_back, "rolled_back_at")):
                if flag:
                    await tx.execute(f"UPDATE rollout_steps SET {column} = %s"  # noqa: S608
                                     " WHERE rollout_id = %s AND station = %s",
                                     (at, rollout_id, station))
