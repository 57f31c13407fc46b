"""Faults the line meets: broker outages, the safety interlock, bad boards."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.recorder import find_by_serial, missing_sequences
from agent.sim.broker import LocalBroker
from tests.conftest import PlantRecorder
from tests.helpers import eventually, job_payload, publish_job, running_station, station_config


async def test_line_keeps_programming_while_broker_is_down_and_records_drain_after(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)
    job = job_payload(tmp_path, job_id="wo-4004", station="st-test", units=8)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish_job(broker.port, "st-test", job)
        await eventually(lambda: parts.jobs.current is not None, what="job")
        assert await sim.operator.run(2) == ["pass"] * 2
        await eventually(lambda: recorder.has(2), what="first records")

        await broker.stop()
        assert await sim.operator.run(4) == ["pass"] * 4  # no broker, the line goes on
        assert await parts.outbox.depth() == 4
        assert await recorder.count() == 2

        await broker.start()  # same port, same persistence folder
        await eventually(parts.link.connected.is_set, what="reconnect")
        await eventually(lambda: recorder.has(6), what="buffered records")
        await eventually(lambda: _depth_zero(parts), what="acks after outage")
    assert await missing_sequences(recorder.db, "st-test") == []
    async with recorder.db.execute("SELECT seq FROM records ORDER BY rowid") as cursor:
        arrival = [row[0] for row in await cursor.fetchall()]
    assert arrival == sorted(arrival)  # drained oldest first


async def _depth_zero(parts: object) -> bool:
    return await parts.outbox.depth() == 0  # type: ignore[attr-defined]


async def test_interlock_opened_mid_unit_cuts_power_and_fails_the_unit(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port,
                            slots=[{"name": "a", "backend": "sim-flash", "op_delay_ms": 40}])
    job = job_payload(tmp_path, job_id="wo-5005", station="st-test", units=2)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish_job(broker.port, "st-test", job)
        await eventually(lambda: parts.jobs.current is not None, what="job")
        operator = sim.operator
        unit = asyncio.create_task(operator.cycle_one())
        bay = sim.bays["a"]
        await eventually(lambda: bay.board is not None and bay.board.flash[0] != 0xFF,
                         what="programming")
        operator.open_interlock()
        assert not operator.dut_powered()  # cut in the interlock's own callback, at once
        assert await unit == "fail"
        operator.close_interlock()
        assert await operator.cycle_one() == "pass"  # the station takes the next unit
        await eventually(lambda: recorder.has(2), what="records")
    (aborted,) = await find_by_serial(recorder.db, "SN-001000")
    assert aborted["outcome"] == "fail" and aborted["routing"] == "rework"
    assert aborted["aborted"] is True
    assert aborted["failure"]["code"] == "interlock_open"
    assert aborted["failure"]["stage"] == "program"
    assert aborted["valid_flag_set"] is False
    (passed,) = await find_by_serial(recorder.db, "SN-001001")
    assert passed["outcome"] == "pass"


async def test_readback_mismatch_fails_the_unit_naming_the_region(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)
    job = job_payload(tmp_path, job_id="wo-6006", station="st-test", units=1)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish_job(broker.port, "st-test", job)
        await eventually(lambda: parts.jobs.current is not None, what="job")
        bay = sim.bays["a"]
        original = bay.place_new_board

        def weak_board() -> str:
            uid = original()
            bay.board.weak_words.add(0x0001_0100)  # a word in the application that won't take
            return uid

        bay.place_new_board = weak_board
        assert await sim.operator.cycle_one() == "fail"
        bay.place_new_board = original
        assert await sim.operator.cycle_one() == "pass"
        await eventually(lambda: recorder.has(2), what="records")
    (bad,) = await find_by_serial(recorder.db, "SN-001000")
    assert bad["failure"]["code"] == "verify_mismatch"
    assert bad["failure"]["region"] == "application"
    assert bad["valid_flag_set"] is False and bad["routing"] == "rework"
    verified = {i["name"]: i["verified"] for i in bad["images"]}
    assert verified == {"bootloader": True, "application": False, "filesystem": True,
                        "manufacturing": True}
