"""Faults the line meets: broker outages, the safety interlock, bad boards."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.plant.trace import find_by_serial, missing_sequences
from agent.sim.broker import LocalBroker
from agent.sim.nrf52840.boards import inject_disconnect, inject_stuck_word
from tests.conftest import PlantRecorder
from tests.helpers import eventually, running_station, start_job, station_config


async def test_line_keeps_programming_while_broker_is_down_and_records_drain_after(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)
    job = ("wo-4004", 8)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await start_job(broker.port, "st-test", tmp_path, job_id=job[0], units=job[1])
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
    job = ("wo-5005", 2)
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await start_job(broker.port, "st-test", tmp_path, job_id=job[0], units=job[1])
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
    assert aborted["outcome"] == "fail"
    assert aborted["routing"] == "rework"
    assert aborted["aborted"] is True
    assert aborted["failure"]["code"] == "interlock_open"
    assert aborted["failure"]["stage"] == "program"
    assert aborted["valid_flag_set"] is False
    (passed,) = await find_by_serial(recorder.db, "SN-001001")
    assert passed["outcome"] == "pass"


async def test_readback_mismatch_and_probe_loss_fail_the_unit_and_the_line_goes_on(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port)  # pyOCD on a virtual nRF52840
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await start_job(broker.port, "st-test", tmp_path, job_id="wo-6006", units=2)
        await eventually(lambda: parts.jobs.current is not None, what="job")
        bay = sim.bays["a"]
        original = bay.place_new_board

        def board_with(fault: str) -> str:
            uid: str = original()
            if fault == "stuck":  # a word in the application that won't take a write
                inject_stuck_word(bay.board_dir, bay.probe_uid, 0x0001_0100)
            else:  # the probe drops off the bus in the middle of flashing
                inject_disconnect(bay.board_dir, bay.probe_uid, after_transfers=400)
            return uid

        for fault in ("stuck", "disconnect"):
            bay.place_new_board = lambda fault=fault: board_with(fault)
            assert await sim.operator.cycle_one() == "fail"
        bay.place_new_board = original
        assert await sim.operator.cycle_one() == "pass"  # no restart needed
        await eventually(lambda: recorder.has(3), what="records")
    (bad,) = await find_by_serial(recorder.db, "SN-001000")
    assert bad["failure"]["code"] == "verify_mismatch"
    assert bad["failure"]["region"] == "application"
    assert bad["valid_flag_set"] is False
    assert bad["routing"] == "rework"
    verified = {i["name"]: i["verified"] for i in bad["images"]}
    assert verified == {"bootloader": True, "application": False, "filesystem": True,
                        "manufacturing": True}
    (lost,) = await find_by_serial(recorder.db, "SN-001001")
    assert lost["outcome"] == "fail"
    assert lost["valid_flag_set"] is False
    assert lost["failure"]["code"] == "probe_lost", lost["failure"]
    (good,) = await find_by_serial(recorder.db, "SN-001002")
    assert good["outcome"] == "pass"
