"""Yield figures from the stored unit records: the only SQL a rollout gate reads records with.

First-pass yield counts each serial once, by its first record on the set (a unit retested after a
failure does not improve the figure); a record without a serial (failed before one was given)
counts as its own attempt. One query for both engines (:class:`RecordYields`): the set and the
outcome are columns of ``records``, only the failure code is read from the JSON payload, each
engine in its own words, and ``since`` is compared with the time the database received a
record, in the form that engine stores it. tests/test_rollout_yields.py runs the same records
through both and compares the figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.plant.backends import Backend
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
    SELECT station, outcome, {code} AS code,
           ROW_NUMBER() OVER (PARTITION BY COALESCE(serial, record_id), station
                              ORDER BY finished_at, seq) AS attempt
    FROM records {where}
)
SELECT {group} COUNT(*), COUNT(*) FILTER (WHERE outcome = 'pass'),
       COUNT(*) FILTER (WHERE code = %s)
FROM unit WHERE attempt = 1 {group_by}
"""

_LAST_UNITS = """
SELECT station, serial, outcome, firmware_set_id, {code}, finished_at
FROM records ORDER BY received_at DESC, seq DESC LIMIT %s
"""


def _sqlite_received(moment: datetime) -> str:
    """As SQLite's ``received_at`` default writes it: UTC, milliseconds, ``Z``."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class _Dialect:
    failure_code: str  # the SQL of the payload's failure.code (NULL without a failure)
    received: Callable[[datetime], Any]  # a moment as the engine's received_at compares


_DIALECTS = {
    "sqlite": _Dialect("json_extract(payload, '$.failure.code')", _sqlite_received),
    # the payload column is text; json (not jsonb) parses it without building a binary copy
    "postgresql": _Dialect("(payload::json -> 'failure' ->> 'code')",
                           lambda moment: moment.astimezone(UTC)),
}


def _finished(value: str | datetime) -> str:
    """A stored finish time as SQLite keeps it (ISO 8601, UTC, microseconds) on both engines."""
    if isinstance(value, str):
        return value
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class RecordYields:
    """:class:`YieldSource` on the plant's record database (table ``records``), either engine."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._dialect = _DIALECTS[backend.name]

    async def set_yield(self, *, stations: tuple[str, ...], set_id: str,
                        failure_code: str | None, since: datetime | None = None) -> SetYield:
        """See :class:`YieldSource`."""
        marks = ",".join(["%s"] * len(stations))
        where = f"WHERE station IN ({marks}) AND firmware_set_id = %s"
        params: list[Any] = [*stations, set_id]
        if since is not None:
            where += " AND received_at >= %s"
            params.append(self._dialect.received(since))
        sql = _FIRST_ATTEMPTS.format(code=self._dialect.failure_code, where=where, group="",
                                     group_by="")
        rows = await self._backend.fetch(sql, (*params, failure_code or ""))
        return SetYield(*(int(v) for v in rows[0])) if rows else SetYield(0, 0, 0)

    async def station_yields(self) -> dict[str, SetYield]:
        """See :class:`YieldSource`."""
        sql = _FIRST_ATTEMPTS.format(code=self._dialect.failure_code, where="",
                                     group="station,", group_by="GROUP BY station")
        rows = await self._backend.fetch(sql, ("",))
        return {row[0]: SetYield(int(row[1]), int(row[2]), 0) for row in rows}

    async def last_units(self, *, limit: int = 40) -> list[UnitLine]:
        """See :class:`YieldSource`."""
        sql = _LAST_UNITS.format(code=self._dialect.failure_code)
        rows = await self._backend.fetch(sql, (limit,))
        return [UnitLine(station=r[0], serial=r[1], outcome=r[2], set_id=r[3],
                         failure_code=r[4], finished_at=_finished(r[5])) for r in rows]


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
