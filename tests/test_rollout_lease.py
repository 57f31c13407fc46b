"""One rollout engine per plant database; a second stands by and takes over when the first stops.

Before the lease, two plant services with --rollouts on one database both stepped the same
rollouts, and the slower one's refused wave move ended its service, recorder included.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.plant.rollout.engine import RolloutEngine
from agent.plant.rollout.lease import LeaseLost, PostgresLease, engine_lease
from agent.plant.rollout.store import RolloutStore
from agent.plant.rollout.yields import RecordYields
from agent.wire.mqtt import BrokerEndpoint
from tests.helpers import eventually


async def test_only_one_holder_at_a_time_and_the_next_after_a_release(db_target: str) -> None:
    first, second = engine_lease(db_target), engine_lease(db_target)
    assert await first.try_take()
    assert not await second.try_take()
    await first.check()
    await first.release()
    with pytest.raises(LeaseLost):
        await first.check()
    assert await second.try_take()
    await second.release()


async def test_a_holder_whose_connection_dies_loses_the_lease_to_a_standby(pg_url: str) -> None:
    import psycopg

    holder, standby = PostgresLease(pg_url), PostgresLease(pg_url)
    assert await holder.try_take()
    assert not await standby.try_take()
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                            "WHERE locktype = 'advisory' AND granted")
    with pytest.raises(LeaseLost, match="went with its connection"):
        await holder.check()  # it stops ticking before the standby can start
    assert await standby.try_take()
    await standby.release()


def test_the_sqlite_lease_lies_beside_the_database(tmp_path: Path) -> None:
    lease = engine_lease(str(tmp_path / "plant.db"))
    assert lease.where == str(tmp_path / "plant.db")
    assert Path(lease.path).name == "plant.db.engine-lock"  # type: ignore[attr-defined]


async def test_a_second_engine_stands_by_until_the_first_stops(
        db_target: str, caplog: pytest.LogCaptureFixture) -> None:
    ticks: dict[str, int] = {"first": 0, "second": 0}
    stores = []

    async def engine(name: str) -> RolloutEngine:
        store = await RolloutStore.open(db_target)
        stores.append(store)
        fleet: Any = SimpleNamespace(connected=asyncio.Event())
        fleet.connected.set()
        made = RolloutEngine(store=store, yields=RecordYields(store.backend), fleet=fleet,
                             endpoint=BrokerEndpoint(host="127.0.0.1", port=1), tick_s=0.05,
                             lease=engine_lease(db_target))

        async def counted_tick() -> None:
            ticks[name] += 1

        made.tick = counted_tick  # type: ignore[method-assign]
        return made

    first = asyncio.create_task((await engine("first")).run())
    await eventually(lambda: ticks["first"] > 2, what="the first engine ticking")
    second = asyncio.create_task((await engine("second")).run())
    await eventually(lambda: "stands by" in caplog.text, what="the second one standing by")
    await asyncio.sleep(0.3)
    assert ticks["second"] == 0
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await eventually(lambda: ticks["second"] > 2, timeout=15, what="the second taking over")
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    for store in stores:
        await store.close()
