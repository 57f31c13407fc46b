"""Yield figures from the stored unit records: the only SQL a rollout gate reads records with.

First-pass yield counts each serial once, by its first record on the set (a unit retested after a
failure does not improve the figure); a record without a serial (failed before one was given)
counts as its own attempt. Kept in one place so the gate can be pointed at another record store
(PostgreSQL) by implementing :class:`YieldSource` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiosqlite

from agent.plant.rollout.model import Figures


@dataclass(frozen=True)
class SetYield:
    """Units of some stations on one set: first attempts, their passes, one failure code's count."""

    units: int
    passed_first: int
    failure_count: int

    @property
    def fpy_pct(self) -> float | None:
        """First-pass yield in percent, None without units."""
        return 100.0 * self.passed_first / self.units if self.units else None


@dataclass(frozen=True)
class UnitLine:
    """One stored unit, for the console's 'last units'."""

    station: str
    serial: str | None
    outcome: str
    set_id: str
    failure_code: str | None
    finished_at: str


class YieldSource(Protocol):
    """What the rollout engine and the console read from the record store."""

    async def set_yield(self, *, stations: tuple[str, ...], set_id: str,
                        failure_code: str | None, since: datetime | None = None) -> SetYield:
        """First-pass figures of ``stations`` on ``set_id`` (records received after ``since``)."""

    async def station_yields(self) -> dict[str, SetYield]:
        """First-pass figures per station over all its records."""

    async def last_units(self, *, limit: int = 40) -> list[UnitLine]:
        """The newest stored units, newest first."""


_FIRST_ATTEMPTS = """
WITH unit AS (
    SELECT station, outcome, received_at,
           json_extract(payload, '$.firmware_set_id') AS set_id,
           json_extract(payload, '$.failure.code') AS code,
           ROW_NUMBER() OVER (PARTITION BY COALESCE(serial, record_id), station
                              ORDER BY finished_at, seq) AS attempt
    FROM records {where}
)
SELECT {group} COUNT(*), COALESCE(SUM(outcome = 'pass'), 0), COALESCE(SUM(code = ?), 0)
FROM unit WHERE attempt = 1 {group_by}
"""


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class SqliteYields:
    """:class:`YieldSource` on the recorder's SQLite database (table ``records``)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def set_yield(self, *, stations: tuple[str, ...], set_id: str,
                        failure_code: str | None, since: datetime | None = None) -> SetYield:
        marks = ",".join("?" * len(stations))
        where = (f"WHERE station IN ({marks}) "
                 "AND json_extract(payload, '$.firmware_set_id') = ?")
        params: list[Any] = [*stations, set_id]
        if since is not None:
            where += " AND received_at >= ?"
            params.append(_iso(since))
        sql = _FIRST_ATTEMPTS.format(where=where, group="", group_by="")
        async with self._db.execute(sql, (*params, failure_code or "")) as cursor:
            row = await cursor.fetchone()
        return SetYield(*(int(v) for v in row)) if row else SetYield(0, 0, 0)

    async def station_yields(self) -> dict[str, SetYield]:
        sql = _FIRST_ATTEMPTS.format(where="", group="station,", group_by="GROUP BY station")
        async with self._db.execute(sql, ("",)) as cursor:
            rows = await cursor.fetchall()
        return {row[0]: SetYield(int(row[1]), int(row[2]), 0) for row in rows}

    async def last_units(self, *, limit: int = 40) -> list[UnitLine]:
        sql = ("SELECT station, serial, outcome, json_extract(payload, '$.firmware_set_id'), "
               "json_extract(payload, '$.failure.code'), finished_at FROM records "
               "ORDER BY received_at DESC, seq DESC LIMIT ?")
        async with self._db.execute(sql, (limit,)) as cursor:
            rows = await cursor.fetchall()
        return [UnitLine(*row) for row in rows]


def judge(new: SetYield, baseline: SetYield, *, failure_code: str | None) -> Figures:
    """The figures of a wave: its yield, the baseline's, the drop, the failure code's rate."""
    drop = None
    if new.fpy_pct is not None and baseline.fpy_pct is not None:
        drop = round(baseline.fpy_pct - new.fpy_pct, 2)
    rate = 100.0 * new.failure_count / new.units if new.units else None
    return Figures(units=new.units, passed_first=new.passed_first,
                   fpy_pct=_r(new.fpy_pct), baseline_units=baseline.units,
                   baseline_fpy_pct=_r(baseline.fpy_pct), fpy_drop_pp=drop,
                   failure_code=failure_code, failure_count=new.failure_count,
                   failure_rate_pct=_r(rate))


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
