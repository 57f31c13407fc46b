"""A full outbox or a low disk stops new units, and the status says why."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from agent.config import parse_config
from agent.plant.recorder import Recorder
from agent.plant.records import RecordStore, open_record_db
from agent.sim.broker import LocalBroker
from agent.wire.mqtt import BrokerEndpoint
from tests.helpers import eventually, running_station, start_job, station_raw


async def test_full_outbox_stops_new_units_until_the_plant_acknowledges(
        tmp_path: Path, broker: LocalBroker) -> None:
    raw = station_raw(tmp_path, broker.port, slots=[{"name": "a", "backend": "sim-flash"}])
    raw["limits"]["outbox_max_records"] = 10
    config = parse_config(raw, source="test", base=tmp_path)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-9009", units=20)
        assert await sim.operator.run(10) == ["pass"] * 10  # no recorder: nothing is acked
        await eventually(lambda: any("outbox holds 10" in b for b in parts.status.blocked),
                         what="blocked on the outbox")
        assert not parts.status.accepting_units
        sim.bays["a"].place_new_board()
        sim.operator.close_lid()
        await asyncio.sleep(0.3)
        assert not sim.operator.dut_powered()  # no unit starts

        db = await open_record_db(tmp_path / "records.db")
        recorder = Recorder(endpoint=BrokerEndpoint(host="127.0.0.1", port=broker.port),
                            store=RecordStore(db))
        task = asyncio.create_task(recorder.run())
        try:
            await eventually(lambda: parts.status.accepting_units, what="unblocked by acks")
            await sim.operator.wait_until(lambda: sim.operator.lamp() == "pass")
            sim.operator.open_lid()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await db.close()
    assert parts.jobs.current is not None
    assert parts.jobs.current.passed == 11


async def test_low_disk_stops_new_units(tmp_path: Path, broker: LocalBroker) -> None:
    raw = station_raw(tmp_path, broker.port, slots=[{"name": "a", "backend": "sim-flash"}])
    raw["limits"]["min_free_disk_mb"] = 1 << 40  # more than any disk has
    config = parse_config(raw, source="test", base=tmp_path)
    async with running_station(config) as (parts, _sim):
        await eventually(parts.link.connected.is_set, what="link")
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-9010", units=1)
        await eventually(lambda: any(b.startswith("free disk") for b in parts.status.blocked),
                         what="blocked on disk")
        await eventually(lambda: parts.rollout.staged("sensor-node-2026.11"), what="staged")
        assert not parts.status.accepting_units
