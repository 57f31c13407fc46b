"""Units through USB-DFU slots: station, DFU programmer, simulated bootloaders on one hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.demo.images import image_bytes, stm32_manifest, write_stm32_images
from agent.plant.trace import find_by_serial
from agent.sim.broker import LocalBroker
from agent.station import mfgdata
from agent.wire.topics import StationTopics
from tests.conftest import PlantRecorder
from tests.helpers import (
    RELEASE,
    eventually,
    job_payload,
    publish,
    publish_job,
    running_station,
    station_config,
)

# Two boards on one hub, told apart by port; each slot drives its own BOOT0 and NRESET.
SLOTS = [{"name": "left", "backend": "usb-dfu", "usb_path": "1-1.1", "boot0_pin": 20,
          "nreset_pin": 21},
         {"name": "right", "backend": "usb-dfu", "usb_path": "1-1.2", "boot0_pin": 24,
          "nreset_pin": 25}]


def gateway_set(folder: Path) -> bytes:
    """The demo gateway's set (STM32F4), signed by the test release key."""
    return RELEASE.sign(stm32_manifest(write_stm32_images(folder / "images")))


def boards(sim: Any) -> dict[str, Any]:
    return {name: sim.bays[name].device.board for name in ("left", "right")}


async def test_two_boards_are_programmed_verified_locked_and_recorded(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port, slots=SLOTS)
    topics = StationTopics("st-test")
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish(broker.port, topics.firmware_set, gateway_set(tmp_path))
        await publish_job(broker.port, "st-test", job_payload(
            job_id="wo-dfu1", station="st-test", units=2, set_id="gateway-2.0",
            product="gateway", lock=True))
        assert await sim.operator.cycle_one() == "pass"
        placed = boards(sim)
        await eventually(lambda: recorder.has(2), what="records")
    records = [(await find_by_serial(recorder.db, serial))[0]
               for serial in ("SN-001000", "SN-001001")]
    assert sorted(record["slot"] for record in records) == ["left", "right"]
    for record in records:
        board = placed[record["slot"]]
        assert record["outcome"] == "pass", record["failure"]
        assert record["chip_uid"] == board.chip.uid.hex()
        assert all(image["verified"] for image in record["images"])
        assert (record["lock_requested"], record["locked"]) == (True, True)
        assert board.protected  # in force since the reset that followed the option bytes
        assert board.chip.flash_bytes(0x0801_0000, 16 * 1024) == image_bytes("gw-application",
                                                                             16 * 1024)
        assert board.chip.flash_bytes(0x0800_4000, 4) == (0x600DF00D).to_bytes(4, "little")
        mfg = mfgdata.parse(board.chip.flash_bytes(0x0800_8000, 1024))
        assert (mfg["serial"], mfg["chip_uid"]) == (record["serial"], record["chip_uid"])


async def test_a_board_that_vanishes_fails_its_unit_as_probe_lost(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    config = station_config(tmp_path, broker.port, slots=SLOTS[:1])
    topics = StationTopics("st-test")
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish(broker.port, topics.firmware_set, gateway_set(tmp_path))
        await publish_job(broker.port, "st-test", job_payload(
            job_id="wo-dfu2", station="st-test", units=2, set_id="gateway-2.0",
            product="gateway"))
        sim.bays["left"].device.faults.vanish_after_blocks = 2
        assert await sim.operator.cycle_one() == "fail"
        assert await sim.operator.cycle_one() == "pass"  # a new board, powered afresh
        await eventually(lambda: recorder.has(2), what="records")
    (failed,) = await find_by_serial(recorder.db, "SN-001000")
    assert failed["outcome"] == "fail"
    assert failed["failure"]["code"] == "probe_lost"
    assert failed["failure"]["stage"] == "program"
    assert failed["failure"]["region"] == "bootloader"
