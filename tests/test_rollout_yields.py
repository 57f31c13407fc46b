"""The figures a rollout gate reads are the same on SQLite and PostgreSQL, and what yields.py says.

The same records (retests, units without a serial, finish times in several zones and with ties,
two sets, two failure codes, two deliveries) go to a SQLite file and to a PostgreSQL database;
every figure of :class:`RecordYields` is compared between the engines and with a reference
written in Python from the documented rule: each serial (a record without one is its own unit)
counts once per station, by its first record (finish time, then seq).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from agent.plant.backends import Backend, open_backend
from agent.plant.records import Incoming, RecordStore
from agent.plant.rollout.yields import RecordYields, SetYield
from agent.sim.records import T0, unit_record
from agent.wire.codec import encode
from agent.wire.messages import GENESIS_DIGEST, Failure, UnitRecord, record_digest

STATIONS = ("st-01", "st-02", "st-03")
SETS = ("fw-1", "fw-2")
CODES = ("verify_mismatch", "probe_lost")
ZONES = (UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-7)))


@dataclass(frozen=True)
class Made:
    """One generated record and the delivery (1 or 2) it came in."""

    record: UnitRecord
    delivery: int

    @property
    def unit(self) -> tuple[str, str]:
        return (self.record.serial or self.record.record_id, self.record.station)

    @property
    def code(self) -> str | None:
        return self.record.failure.code if self.record.failure else None


def make_records(rng: random.Random, per_station: int) -> list[Made]:
    made: list[Made] = []
    for station in STATIONS:
        prev = GENESIS_DIGEST
        for seq in range(1, per_station + 1):
            failed = rng.random() < 0.3
            # few serials: retests happen; a minute grid: equal finish times happen
            when = (T0 + timedelta(minutes=rng.randrange(40))).astimezone(rng.choice(ZONES))
            record = unit_record(station, seq, prev, set_id=rng.choice(SETS),
                                 outcome="fail" if failed else "pass", finished_at=when)
            serial = None if rng.random() < 0.1 else f"SN-{rng.randrange(25)}"
            failure = Failure(code=rng.choice(CODES), stage="verify", detail="x") if failed \
                else None
            record = record.model_copy(update={"serial": serial, "failure": failure})
            prev = record_digest(encode(record))
            made.append(Made(record, 1 if seq <= per_station // 2 else 2))
    return made


def reference(made: list[Made], *, stations: tuple[str, ...], set_id: str | None,
              failure_code: str | None, delivery: int | None = None) -> SetYield:
    chosen = [m for m in made if m.record.station in stations
              and (set_id is None or m.record.firmware_set_id == set_id)
              and (delivery is None or m.delivery == delivery)]
    first: dict[tuple[str, str], Made] = {}
    for m in sorted(chosen, key=lambda m: (m.record.finished_at, m.record.seq)):
        first.setdefault(m.unit, m)
    return SetYield(units=len(first),
                    passed_first=sum(m.record.outcome == "pass" for m in first.values()),
                    failure_count=sum(failure_code is not None and m.code == failure_code
                                      for m in first.values()))


@pytest.fixture
async def engines(tmp_path: Path, pg_url: str) -> AsyncIterator[dict[str, Backend]]:
    opened = {"sqlite": await open_backend(str(tmp_path / "plant.db")),
              "postgresql": await open_backend(pg_url)}
    yield opened
    for backend in opened.values():
        await backend.close()


async def deliver(backends: dict[str, Backend], made: list[Made], delivery: int) -> None:
    batch = [Incoming(m.record.station, encode(m.record)) for m in made
             if m.delivery == delivery]
    for backend in backends.values():
        await RecordStore(backend).store_batch(batch)


async def test_first_pass_figures_are_the_same_on_both_engines_and_follow_the_rule(
        engines: dict[str, Backend]) -> None:
    made = make_records(random.Random(12), per_station=60)
    await deliver(engines, made, 1)
    await asyncio.sleep(0.02)  # SQLite keeps received_at to the millisecond
    since = datetime.now(timezone(timedelta(hours=-5)))  # any zone: the same moment
    await asyncio.sleep(0.02)
    await deliver(engines, made, 2)
    sources = {name: RecordYields(backend) for name, backend in engines.items()}

    asked = 0
    for stations, set_id, code, after in itertools.product(
            (STATIONS[:1], STATIONS[:2], STATIONS), (*SETS, "fw-9"), (*CODES, None),
            (None, since)):
        expected = reference(made, stations=stations, set_id=set_id, failure_code=code,
                             delivery=None if after is None else 2)
        for name, source in sources.items():
            found = await source.set_yield(stations=stations, set_id=set_id, failure_code=code,
                                           since=after)
            assert found == expected, (name, stations, set_id, code, after)
        asked += 1
    assert asked == 54

    by_station = {s: reference(made, stations=(s,), set_id=None, failure_code=None)
                  for s in STATIONS}
    for source in sources.values():
        assert await source.station_yields() == by_station

    units = {name: sorted(await source.last_units(limit=1000), key=lambda u: (u.station,
                                                                               u.finished_at,
                                                                               u.set_id))
             for name, source in sources.items()}
    assert units["sqlite"] == units["postgresql"]
    assert len(units["sqlite"]) == len(made)

    # the records make the rule matter: retests, serial-less units, a later delivery
    everything = reference(made, stations=STATIONS, set_id="fw-2", failure_code=None)
    retests = sum(m.record.firmware_set_id == "fw-2" for m in made) - everything.units
    assert retests > 10
    assert 0 < reference(made, stations=STATIONS, set_id="fw-2", failure_code=None,
                         delivery=2).units < everything.units
