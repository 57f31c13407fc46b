"""A chip id no real part has fails the unit `uid_invalid` before a serial is bound to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.sim.broker import LocalBroker
from agent.sim.nrf52840.boards import place_new_board
from tests.conftest import PlantRecorder
from tests.helpers import running_station, station_config, taking_boards


@pytest.mark.parametrize(("device_id", "says"), [(0, "is all 0x00"),
                                                 ((1 << 64) - 1, "is all 0xFF")])
async def test_a_part_that_answers_nothing_real_fails_uid_invalid_and_keeps_the_serial(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder, device_id: int,
        says: str) -> None:
    config = station_config(tmp_path, broker.port)  # pyOCD on a virtual nRF52840
    async with running_station(config) as (parts, sim):
        records = await taking_boards(parts, broker.port, tmp_path, job_id="wo-uid",
                                      units=2)
        bay = sim.bays["a"]
        place_new_board(bay.board_dir, bay.probe_uid, device_id=device_id)
        assert await sim.operator.cycle_one(place=False) == "fail"
        (record,) = records
        assert record.failure is not None
        assert record.failure.code == "uid_invalid"
        assert record.failure.stage == "identify"
        assert says in record.failure.detail
        assert record.serial is None
        assert await sim.operator.run(1) == ["pass"]  # the next good part gets the first serial
        assert records[1].serial == "SN-001000"


async def test_a_chip_id_of_the_wrong_length_fails_uid_invalid(
        tmp_path: Path, broker: LocalBroker) -> None:
    config = station_config(tmp_path, broker.port, slots=[{"name": "a", "backend": "sim-flash"}])
    async with running_station(config) as (parts, sim):
        records = await taking_boards(parts, broker.port, tmp_path, job_id="wo-uid2",
                                      units=1)
        sim.bays["a"].place_new_board(uid=bytes.fromhex("0102030405"))
        assert await sim.operator.cycle_one(place=False) == "fail"
        assert records[0].failure.code == "uid_invalid"
        assert "has 5 bytes where this part has 8" in records[0].failure.detail
