"""A unit through a UART slot: station, AN3155 backend, bootloader simulator on a pty."""

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


def stm32_manifest_for(folder: Path) -> dict[str, Any]:
    return stm32_manifest(write_stm32_images(folder))


async def test_a_unit_is_programmed_through_a_uart_bootloader_slot(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    slot = {"name": "u", "backend": "stm32-uart", "port": str(tmp_path / "ttyBOOT"),
            "baud": 921600}
    config = station_config(tmp_path, broker.port, slots=[slot])
    topics = StationTopics("st-test")
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish(broker.port, topics.firmware_set, RELEASE.sign(stm32_manifest_for(tmp_path)))
        await publish_job(broker.port, "st-test", job_payload(
            job_id="wo-gw1", station="st-test", units=1, set_id="gateway-2.0",
            product="gateway"))
        assert await sim.operator.cycle_one() == "pass"
        chip = sim.bays["u"].sim
        application = chip.flash(0x0801_0000, 16 * 1024)
        flag = chip.flash(0x0800_4000, 4)
        mfg = mfgdata.parse(chip.flash(0x0800_8000, 1024))
        await eventually(lambda: recorder.has(1), what="record")
    (record,) = await find_by_serial(recorder.db, "SN-001000")
    assert record["outcome"] == "pass"
    assert record["slot"] == "u"
    assert record["firmware_set_id"] == "gateway-2.0"
    assert len(record["chip_uid"]) == 24  # 96-bit STM32 unique id
    assert all(image["verified"] for image in record["images"])
    assert application == image_bytes("gw-application", 16 * 1024)
    assert flag == (0x600DF00D).to_bytes(4, "little")
    assert mfg["serial"] == "SN-001000"
    assert mfg["chip_uid"] == record["chip_uid"]
