"""A unit through a UART slot: station, AN3155 backend, bootloader simulator on a pty."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.demo.images import image_bytes
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

# STM32F4 sectors: 4 x 16 KiB from 0x08000000, then 64 KiB at 0x08010000. Each region (and the
# valid flag) gets sectors of its own, because an erase takes whole sectors.
REGIONS = (("bootloader", "bootloader", 0x0800_0000, 8 * 1024),
           ("filesystem", "filesystem", 0x0800_C000, 4 * 1024),
           ("application", "application", 0x0801_0000, 16 * 1024))


def stm32_manifest(folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for name, role, address, size in REGIONS:
        data = image_bytes(f"gw-{name}", size)
        path = folder / f"{name}.bin"
        path.write_bytes(data)
        images.append({"name": name, "role": role, "address": address, "size": size,
                       "sha256": hashlib.sha256(data).hexdigest(), "version": "2.0.0",
                       "url": path.as_uri(), "key_ref": "hsm:gw-release"})
    now = datetime.now(UTC).replace(microsecond=0)
    return {"schema": "fixture-agent/firmware-set@2", "set_id": "gateway-2.0", "product": "gateway",
            "sequence": 1, "not_before": (now - timedelta(hours=1)).isoformat(),
            "expires": (now + timedelta(days=1)).isoformat(),
            "target": {"family": "stm32f4", "bootloader": "stm32f4"}, "images": images,
            "manufacturing": {"address": 0x0800_8000, "size": 1024},
            "valid_flag": {"kind": "flash-word", "address": 0x0800_4000, "value": 0x600DF00D}}


async def test_a_unit_is_programmed_through_a_uart_bootloader_slot(
        tmp_path: Path, broker: LocalBroker, recorder: PlantRecorder) -> None:
    slot = {"name": "u", "backend": "stm32-uart", "port": str(tmp_path / "ttyBOOT"),
            "baud": 921600}
    config = station_config(tmp_path, broker.port, slots=[slot])
    topics = StationTopics("st-test")
    async with running_station(config) as (parts, sim):
        await eventually(parts.link.connected.is_set, what="link")
        await publish(broker.port, topics.firmware_set, RELEASE.sign(stm32_manifest(tmp_path)))
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
